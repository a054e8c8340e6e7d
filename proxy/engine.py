"""The decision: (request facts, compiled rules, config) -> allow or block, explained.

``Engine.decide`` is a pure function with no I/O, so it can run inline on the
proxy's event loop, be exercised from the CLI with exactly the same result,
and be tested without a proxy. It never raises: garbage in is a ``malformed``
block, and an internal error is a ``filter_error`` block (fail closed).

Precedence (DESIGN.md): the most specific match wins — URL prefix > longer
domain suffix > shorter suffix > pattern > the policy's default — and on a
tie an allow beats a block, because staff add allow entries on purpose.
Categories a policy names in neither ``allow`` nor ``block`` are ignored.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from zoneinfo import ZoneInfo

from . import exceptions as class_exceptions
from . import wrapped
from .canonical import Malformed, canonical_host, canonical_path, canonical_url, is_ip_literal
from .config import Config, Group, Policy, client_address
from .domains import registered_domain
from .model import ALLOW, BLOCK, Decision, Request
from .rules import _MAX_CATEGORIES, RuleSet, load_rules
from .safesearch import SafeSearch
from .schedule import active_names

log = logging.getLogger("cipa.engine")

_CAT_MASK = _MAX_CATEGORIES - 1
_HITS_CACHE = 65536  # hosts whose domain-index hits are remembered
_DEFAULT_PORTS = {"http": 80, "https": 443}

NO_SAFESEARCH = "nosafesearch"  # category of search engines with no enforceable safe mode


def safesearch_table(rules_dir: Path) -> Path:
    return rules_dir / "safesearch" / "hosts.tsv"


# Ranks of match kinds: higher is more specific.
_URL, _DOMAIN, _PATTERN = 3, 2, 1


@dataclass(frozen=True, slots=True)
class _PolicyView:
    """A policy resolved against the rule set's category ids for O(1) lookups."""

    policy: Policy
    actions: tuple[str | None, ...]  # category id -> ALLOW / BLOCK / None (not named)


@dataclass(frozen=True, slots=True)
class Match:
    rank: int
    specificity: int
    action: str
    ref: int


class Engine:
    """Compiled rules plus config; immutable once built, swapped whole on reload."""

    def __init__(
        self,
        config: Config,
        rules: RuleSet,
        safesearch: SafeSearch | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.rules = rules
        self.safesearch = safesearch or SafeSearch({})
        self.clock = clock  # injectable for schedule tests
        self.exceptions: list[class_exceptions.ClassException] = []
        self._tz = ZoneInfo(config.timezone)
        self._views: dict[tuple[str, frozenset[str]], _PolicyView] = {}
        self._active: tuple[int, frozenset[str]] = (-1, frozenset())
        self._groups: dict[tuple[str, str | None, frozenset[str]], Group] = {}
        self._url_hosts = frozenset(rules.urls)
        # host -> index hits; bounded, per engine (a reload starts afresh)
        self._domain_hits: dict[str, tuple] = {}
        self._has_patterns = rules.pattern_set is not None

    def _view(self, policy_name: str) -> _PolicyView:
        """The policy as it stands now: its scheduled changes applied for the active schedules."""
        policy = self.config.policies[policy_name]
        active = self.active_schedules() if policy.during else frozenset()
        key = (policy_name, active)
        view = self._views.get(key)
        if view is None:
            allow, block, default = set(policy.allow), set(policy.block), policy.default
            for change in policy.during:
                if change.schedule in active:
                    allow = (allow - change.block) | change.allow
                    block = (block - change.allow) | change.block
                    default = change.default or default
            if active:
                policy = replace(
                    policy, allow=frozenset(allow), block=frozenset(block), default=default
                )
            actions: list[str | None] = []
            for cat in self.rules.cat_names:
                action = ALLOW if cat in allow else BLOCK if cat in block else None
                if action is None and cat == NO_SAFESEARCH and policy.safesearch == "strict":
                    action = BLOCK  # search engines SafeSearch cannot be forced on
                actions.append(action)
            view = self._views[key] = _PolicyView(policy, tuple(actions))
        return view

    def policy_now(self, name: str) -> Policy:
        """The named policy with the changes of the schedules active now applied."""
        return self._view(name).policy

    def active_schedules(self) -> frozenset[str]:
        """Names of the schedules in force now, recomputed once a minute."""
        now = self.clock()
        minute = int(now // 60)
        if self._active[0] != minute:
            self._active = (minute, active_names(self.config.schedules, now, self._tz))
        return self._active[1]

    @classmethod
    def build(cls, config: Config, isolate: bool = False) -> Engine:
        """Load the rules named by ``config`` (slow: call it off the event loop).

        ``isolate``: compile (when the cached index is stale) in a child process.
        """
        engine = cls(
            config,
            load_rules(config.rules_dir, config.lists.cache_dir, isolate=isolate),
            SafeSearch.load(safesearch_table(config.rules_dir)),
        )
        if config.class_exceptions is not None:
            engine.exceptions = class_exceptions.load(config.class_exceptions)
        return engine

    # ------------------------------------------------------------------ groups

    def group_for(
        self, client: str, user: str | None = None, member_of: frozenset[str] = frozenset()
    ) -> Group:
        """First matching group in config order; falls back to the last group."""
        key = (client, user, member_of)
        group = self._groups.get(key)
        if group is not None:
            return group
        ip = client_address(client) if client else None
        groups = self.config.groups
        group = next((g for g in groups if g.matches(ip, user, member_of)), groups[-1])
        if len(self._groups) > 65536:
            self._groups.clear()
        self._groups[key] = group
        return group

    # ------------------------------------------------------------------ classify

    def _best(
        self, view: _PolicyView, host: str, path_l: str, url_text: str, ip: bool
    ) -> Match | None:
        """The most specific match that the policy cares about, or None."""
        actions = view.actions
        rules = self.rules
        best: Match | None = None

        # 1. URL prefixes, over the host and every parent domain.
        if self._url_hosts:
            s = host
            while True:
                entries = rules.urls.get(s)
                if entries:
                    for prefix, ref in entries:
                        action = actions[ref & _CAT_MASK]
                        if action is None or not _path_has_prefix(path_l, prefix):
                            continue
                        spec = len(s) + len(prefix)
                        if (
                            best is None
                            or spec > best.specificity
                            or (spec == best.specificity and action == ALLOW)
                        ):
                            best = Match(_URL, spec, action, ref)
                if ip:
                    break
                dot = s.find(".")
                if dot < 0:
                    break
                s = s[dot + 1 :]
            if best is not None:
                return best

        # 2. Domains: the longest suffix with a category the policy names decides.
        #    One prefix search in the compact index (index.py) finds every entry covering
        #    the host; hosts repeat, so the answer is remembered per host.
        hits = self._domain_hits.get(host)
        if hits is None:
            hits = rules.domains.hits(host, ip)
            if len(self._domain_hits) >= _HITS_CACHE:
                self._domain_hits.clear()
            self._domain_hits[host] = hits
        for labels, refs in hits:
            for ref in refs:
                action = actions[ref & _CAT_MASK]
                if action is not None and (best is None or action == ALLOW):
                    best = Match(_DOMAIN, labels, action, ref)
            if best is not None:
                return best

        # 3. Patterns on the canonical URL text.
        if self._has_patterns:
            hits = rules.pattern_set.Match(url_text)
            if hits:
                for i in sorted(hits):
                    ref = rules.patterns[i][0]
                    action = actions[ref & _CAT_MASK]
                    if action is not None and (
                        best is None or action == ALLOW and best.action != ALLOW
                    ):
                        best = Match(_PATTERN, 0, action, ref)
        return best

    # ------------------------------------------------------------------ decide

    def decide(self, req: Request) -> Decision:
        """Decide one request. Never raises."""
        try:
            return self._decide(req)
        except Exception as exc:  # fail closed: a bug must not open the filter
            log.exception("filter error deciding %r", req)
            return self.error_decision(req, exc)

    def error_decision(self, req: Request, exc: BaseException) -> Decision:
        """The decision for a request the filter could not decide (``on_error``, block by default)."""
        action = ALLOW if self.config.on_error == "allow" else BLOCK
        try:
            group = self.group_for(req.client, req.user, req.member_of)
            gname, pname = group.name, group.policy
        except Exception:
            gname = pname = "unknown"
        return Decision(
            action,
            "filter_error",
            gname,
            pname,
            "engine",
            f"filter error ({type(exc).__name__}): the request was {'allowed (on_error: allow)' if action == ALLOW else 'blocked to stay safe'}",
            f"{req.scheme}://{req.host}{req.path}",
        )

    def _decide(self, req: Request) -> Decision:
        group = self.group_for(req.client, req.user, req.member_of)
        view = self._view(group.policy)
        policy = view.policy
        try:
            host = canonical_host(req.host)
            path = canonical_path(req.path or "/")
            others = [canonical_host(o) for o in (req.sni, req.host_header) if o]
        except Malformed as exc:
            return Decision(
                BLOCK, "malformed", group.name, policy.name, "engine", f"malformed request: {exc}",
                f"{req.scheme}://{req.host}{req.path}",
            )  # fmt: skip
        if host.startswith("[::ffff:"):
            host = _unmap_ipv4(
                host
            )  # [::ffff:1.2.3.4] is 1.2.3.4: rules and ip_literals see one form
        scheme = req.scheme.lower() if req.scheme else "http"
        port = req.port if req.port and req.port != _DEFAULT_PORTS.get(scheme) else None
        url = f"{scheme}://{host}{':' + str(port) if port else ''}{path}"

        decision = self._classify(group, view, host, path, url)
        if decision.blocked and self.exceptions:
            decision = self._class_exception(decision, group, host)
        if not decision.blocked and wrapped.might_wrap(host, path):
            decision = self._unwrap(group, view, decision, host, path)
        for other in others:
            if other == host or decision.blocked:
                continue
            # The TLS name or Host header differs from the host connected to: the stricter
            # verdict applies, and a different registered domain is domain fronting.
            other_decision = self._classify(group, view, other, path, f"{scheme}://{other}{path}")
            if other_decision.blocked:
                return replace(other_decision, bypass="sni_mismatch")
            if registered_domain(other) != registered_domain(host):
                return Decision(
                    BLOCK, "sni_mismatch", group.name, policy.name, "engine",
                    f"the server name {other!r} does not match the requested host {host!r} (domain fronting)",
                    url, "sni_mismatch",
                )  # fmt: skip
        return decision

    def _class_exception(self, d: Decision, group: Group, host: str) -> Decision:
        """A teacher's exception for this group and domain lifts a category block (never override: never)."""
        info = self.rules.categories.get(d.category or "")
        if info is None or info.override_never:
            return d
        e = class_exceptions.matching(self.exceptions, group.name, host, self.clock())
        if e is None:
            return d
        source = (
            f"{self.config.class_exceptions.name}:{e.line}"
            if self.config.class_exceptions
            else "exceptions"
        )
        return replace(
            d,
            action=ALLOW,
            rule=source,
            reason=f"class exception by {e.by}: {e.reason or 'no reason given'}",
        )

    def _unwrap(
        self, group: Group, view: _PolicyView, outer: Decision, host: str, path: str
    ) -> Decision:
        """Decide the URLs wrapped in an allowed one (translators, caches, redirectors): a blocked
        inner URL blocks the outer request."""
        for raw in wrapped.inner_urls(host, path):
            try:
                inner = canonical_url(raw)
            except Malformed:
                continue
            if inner.host == host and inner.path == path:
                continue
            d = self._classify(group, view, inner.host, inner.path, str(inner))
            if d.blocked and d.category is not None:
                return replace(
                    d,
                    url=outer.url,
                    reason=f"wraps {shorten(str(inner))}: {d.reason}",
                    bypass="wrapped_url",
                )
        return outer

    def _classify(
        self, group: Group, view: _PolicyView, host: str, path: str, url: str
    ) -> Decision:
        policy = view.policy
        ip = is_ip_literal(host)
        match = self._best(view, host, path.lower(), host + path, ip)
        rules = self.rules
        if match is not None:
            category = rules.category_of(match.ref)
            info = rules.categories[category]
            what = f"{info.description} ({category})" if info.description else category
            verb = "blocked" if match.action == BLOCK else "allowed"
            return Decision(
                match.action, category, group.name, policy.name, rules.source(match.ref),
                f"{what}: {verb} for group {group.name}", url,
            )  # fmt: skip
        if ip and policy.ip_literals == BLOCK:
            return Decision(
                BLOCK, "ip_literal", group.name, policy.name, f"{policy.source} (ip_literals: block)",
                f"sites addressed by IP number are blocked for group {group.name}", url,
            )  # fmt: skip
        if policy.default == BLOCK:
            return Decision(
                BLOCK, None, group.name, policy.name, f"{policy.source} (default: block)",
                "this site is not on the approved list", url,
            )  # fmt: skip
        return Decision(
            ALLOW, None, group.name, policy.name, f"{policy.source} (default: allow)",
            "no rule matched; the policy allows by default", url,
        )  # fmt: skip

    # ------------------------------------------------------------------ helpers for the proxy

    def has_url_rules(self, host: str) -> bool:
        """True when some URL-prefix entry applies under ``host``: a host-only verdict is not final."""
        if not self._url_hosts:
            return False
        s = host
        while True:
            if s in self._url_hosts:
                return True
            dot = s.find(".")
            if dot < 0:
                return False
            s = s[dot + 1 :]


def shorten(url: str, limit: int = 100) -> str:
    return url if len(url) <= limit else url[: limit - 1] + "…"


def _unmap_ipv4(host: str) -> str:
    try:
        mapped = ipaddress.IPv6Address(host[1:-1]).ipv4_mapped
    except ValueError:
        return host
    return str(mapped) if mapped else host


def _path_has_prefix(path: str, prefix: str) -> bool:
    """Prefix match at a path boundary: '/casino' matches '/casino/x' but not '/casinos'."""
    if not path.startswith(prefix):
        return False
    if len(path) == len(prefix) or prefix.endswith("/"):
        return True
    nxt = path[len(prefix)]
    if "?" in prefix:
        return nxt == "&"
    return nxt in "/?;."


__all__ = ["Engine", "Match"]
