"""The state the addons share: config, the engine in force, the audit log and metrics.

One object, handed to every addon at construction, instead of module
globals: tests build their own, and a reload swaps ``engine`` (and
``config``) with single assignments the event loop sees atomically.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.config import Config
from proxy.engine import Engine
from proxy.identity import Authenticator, make_authenticator
from proxy.metrics import Metrics

log = logging.getLogger("cipa.runtime")

_ids = itertools.count(1)
_PREFIX = f"{os.getpid():x}"


def new_request_id() -> str:
    """Short, unique per process and sortable by time: shown on the block page and in the audit record."""
    return f"{int(time.time() * 1000):x}-{_PREFIX}-{next(_ids):x}"


@dataclass
class Runtime:
    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    audit: object | None = None  # proxy.audit.AuditLog
    listening: bool = False
    events: Callable[[dict], None] | None = (
        None  # audit sink for non-request records (set by the master)
    )
    # Set by tests through the CIPA_INJECT_FAULT environment variable: deciding for this host raises.
    fault_host: str | None = field(
        default_factory=lambda: os.environ.get("CIPA_INJECT_FAULT") or None
    )

    _auth: tuple[object, Authenticator | None] | None = None

    def authenticator(self) -> Authenticator | None:
        """The sign-in backend for the config in force (rebuilt when the auth section changes)."""
        a = self.config.auth
        if self._auth is None or self._auth[0] is not a:
            self._auth = (a, make_authenticator(a.backend, a.htpasswd, a.ldap, a.cache_seconds))
        return self._auth[1]

    def set_engine(self, engine: Engine) -> None:
        self.engine = engine  # one assignment: requests see the old or the new rules, never a mix
        self.config = engine.config
        self.metrics.set_rules(
            {name: info.entries for name, info in engine.rules.categories.items()}, time.time()
        )
        self.metrics.operative.set(1)

    def readiness_problems(self) -> list[str]:
        problems = []
        if self.engine is None:
            problems.append("rules not loaded")
        if not self.listening:
            problems.append("listener not bound")
        audit = self.audit
        if audit is not None and not getattr(audit, "healthy", True):
            problems.append("audit log not writable")
        return problems
