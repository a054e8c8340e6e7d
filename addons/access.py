"""Refuse clients outside the configured ``clients`` ranges: never an open proxy."""

from __future__ import annotations

import logging

from mitmproxy import connection

from .record import Recorder
from .runtime import Runtime

log = logging.getLogger("cipa.access")


class Access:
    def __init__(self, rt: Runtime, recorder: Recorder):
        self.rt = rt
        self.rec = recorder

    def client_connected(self, client: connection.Client) -> None:
        try:
            ip = client.peername[0] if client.peername else ""
            allowed = self.rt.config.client_allowed(ip)
        except Exception:
            log.exception("access check failed; refusing the client")
            allowed = False
        if not allowed:
            client.error = "client not allowed to use this proxy"
            self.rt.metrics.clients_refused.inc()
            self.rec.refused_client(client)
