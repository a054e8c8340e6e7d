"""Decide every request at every layer: CONNECT, TLS ClientHello, HTTP request.

mitmproxy logs an addon's exception and lets the flow through (fail open), so
every deciding hook here catches its own errors and blocks instead. The
decisions themselves come from ``proxy.engine``; this module only translates
flows into ``Request`` facts and ``Decision`` s into responses.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from mitmproxy import connection, ctx, http, tcp, tls
from mitmproxy.proxy import mode_specs, server_hooks

from proxy import blockpage
from proxy.canonical import Malformed, canonical_host, is_ip_literal, split_host_port
from proxy.engine import Engine
from proxy.model import BLOCK, Decision, Request
from proxy.resolve import Resolver
from proxy.safesearch import Target, force_cookie, force_query

from .override import Override, override_link
from .record import Recorder, flow_client
from .runtime import Runtime, new_request_id

log = logging.getLogger("cipa.filter")


@dataclass(slots=True)
class Tunnel:
    """What the CONNECT taught us about one client connection."""

    host: str
    port: int
    decision: Decision
    intercept: bool
    request_id: str
    started: float
    user: str | None = None
    member_of: frozenset[str] = frozenset()
    client: str = ""
    kill: bool = False
    route: str | None = None  # SafeSearch address to connect to instead of the host
    tls_seen: bool = False  # a ClientHello came through (else the tunnel carries something else)
    safesearch: str | None = None  # the engine whose SafeSearch is enforced by routing
    connect: str | None = None  # transparent: the name connected to, not the client's address


def _client_ip(conn: connection.Client) -> str:
    return conn.peername[0] if conn.peername else ""


def _transparent(conn: connection.Client) -> bool:
    """Redirected to us by the gateway (no CONNECT): mitmproxy's ``transparent`` listener."""
    return isinstance(conn.proxy_mode, mode_specs.TransparentMode)


def _name(host: str | None) -> str | None:
    """The canonical host name to connect to, or None for an address or an unparseable host."""
    try:
        h = canonical_host(host) if host else None
    except Malformed:
        return None
    return h if h and not is_ip_literal(h) else None


def _user(flow: http.HTTPFlow) -> str | None:
    return flow.metadata.get("cipa_user")


def _member_of(flow: http.HTTPFlow) -> frozenset[str]:
    return flow.metadata.get("cipa_member_of") or frozenset()


def _header_host(value: str | None) -> str | None:
    """The host named by a Host header (port and userinfo dropped); unparseable values pass through
    unchanged so that the engine blocks them as malformed."""
    if not value:
        return None
    try:
        return split_host_port(value)[0]
    except Malformed:
        return value


def _special(
    category: str, reason: str, group: str = "", policy: str = "", url: str = ""
) -> Decision:
    return Decision(BLOCK, category, group, policy, "engine", reason, url)


class Filter:
    def __init__(self, rt: Runtime, recorder: Recorder, override: Override):
        self.rt = rt
        self.rec = recorder
        self.override = override
        self.tunnels: dict[str, Tunnel] = {}
        self._resolver: tuple[object, Resolver] | None = None

    # ------------------------------------------------------------------ helpers

    def _decide(self, engine: Engine, req: Request) -> Decision:
        if self.rt.fault_host is not None and req.host == self.rt.fault_host:
            raise RuntimeError("injected fault (CIPA_INJECT_FAULT)")
        start = time.perf_counter()
        d = engine.decide(req)
        self.rt.metrics.decision_seconds.observe(time.perf_counter() - start)
        return d

    def _may_intercept(self, d: Decision) -> bool:
        tls_cfg = self.rt.config.tls
        return tls_cfg.inspect != "none" and (
            d.category is None or d.category not in tls_cfg.never_inspect
        )

    def _wants_intercept(self, engine: Engine, host: str, d: Decision) -> bool:
        """Selective inspection: decrypt only what needs it (the rest passes through untouched)."""
        tls_cfg = self.rt.config.tls
        if not self._may_intercept(d):
            return False
        if d.blocked or tls_cfg.inspect == "all":
            return True
        try:
            h = canonical_host(host)
        except Malformed:
            return True
        if engine.has_url_rules(h):
            return True
        return any(h == dom or h.endswith("." + dom) for dom in tls_cfg.inspect_domains)

    def _safesearch(self, engine: Engine, host: str, d: Decision) -> tuple[Target, str] | None:
        """The SafeSearch target for this host and the group's mode, when enforcement applies."""
        policy = self.rt.config.policies.get(d.policy)
        if policy is None or policy.safesearch == "off" or d.blocked:
            return None
        try:
            target = engine.safesearch.target(canonical_host(host))
        except Malformed:
            return None
        return (target, policy.safesearch) if target is not None else None

    def _plan(self, engine: Engine, t: Tunnel) -> None:
        """How to carry a tunnel: decrypt it, pass it through, or route it to a SafeSearch address."""
        t.intercept = self._wants_intercept(engine, t.host, t.decision)
        ss = self._safesearch(engine, t.host, t.decision)
        if ss is None:
            return
        target, mode = ss
        if target.rewritable and self._may_intercept(t.decision):
            t.intercept = True  # parameters/headers can be forced on the decrypted requests
        if not t.intercept or not target.rewritable:
            t.route = engine.safesearch.route_for(target, mode)
            t.safesearch = target.engine

    def _resolver_now(self) -> Resolver:
        cfg = self.rt.config.safesearch
        if self._resolver is None or self._resolver[0] is not cfg:
            self._resolver = (cfg, Resolver(dict(cfg.addresses), cfg.cache_seconds))
        return self._resolver[1]

    def _enforce_safesearch(self, engine: Engine, flow: http.HTTPFlow, d: Decision) -> None:
        """Force the engine's SafeSearch parameter or header on a visible request."""
        ss = self._safesearch(engine, flow.request.host, d)
        if ss is None:
            return
        target, mode = ss
        r = flow.request
        rw = engine.safesearch.rewrite_for(target, mode, r.path, r.query)
        if rw is None:
            return
        if rw.query:
            r.path = force_query(r.path, rw.query)
        for name, value in rw.headers.items():
            r.headers[name] = value
        if rw.cookie:
            r.headers["cookie"] = force_cookie(r.headers.get("cookie", ""), *rw.cookie)
        flow.metadata["cipa_safesearch"] = target.engine
        self.rt.metrics.counter("safesearch", engine=target.engine, mode="rewrite").inc()

    def _refuse_connect(
        self, flow: http.HTTPFlow, d: Decision, status: int, rid: str, kind: str | None = None
    ) -> None:
        body = f"Blocked by the school's Internet filter: {d.reason}\nRequest ID: {rid}\n".encode()
        flow.response = http.Response.make(
            status,
            body,
            {
                "Content-Type": "text/plain; charset=utf-8",
                "X-Cipa-Request-Id": rid,
                "Cache-Control": "no-store",
            },
        )
        self.rt.metrics.counter("tls", mode="refused").inc()
        if kind:
            self.rt.metrics.counter("bypass", kind=kind).inc()
        self.rec.connect(flow, d, rid, status, tls_mode="refused")

    # ------------------------------------------------------------------ CONNECT

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # already answered (407 from addons.who)
        rid = new_request_id()
        try:
            engine = self.rt.engine
            client = flow_client(flow)
            host, port = flow.request.host, flow.request.port
            if engine is None:
                return self._refuse_connect(
                    flow, _special("not_ready", "the filter is starting"), 503, rid
                )
            req = Request(
                host=host,
                path="/",
                scheme="https",
                port=port,
                method="CONNECT",
                client=client,
                user=_user(flow),
                member_of=_member_of(flow),
            )
            if port not in self.rt.config.tls.connect_ports:
                g = engine.group_for(client, req.user, req.member_of)
                d = _special(
                    "port",
                    f"CONNECT to port {port} is not allowed",
                    g.name,
                    g.policy,
                    f"{host}:{port}",
                )
                return self._refuse_connect(flow, d, 403, rid, kind="connect_port")
            d = self._decide(engine, req)
            if d.category == "malformed":
                return self._refuse_connect(flow, d, 400, rid, kind="malformed")
            d, grant = self.override.lift(d, host, req.user, client)
            t = Tunnel(host, port, d, False, rid, time.time(), req.user, req.member_of, client)
            self._plan(engine, t)
            if d.blocked and not t.intercept:
                return self._refuse_connect(flow, d, 403, rid)
            self.tunnels[flow.client_conn.id] = t
        except Exception:
            log.exception("filter error in http_connect (request %s); refusing the tunnel", rid)
            self.rt.metrics.filter_errors.inc()
            self._refuse_connect(flow, _special("filter_error", "filter error"), 403, rid)

    # ------------------------------------------------------------------ TLS

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        try:
            engine = self.rt.engine
            sni = data.client_hello.sni
            t = self.tunnels.get(client.id)
            if engine is None:
                raise RuntimeError("rules not loaded")
            if t is None:
                t = self._transparent_tls(engine, client, data.context.server.address, sni)
            elif sni and sni != t.host:
                req = Request(
                    host=t.host, path="/", scheme="https", port=t.port, client=t.client or _client_ip(client),
                    user=t.user, member_of=t.member_of, sni=sni,
                )  # fmt: skip
                d = self._decide(engine, req)
                if d.blocked:
                    if d.bypass:
                        self.rt.metrics.counter("bypass", kind=d.bypass).inc()
                    t.decision = d
                    t.intercept = self._may_intercept(d)
                    t.route = t.safesearch = None
            if t.decision.blocked and not t.intercept:
                t.kill = True  # no decryption allowed: cut the tunnel at server_connect
            t.tls_seen = True
            data.ignore_connection = not t.intercept
            mode = "intercepted" if t.intercept else ("refused" if t.kill else "passthrough")
            self.rt.metrics.counter("tls", mode=mode).inc()
            if not t.intercept:
                self.rec.tunnel(client, t, sni, mode)
        except Exception:
            log.exception("filter error in tls_clienthello; closing the connection")
            self.rt.metrics.filter_errors.inc()
            t = self.tunnels.get(client.id)
            if t is not None:
                t.kill = True
            else:
                self.tunnels[client.id] = Tunnel(
                    "",
                    0,
                    _special("filter_error", "filter error"),
                    False,
                    new_request_id(),
                    time.time(),
                    kill=True,
                )
            data.ignore_connection = True

    # ------------------------------------------------------------------ transparent (gateway)

    def _transparent_tls(
        self, engine: Engine, client: connection.Client, server: tuple | None, sni: str | None
    ) -> Tunnel:
        """A redirected TLS connection: decided on the SNI, or, without one, on the destination
        address alone, i.e. as a site addressed by IP number (``ip_literals``; block for students)."""
        ip, port = (server[0], server[1]) if server else ("", 443)
        req = Request(
            host=sni or ip, path="/", scheme="https", port=port, client=_client_ip(client)
        )
        d = self._decide(engine, req)
        t = Tunnel(req.host, port, d, False, new_request_id(), time.time(), client=req.client)
        if sni:
            self._plan(engine, t)
            t.connect = _name(sni)
        else:  # nothing to show a block page for (no name for a certificate): pass or cut
            t.decision = replace(d, reason=f"no server name (SNI) in the TLS handshake: {d.reason}")
            if d.blocked:
                self.rt.metrics.counter("bypass", kind="no_sni").inc()
        self.tunnels[client.id] = t
        return t

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """Bytes that are neither TLS nor HTTP. In a CONNECT tunnel: a raw tunnel (SSH, a VPN on
        443), see ``_raw_tunnel``. On a redirected connection: only the destination address is
        known, so it is decided as a site addressed by IP number."""
        client = flow.client_conn
        known = self.tunnels.get(client.id)
        if known is not None:
            if not known.tls_seen and not _transparent(client):
                self._raw_tunnel(flow, known)
            return  # a CONNECT or a ClientHello already decided this connection
        if not _transparent(client):
            return
        rid = new_request_id()
        try:
            engine = self.rt.engine
            if engine is None:
                raise RuntimeError("rules not loaded")
            ip, port = flow.server_conn.address[:2] if flow.server_conn.address else ("", 0)
            req = Request(host=ip, path="/", port=port, client=_client_ip(client))
            d = self._decide(engine, req)
            d = replace(d, reason=f"neither HTTP nor TLS on port {port}: {d.reason}")
            t = Tunnel(ip, port, d, False, rid, time.time(), client=req.client, kill=d.blocked)
            if d.blocked:
                self.rt.metrics.counter("bypass", kind="not_http_tls").inc()
        except Exception:
            log.exception("filter error in tcp_start (request %s); closing the connection", rid)
            self.rt.metrics.filter_errors.inc()
            d = _special("filter_error", "filter error")
            t = Tunnel("", 0, d, False, rid, time.time(), kill=True)
        self.tunnels[client.id] = t
        self.rec.tunnel(client, t, None, "refused" if t.kill else "passthrough")

    def _raw_tunnel(self, flow: tcp.TCPFlow, t: Tunnel) -> None:
        """A CONNECT tunnel whose first bytes are neither TLS nor HTTP (SSH, OpenVPN, a raw
        protocol on 443): blocked unless the group's policy says ``raw_tunnels: allow``."""
        try:
            policy = self.rt.config.policies.get(t.decision.policy)
            if policy is not None and policy.raw_tunnels == "allow" and not t.decision.blocked:
                return
            t.decision = replace(
                t.decision, action=BLOCK, category="raw_tunnel",
                reason=f"the tunnel to {t.host}:{t.port} carries neither TLS nor HTTP", bypass="raw_tunnel",
            )  # fmt: skip
        except Exception:
            log.exception("filter error deciding a raw tunnel; closing it")
            self.rt.metrics.filter_errors.inc()
        t.kill = True
        flow.kill()
        self.rt.metrics.counter("bypass", kind="raw_tunnel").inc()
        self.rec.tunnel(flow.client_conn, t, None, "refused")

    def client_connected(self, client: connection.Client) -> None:
        """Refuse a connection made straight to the transparent port (not redirected): its
        "original destination" would be this listener itself, a loop."""
        if not _transparent(client) or not client.sockname:
            return
        try:
            ps = ctx.master.addons.get("proxyserver")
            own = {
                addr[1]
                for server in ps.servers
                if isinstance(server.mode, mode_specs.TransparentMode)
                for addr in server.listen_addrs
            }
        except Exception:
            log.exception("cannot list the transparent listeners; refusing %s", client.peername)
            own = {client.sockname[1]}
        if client.sockname[1] in own:
            log.warning(
                "refused %s: connected to the transparent port directly (not redirected)",
                _client_ip(client),
            )
            client.error = "connect through the gateway, not to the transparent port"

    def server_connect(self, data: server_hooks.ServerConnectionHookData):  # type: ignore[no-untyped-def]
        """Cut blocked tunnels; route SafeSearch ones (a coroutine only then: name resolution)."""
        t = self.tunnels.get(data.client.id)
        if t is None:
            return None
        if t.kill:
            data.server.error = "blocked by cipa-proxy"
        elif t.route:
            return self._route(data, t)
        elif t.connect and data.server.address:
            data.server.address = (t.connect, data.server.address[1])
        return None

    async def _route(self, data: server_hooks.ServerConnectionHookData, t: Tunnel) -> None:
        try:
            port = data.server.address[1] if data.server.address else 443
            data.server.address = await self._resolver_now().resolve(t.route, port)
            self.rt.metrics.counter("safesearch", engine=t.safesearch, mode="route").inc()
        except Exception as exc:  # fail closed: never fall back to the unrestricted address
            log.error("cannot route %s to SafeSearch address %s: %s", t.host, t.route, exc)
            data.server.error = f"SafeSearch address {t.route} unavailable"

    def client_disconnected(self, client: connection.Client) -> None:
        self.tunnels.pop(client.id, None)

    # ------------------------------------------------------------------ HTTP

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        rid = new_request_id()
        flow.metadata["cipa_id"] = rid
        try:
            engine = self.rt.engine
            if engine is None:
                return self._block(flow, _special("not_ready", "the filter is starting"), rid, 503)
            audit = self.rt.audit
            if audit is not None and audit.blocks_new_requests:
                return self._block(
                    flow, _special("audit_unavailable", "the audit log cannot be written"), rid, 503
                )
            r = flow.request
            host_header = _header_host(r.host_header)
            host = r.host
            transparent = _transparent(flow.client_conn)
            if transparent:
                # r.host is the address the client connected to; the site is the name it asked
                # for: the SNI (what the tunnel was decided on), else the Host header.
                host = flow.client_conn.sni or host_header or r.host
            flow.metadata["cipa_host"] = (
                host_header or host
            )  # for the record: the name the client used
            req = Request(
                host=host,
                path=r.path,
                scheme=r.scheme,
                port=r.port,
                method=r.method,
                client=flow_client(flow),
                user=_user(flow),
                member_of=_member_of(flow),
                sni=flow.client_conn.sni,
                host_header=host_header if host_header and host_header != host.lower() else None,
            )
            d = self._decide(engine, req)
            d, grant = self.override.lift(d, host, req.user, req.client)
            if grant is not None:
                flow.metadata["cipa_override"] = grant.id
            flow.metadata["cipa_decision"] = d
            if not d.blocked and transparent and (name := _name(host)):
                # Connect to the name (resolved by the proxy), never to the address the client
                # picked: an allowed Host/SNI must not reach another server. `data.host`: the
                # Host header stays as the client sent it.
                r.data.host = name
            if not d.blocked:
                self._enforce_safesearch(engine, flow, d)
            else:
                if d.bypass:
                    kind = (
                        "host_mismatch"
                        if d.bypass == "sni_mismatch" and not flow.client_conn.sni
                        else d.bypass
                    )
                    self.rt.metrics.counter("bypass", kind=kind).inc()
                self._block(flow, d, rid, 400 if d.category == "malformed" else 403)
        except Exception:
            log.exception("filter error in request %s; blocking", rid)
            self.rt.metrics.filter_errors.inc()
            self._block(
                flow,
                _special("filter_error", "filter error (the request was blocked to stay safe)"),
                rid,
                403,
            )

    def _override_url(self, d: Decision, rid: str) -> str:
        """The staff-override link, shown where an adult could lift this block."""
        engine = self.rt.engine
        if engine is None or d.category is None or self.rt.config.auth.backend == "none":
            return ""
        info = engine.rules.categories.get(d.category)
        if info is None or info.override_never:
            return ""
        if not any(p.override for p in self.rt.config.policies.values()):
            return ""
        return override_link(d.url, rid)

    def _block(self, flow: http.HTTPFlow, d: Decision, rid: str, status: int) -> None:
        flow.metadata["cipa_decision"] = d
        try:
            cfg = self.rt.config
            r = flow.request
            status, headers, body = blockpage.render(
                d,
                r.pretty_host,
                rid,
                accept=r.headers.get("accept", ""),
                dest=r.headers.get("sec-fetch-dest", ""),
                district=cfg.district.name,
                contact=cfg.district.contact,
                status=status,
                accept_language=r.headers.get("accept-language", ""),
                review_email=cfg.district.review_email,
                logo=cfg.district.logo,
                override_url=self._override_url(d, rid),
            )
        except Exception:
            log.exception("cannot render the block page for %s", rid)
            headers, body = (
                {"Content-Type": "text/plain", "Cache-Control": "no-store"},
                b"Blocked.\n",
            )
        flow.response = http.Response.make(status, body, headers)
