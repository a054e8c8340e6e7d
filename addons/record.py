"""One audit record and one set of metric updates per request and per tunnel decision.

Exactly one of ``response`` and ``error`` fires per HTTP flow, so recording
there counts every request once, whether it was allowed, blocked by us or
failed upstream. Tunnel-level decisions (a refused CONNECT, a passed-through
TLS connection) are recorded by the filter through ``connect``/``tunnel``.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from typing import TYPE_CHECKING

from mitmproxy import connection, http

from proxy.model import ALLOW, Decision

from .runtime import Runtime, new_request_id

if TYPE_CHECKING:
    from .filter import Tunnel

log = logging.getLogger("cipa.record")

STREAM_ABOVE = 1 << 20  # bodies larger than this (or of unknown length) are streamed, not buffered


def flow_client(flow: http.HTTPFlow) -> str:
    """The real client address (set by addons.who from trusted X-Forwarded-For), else the peer."""
    return flow.metadata.get("cipa_client") or (
        flow.client_conn.peername[0] if flow.client_conn.peername else ""
    )


_second: list = [-1, ""]  # the formatted second last used: most records share it


def _iso(ts: float) -> str:
    sec = int(ts)
    if sec != _second[0]:
        _second[:] = [sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))]
    return f"{_second[1]}.{int(ts * 1000) % 1000:03d}Z"


class Recorder:
    def __init__(self, rt: Runtime):
        self.rt = rt

    def _write(self, rec: dict) -> None:
        audit = self.rt.audit
        if audit is None:
            return
        try:
            ok = audit.record(rec)
        except Exception:  # the writer promises not to raise; be safe anyway
            log.exception("audit write failed")
            ok = False
        if ok:
            self.rt.metrics.audit_records.inc()
        else:
            self.rt.metrics.audit_errors.inc()

    def _count(self, d: Decision | None) -> None:
        if d is None:
            return
        group = d.group or "unknown"
        self.rt.metrics.counter("requests", group=group, action=d.action).inc()
        if d.action != ALLOW:
            self.rt.metrics.counter("blocks", group=group, category=d.category or "default").inc()

    @staticmethod
    def _base(d: Decision, rid: str, client: str, ts: float) -> dict:
        return {
            "ts": _iso(ts),
            "id": rid,
            "client": client,
            "user": None,
            "group": d.group,
            "action": d.action,
            "category": d.category,
            "rule": d.rule,
        }

    # ------------------------------------------------------------------ mitmproxy hooks

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Tag every response with its request ID; stream large or unknown-length bodies.

        A streamed body reaches the client before the ``response`` hook runs, so a
        streamed request is recorded now, before its first byte is sent: a process
        killed mid-transfer never leaves an answered request without its record.
        """
        resp = flow.response
        rid = flow.metadata.get("cipa_id")
        if resp is None or rid is None:
            return
        resp.headers["X-Cipa-Request-Id"] = rid
        d = flow.metadata.get("cipa_decision")
        # A response an earlier addon already streams (a block page that drops the upstream
        # body, addons/content.py) is recorded now too, whatever the decision.
        if d is None or (d.action != ALLOW and not resp.stream):
            return
        length = resp.headers.get("content-length", "")
        if not resp.stream and (
            length.isdigit() and int(length) <= STREAM_ABOVE or flow.metadata.get("cipa_buffer")
        ):
            return  # buffered: recorded in `response`, before any byte goes to the client
        meta = flow.metadata
        meta["cipa_bytes_out"] = int(length) if length.isdigit() else None
        resp.stream = resp.stream or True  # keep a copying tap set by an earlier addon (images)
        self._flow(flow)
        meta["cipa_recorded"] = True

    def response(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.get("cipa_recorded"):
            self._flow(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.get("cipa_recorded"):
            self._flow(flow)

    def _flow(self, flow: http.HTTPFlow) -> None:
        try:
            d: Decision | None = flow.metadata.get("cipa_decision")
            rid = flow.metadata.get("cipa_id")
            if d is None or rid is None:
                if (
                    flow.error is not None
                    and flow.request.method != "CONNECT"
                    and flow.metadata.get("cipa_id") is None
                ):
                    # mitmproxy refused the request itself (protocol error) before our hooks ran
                    self.malformed(
                        flow.client_conn.peername[0] if flow.client_conn.peername else "",
                        flow.error.msg,
                    )
                return  # not a request we decided (e.g. the CONNECT flow itself)
            self._count(d)
            r = flow.request
            resp = flow.response
            end = (resp.timestamp_end if resp and resp.timestamp_end else None) or time.time()
            ms = round((end - r.timestamp_start) * 1000, 1)
            self.rt.metrics.request_duration.observe(max(0.0, ms / 1000))
            rec = self._base(d, rid, flow_client(flow), r.timestamp_start)
            rec.update(
                user=flow.metadata.get("cipa_user"),
                method=r.method,
                url=d.url or r.pretty_url,
                host=flow.metadata.get("cipa_host") or r.pretty_host,
                status=resp.status_code if resp else None,
                bytes_in=len(r.raw_content or b""),
                bytes_out=flow.metadata.get(
                    "cipa_bytes_out",
                    len(resp.raw_content or b"") if resp and resp.raw_content is not None else 0,
                ),
                ms=ms,
                ua=r.headers.get("user-agent"),
                sni=flow.client_conn.sni,
                tls="intercepted" if r.scheme == "https" else "none",
            )
            if flow.error:
                rec["error"] = flow.error.msg
            if ss := flow.metadata.get("cipa_safesearch"):
                rec["safesearch"] = ss
            if grant := flow.metadata.get("cipa_override"):
                rec["override"] = grant
            if d.action != ALLOW and self.rt.config.audit.log_search_terms and "q=" in r.path:
                terms = r.query.get("q")
                if terms:
                    rec["search_terms"] = terms[:200]
            if (score := flow.metadata.get("cipa_score")) is not None:
                rec["score"] = score  # page content score (addons/content.py)
                if flow.metadata.get("cipa_score_partial"):
                    rec["score_partial"] = True  # good-context phrases not searched: an upper bound
                if phrases := flow.metadata.get("cipa_phrases"):
                    rec["phrases"] = phrases
            if image := flow.metadata.get("cipa_image"):
                rec.update(image)  # image_sha256, image_score, image_verdict: never the image
            self._write(rec)
        except Exception:
            log.exception("cannot record flow")
            self.rt.metrics.audit_errors.inc()

    # ------------------------------------------------------------------ tunnel-level records

    def connect(
        self, flow: http.HTTPFlow, d: Decision, rid: str, status: int, tls_mode: str
    ) -> None:
        """A CONNECT we answered ourselves (refused): its own record."""
        try:
            self._count(d)
            r = flow.request
            rec = self._base(d, rid, flow_client(flow), r.timestamp_start)
            rec.update(
                user=flow.metadata.get("cipa_user"), method="CONNECT", url=f"{r.host}:{r.port}", host=r.host,
                status=status, bytes_in=0, bytes_out=0, ms=round((time.time() - r.timestamp_start) * 1000, 1),
                ua=r.headers.get("user-agent"), sni=None, tls=tls_mode, reason=d.reason,
            )  # fmt: skip
            self._write(rec)
        except Exception:
            log.exception("cannot record CONNECT")
            self.rt.metrics.audit_errors.inc()

    def tunnel(self, client: connection.Client, t: Tunnel, sni: str | None, mode: str) -> None:
        """A TLS tunnel we did not decrypt: passed through, or cut because it was blocked."""
        try:
            d = t.decision
            self._count(d)
            rec = self._base(
                d,
                t.request_id,
                t.client or (client.peername[0] if client.peername else ""),
                t.started,
            )
            rec.update(
                user=t.user, method="TLS" if t.connect else "CONNECT", url=f"{t.host}:{t.port}", host=t.host, status=None,
                bytes_in=0, bytes_out=0, ms=round((time.time() - t.started) * 1000, 1), ua=None, sni=sni, tls=mode,
            )  # fmt: skip
            if d.action != ALLOW:
                rec["reason"] = d.reason
            if t.safesearch:
                rec["safesearch"] = t.safesearch
            self._write(rec)
        except Exception:
            log.exception("cannot record tunnel")
            self.rt.metrics.audit_errors.inc()

    def event(self, rec: dict) -> None:
        """A record that is not a request: override grants and refusals, config events."""
        self._write({"ts": _iso(time.time()), **rec})

    def malformed(self, client: str, detail: str) -> None:
        """A request mitmproxy rejected with 400 before any hook saw it."""
        d = Decision("block", "malformed", "", "", "mitmproxy", f"malformed request: {detail}")
        self._count(d)
        self._write(
            {
                "ts": _iso(time.time()), "id": new_request_id(), "client": client, "user": None, "group": None,
                "action": "block", "category": "malformed", "rule": "http parser", "method": None, "url": None,
                "host": None, "status": 400, "tls": None, "reason": d.reason,
            }
        )  # fmt: skip

    def refused_client(self, client: connection.Client) -> None:
        ip = client.peername[0] if client.peername else ""
        self._write(
            {
                "ts": _iso(time.time()), "id": None, "client": ip, "user": None, "group": None,
                "action": "block", "category": "client_not_allowed", "rule": "config clients",
                "method": None, "url": None, "host": None, "status": None, "tls": None,
            }
        )  # fmt: skip


# Messages mitmproxy logs (at INFO, on this logger) when it answers a request it
# could not even parse with its own 400: the only trace such a request leaves.
_PROTOCOL_ERROR = re.compile(
    r": (Bad HTTP request line|Unknown HTTP version|Invalid headers|Invalid header line|Invalid Host|No hostname given)"
)


class ProtocolErrorAudit:
    """Turn mitmproxy's "unparseable request" messages into audit records (bad input is never silent).

    mitmproxy reports a request it could not parse (and answered with its own
    400) only as an INFO message from ``ConnectionHandler.log``. Enabling INFO
    on that logger would format four log records for every connection (0.12 ms
    of CPU per tunnel, measured), so instead this wraps that one method: it
    looks at INFO messages for the protocol-error text and passes only
    warnings and errors on to logging. ``install`` checks the method's
    signature so a mitmproxy upgrade that changes it fails loudly at start-up.
    """

    def __init__(self, recorder: Recorder):
        self.rec = recorder
        self._original = None

    def install(self) -> None:
        from mitmproxy.proxy import server

        original = server.ConnectionHandler.log
        params = list(inspect.signature(original).parameters)
        if params[:3] != ["self", "message", "level"]:
            raise RuntimeError(
                f"mitmproxy ConnectionHandler.log changed: {params}; update ProtocolErrorAudit"
            )
        audit = self

        def log(handler, message: str, level: int = logging.INFO, exc_info=None) -> None:  # type: ignore[no-untyped-def]
            if level >= logging.WARNING:
                original(handler, message, level, exc_info)
                return
            m = _PROTOCOL_ERROR.search(message)
            if m is not None:
                peer = handler.client.peername
                try:
                    audit.rec.malformed(peer[0] if peer else "", message[m.start() + 2 :][:300])
                except Exception:
                    logging.getLogger("cipa.record").exception("cannot record a malformed request")
            if server.logger.isEnabledFor(
                level
            ):  # log.level: debug still shows mitmproxy's chatter
                original(handler, message, level, exc_info)

        server.ConnectionHandler.log = log  # type: ignore[method-assign]
        self._original = original

    def uninstall(self) -> None:
        if self._original is not None:
            from mitmproxy.proxy import server

            server.ConnectionHandler.log = self._original  # type: ignore[method-assign]
            self._original = None
