"""Load through bare ``mitmdump -q`` and through ``cipa-proxy run``, alternating, on one machine.

    .venv/bin/python bench/proxy.py [--rounds 5] [--duration 8] [--connections 20] [--quick] [--json [PATH]]

Setup: a local origin (nginx if installed, else an asyncio origin) and the load
generator (wrk, hey) on CPU 0; the proxy under test pinned to CPU 1 with
``taskset``. For each scenario both proxies are started fresh, checked
(correct answer, passthrough really shows the origin's certificate, decryption
really shows the proxy's), warmed up, then measured in alternating order for N
rounds. Per round: requests/s from the load generator, and the proxy process's
CPU time (utime+stime from /proc/PID/stat) divided by the requests completed.
Medians per scenario, and the cipa/bare ratios of those medians, are printed as
a Markdown table, with PASS/FAIL against the floors of issue 3:

- keep-alive HTTP: cipa-proxy >= 1.5x bare mitmdump's requests/s;
- new passthrough HTTPS tunnel: cipa-proxy <= 0.7x bare mitmdump's CPU per tunnel.

Like with like: both proxies use ``connection_strategy=lazy`` and skip upstream
certificate verification; for the passthrough scenario bare mitmdump gets
``ignore_hosts=.`` (it then also reads the ClientHello, as cipa-proxy does in
``tls_clienthello``); for the blocked CONNECT bare mitmdump gets a three-line
``-s`` script answering the CONNECT with 403, and cipa-proxy runs with
``tls.inspect=none`` (CONNECT-only mode: a blocked host is refused at CONNECT).
cipa-proxy runs with every filtering addon and the audit log on.

Exit status: 0, or 1 with ``--check`` when a floor fails, 2 when the bench
could not run (a tool missing, a proxy that did not start, a failed check).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BODY,
    CLK_TCK,
    REPO,
    BenchError,
    Origin,
    Procs,
    can_pin,
    cpu_jiffies,
    cpu_seconds,
    free_port,
    machine_facts,
    median,
    parse_hey,
    parse_wrk,
    raise_on_sigterm,
    rss_mb,
    start_origin,
    tool_version,
    venv_tool,
    wait_port,
)

FLOOR_HTTP_RPS = 1.5  # cipa/bare requests/s, keep-alive HTTP: at least
FLOOR_TUNNEL_CPU = 0.7  # cipa/bare CPU per new passthrough tunnel: at most
BLOCKED_CANDIDATES = ("nordvpn.com", "hidemyass.com", "expressvpn.com", "bet365.com", "pornhub.com")


@dataclass
class Scenario:
    key: str
    title: str
    load: str  # http | https_keepalive | https_new | blocked
    probe: str  # http | decrypted | passthrough | blocked
    bare_args: list[str] = field(default_factory=list)
    cipa_sets: list[str] = field(default_factory=list)


def scenarios(block_script: Path) -> list[Scenario]:
    return [
        Scenario(
            "http_keepalive", "HTTP keep-alive", "http", "http", [], ["tls.inspect=selective"]
        ),
        Scenario(
            "https_keepalive_decrypted",
            "HTTPS keep-alive, decrypted",
            "https_keepalive",
            "decrypted",
            [],
            ["tls.inspect=all"],
        ),
        Scenario(
            "https_new_passthrough",
            "HTTPS new connection, passthrough",
            "https_new",
            "passthrough",
            ["--set", "ignore_hosts=."],
            ["tls.inspect=selective"],
        ),
        Scenario(
            "connect_blocked",
            "Blocked CONNECT (403)",
            "blocked",
            "blocked",
            ["-s", str(block_script)],
            ["tls.inspect=none"],
        ),
    ]


# ---------------------------------------------------------------------------- proxies


class Proxy:
    def __init__(self, kind: str, proc: subprocess.Popen, log: Path):
        self.kind, self.proc, self.log = kind, proc, log
        self.port = 0
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.rules_line = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, n: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.kind} exited with {self.proc.returncode}:\n{self.stderr_tail()}"
            )


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp = args, tmp
        self.pin = can_pin(args.proxy_cpu, args.load_cpu)
        self.procs = Procs(pin=self.pin)
        self.mitmdump = venv_tool("mitmdump")
        self.cipa = venv_tool("cipa-proxy")
        self.wrk = shutil.which("wrk")
        self.hey = shutil.which("hey")
        if not self.hey:
            raise BenchError("hey not found: apt-get install -y hey (and wrk)")
        self.origin: Origin | None = None
        self.blocked_host = args.blocked_host
        (tmp / "bare-confdir").mkdir()
        (tmp / "cipa-ca").mkdir()
        self.seq = 0

    # ------------------------------------------------------------------ start / stop

    def start_bare(self, extra: list[str]) -> Proxy:
        self.seq += 1
        port = free_port()
        log = self.tmp / f"bare-{self.seq}.log"
        cmd = [
            self.mitmdump,
            "-q",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--set",
            f"confdir={self.tmp / 'bare-confdir'}",
            "--set",
            "ssl_insecure=true",
            "--set",
            "connection_strategy=lazy",
            *extra,
        ]
        proc = self.procs.start(cmd, self.args.proxy_cpu, log, stdout=subprocess.STDOUT)
        p = Proxy("bare mitmdump", proc, log)
        p.port = port
        return p

    def cipa_cmd(self, sets: list[str], audit: Path) -> list[str]:
        cmd = [
            self.cipa,
            "run",
            "--config",
            str(self.args.config),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            "0",
            "--set",
            "metrics.listen=127.0.0.1:0",
            "--set",
            f"audit.path={audit}",
            "--set",
            "tls.verify_upstream=false",
            "--set",
            f"tls.confdir={self.tmp / 'cipa-ca'}",
        ]
        # The origin's HTTPS port is not 443: allow CONNECT to it (tls.connect_ports).
        assert self.origin is not None
        # One process, like mitmdump: the comparison is per core.
        sets = [f"tls.connect_ports=[443, {self.origin.https_port}]", "workers=1", *sets]
        for kv in [*sets, *self.args.proxy_set]:
            cmd += ["--set", kv]
        return cmd

    def start_cipa(self, sets: list[str]) -> Proxy:
        self.seq += 1
        log = self.tmp / f"cipa-{self.seq}.log"
        cmd = self.cipa_cmd(sets, self.tmp / f"audit-{self.seq}")
        proc = self.procs.start(
            cmd, self.args.proxy_cpu, log, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        p = Proxy("cipa-proxy", proc, log)

        def reader() -> None:
            listening = rules = False
            for line in proc.stdout:
                line = line.rstrip("\n")
                p.lines.append(line)
                if line.startswith("cipa-proxy listening at ") and not p.port:
                    p.port = int(line.rsplit(":", 1)[1])
                    listening = True
                elif line.startswith("cipa-proxy rules loaded:"):
                    p.rules_line = line
                    rules = True
                elif line.startswith("cipa-proxy rules failed"):
                    p.rules_line = line
                    p.ready.set()
                if listening and rules:
                    p.ready.set()
            p.ready.set()

        threading.Thread(target=reader, daemon=True).start()
        return p

    def wait_ready(self, p: Proxy, timeout: float = 120) -> None:
        if p.kind == "cipa-proxy":
            if not p.ready.wait(timeout):
                raise BenchError(
                    f"cipa-proxy not ready after {timeout:.0f}s; stdout: {p.lines}\n{p.stderr_tail()}"
                )
            p.check_alive()
            if not (p.port and p.rules_line.startswith("cipa-proxy rules loaded")):
                raise BenchError(
                    f"cipa-proxy did not become ready; stdout: {p.lines}\n{p.stderr_tail()}"
                )
        else:
            try:
                wait_port("127.0.0.1", p.port, 60, p.proc, "mitmdump")
            except BenchError as exc:
                raise BenchError(f"{exc}:\n{p.stderr_tail()}") from None

    def stop(self, *proxies: Proxy) -> None:
        """SIGTERM all of them at once, then wait (cipa-proxy flushes its audit log on SIGTERM)."""
        for p in proxies:
            self.procs.terminate(p.proc)
        for p in proxies:
            self.procs.stop(p.proc)
            if p.proc.returncode not in (0, None) and p.kind == "cipa-proxy":
                print(
                    f"  note: cipa-proxy exited with {p.proc.returncode} on SIGTERM",
                    file=sys.stderr,
                )

    # ------------------------------------------------------------------ checks

    def probe(self, p: Proxy, kind: str) -> None:
        """One request through the proxy, checked, before any load is sent."""
        o = self.origin
        assert o is not None
        try:
            if kind == "http":
                status, body = http_via_proxy(p.port, o.http_port)
                if status != 200 or body != BODY:
                    raise BenchError(
                        f"{p.kind}: HTTP through the proxy answered {status}, body {body[:80]!r}"
                    )
            elif kind in ("decrypted", "passthrough"):
                status, body, der = https_via_proxy(p.port, "localhost", o.https_port)
                if status != 200 or body != BODY:
                    raise BenchError(
                        f"{p.kind}: HTTPS through the proxy answered {status}, body {body[:80]!r}"
                    )
                if kind == "passthrough" and der != o.der:
                    raise BenchError(
                        f"{p.kind}: HTTPS was decrypted, expected passthrough (not the origin's certificate)"
                    )
                if kind == "decrypted" and der == o.der:
                    raise BenchError(
                        f"{p.kind}: HTTPS passed through, expected decryption (the origin's certificate)"
                    )
            elif kind == "blocked":
                try:
                    https_via_proxy(p.port, self.blocked_host, 443)
                except OSError as exc:
                    if "403" not in str(exc):
                        raise BenchError(
                            f"{p.kind}: CONNECT {self.blocked_host}:443 failed without 403: {exc}"
                        ) from None
                else:
                    raise BenchError(f"{p.kind}: CONNECT {self.blocked_host}:443 was not refused")
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(f"{p.kind}: {kind} check failed: {exc}\n{p.stderr_tail()}") from None

    def find_blocked_host(self) -> str:
        """A host the configured rules block for 127.0.0.1, confirmed with ``cipa-proxy check``."""
        cands = [self.blocked_host] if self.blocked_host else list(BLOCKED_CANDIDATES)
        cmd = [
            self.cipa,
            "check",
            "--config",
            str(self.args.config),
            "--format",
            "json",
            "--client",
            "127.0.0.1",
        ]
        for kv in self.args.proxy_set:
            cmd += ["--set", kv]
        rc, out, err = self.procs.run([*cmd, *(f"https://{h}/" for h in cands)], timeout=180)
        if rc != 0:
            raise BenchError(f"cipa-proxy check failed ({rc}):\n{err.strip()}")
        for line in out.splitlines():
            d = json.loads(line)
            if d.get("action") == "block":
                return d["url"].split("/")[2]
        raise BenchError(
            f"none of {', '.join(cands)} is blocked by the rules; pass --blocked-host HOST"
        )

    # ------------------------------------------------------------------ load

    def load_cmd(
        self, load: str, proxy_port: int | None, seconds: float, force_hey: bool = False
    ) -> tuple[list[str], str]:
        """The load-generator command line and its parser kind."""
        o = self.origin
        assert o is not None
        c = str(self.args.connections)
        dur = f"{max(round(seconds), 1)}s"  # wrk takes whole seconds
        if load == "http" and self.wrk and not force_hey:
            target = f"http://127.0.0.1:{proxy_port}" if proxy_port else o.http_url
            cmd = [self.wrk, "-t", "1", "-c", c, "-d", dur, "--latency", "--timeout", "10s"]
            if proxy_port:
                cmd += ["-s", str(self.lua)]
            return [*cmd, target], "wrk"
        url = {
            "http": o.http_url,
            "https_keepalive": o.https_url,
            "https_new": o.https_url,
            "blocked": f"https://{self.blocked_host}/",
        }[load]
        cmd = [self.hey, "-z", f"{max(int(seconds * 1000), 100)}ms", "-c", c, "-t", "10"]
        if load in ("https_new", "blocked"):
            cmd.append("-disable-keepalive")
        if proxy_port:
            cmd += ["-x", f"http://127.0.0.1:{proxy_port}"]
        return [*cmd, url], ("hey-blocked" if load == "blocked" else "hey")

    def warm_up(self, load: str, proxy_port: int, seconds: float) -> None:
        """Unmeasured load first (connection pools, leaf certificates, code paths); hey takes ms."""
        if seconds > 0:
            cmd, _ = self.load_cmd(load, proxy_port, seconds, force_hey=True)
            self.procs.run(cmd, self.args.load_cpu, timeout=seconds + 60)

    def run_load(self, load: str, proxy_port: int | None, seconds: float) -> dict:
        cmd, kind = self.load_cmd(load, proxy_port, seconds)
        rc, out, err = self.procs.run(cmd, self.args.load_cpu, timeout=seconds + 60)
        if rc != 0:
            raise BenchError(f"{' '.join(cmd)} exited {rc}:\n{out}\n{err}")
        if kind == "wrk":
            res = parse_wrk(out)
            res["unexpected"] = res["bad_status"] + res["socket_errors"]
        elif kind == "hey-blocked":
            res = parse_hey(out, expect_status=None, expect_error="Forbidden")
        else:
            res = parse_hey(out)
        res["tool"] = "wrk" if kind == "wrk" else "hey"
        return res

    def measure(self, p: Proxy, load: str, seconds: float) -> dict:
        p.check_alive()
        pc, lc = self.args.proxy_cpu, self.args.load_cpu
        pj0, lj0 = cpu_jiffies(pc), cpu_jiffies(lc)
        cpu0 = cpu_seconds(p.pid)
        res = self.run_load(load, p.port, seconds)
        time.sleep(0.25)  # let the proxy finish closing connections; an idle proxy costs ~nothing
        cpu = cpu_seconds(p.pid) - cpu0
        pj1, lj1 = cpu_jiffies(pc), cpu_jiffies(lc)
        p.check_alive()
        # Neighbours: CPU time on the proxy's core that was not the proxy's (other people's processes, irq).
        ptotal = (pj1[1] - pj0[1]) / CLK_TCK
        res["neighbours"] = (
            max(0.0, (pj1[0] - pj0[0]) / CLK_TCK - cpu) / ptotal if ptotal > 0 else None
        )
        res["load_cpu_busy"] = (lj1[0] - lj0[0]) / (lj1[1] - lj0[1]) if lj1[1] > lj0[1] else None
        good = res["good"]
        res.update(
            cpu_s=round(cpu, 3),
            rps=good / res["seconds"] if res["seconds"] else 0.0,
            cpu_ms_per_req=cpu * 1000 / good if good else None,
            busy=cpu / res["seconds"] if res["seconds"] else None,
            rss_mb=rss_mb(p.pid),
        )
        if res["unexpected"] > max(5, 0.01 * max(res["requests"], 1)):
            res["warning"] = f"{res['unexpected']} unexpected outcome(s) of {res['requests']}"
            print(
                f"    WARNING {p.kind}: {res['warning']}: {res.get('errors') or ''}",
                file=sys.stderr,
            )
        return res

    # ------------------------------------------------------------------ scenarios

    def background_load(self, seconds: float) -> dict[int, float]:
        """How busy both CPUs are before anything starts (other people's work makes figures noisy)."""
        cpus = (self.args.load_cpu, self.args.proxy_cpu)
        before = {c: cpu_jiffies(c) for c in cpus}
        time.sleep(seconds)
        out = {}
        for c in cpus:
            b, t = cpu_jiffies(c)
            out[c] = (b - before[c][0]) / max(t - before[c][1], 1)
        busy = ", ".join(f"CPU{c} {v:.0%}" for c, v in out.items())
        print(
            f"  background load before the run: {busy}"
            + (" (noisy machine: expect scattered rounds)" if max(out.values()) > 0.15 else ""),
            file=sys.stderr,
        )
        return out

    def origin_baseline(self, seconds: float) -> dict:
        out = {}
        for load, label in (
            ("http", "HTTP keep-alive"),
            ("https_keepalive", "HTTPS keep-alive"),
            ("https_new", "HTTPS new connection"),
        ):
            res = self.run_load(load, None, seconds)
            out[load] = {
                "label": label,
                "tool": res["tool"],
                "rps": res["good"] / res["seconds"],
                "p50": res.get("p50"),
                "unexpected": res["unexpected"],
            }
            print(
                f"  origin alone, {label:22} {out[load]['rps']:>10,.0f} req/s ({res['tool']})",
                file=sys.stderr,
            )
        return out

    def run_scenario(self, sc: Scenario) -> dict:
        a = self.args
        print(f"\n== {sc.title}", file=sys.stderr)
        bare = self.start_bare(sc.bare_args)
        cipa = self.start_cipa(sc.cipa_sets)
        try:
            t0 = time.monotonic()
            for attempt in range(3):
                try:
                    self.wait_ready(bare)
                    break
                except BenchError as exc:
                    # The free port picked for mitmdump can be taken by someone else meanwhile.
                    if attempt == 2 or "in use" not in str(exc).lower():
                        raise
                    self.stop(bare)
                    bare = self.start_bare(sc.bare_args)
            self.wait_ready(cipa)
            print(
                f"  both ready in {time.monotonic() - t0:.1f} s; {cipa.rules_line}", file=sys.stderr
            )
            for p in (bare, cipa):
                self.probe(p, sc.probe)
            for p in (bare, cipa):
                self.warm_up(sc.load, p.port, a.warmup)
            rounds: dict[str, list[dict]] = {"bare": [], "cipa": []}
            retries = (
                a.rounds
            )  # at most this many repeated measurements per scenario (bounded time)
            for r in range(a.rounds):
                order = (
                    [("bare", bare), ("cipa", cipa)]
                    if r % 2 == 0
                    else [("cipa", cipa), ("bare", bare)]
                )
                for name, p in order:
                    res = self.measure(p, sc.load, a.duration)
                    if retries > 0 and (res["neighbours"] or 0) > a.max_neighbours:
                        retries -= 1
                        # Someone else took the proxy's core: measure once more, keep the second.
                        print(
                            f"  round {r + 1} {name:4}: other processes took {res['neighbours']:.0%} "
                            "of the proxy's CPU; measuring again",
                            file=sys.stderr,
                        )
                        retry = self.measure(p, sc.load, a.duration)
                        retry["discarded"] = res
                        res = retry
                    rounds[name].append(res)
                    print(
                        f"  round {r + 1} {name:4}: {res['rps']:>8,.0f} req/s  "
                        f"{res['cpu_ms_per_req'] or 0:6.3f} ms CPU/req  busy {res['busy'] or 0:4.0%}  "
                        f"p50 {1000 * (res.get('p50') or 0):6.1f} ms  ({res['good']} ok, {res['unexpected']} other)"
                        f"  | CPU{a.load_cpu} busy {res['load_cpu_busy'] or 0:4.0%}, others on CPU{a.proxy_cpu} "
                        f"{res['neighbours'] or 0:4.0%}",
                        file=sys.stderr,
                    )
        finally:
            self.stop(bare, cipa)
        return {
            "title": sc.title,
            "tool": rounds["bare"][0]["tool"],
            "bare_args": sc.bare_args,
            "cipa_sets": sc.cipa_sets,
            "rules": cipa.rules_line,
            "rounds": rounds,
            "summary": summarize(rounds),
        }

    def write_lua(self) -> None:
        o = self.origin
        assert o is not None
        self.lua = self.tmp / "absform.lua"
        self.lua.write_text(
            f'wrk.method = "GET"\nwrk.path = "http://localhost:{o.http_port}/"\n'
            f'wrk.headers["Host"] = "localhost:{o.http_port}"\n'
        )


def summarize(rounds: dict[str, list[dict]]) -> dict:
    s: dict = {}
    for name in ("bare", "cipa"):
        rs = rounds[name]
        s[name] = {
            "rps": median([r["rps"] for r in rs]),
            "cpu_ms_per_req": median([r["cpu_ms_per_req"] for r in rs]),
            "busy": median([r["busy"] for r in rs]),
            "p50_ms": _ms(median([r.get("p50") for r in rs])),
            "p99_ms": _ms(median([r.get("p99") for r in rs])),
            "load_cpu_busy": median([r.get("load_cpu_busy") for r in rs]),
            "neighbours": median([r.get("neighbours") for r in rs]),
            "rss_mb": max((r["rss_mb"] for r in rs if r.get("rss_mb")), default=None),
            "unexpected": sum(r["unexpected"] for r in rs),
        }
    b, c = s["bare"], s["cipa"]
    s["rps_ratio"] = c["rps"] / b["rps"] if b["rps"] else None
    s["cpu_ratio"] = (
        c["cpu_ms_per_req"] / b["cpu_ms_per_req"]
        if b["cpu_ms_per_req"] and c["cpu_ms_per_req"]
        else None
    )
    pairs = list(zip(rounds["bare"], rounds["cipa"], strict=True))
    rr = [c["rps"] / b["rps"] for b, c in pairs if b["rps"]]
    cr = [
        c["cpu_ms_per_req"] / b["cpu_ms_per_req"]
        for b, c in pairs
        if b["cpu_ms_per_req"] and c["cpu_ms_per_req"]
    ]
    s["rps_ratio_range"] = [min(rr), max(rr)] if rr else None
    s["cpu_ratio_range"] = [min(cr), max(cr)] if cr else None
    return s


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000


# ---------------------------------------------------------------------------- clients for the checks


def http_via_proxy(proxy_port: int, origin_port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
    try:
        conn.request(
            "GET", f"http://localhost:{origin_port}/", headers={"Host": f"localhost:{origin_port}"}
        )
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def https_via_proxy(proxy_port: int, host: str, port: int) -> tuple[int, bytes, bytes]:
    """GET / through a CONNECT tunnel; returns (status, body, the certificate the client saw)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, context=ctx, timeout=10)
    conn.set_tunnel(host, port)
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        return r.status, r.read(), conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()


# ---------------------------------------------------------------------------- report


def fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


def floors(results: dict) -> list[dict]:
    out = []
    http_s = results.get("http_keepalive", {}).get("summary")
    if http_s:
        v = http_s["rps_ratio"]
        cr = http_s["cpu_ratio"]
        out.append(
            {
                "floor": "keep-alive HTTP requests/s, cipa/bare",
                "value": v,
                "op": ">=",
                "limit": FLOOR_HTTP_RPS,
                "pass": v is not None and v >= FLOOR_HTTP_RPS,
                "cross_check": f"per core (1 / CPU per request): {1 / cr:.2f}x" if cr else "",
            }
        )
    tun = results.get("https_new_passthrough", {}).get("summary")
    if tun:
        v = tun["cpu_ratio"]
        b, c = tun["bare"]["cpu_ms_per_req"], tun["cipa"]["cpu_ms_per_req"]
        out.append(
            {
                "floor": "CPU per new passthrough tunnel, cipa/bare",
                "value": v,
                "op": "<=",
                "limit": FLOOR_TUNNEL_CPU,
                "pass": v is not None and v <= FLOOR_TUNNEL_CPU,
                "cross_check": f"{fmt(c, '.2f')} vs {fmt(b, '.2f')} ms per tunnel",
            }
        )
    return out


def markdown(report: dict) -> str:
    m, p = report["machine"], report["params"]
    o = report["origin"]
    busy = max(report["background"].values(), default=0)
    warn = (
        [
            f"**Busy machine: the CPUs were already {busy:.0%} busy before the run; these figures "
            "are not reliable. Re-run on a quiet machine.**",
            "",
        ]
        if busy > 0.5
        else []
    )
    lines = warn + [
        f"### cipa-proxy vs bare `mitmdump -q`: medians of {p['rounds']} alternating rounds, "
        f"{p['duration']:g} s each, {p['connections']} connections",
        "",
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}; Python {m['python']}, "
        f"mitmproxy {m.get('mitmproxy', '?')}, uvloop {m.get('uvloop', '-')}. "
        + (
            f"Proxy pinned to CPU {p['proxy_cpu']}; load generator and origin on CPU {p['load_cpu']}. "
            if p["pinned"]
            else "NOT pinned (taskset or a second CPU missing). "
        )
        + f"Origin: {o['kind']} {o.get('version', '')}; load: {p['tools']}. "
        f"cipa-proxy: {p['config']} with every filtering addon and the audit log on ({report.get('rules', '')}).",
        "",
        "Origin alone on CPU 0 (no proxy): "
        + ", ".join(
            f"{v['label']} {v['rps']:,.0f} req/s ({v['tool']})" for v in o["baseline"].values()
        )
        + ".",
        "",
        "| Scenario | tool | bare req/s | cipa req/s | req/s cipa/bare (rounds) | bare CPU ms/req | cipa CPU ms/req "
        "| CPU cipa/bare (rounds) | proxy core busy bare / cipa | p50 ms bare / cipa |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in report["scenarios"].values():
        s = res["summary"]
        b, c = s["bare"], s["cipa"]
        rr = s["rps_ratio_range"] or [None, None]
        cr = s["cpu_ratio_range"] or [None, None]
        lines.append(
            f"| {res['title']} | {res['tool']} | {fmt(b['rps'], ',.0f')} | {fmt(c['rps'], ',.0f')} "
            f"| **{fmt(s['rps_ratio'], '.2f', 'x')}** ({fmt(rr[0], '.2f')}-{fmt(rr[1], '.2f')}) "
            f"| {fmt(b['cpu_ms_per_req'], '.3f')} | {fmt(c['cpu_ms_per_req'], '.3f')} "
            f"| **{fmt(s['cpu_ratio'], '.2f', 'x')}** ({fmt(cr[0], '.2f')}-{fmt(cr[1], '.2f')}) "
            f"| {fmt(b['busy'], '.0%')} / {fmt(c['busy'], '.0%')} "
            f"| {fmt(b['p50_ms'], '.1f')} / {fmt(c['p50_ms'], '.1f')} |"
        )
    lines += [
        "",
        "| Floor (issue 3) | measured | required | result | cross-check |",
        "|---|---:|---:|---|---|",
    ]
    for f in report["floors"]:
        lines.append(
            f"| {f['floor']} | {fmt(f['value'], '.2f', 'x')} | {f['op']} {f['limit']}x "
            f"| **{'PASS' if f['pass'] else 'FAIL'}** | {f.get('cross_check', '')} |"
        )
    host = f", host `{report['blocked_host']}`" if report.get("blocked_host") else ""
    lines += [
        "",
        "Like with like: both proxies `connection_strategy=lazy`, no upstream certificate verification. "
        "Passthrough: bare gets `ignore_hosts=.`, cipa-proxy `tls.inspect=selective` (the origin host needs no "
        "decryption); both read the ClientHello. Decrypted: cipa-proxy `tls.inspect=all`. Blocked CONNECT: bare "
        "gets a 3-line `-s` script answering 403 in `http_connect`, cipa-proxy `tls.inspect=none` "
        f"(refused at CONNECT){host}. CPU per request = the proxy process's utime+stime (/proc/PID/stat) / "
        "requests completed; ratios are of the medians; (rounds) = min-max of the per-round ratios.",
    ]
    nb = [
        r.get("neighbours")
        for res in report["scenarios"].values()
        for side in ("bare", "cipa")
        for r in res["rounds"][side]
        if r.get("neighbours") is not None
    ]
    redone = sum(
        1
        for res in report["scenarios"].values()
        for side in ("bare", "cipa")
        for r in res["rounds"][side]
        if "discarded" in r
    )
    if nb:
        lines += [
            "",
            f"Other processes on the proxy's CPU during the measurements: median {median(nb):.0%}, "
            f"max {max(nb):.0%} of the core (background load before the run: "
            f"{', '.join(f'CPU{c} {b:.0%} busy' for c, b in report['background'].items())}); "
            f"{redone} measurement(s) repeated because others took more than "
            f"{report['params']['max_neighbours']:.0%} of it. Busy machines scatter req/s; "
            "CPU per request is the steadier figure.",
        ]
    if any(
        r["summary"]["bare"]["unexpected"] or r["summary"]["cipa"]["unexpected"]
        for r in report["scenarios"].values()
    ):
        lines.append("")
        lines.append(
            "Unexpected outcomes (errors or wrong status): "
            + ", ".join(
                f"{r['title']}: bare {r['summary']['bare']['unexpected']}, "
                f"cipa {r['summary']['cipa']['unexpected']}"
                for r in report["scenarios"].values()
            )
            + "."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternating rounds per scenario (default 5; --quick 2)",
    )
    ap.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per measurement (default 8; --quick 2)",
    )
    ap.add_argument(
        "--connections", type=int, default=20, help="concurrent client connections (default 20)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="a smoke run under a minute: 2 rounds of 2 s"
    )
    ap.add_argument(
        "--json",
        nargs="?",
        const=str(REPO / "bench" / "results-proxy.json"),
        default=None,
        metavar="PATH",
        help="also write the raw results as JSON (default path bench/results-proxy.json)",
    )
    ap.add_argument(
        "--config",
        type=Path,
        default=REPO / "config.yaml",
        help="cipa-proxy config (default: the repo's)",
    )
    ap.add_argument(
        "--proxy-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra --set for cipa-proxy (e.g. rules_dir=/path), repeatable",
    )
    ap.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="KEY",
        help="run only these (http_keepalive, https_keepalive_decrypted, https_new_passthrough, "
        "connect_blocked); repeatable",
    )
    ap.add_argument(
        "--blocked-host",
        default=None,
        help="host for the blocked-CONNECT scenario (default: found)",
    )
    ap.add_argument("--origin", choices=("auto", "nginx", "python"), default="auto")
    ap.add_argument("--proxy-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument(
        "--max-neighbours",
        type=float,
        default=0.2,
        metavar="FRACTION",
        help="repeat a measurement (once; at most --rounds per scenario) when other processes "
        "took more than this share of the proxy's CPU (default 0.2; --quick: never repeat)",
    )
    ap.add_argument("--check", action="store_true", help="exit 1 when a floor fails")
    a = ap.parse_args(argv)
    a.rounds = a.rounds or (2 if a.quick else 5)
    a.duration = a.duration or (2.0 if a.quick else 8.0)
    a.warmup = 0.5 if a.quick else 1.0  # seconds per proxy per scenario
    a.baseline = 1.0
    if a.quick and a.max_neighbours == 0.2:
        a.max_neighbours = 1.0  # a smoke run: no repeats
    a.config = a.config.resolve()
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_on_sigterm()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="cipa-bench-"))
    bench: Bench | None = None
    try:
        bench = Bench(args, tmp)
        if bench.pin:
            os.sched_setaffinity(
                0, {args.load_cpu}
            )  # this script's own checks stay off the proxy's CPU
        else:
            print(
                "warning: not pinning (needs taskset and CPUs "
                f"{args.proxy_cpu},{args.load_cpu}); figures will be noisier",
                file=sys.stderr,
            )
        block_script = tmp / "block_connect.py"
        all_sc = scenarios(block_script)
        chosen = [s for s in all_sc if not args.scenario or s.key in args.scenario]
        if not chosen:
            raise BenchError(f"no such scenario; choose from {', '.join(s.key for s in all_sc)}")
        if any(s.load == "blocked" for s in chosen):
            bench.blocked_host = bench.find_blocked_host()
            block_script.write_text(
                "from mitmproxy import http\n\n\ndef http_connect(flow):\n"
                f"    if flow.request.host == {bench.blocked_host!r}:\n"
                '        flow.response = http.Response.make(403, b"Blocked\\n", {"Content-Type": "text/plain"})\n'
            )
        print(
            f"origin + load on CPU {args.load_cpu}, proxies on CPU {args.proxy_cpu}; "
            f"{args.rounds} rounds x {args.duration:g} s x {len(chosen)} scenarios x 2 proxies",
            file=sys.stderr,
        )
        background = bench.background_load(0.5)
        bench.origin = start_origin(bench.procs, tmp, args.load_cpu, args.origin)
        bench.write_lua()
        baseline = bench.origin_baseline(args.baseline)
        results = {sc.key: bench.run_scenario(sc) for sc in chosen}
        rules = next((r["rules"] for r in results.values() if r["rules"]), "")
        tools = sorted({r["tool"] for r in results.values()})
        report = {
            "machine": machine_facts(),
            "params": {
                "rounds": args.rounds,
                "duration": args.duration,
                "connections": args.connections,
                "warmup": args.warmup,
                "max_neighbours": args.max_neighbours,
                "pinned": bench.pin,
                "proxy_cpu": args.proxy_cpu,
                "load_cpu": args.load_cpu,
                "config": _rel(args.config),
                "proxy_set": args.proxy_set,
                "tools": ", ".join(
                    f"{t} {tool_version(t, '-v' if t == 'wrk' else None)}" for t in tools
                ),
            },
            "origin": {
                "kind": bench.origin.kind,
                "version": tool_version("nginx") if bench.origin.kind == "nginx" else "asyncio",
                "baseline": baseline,
            },
            "background": background,
            "blocked_host": bench.blocked_host,
            "rules": rules,
            "scenarios": results,
        }
        report["floors"] = floors(results)
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        md = markdown(report)
        print(md)
        print()
        for f in report["floors"]:
            print(
                f"{'PASS' if f['pass'] else 'FAIL'}: {f['floor']} = {fmt(f['value'], '.2f', 'x')} "
                f"(required {f['op']} {f['limit']}x)"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
            print(f"JSON written to {args.json}", file=sys.stderr)
        print(f"elapsed {report['elapsed_s']:.0f} s", file=sys.stderr)
        return 1 if args.check and not all(f["pass"] for f in report["floors"]) else 0
    except BenchError as exc:
        print(f"bench/proxy.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbench/proxy.py: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        if bench is not None:
            bench.procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def _rel(p: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(p.relative_to(REPO))
    return str(p)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
