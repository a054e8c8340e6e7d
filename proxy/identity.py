"""Who is asking: proxy Basic authentication against htpasswd or LDAP / Active Directory.

Verifying a password is slow on purpose (bcrypt, an LDAP bind), so results
are cached for ``cache_seconds`` keyed by a salted hash of the credentials,
and the proxy calls ``Authenticator.check`` in a worker thread, never on the
event loop. Passwords are never stored, logged or returned: only the user
name and the cipa-proxy groups the directory maps them to leave this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("cipa.identity")


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    groups: frozenset[str] = frozenset()  # cipa-proxy group names from directory membership


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from a ``Basic`` Proxy-Authorization value; None when absent or garbled.

    Only the first ``:`` separates user from password: passwords may contain colons.
    """
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = raw.partition(":")
    return (user, password) if sep and user else None


class Htpasswd:
    """An Apache htpasswd file: bcrypt (``$2y$``/``$2b$``) and ``{SHA}`` entries. Re-read when it changes."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, str] = {}
        self._lock = threading.Lock()

    def _load(self) -> dict[str, str]:
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                users = {}
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    line = line.strip()
                    if line and not line.startswith("#") and ":" in line:
                        name, hashed = line.split(":", 1)
                        users[name] = hashed
                self._users, self._stamp = users, stamp
            return self._users

    def verify(self, user: str, password: str) -> Identity | None:
        hashed = self._load().get(user)
        if hashed is None:
            return None
        if hashed.startswith(("$2y$", "$2b$", "$2a$")):
            import bcrypt

            ok = bcrypt.checkpw(password.encode(), ("$2b$" + hashed[4:]).encode())
        elif hashed.startswith("{SHA}"):
            digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
            ok = hmac.compare_digest(digest, hashed[5:])
        else:
            log.warning(
                "htpasswd %s: unsupported hash for user %r (use bcrypt: htpasswd -B)",
                self.path,
                user,
            )
            ok = False
        return Identity(user) if ok else None


@dataclass(frozen=True)
class LdapSettings:
    url: str
    user_dn: str  # "uid={user},ou=people,dc=example,dc=org" or "{user}@district.org" (AD UPN)
    base_dn: str = ""  # where to find the user's entry for memberOf
    user_filter: str = "(|(uid={user})(sAMAccountName={user}))"
    groups: tuple[
        tuple[str, str], ...
    ] = ()  # (directory group DN, cipa-proxy group), compared case-insensitively
    timeout: float = 5.0


class Ldap:
    """Bind as the user (their password is checked by the directory), then read ``memberOf``."""

    def __init__(self, settings: LdapSettings):
        self.s = settings

    def verify(self, user: str, password: str) -> Identity | None:
        import ldap3
        from ldap3.utils.conv import escape_filter_chars
        from ldap3.utils.dn import escape_rdn

        if not password:  # an empty password is an anonymous bind: never a login
            return None
        dn = self.s.user_dn.format(user=escape_rdn(user))
        timeout = max(
            1, math.ceil(self.s.timeout)
        )  # ldap3 wants whole seconds (a float breaks its socket setup)
        server = ldap3.Server(self.s.url, connect_timeout=timeout)
        conn = ldap3.Connection(
            server, user=dn, password=password, receive_timeout=timeout, check_names=False
        )
        try:
            if not conn.bind():
                return None
            groups: set[str] = set()
            if self.s.base_dn:
                conn.search(
                    self.s.base_dn,
                    self.s.user_filter.format(user=escape_filter_chars(user)),
                    attributes=["memberOf"],
                    size_limit=1,
                )
                wanted = {dn.lower(): name for dn, name in self.s.groups}
                for entry in conn.entries:
                    for member_of in entry.entry_attributes_as_dict.get("memberOf", []):
                        name = wanted.get(str(member_of).lower())
                        if name:
                            groups.add(name)
            return Identity(user, frozenset(groups))
        finally:
            conn.unbind()


@dataclass
class Authenticator:
    """A backend plus a short cache, so one login does not cost a bcrypt check or a bind per request."""

    verify: Callable[[str, str], Identity | None]
    cache_seconds: float = 300.0
    failure_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _salt: bytes = field(default_factory=lambda: os.urandom(16))
    _cache: dict[bytes, tuple[Identity | None, float]] = field(default_factory=dict)

    def _key(self, user: str, password: str) -> bytes:
        return hashlib.sha256(self._salt + user.encode() + b"\0" + password.encode()).digest()

    def cached(self, user: str, password: str) -> tuple[bool, Identity | None]:
        """(hit, identity) without touching the backend."""
        hit = self._cache.get(self._key(user, password))
        if hit is not None and hit[1] > self.clock():
            return True, hit[0]
        return False, None

    def check(self, user: str, password: str) -> Identity | None:
        """Verify (slow: call it off the event loop) and cache the answer; backend errors deny."""
        hit, identity = self.cached(user, password)
        if hit:
            return identity
        try:
            identity = self.verify(user, password)
        except Exception as exc:  # directory down, bad file: nobody gets in on an error
            log.error("authentication backend error for %r: %s", user, type(exc).__name__)
            identity = None
        ttl = self.cache_seconds if identity is not None else self.failure_seconds
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[self._key(user, password)] = (identity, self.clock() + ttl)
        return identity


def make_authenticator(
    backend: str, htpasswd: Path | None, ldap: LdapSettings | None, cache_seconds: float
) -> Authenticator | None:
    if backend == "htpasswd" and htpasswd is not None:
        return Authenticator(Htpasswd(htpasswd).verify, cache_seconds)
    if backend == "ldap" and ldap is not None:
        return Authenticator(Ldap(ldap).verify, cache_seconds)
    return None


def group_names(mapping: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in mapping.items()))
