"""Adult overrides (CIPA's "bona fide research" provision): signed, time-limited, audited.

An authorised adult signs in on the block page and states a reason; the
proxy then lets that user (or, without proxy sign-in, that client address)
reach that registered domain until the grant expires. Each grant is an
HMAC-signed record in a small JSON state file shared with
``cipa-proxy overrides list|revoke``: editing a grant (say, its expiry) breaks
its signature and voids it, and a revoked grant stops working within seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

OVERRIDE_PATH = "/__cipa/override"  # served by the proxy on whatever host was blocked


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    user: str
    client: str
    domain: str  # registered domain, e.g. example.org (covers its subdomains)
    category: str
    reason: str
    granted_at: float
    expires_at: float
    revoked: bool = False
    signature: str = ""

    def payload(self) -> bytes:
        fields = (
            self.id,
            self.user,
            self.client,
            self.domain,
            self.category,
            f"{self.expires_at:.3f}",
        )
        return "\x1f".join(fields).encode()


def load_key(path: Path) -> bytes:
    """The signing key, created (mode 0600) on first use."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return key


class OverrideStore:
    """Grants in a JSON file; cheap to consult on every blocked request."""

    def __init__(
        self, key: bytes, path: Path, clock: Callable[[], float] = time.time, recheck: float = 2.0
    ):
        self.key = key
        self.path = path
        self.clock = clock
        self.recheck = recheck
        self._grants: list[Grant] = []
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def sign(self, g: Grant) -> Grant:
        return replace(g, signature=hmac.new(self.key, g.payload(), hashlib.sha256).hexdigest())

    def valid(self, g: Grant) -> bool:
        expected = hmac.new(self.key, g.payload(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, g.signature)

    # ------------------------------------------------------------------ file

    def _read(self) -> list[Grant]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            return []  # unreadable or garbled: no grant is honoured (fail closed)
        out = []
        for item in raw if isinstance(raw, list) else []:
            try:
                out.append(Grant(**item))
            except TypeError:
                continue
        return out

    def _write(self, grants: list[Grant]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump([asdict(g) for g in grants], fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.recheck:
            return
        self._checked = now
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if force or stamp != self._stamp:
            self._grants, self._stamp = self._read(), stamp

    # ------------------------------------------------------------------ API

    def grant(
        self, user: str, client: str, domain: str, category: str, reason: str, minutes: float
    ) -> Grant:
        now = self.clock()
        g = self.sign(
            Grant(
                secrets.token_hex(8),
                user,
                client,
                domain,
                category,
                reason,
                now,
                now + minutes * 60,
            )
        )
        with self._lock:
            self._refresh(force=True)
            keep = [x for x in self._grants if x.expires_at > now]  # expired grants leave the file
            self._write([*keep, g])
            self._refresh(force=True)
        return g

    def find(self, user: str | None, client: str, domain: str) -> Grant | None:
        """An active, correctly signed grant for this user (or, if not signed in, this address)."""
        self._refresh()
        now = self.clock()
        for g in self._grants:
            if g.domain != domain or g.revoked or g.expires_at <= now:
                continue
            mine = g.user == user if user else g.client == client
            if mine and self.valid(g):
                return g
        return None

    def list(self, include_expired: bool = False) -> list[tuple[Grant, str]]:
        """Every grant with its state: active, expired, revoked or BAD SIGNATURE."""
        self._refresh(force=True)
        now = self.clock()
        out = []
        for g in self._grants:
            state = (
                "BAD SIGNATURE"
                if not self.valid(g)
                else "revoked"
                if g.revoked
                else "expired"
                if g.expires_at <= now
                else "active"
            )
            if include_expired or state in ("active", "BAD SIGNATURE"):
                out.append((g, state))
        return out

    def revoke(self, grant_id: str) -> Grant | None:
        with self._lock:
            self._refresh(force=True)
            found = None
            grants = []
            for g in self._grants:
                if g.id == grant_id and not g.revoked:
                    found = g = replace(g, revoked=True)
                grants.append(g)
            if found is not None:
                self._write(grants)
                self._refresh(force=True)
            return found
