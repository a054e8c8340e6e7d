"""Facts in, decisions out: the engine's two value types.

They are plain frozen dataclasses so that addons, the CLI and tests can build
them without knowing anything about mitmproxy.
"""

from __future__ import annotations

from dataclasses import dataclass

ALLOW = "allow"
BLOCK = "block"


@dataclass(frozen=True, slots=True)
class Request:
    """What the proxy knows about one request when it decides.

    ``host`` is raw (as the client sent it); the engine canonicalises it.
    ``path`` is the path plus query string (``/a/b?c=d``); empty means ``/``.
    ``sni`` is the TLS server name when one was seen. When the SNI or the Host
    header names another host than ``host``, the stricter verdict applies and a
    different registered domain is blocked as domain fronting.
    """

    host: str
    path: str = "/"
    scheme: str = "http"
    port: int | None = None
    method: str = "GET"
    client: str = ""
    user: str | None = None
    sni: str | None = None
    host_header: str | None = None  # the Host header when it names another host than ``host``
    member_of: frozenset[str] = (
        frozenset()
    )  # cipa-proxy groups the user's directory membership maps to


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's verdict, with enough context to explain it to a person."""

    action: str  # ALLOW or BLOCK
    category: str | None  # the category that decided, None when the policy default did
    group: str
    policy: str
    rule: str  # where the deciding rule lives: "rules/gambling.yaml:12", or "policy students: default"
    reason: str  # one human sentence
    url: str = ""  # the canonical URL that was decided
    bypass: str | None = None  # a detected bypass attempt: "sni_mismatch", "wrapped_url", ...

    @property
    def blocked(self) -> bool:
        return self.action == BLOCK
