"""Who is asking: the real client address and the signed-in user, for every flow.

Runs before the filter. It reads ``X-Forwarded-For`` only from
``trusted_proxies`` (anyone else could forge it), and checks proxy Basic
credentials against htpasswd or LDAP. Verification runs in a worker thread
(bcrypt and LDAP binds are slow) behind a cache; the answer is remembered
per client connection so requests inside a decrypted tunnel inherit the
identity of their CONNECT. The Proxy-Authorization header is always removed
before anything goes upstream, and the password is never stored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from mitmproxy import connection, http

from proxy.config import Config, in_networks
from proxy.identity import Identity, parse_basic
from proxy.model import BLOCK, Decision

from .record import Recorder
from .runtime import Runtime, new_request_id

log = logging.getLogger("cipa.who")


def real_client(peer: str, xff: str | None, trusted: tuple) -> str:
    """The client address: the right-most X-Forwarded-For hop not itself a trusted proxy."""
    if not xff or not trusted or not in_networks(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in xff.split(",") if h.strip()]):
        if not in_networks(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the header: trust nothing from it
    return peer


class Who:
    def __init__(self, rt: Runtime, recorder: Recorder):
        self.rt = rt
        self.rec = recorder
        self.by_conn: dict[str, tuple[str, Identity | None]] = {}

    def client_disconnected(self, client: connection.Client) -> None:
        self.by_conn.pop(client.id, None)

    # Hooks return a coroutine only when a password must really be checked (a cache miss):
    # every other request stays synchronous, which mitmproxy dispatches more cheaply.

    def http_connect(self, flow: http.HTTPFlow):  # type: ignore[no-untyped-def]
        return self._identify(flow)

    def requestheaders(self, flow: http.HTTPFlow):  # type: ignore[no-untyped-def]
        known = self.by_conn.get(flow.client_conn.id)
        if (
            known is not None
            and flow.request.scheme == "https"
            and flow.client_conn.tls_established
        ):
            # a request inside a decrypted tunnel: the CONNECT already said who this is
            self._mark(flow, *known)
            return None
        return self._identify(flow)

    def _mark(self, flow: http.HTTPFlow, client: str, identity: Identity | None) -> None:
        flow.metadata["cipa_client"] = client
        if identity is not None:
            flow.metadata["cipa_user"] = identity.user
            flow.metadata["cipa_member_of"] = identity.groups

    def _identify(self, flow: http.HTTPFlow):  # type: ignore[no-untyped-def]
        try:
            cfg = self.rt.config
            peer = flow.client_conn.peername[0] if flow.client_conn.peername else ""
            client = real_client(
                peer, flow.request.headers.get("x-forwarded-for"), cfg.trusted_proxies
            )
            creds = parse_basic(flow.request.headers.get("proxy-authorization"))
            flow.request.headers.pop("proxy-authorization", None)
            auth = self.rt.authenticator()
            identity = None
            if auth is not None:
                if creds is None:
                    if in_networks(client, cfg.auth.required_for):
                        return self._challenge(flow, cfg, "sign in to use the Internet")
                else:
                    hit, identity = auth.cached(*creds)
                    if not hit:
                        return self._verify(flow, client, auth, creds)
                    if identity is None:
                        return self._refused(flow, cfg)
            self._accept(flow, client, identity)
        except Exception:
            log.exception("identity check failed; refusing the request")
            self._challenge(flow, self.rt.config, "sign-in is unavailable right now")
        return None

    async def _verify(self, flow: http.HTTPFlow, client: str, auth, creds: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
        """The slow path: bcrypt or an LDAP bind, in a worker thread."""
        try:
            identity = await asyncio.to_thread(auth.check, *creds)
            if identity is None:
                return self._refused(flow, self.rt.config)
            self._accept(flow, client, identity)
        except Exception:
            log.exception("identity check failed; refusing the request")
            self._challenge(flow, self.rt.config, "sign-in is unavailable right now")

    def _accept(self, flow: http.HTTPFlow, client: str, identity: Identity | None) -> None:
        self._mark(flow, client, identity)
        self.by_conn[flow.client_conn.id] = (client, identity)

    def _refused(self, flow: http.HTTPFlow, cfg: Config) -> None:
        self.rt.metrics.auth_failures.inc()
        self._challenge(flow, cfg, "user name or password not accepted")

    def _challenge(self, flow: http.HTTPFlow, cfg: Config, why: str) -> None:
        """407, and an audit record of the refusal (without the credentials, which were never kept)."""
        realm = cfg.auth.realm.replace('"', "'")
        rid = new_request_id()
        d = Decision(BLOCK, "auth_required", "", "", "auth", why, flow.request.pretty_url)
        flow.response = http.Response.make(
            407,
            f"Proxy authentication required: {why}.\n".encode(),
            {
                "Proxy-Authenticate": f'Basic realm="{realm}", charset="UTF-8"',
                "Content-Type": "text/plain; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Cipa-Request-Id": rid,
            },
        )
        if flow.request.method == "CONNECT":
            self.rec.connect(flow, d, rid, 407, tls_mode="refused")
        else:
            flow.metadata["cipa_id"] = rid
            flow.metadata["cipa_decision"] = d
