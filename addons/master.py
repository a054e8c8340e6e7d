"""``cipa-proxy run``: mitmproxy in-process, with only the addons a filter needs.

Speed comes from three measured levers (see ``../shared/notes``):
- a minimal ``Master`` with 5 of mitmproxy's ~39 default addons, because every
  event walks every addon;
- cached hook dispatch: the list of callables per event is computed once,
  instead of ``getattr`` on every addon for every event;
- lean logging: no ``LegacyLogEvents`` bridge and the root logger at INFO, so
  per-connection debug records are never formatted.
Addons are registered in code, never with ``-s`` (a broken script would be
unloaded on reload and leave traffic unfiltered). Only options this module
sets reach mitmproxy: config.yaml cannot switch on arbitrary mitmproxy options.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import signal
import sys
import time
from pathlib import Path

from mitmproxy import addonmanager, certs, exceptions, hooks, master, options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig

from proxy import ca, logs, reload
from proxy.config import Config, load_config
from proxy.engine import Engine
from proxy.yamlpos import InputError

from .access import Access
from .content import ContentFilter
from .filter import Filter
from .images import ImageScan
from .onboarding import Onboarding
from .override import Override
from .record import ProtocolErrorAudit, Recorder
from .runtime import Runtime
from .who import Who
from .workers import from_env as _worker_from_env

log = logging.getLogger("cipa.proxy")


class CachedAddonManager(addonmanager.AddonManager):
    """Dispatch each event only to the addons that implement it.

    The per-event list is rebuilt whenever an addon is added or removed.
    """

    def __init__(self, m: master.Master):
        super().__init__(m)
        self._hooks: dict[str, list] = {}

    def register(self, addon):
        self._hooks.clear()
        return super().register(addon)

    def add(self, *addons):
        super().add(*addons)
        self._hooks.clear()

    def remove(self, addon):
        super().remove(addon)
        self._hooks.clear()

    def _callables(self, name: str) -> list:
        funcs = self._hooks.get(name)
        if funcs is None:
            funcs = []
            for top in self.chain:
                for a in addonmanager.traverse([top]):
                    f = getattr(a, name, None)
                    if f is not None and callable(f):
                        funcs.append(f)
            self._hooks[name] = funcs
        return funcs

    async def trigger_event(self, event: hooks.Hook) -> None:
        funcs = self._callables(event.name)
        if not funcs:
            return
        args = event.args()
        for func in funcs:
            try:
                res = func(*args)
                if res is not None and inspect.isawaitable(res):
                    await res
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception:
                logging.getLogger("mitmproxy.addonmanager").exception(
                    "Addon error in %s", event.name
                )


class CipaMaster(master.Master):
    def __init__(self, opts: options.Options, rt: Runtime):
        super().__init__(opts)
        # Swap in the cached dispatcher before any addon is registered.
        opts.changed.disconnect(self.addons._configure_all)
        self.addons = CachedAddonManager(self)
        self._legacy_log_events.uninstall()  # lean logging: no per-record add_log events
        recorder = Recorder(rt)
        rt.events = recorder.event
        override = Override(rt, recorder)
        self.images = ImageScan(rt, recorder)
        self._protocol_errors = ProtocolErrorAudit(recorder)
        self._protocol_errors.install()
        flt = Filter(rt, recorder, override)
        self.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            Access(rt, recorder),
            Onboarding(rt),  # the setup page: answered here, before identity and filter
            Who(rt, recorder),
            override,
            flt,
            ContentFilter(rt, flt, recorder),  # after Filter (its decision), before the recorder
            self.images,  # before the recorder: it asks it to buffer the images it must see
            recorder,
        )

    async def done(self) -> None:
        await self.addons.trigger_event(hooks.DoneHook())
        self._protocol_errors.uninstall()


def _modes(cfg: Config) -> list[str]:
    """mitmproxy mode specs for listen.mode: the explicit proxy on listen.port, the transparent
    listener (original destination from the gateway's REDIRECT rule) on listen.transparent_port."""
    modes = []
    if cfg.listen.explicit:
        modes.append(f"upstream:{cfg.upstream}" if cfg.upstream else "regular")
    if cfg.listen.transparent:
        modes.append(f"transparent@{cfg.listen.transparent_port}")  # host: listen.host
    return modes


def mitm_options(cfg: Config) -> dict:
    """The allow-list: every mitmproxy option cipa-proxy sets, derived from config.yaml."""
    opts = {
        "listen_host": cfg.listen.host,
        "listen_port": cfg.listen.port,
        "mode": _modes(cfg),
        "confdir": str(cfg.tls.confdir),
        "connection_strategy": "lazy",  # a blocked host is never contacted
        "ssl_insecure": not cfg.tls.verify_upstream,
        "http3": False,
        "rawtcp": True,
        "websocket": True,
    }
    if cfg.tls.upstream_ca:
        opts["ssl_verify_upstream_trusted_ca"] = str(cfg.tls.upstream_ca)
    return opts


def _setup_logging(cfg: Config) -> None:
    logs.setup(cfg.log.format, cfg.log.level)


def _say(line: str) -> None:
    print(line, flush=True)


def _open_audit(cfg: Config):
    try:
        from proxy.audit import AuditLog
    except ImportError:  # pragma: no cover
        log.error("audit module missing: running without audit records")
        return None
    return AuditLog(cfg.audit)


def _build_engine(cfg: Config) -> Engine:
    # isolate: a stale index is compiled in a child process (proxy/index.py), so a list of
    # millions of entries neither holds the GIL for long nor leaves its heap here; a current
    # one (lists.cache_dir) is only memory-mapped.
    engine = Engine.build(cfg, isolate=True)
    # Move what is left (rule metadata, URL entries: the domain index is a few objects over
    # a mapped file) out of the collector's sight, so a full GC never walks it.
    gc.freeze()
    return engine


class Reloader:
    """Initial load and hot reload of config + rules, compiled off the event loop.

    A new rule set is built and validated whole in a worker thread, then swapped
    in with one assignment. A broken edit keeps the old rules serving, logs each
    problem with file and line, and sets ``cipa_rules_reload_error`` until a good
    reload. Triggered by file changes (polled) and by SIGHUP.
    """

    def __init__(self, rt: Runtime, config_path: Path, overrides: list[str], interval: float = 2.0):
        self.rt = rt
        self.config_path = config_path
        self.overrides = overrides
        self.interval = interval
        self.requested = asyncio.Event()
        self._snap: reload.Snapshot = {}
        self._paths: list[Path] = []

    def _watch_state(self, cfg: Config, files: list[str]) -> tuple[list[Path], reload.Snapshot]:
        paths = reload.watched_paths(self.config_path, cfg, files)
        return paths, reload.snapshot(paths, cfg.rules_dir)

    async def load(self, cfg: Config | None = None) -> bool:
        rt = self.rt
        initial = rt.engine is None
        start = time.perf_counter()
        try:
            if cfg is None:
                cfg = await asyncio.to_thread(load_config, self.config_path, self.overrides)
            engine = await asyncio.to_thread(_build_engine, cfg)
        except Exception as exc:
            problems = (
                exc.problems if isinstance(exc, InputError) else [f"{type(exc).__name__}: {exc}"]
            )
            rt.metrics.reloads.labels(result="failure").inc()
            rt.metrics.reload_error.set(1)
            for p in problems:
                log.error("rules: %s", p)
            files = rt.engine.rules.files if rt.engine else []
            self._paths, self._snap = await asyncio.to_thread(
                self._watch_state, cfg or rt.config, files
            )
            if initial:
                _say(
                    f"cipa-proxy rules failed to load ({len(problems)} problem(s)); blocking everything"
                )
            else:
                log.error(
                    "reload failed (%d problem(s)); the previous rules stay in force", len(problems)
                )
            return False
        self._announce_exceptions(rt.engine, engine)
        if not initial:
            for key in reload.restart_needed(rt.config, cfg):
                log.warning(
                    "config %s changed: restart cipa-proxy to apply it (the old value stays in use)",
                    key,
                )
        rt.set_engine(engine)
        rt.metrics.reloads.labels(result="success").inc()
        rt.metrics.reload_error.set(0)
        self._paths, self._snap = await asyncio.to_thread(
            self._watch_state, cfg, engine.rules.files
        )
        entries = sum(i.entries for i in engine.rules.categories.values())
        verb = "loaded" if initial else "reloaded"
        _say(f"cipa-proxy rules {verb}: {entries} entries in {time.perf_counter() - start:.2f}s")
        return True

    def _announce_exceptions(self, old: Engine | None, new: Engine) -> None:
        """An audit record for each class exception the proxy starts applying."""
        if self.rt.events is None:
            return
        before = {e.key() for e in old.exceptions} if old is not None else set()
        now = time.time()
        for e in new.exceptions:
            if e.key() not in before and e.until > now:
                self.rt.events({"type": "exception", "event": "applied", "domain": e.domain, "group": e.group,
                                "user": e.by, "reason": e.reason,
                                "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.until))})  # fmt: skip

    async def watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.requested.wait(), self.interval)
            hup = self.requested.is_set()
            self.requested.clear()
            try:
                current = await asyncio.to_thread(
                    reload.snapshot, self._paths, self.rt.config.rules_dir
                )
                if hup or current != self._snap:
                    log.info("reloading rules (%s)", "SIGHUP" if hup else "files changed")
                    await self.load()
            except Exception:
                log.exception("reload watcher error; the rules in force are unchanged")


async def _serve(cfg: Config, config_path: Path, overrides: list[str]) -> int:
    rt = Runtime(cfg)
    rt.metrics.operative.set(0)
    ca.init(cfg.tls.confdir)
    certs.CERT_EXPIRY = (
        ca.LEAF_VALIDITY
    )  # mitmproxy reads this module global when minting leaf certificates
    try:
        rt.audit = _open_audit(cfg)
    except Exception as exc:
        print(
            f"cipa-proxy: cannot open the audit log in {cfg.audit.path}: {exc}",
            file=sys.stderr,
            flush=True,
        )
        return 2

    opts = options.Options()
    m = CipaMaster(opts, rt)
    try:
        opts.update(**mitm_options(cfg))
    except exceptions.OptionsError as exc:
        log.error("invalid proxy settings: %s", exc)
        return 2

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, m.shutdown)

    # `run --workers N`: listen on the supervisor's socket once the first rule load is done.
    worker = _worker_from_env()
    first_load_done = asyncio.Event()
    if worker is not None:
        worker.install(first_load_done)

    metrics_server = None
    if cfg.metrics.host_port:
        from proxy.metrics import serve

        host, port = cfg.metrics.host_port
        metrics_server = serve(rt.metrics, host, port, rt.readiness_problems)
        mhost, mport = metrics_server.server_address[:2]
        _say(f"cipa-proxy metrics at {mhost}:{mport}")

    reloader = Reloader(rt, config_path, overrides)
    loop.add_signal_handler(signal.SIGHUP, reloader.requested.set)

    async def load_then_watch() -> None:
        try:
            await reloader.load(cfg)
            first_load_done.set()
            await reloader.watch()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception(
                "rule loader crashed; the filter keeps the rules it has (or blocks everything)"
            )
            raise

    loader = asyncio.create_task(load_then_watch())
    lag_watch = asyncio.create_task(_watch_loop_lag(rt))
    fsyncer = None
    if rt.audit is not None:
        fsyncer = asyncio.create_task(_fsync_loop(rt, cfg.audit.fsync_interval))

    async def announce() -> None:
        ps = m.addons.get("proxyserver")
        while not ps.is_running:
            await asyncio.sleep(0.01)
        rt.listening = True
        for server in ps.servers:  # explicit first, then the transparent listener (labelled)
            label = " (transparent)" if server.mode.type_name == "transparent" else ""
            for host, port, *_ in server.listen_addrs:
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                _say(f"cipa-proxy listening at {where}{label}")

    announcer = asyncio.create_task(announce())

    async def start_images() -> None:
        """The image classifier's processes (spawn context: fresh interpreters, nothing of this
        process is forked), started once the rules are in, so both do not compete for the CPU."""
        await first_load_done.wait()
        await m.images.start()

    images_start = asyncio.create_task(start_images())
    orphan_watch = asyncio.create_task(worker.watch_parent(m.shutdown)) if worker else None
    try:
        await m.run()
    finally:
        for task in (loader, fsyncer, announcer, orphan_watch, lag_watch, images_start):
            if task is not None:
                task.cancel()
        await m.images.stop()
        if rt.audit is not None:
            rt.audit.close()
        if metrics_server is not None:
            metrics_server.shutdown()
        _say("cipa-proxy stopped")
    return 0


STALL_WARNING = 0.05  # seconds; a stall this long is logged


async def _watch_loop_lag(rt: Runtime, period: float = 0.02) -> None:
    """Measure how late the event loop wakes up: every stall (a slow hook, a GC pass, a
    reload holding the GIL) delays every client, so it is exported as a metric."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(period)
        lag = max(0.0, loop.time() - start - period)
        rt.metrics.loop_lag.observe(lag)
        if lag >= STALL_WARNING:
            log.warning("event loop stalled for %.0f ms", lag * 1000)
        if lag > rt.metrics.loop_lag_max_value:
            rt.metrics.loop_lag_max_value = lag
            rt.metrics.loop_lag_max.set(lag)


async def _fsync_loop(rt: Runtime, interval: float) -> None:
    while True:
        await asyncio.sleep(max(interval, 0.05))
        audit = rt.audit
        if audit is not None:
            await asyncio.to_thread(audit.maybe_fsync)


def run(cfg: Config, config_path: Path, overrides: list[str]) -> int:
    """Run the proxy until SIGTERM/SIGINT; returns the process exit code."""
    _setup_logging(cfg)
    try:
        import uvloop

    except ImportError:  # pragma: no cover - uvloop is optional on unusual platforms
        return asyncio.run(_serve(cfg, config_path, overrides))
    return uvloop.run(_serve(cfg, config_path, overrides))


__all__ = ["CachedAddonManager", "CipaMaster", "mitm_options", "run"]
