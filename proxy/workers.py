"""``cipa-proxy run --workers N``: one listening address, N proxy processes.

One mitmproxy process uses one core. This module is the supervisor that turns
a many-core host into N of them behind the same ``listen.host:port``, without
mitmproxy imports (the workers are ordinary ``cipa-proxy run`` processes).

How connections are spread (see ``bench/scale.py`` and ``bench/RESULTS.md``
for the measurements behind the choice):

* **shared** (the default): the supervisor binds and listens on the socket
  once (one per listener: ``listen.port``, and ``listen.transparent_port`` in
  gateway mode), and every worker inherits it and accepts from its queue. The kernel hands each new connection to whichever worker calls
  ``accept`` first, i.e. the one with spare time, and the client's address is
  the peer address as always (nothing in between). The queue belongs to the
  supervisor's socket, so a worker that dies or restarts loses only the
  connections it had already accepted: connections waiting in the queue go to
  the other workers, and a restarted worker starts accepting only after its
  rules are loaded. Needs no privileges and no extra process.
* **reuseport** (``CIPA_WORKERS_BALANCE=reuseport``, kept for the benchmark):
  every worker binds its own socket on the same port with ``SO_REUSEPORT`` and
  the kernel hashes each connection's addresses to one of them. Even spread
  and no shared queue, but the connections waiting in a killed worker's queue
  are reset, and the hash ignores how busy a worker is.
* HAProxy (TCP mode) would hide the client address unless the workers read
  the PROXY protocol, which mitmproxy does not; nftables ``redirect`` keeps
  addresses but needs root and host firewall changes. Both were measured.

Everything else the workers share:

* **CA**: created once here before any worker starts (``tls.confdir``).
* **Rules**: every worker loads the same files and reloads on its own; SIGHUP
  to the supervisor is forwarded to every worker.
* **Metrics**: one endpoint at ``metrics.listen``, served here. Workers write
  their samples to files in a private directory (prometheus-client's
  multiprocess mode); counters and histograms are summed, gauges are combined
  as documented in ``proxy/metrics.py``. Each worker also serves its own
  ``/readyz`` on an internal loopback port: the front's ``/readyz`` is ready
  while at least one worker is.
* **Audit**: one hash-chained writer per directory (a directory lock), so
  worker *i* writes ``audit.path/worker-i``; the ``audit`` commands find and
  merge every chain under ``audit.path`` and verify each one separately. A
  pseudonym key (``audit.pseudonymize``) is created once and shared.

A worker that exits is restarted (with backoff if it keeps dying) and counted
in ``cipa_worker_restarts_total``. SIGTERM/SIGINT stop every worker cleanly
(they close and fsync their audit files) and then the supervisor.

Environment of a worker (set here, read by ``addons/workers.py``):
``CIPA_WORKER`` (index), ``CIPA_WORKERS`` (count), ``CIPA_LISTEN_FD`` (shared
mode: the inherited socket) or ``CIPA_REUSE_PORT=1``, and
``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config

log = logging.getLogger("cipa.workers")

ENV_WORKER = "CIPA_WORKER"
ENV_WORKERS = "CIPA_WORKERS"
ENV_LISTEN_FD = "CIPA_LISTEN_FD"  # the explicit proxy's socket (listen.port)
ENV_LISTEN_FD_TRANSPARENT = "CIPA_LISTEN_FD_TRANSPARENT"  # listen.transparent_port (gateway mode)
ENV_REUSE_PORT = "CIPA_REUSE_PORT"
ENV_BALANCE = "CIPA_WORKERS_BALANCE"  # shared (default) | reuseport
ENV_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"

BALANCE_MODES = ("shared", "reuseport")
BACKLOG = 1024  # per listening socket; Linux caps it at net.core.somaxconn
STOP_GRACE = 20.0  # seconds a worker gets to finish after SIGTERM (Kubernetes allows 30 by default)
EXIT_CONFIG = 2  # what `cipa-proxy run` returns for a config or audit-directory problem
_FAST_FAILURE = 10.0  # a worker that dies sooner than this after its start counts as crash-looping
_MAX_BACKOFF = 30.0


def is_worker() -> bool:
    """True inside a process the supervisor started (it must not supervise again)."""
    return ENV_WORKER in os.environ


def cpu_count() -> int:
    """Cores this process may use: the CPU affinity mask, capped by a cgroup v2
    CPU quota (a Kubernetes CPU limit) when there is one."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def resolve_count(value: int | str | None) -> int:
    """``workers`` as given (a number, ``auto`` or None) -> a process count >= 1."""
    if value is None:
        return 1
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return cpu_count()
        value = int(value)
    if value < 1:
        raise ValueError(f"workers must be at least 1 or 'auto', got {value}")
    return value


def worker_dir(base: Path, index: int) -> Path:
    """Worker ``index``'s audit directory (one hash chain per directory)."""
    return Path(base) / f"worker-{index}"


def bind_listener(
    host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A TCP socket bound to host:port (port 0 picks one), listening unless ``listen`` is False.

    A ``reuse_port`` socket that is not listening only reserves the port: the
    kernel spreads connections over the listening sockets of the group alone.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        if listen:
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


# ------------------------------------------------------------------ the front's metrics


class _SupervisorCollector:
    """The supervisor's own series. Plain numbers turned into metric families at
    scrape time, so they never go through prometheus-client's multiprocess files."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "cipa_workers", "Worker processes configured (run --workers).", value=self.sup.count
        )
        yield GaugeMetricFamily(
            "cipa_workers_running",
            "Worker processes alive right now.",
            value=sum(1 for w in self.sup.workers if w.alive()),
        )
        yield CounterMetricFamily(
            "cipa_worker_restarts",
            "Worker processes that exited unexpectedly and were started again.",
            value=self.sup.restarts,
        )


class _Front:
    """What ``proxy.metrics.serve`` needs: an ``exposition()`` of every worker's
    samples (summed) plus the supervisor's own."""

    def __init__(self, sup: Supervisor, multiproc_dir: Path) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(multiproc_dir))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_SupervisorCollector(sup))

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ------------------------------------------------------------------ the supervisor


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    metrics_port: int | None = None
    loaded: bool = False  # rules loaded at least once by this process
    fast_failures: int = 0
    next_start: float = 0.0
    reader: threading.Thread | None = None
    ever_loaded: bool = field(default=False)  # any process of this slot, ever

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


_METRICS_LINE = re.compile(r"^cipa-proxy metrics at (\S+):(\d+)")
_LISTENING_LINE = re.compile(r"^cipa-proxy listening at (.*)$")
_LOADED_LINE = re.compile(r"^cipa-proxy rules loaded: (.*)$")


class Supervisor:
    def __init__(
        self,
        cfg: Config,
        config_path: Path,
        overrides: list[str],
        count: int,
        balance: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = Path(config_path)
        self.overrides = list(overrides)
        self.count = count
        self.balance = balance or os.environ.get(ENV_BALANCE, "shared")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"{ENV_BALANCE} must be one of {', '.join(BALANCE_MODES)}")
        self.workers = [_Worker(i) for i in range(count)]
        self.restarts = 0
        # One socket per listener: "explicit" (listen.port) and, in gateway mode, "transparent".
        self.socks: dict[str, socket.socket] = {}
        self.multiproc_dir: Path | None = None
        self._own_multiproc_dir = False
        self._wake = threading.Event()
        self._stop_signal: int | None = None
        self._hup = False
        self._out = threading.Lock()
        self._announced_listening: set[str] = set()
        self._announced_loaded = False
        self._metrics_server = None

    # -------------------------------------------------------------- output

    def say(self, line: str) -> None:
        with self._out:
            print(line, flush=True)

    def _relay(self, w: _Worker, proc: subprocess.Popen) -> None:
        """Read a worker's announcements: note its state, repeat them with its number."""
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            m = _METRICS_LINE.match(line)
            if m:
                w.metrics_port = int(m.group(2))
                continue  # internal: the front serves the district's metrics
            m = _LISTENING_LINE.match(line)
            if m and m.group(1) not in self._announced_listening:
                self._announced_listening.add(m.group(1))  # the first worker serving it
                self.say(
                    f"cipa-proxy listening at {m.group(1)} "
                    f"({self.count} workers, {self.balance} socket)"
                )
            m = _LOADED_LINE.match(line)
            if m:
                w.loaded = w.ever_loaded = True
                if not self._announced_loaded and all(x.loaded for x in self.workers):
                    self._announced_loaded = True
                    self.say(f"cipa-proxy rules loaded: {m.group(1)} ({self.count} workers)")
            rest = line.removeprefix("cipa-proxy ")
            self.say(f"cipa-proxy worker {w.index} (pid {proc.pid}): {rest}")

    # -------------------------------------------------------------- workers

    def _command(self, w: _Worker) -> list[str]:
        sets = [
            *self.overrides,
            f"audit.path={worker_dir(self.cfg.audit.path, w.index)}",
        ]
        if self.cfg.audit.pseudonymize:
            from .audit import pseudonym_key_path

            sets.append(f"audit.pseudonym_key_file={pseudonym_key_path(self.cfg.audit)}")
        if self.cfg.metrics.host_port is not None:
            sets.append("metrics.listen=127.0.0.1:0")  # internal; the front serves metrics.listen
        if self.balance == "reuseport":
            for kind, key in (("explicit", "port"), ("transparent", "transparent_port")):
                if kind in self.socks:
                    sets.append(f"listen.{key}={self.socks[kind].getsockname()[1]}")
        optimize = (
            ["-O"] if sys.flags.optimize else []
        )  # workers run as the supervisor does (cli._optimized_reexec)
        cmd = [sys.executable, *optimize, "-m", "proxy", "run", "--config", str(self.config_path)]
        for s in sets:
            cmd += ["--set", s]
        return cmd

    def _start(self, w: _Worker) -> None:
        env = dict(os.environ)
        env.update({ENV_WORKER: str(w.index), ENV_WORKERS: str(self.count)})
        env[ENV_MULTIPROC] = str(self.multiproc_dir)
        pass_fds: tuple[int, ...] = ()
        if self.balance == "shared":
            for kind, var in (
                ("explicit", ENV_LISTEN_FD),
                ("transparent", ENV_LISTEN_FD_TRANSPARENT),
            ):
                if kind in self.socks:
                    env[var] = str(self.socks[kind].fileno())
            pass_fds = tuple(sock.fileno() for sock in self.socks.values())
        else:
            env[ENV_REUSE_PORT] = "1"
        w.metrics_port = None
        w.loaded = False
        proc = subprocess.Popen(
            self._command(w),
            env=env,
            pass_fds=pass_fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            errors="replace",
            # Own process group: a Ctrl-C in the terminal reaches the supervisor only,
            # which then stops the workers in order.
            process_group=0,
        )
        w.proc, w.started = proc, time.monotonic()
        w.reader = threading.Thread(
            target=self._relay, args=(w, proc), name=f"cipa-worker-{w.index}", daemon=True
        )
        w.reader.start()

    def _reaped(self, w: _Worker, now: float) -> int | None:
        """Handle a worker that exited; returns a supervisor exit code to stop with, or None."""
        assert w.proc is not None
        code, pid = w.proc.returncode, w.proc.pid
        if self.multiproc_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(self.multiproc_dir))
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        if code == EXIT_CONFIG and not any(x.ever_loaded for x in self.workers):
            self.say(f"cipa-proxy worker {w.index} failed to start ({how}); stopping")
            return EXIT_CONFIG
        w.fast_failures = w.fast_failures + 1 if now - w.started < _FAST_FAILURE else 0
        delay = 0.0 if w.fast_failures == 0 else min(_MAX_BACKOFF, 0.5 * 2**w.fast_failures)
        w.next_start = now + delay
        w.proc = None
        self.restarts += 1
        self.say(
            f"cipa-proxy worker {w.index} (pid {pid}) died ({how}); "
            f"restarting{f' in {delay:.0f}s' if delay else ''}"
        )
        return None

    def readiness(self) -> list[str]:
        """The front's /readyz: ready while any worker is (the others may be restarting)."""
        problems = []
        for w in self.workers:
            port = w.metrics_port
            if not w.alive() or port is None:
                problems.append(f"worker {w.index}: not running")
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return []
            except urllib.error.HTTPError as exc:
                problems.append(f"worker {w.index}: {exc.read().decode(errors='replace').strip()}")
            except OSError as exc:
                problems.append(f"worker {w.index}: {exc}")
        return problems or ["no workers"]

    # -------------------------------------------------------------- life cycle

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
        else:
            self._stop_signal = signum
        self._wake.set()

    def _prepare(self) -> None:
        from . import ca

        ca.init(self.cfg.tls.confdir)  # once, before any worker can race to create it
        Path(self.cfg.audit.path).mkdir(parents=True, exist_ok=True)
        if self.cfg.audit.pseudonymize:
            from .audit import load_pseudonym_key, pseudonym_key_path

            load_pseudonym_key(pseudonym_key_path(self.cfg.audit), create=True)
        given = os.environ.get(ENV_MULTIPROC)
        if given:
            self.multiproc_dir = Path(given)
            self.multiproc_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.multiproc_dir.glob("*.db"):  # a previous run's samples
                stale.unlink()
        else:
            self.multiproc_dir = Path(tempfile.mkdtemp(prefix="cipa-metrics-"))
            self._own_multiproc_dir = True
        host, port = self.cfg.listen.host, self.cfg.listen.port
        listeners = []
        if getattr(self.cfg.listen, "explicit", True):
            listeners.append(("explicit", port))
        if getattr(self.cfg.listen, "transparent", False):
            listeners.append(("transparent", self.cfg.listen.transparent_port))
        for kind, p in listeners:
            if self.balance == "shared":
                self.socks[kind] = bind_listener(host, p)
            else:  # hold the port (not listening) so that every worker binds the same one
                self.socks[kind] = bind_listener(host, p, reuse_port=True, listen=False)
        if self.cfg.metrics.host_port is not None:
            from .metrics import serve

            mhost, mport = self.cfg.metrics.host_port
            self._metrics_server = serve(
                _Front(self, self.multiproc_dir), mhost, mport, self.readiness
            )
            shost, sport = self._metrics_server.server_address[:2]
            self.say(f"cipa-proxy metrics at {shost}:{sport}")

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            self._prepare()
        except (OSError, ValueError) as exc:
            print(f"cipa-proxy: cannot start workers: {exc}", file=sys.stderr, flush=True)
            self._cleanup()
            return EXIT_CONFIG
        code = 0
        try:
            for w in self.workers:
                self._start(w)
            while self._stop_signal is None:
                self._wake.wait(0.2)
                self._wake.clear()
                if self._hup:
                    self._hup = False
                    self._signal_all(signal.SIGHUP)
                now = time.monotonic()
                for w in self.workers:
                    if w.proc is not None and w.proc.poll() is not None:
                        code = self._reaped(w, now) or 0
                        if code:
                            break
                    if w.proc is None and now >= w.next_start and self._stop_signal is None:
                        self._start(w)
                if code:
                    break
        finally:
            self._stop_all()
            self._cleanup()
            self.say("cipa-proxy stopped")
        return code

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.alive():
                assert w.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    def _stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(
                    f"cipa-proxy worker {w.index} did not stop in {STOP_GRACE:.0f}s; killing it"
                )
                w.proc.kill()
                w.proc.wait()
            if w.reader is not None:
                w.reader.join(2)

    def _cleanup(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()
        if self._own_multiproc_dir and self.multiproc_dir is not None:
            shutil.rmtree(self.multiproc_dir, ignore_errors=True)


def supervise(cfg: Config, config_path: Path, overrides: list[str], count: int) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; returns the exit code."""
    from . import logs

    logs.setup(cfg.log.format, cfg.log.level)
    return Supervisor(cfg, config_path, overrides, count).run()


__all__ = [
    "BALANCE_MODES",
    "Supervisor",
    "bind_listener",
    "cpu_count",
    "is_worker",
    "resolve_count",
    "supervise",
    "worker_dir",
]
