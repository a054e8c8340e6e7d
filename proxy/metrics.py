"""Prometheus metrics and the health endpoints, served from a small thread.

Names follow Prometheus conventions (``cipa_`` prefix, base units, ``_total``
counters). Labels never carry hosts, users or client addresses: those would
explode cardinality and leak personal data into the monitoring system.
The HTTP server runs in its own thread so that a slow scrape never touches
the proxy's event loop.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import exposition as _exposition
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("cipa.metrics")

# Decisions take microseconds; whole requests take milliseconds to seconds.
_DECISION_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """All of cipa-proxy's metrics in one registry (one per process; tests make their own)."""

    def __init__(self) -> None:
        self._children: dict[tuple, object] = {}
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter(
            "cipa_requests",
            "Requests decided, by group and action.",
            ["group", "action"],
            registry=r,
        )
        self.blocks = Counter(
            "cipa_blocks",
            "Blocked requests, by group and category.",
            ["group", "category"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "cipa_decision_seconds",
            "Time the engine spent deciding one request.",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "cipa_request_duration_seconds",
            "Whole request time as the proxy saw it.",
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        # multiprocess_mode: how `run --workers N` (proxy/workers.py) combines the workers'
        # gauges; ignored in a single process. Counters and histograms are summed.
        self.rules_entries = Gauge(
            "cipa_rules_entries",
            "Rule entries loaded, by category.",
            ["category"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.rules_loaded = Gauge(
            "cipa_rules_loaded_timestamp_seconds",
            "When the rules in force were loaded (Unix time).",
            registry=r,
            multiprocess_mode="livemin",  # the oldest rules any worker still serves
        )
        self.reloads = Counter(
            "cipa_rules_reloads", "Rule (re)loads, by result.", ["result"], registry=r
        )
        self.reload_error = Gauge(
            "cipa_rules_reload_error",
            "1 while the last reload failed (old rules still serving).",
            registry=r,
            multiprocess_mode="livemax",  # any worker
        )
        self.operative = Gauge(
            "cipa_filter_operative",
            "1 while rules are loaded and the engine answers.",
            registry=r,
            multiprocess_mode="livemin",  # every worker
        )
        self.tls = Counter(
            "cipa_tls_connections", "TLS connections, by handling.", ["mode"], registry=r
        )
        self.audit_records = Counter("cipa_audit_records", "Audit records written.", registry=r)
        self.audit_errors = Counter(
            "cipa_audit_errors", "Audit records that could not be written.", registry=r
        )
        self.safesearch = Counter(
            "cipa_safesearch_enforced",
            "SafeSearch enforcements, by engine and mode (rewrite: parameter/header forced; route: sent to the safe address).",
            ["engine", "mode"],
            registry=r,
        )
        self.bypass = Counter(
            "cipa_bypass_attempts",
            "Detected filter bypass attempts, by kind.",
            ["kind"],
            registry=r,
        )
        self.clients_refused = Counter(
            "cipa_clients_refused",
            "Connections refused because the client is not allowed to use the proxy.",
            registry=r,
        )
        self.auth_failures = Counter(
            "cipa_auth_failures",
            "Proxy sign-ins refused (wrong or unknown credentials).",
            registry=r,
        )
        self.overrides = Counter(
            "cipa_overrides",
            "Adult overrides, by event (granted, used, refused).",
            ["event"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "cipa_event_loop_lag_seconds",
            "How late the proxy's event loop woke up (every client waits this long).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "cipa_event_loop_lag_max_seconds",
            "The longest event-loop stall since the process started.",
            registry=r,
        )
        self.loop_lag_max_value = 0.0
        self.filter_errors = Counter(
            "cipa_filter_errors", "Errors inside a deciding hook (fail closed).", registry=r
        )
        # Page content scoring and download rules (proxy/content.py, proxy/downloads.py).
        self.content_scans = Counter(
            "cipa_content_scans",
            "Responses considered for content scoring, by result (clean, blocked, too_large, error).",
            ["result"],
            registry=r,
        )
        self.content_bytes = Counter(
            "cipa_content_scanned_bytes", "Response body bytes scored (as received).", registry=r
        )
        self.content_seconds = Histogram(
            "cipa_content_scan_seconds",
            "Time to decode, extract and score one page.",
            buckets=_DECISION_BUCKETS[4:] + (0.05, 0.1),
            registry=r,
        )
        self.download_blocks = Counter(
            "cipa_download_blocks",
            "Downloads blocked, by rule (extension, disposition, mime, audio_video).",
            ["rule"],
            registry=r,
        )
        # Image classification (images.mode; proxy/images.py, addons/images.py).
        self.images_classified = Counter(
            "cipa_images_classified",
            "Images classified, by verdict (explicit, clean, error).",
            ["verdict"],
            registry=r,
        )
        self.image_classify_seconds = Histogram(
            "cipa_image_classify_seconds",
            "Time a classifier process spent on one image (decode + model).",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.images_queue_depth = Gauge(
            "cipa_images_queue_depth",
            "Images in the classifier queue or being classified.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.images_skipped = Counter(
            "cipa_images_skipped",
            "Images not classified (or, in block mode, not held), by reason.",
            ["reason"],
            registry=r,
        )
        self.image_cache_hits = Counter(
            "cipa_image_cache_hits", "Image verdicts answered from the cache.", registry=r
        )
        self.learned_domains = Gauge(
            "cipa_learned_domains",
            "Domains in the learned_adult category (learned from explicit images).",
            registry=r,
            multiprocess_mode="livemax",
        )
        for verdict in ("explicit", "clean", "error"):
            self.images_classified.labels(verdict=verdict)
        for mode in ("intercepted", "passthrough", "refused"):
            self.tls.labels(mode=mode)
        for result in ("clean", "blocked", "too_large", "error"):
            self.content_scans.labels(result=result)
        for result in ("success", "failure"):
            self.reloads.labels(result=result)

    def counter(self, name: str, **labels: str):  # type: ignore[no-untyped-def]
        """``getattr(self, name).labels(**labels)``, cached: ``labels()`` costs microseconds per
        call and runs several times per request."""
        key = (name, *labels.values())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = getattr(self, name).labels(**labels)
        return child

    def set_rules(self, entries: dict[str, int], loaded_at: float) -> None:
        for category, count in entries.items():
            self.rules_entries.labels(category=category).set(count)
        self.rules_loaded.set(loaded_at)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, ctype, status = (
                self.server.metrics.exposition(),
                _exposition.CONTENT_TYPE_LATEST,
                200,
            )
        elif path == "/healthz":
            body, ctype, status = b"ok\n", "text/plain", 200
        elif path == "/readyz":
            problems = self.server.readiness()
            status = 200 if not problems else 503
            body = (
                "ready\n" if not problems else "not ready: " + "; ".join(problems) + "\n"
            ).encode()
            ctype = "text/plain"
        else:
            body, ctype, status = b"not found\n", "text/plain", 404
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: Metrics
    readiness: Callable[[], list[str]]


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(metrics: Metrics, host: str, port: int, readiness: Callable[[], list[str]]) -> _Server:
    """Start the metrics/health server in a daemon thread; returns it (``server_address`` has the real port)."""
    server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
    server.metrics = metrics
    server.readiness = readiness
    threading.Thread(target=server.serve_forever, name="cipa-metrics", daemon=True).start()
    return server
