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
        self._seen: tuple[object, dict[str, bool]] = (None, {})

    def _allowed(self, ip: str) -> bool:
        """``config.client_allowed``, remembered per address for the config in force."""
        cfg = self.rt.config
        if self._seen[0] is not cfg:
            self._seen = (cfg, {})
        cache = self._seen[1]
        allowed = cache.get(ip)
        if allowed is None:
            if len(cache) > 100_000:
                cache.clear()
            allowed = cache[ip] = cfg.client_allowed(ip)
        return allowed

    def client_connected(self, client: connection.Client) -> None:
        try:
            ip = client.peername[0] if client.peername else ""
            allowed = self._allowed(ip)
        except Exception:
            log.exception("access check failed; refusing the client")
            allowed = False
        if not allowed:
            client.error = "client not allowed to use this proxy"
            self.rt.metrics.clients_refused.inc()
            self.rec.refused_client(client)
