"""SafeSearch and YouTube restrictions: which hosts, and how each engine is forced.

Two mechanisms, chosen per connection by the proxy:

- *rewrite* (the request is visible: plain HTTP or decrypted HTTPS): force the
  engine's own parameter (``safe=active``, ``adlt=strict``, ``kp=1``) or header
  (``YouTube-Restrict``), replacing whatever the client asked for;
- *route* (the tunnel is not decrypted): open the upstream connection to the
  engine's SafeSearch address (``forcesafesearch.google.com`` ...), which
  serves valid certificates for the original names. The client's TLS session
  stays end-to-end; this is what districts do with DNS CNAMEs, done per group.

The host table is AdGuard Home's SafeSearch rule set (GPL v3), shipped as
``rules/safesearch/hosts.tsv``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

STRICT, MODERATE, OFF = "strict", "moderate", "off"

# Engines whose requests we can rewrite when decrypted; the rest are only routed.
_PARAM = {
    "google": {STRICT: ("safe", "active"), MODERATE: ("safe", "active")},
    "bing": {STRICT: ("adlt", "strict"), MODERATE: ("adlt", "moderate")},
    "duckduckgo": {STRICT: ("kp", "1"), MODERATE: ("kp", "-1")},
}
_YOUTUBE_HEADER = {STRICT: "Strict", MODERATE: "Moderate"}
_YOUTUBE_ROUTE = {STRICT: "restrict.youtube.com", MODERATE: "restrictmoderate.youtube.com"}

YOUTUBE_HOSTS = (
    "www.youtube.com",
    "m.youtube.com",
    "youtubei.googleapis.com",
    "youtube.googleapis.com",
    "www.youtube-nocookie.com",
)


@dataclass(frozen=True, slots=True)
class Target:
    engine: str
    route: str  # SafeSearch address (a name or an IPv4 address)

    @property
    def rewritable(self) -> bool:
        """True when a decrypted request can be forced without routing."""
        return self.engine in _PARAM or self.engine == "youtube"


@dataclass(frozen=True, slots=True)
class Rewrite:
    """What to change on a visible request."""

    query: dict[str, str]  # parameters to force
    headers: dict[str, str]  # headers to set
    cookie: tuple[str, str, str] | None = (
        None  # (cookie name, key, value) inside the cookie, e.g. Bing's SRCHHPGUSR ADLT
    )


class SafeSearch:
    """The SafeSearch host table; immutable once loaded."""

    def __init__(self, hosts: Mapping[str, Target]):
        self.hosts = dict(hosts)

    @classmethod
    def load(cls, path: Path) -> SafeSearch:
        """Load the TSV (``host, record_type, target, engine``); YouTube hosts are always included."""
        hosts: dict[str, Target] = {}
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                for row in csv.DictReader(fh, delimiter="\t"):
                    host = (row.get("host") or "").strip().lower()
                    if host and row.get("engine") and row.get("target"):
                        hosts[host] = Target(row["engine"].strip(), row["target"].strip().lower())
        for host in YOUTUBE_HOSTS:
            hosts[host] = Target("youtube", "restrictmoderate.youtube.com")
        return cls(hosts)

    def target(self, host: str) -> Target | None:
        return self.hosts.get(host)

    def route_for(self, target: Target, mode: str) -> str | None:
        """The address to connect to instead of the original host (None: do not route)."""
        if mode == OFF:
            return None
        if target.engine == "youtube":
            return _YOUTUBE_ROUTE[mode]
        return target.route

    def rewrite_for(
        self, target: Target, mode: str, path: str, query: Mapping[str, str]
    ) -> Rewrite | None:
        """The forced parameters/headers for a visible request, or None when nothing applies."""
        if mode == OFF:
            return None
        if target.engine == "youtube":
            return Rewrite({}, {"YouTube-Restrict": _YOUTUBE_HEADER[mode]})
        param = _PARAM.get(target.engine)
        if param is None or not _is_search(target.engine, path, query):
            return None
        key, value = param[mode]
        cookie = ("SRCHHPGUSR", "ADLT", value.upper()) if target.engine == "bing" else None
        return Rewrite({key: value}, {}, cookie)


def _is_search(engine: str, path: str, query: Mapping[str, str]) -> bool:
    """Only search URLs are touched: maps, mail, docs, sign-in pages on the same hosts stay as they are."""
    p = path.split("?", 1)[0]
    if engine == "google":
        return p.startswith(("/search", "/images", "/imgres", "/webhp", "/complete/search")) or (
            p == "/" and "q" in query
        )
    if engine == "bing":
        return p.startswith(
            ("/search", "/images/search", "/videos/search", "/news/search", "/AS/Suggestions")
        )
    if engine == "duckduckgo":
        return "q" in query
    return False


def force_query(path: str, params: Mapping[str, str]) -> str:
    """``path?query`` with ``params`` set, replacing any values the client gave (all occurrences)."""
    base, _, query = path.partition("?")
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in params]
    pairs.extend(params.items())
    return f"{base}?{urlencode(pairs)}"


def force_cookie(header: str, name: str, key: str, value: str) -> str:
    """Set ``key=value`` inside the ``&``-separated cookie ``name`` (Bing's SRCHHPGUSR), adding it if absent."""
    parts = [c.strip() for c in header.split(";") if c.strip()] if header else []
    out, seen = [], False
    for part in parts:
        cname, eq, cval = part.partition("=")
        if cname == name:
            seen = True
            fields = [f for f in cval.split("&") if f and not f.startswith(key + "=")]
            fields.append(f"{key}={value}")
            part = f"{cname}={'&'.join(fields)}"
        out.append(part)
    if not seen:
        out.append(f"{name}={key}={value}")
    return "; ".join(out)
