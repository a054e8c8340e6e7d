"""Process logging: one event per line, as text for people or JSON for log pipelines.

Containers default to JSON (``log.format: json``) so that the cluster's log
shipper can index fields; nothing secret is ever put in a log record (proxy
passwords stay inside mitmproxy's proxyauth metadata, which is never logged).
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def _quiet_mitmproxy(record: logging.LogRecord) -> bool:
    """mitmproxy's per-connection INFO chatter stays off the console (warnings still show)."""
    return record.levelno >= logging.WARNING or not record.name.startswith("mitmproxy")


def setup(fmt: str = "text", level: str = "info") -> None:
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_quiet_mitmproxy)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("mitmproxy.proxy", "hpack", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
