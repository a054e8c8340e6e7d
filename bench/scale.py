"""Throughput through 1 and 2 proxy processes: ``cipa-proxy run --workers N``.

Usage::

    .venv/bin/python bench/scale.py                      # 3 rounds x 10 s, all variants below
    .venv/bin/python bench/scale.py --rounds 5 --duration 15 --variants 1w,2w-shared
    .venv/bin/python bench/scale.py --json results.json  # also write the raw numbers

Variants (each started once, then measured in turn, round after round, so that
a noisy neighbour hurts every variant alike):

- ``1w``: ``cipa-proxy run`` (one process)
- ``2w-shared``: ``--workers 2``, the workers accept from one inherited socket (the default)
- ``2w-reuseport``: ``--workers 2`` with ``CIPA_WORKERS_BALANCE=reuseport`` (SO_REUSEPORT)
- ``2w-haproxy``: HAProxy in TCP mode in front of two single proxies on their own ports
  (for cost only: the proxies see HAProxy's address, not the client's)
- ``2w-nft``: an nftables ``redirect`` spreading connections over two single proxies
  (keeps client addresses); needs root: the whole benchmark is re-run inside a new
  network namespace (loopback only) for it

Scenarios: keep-alive HTTP (wrk, 32 connections), a new connection per HTTP request
and a new CONNECT tunnel per HTTPS request (hey ``-disable-keepalive``; allowed host,
so the tunnel passes through undecrypted as in ``tls.inspect: selective``). The
proxies run the shipped config and rules and write audit records.

This machine has 2 cores and the load generator and the origin run on them too, so
the raw 2-worker figure is capped by them. The CPU every party used is measured
(``/proc``; the load generator from its rusage), and the table reports besides the raw
ratio the throughput per proxy CPU-second: if it stays the same with two workers,
two dedicated cores give twice the throughput of one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from common import make_cert  # bench/common.py: the script's own folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = (b"cipa-proxy scale bench " + b"0123456789abcdef" * 64)[:1024]
VARIANTS = ("1w", "2w-shared", "2w-reuseport", "2w-haproxy", "2w-nft")
SCENARIOS = ("http-keepalive", "http-newconn", "https-newconn", "http-newconn-kill")


class BenchError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- origin


async def _origin_main(http_port: int, https_port: int, cert: str, key: str) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
        + str(len(BODY)).encode()
        + b"\r\n\r\n"
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await reader.readuntil(b"\r\n\r\n")
                writer.write(head + BODY)
                if b"connection: close" in req.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    servers = [
        await asyncio.start_server(handle, "127.0.0.1", http_port, backlog=4096),
        await asyncio.start_server(handle, "127.0.0.1", https_port, ssl=ctx, backlog=4096),
    ]
    print("origin ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


def _wait_line(proc: subprocess.Popen, pattern: str, timeout: float, log: list[str]) -> re.Match:
    found: list[re.Match] = []
    done = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if not found:
                m = re.search(pattern, line)
                if m:
                    found.append(m)
                    done.set()
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    done.wait(timeout)
    if not found:
        raise BenchError(f"no {pattern!r} within {timeout}s:\n" + "".join(log[-30:]))
    return found[0]


@dataclass
class Proxy:
    """One variant: the processes, the port clients use, the audit directories per worker."""

    name: str
    port: int
    procs: list[subprocess.Popen]
    audit_dirs: list[Path]
    logs: list[list[str]] = field(default_factory=list)

    def pids(self) -> list[int]:
        return [p for proc in self.procs for p in tree(proc.pid)]

    def records(self) -> list[int]:
        counts = []
        for d in self.audit_dirs:
            n = 0
            for f in d.glob("audit-*.jsonl"):
                with open(f, "rb") as fh:
                    n += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
            counts.append(n)
        return counts

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


class Bench:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.cert, self.key, _ = make_cert(work)  # bench/common.py (hey does not verify it)
        self.http_port, self.https_port = free_port(), free_port()
        self.origin = subprocess.Popen(
            [sys.executable, __file__, "origin", str(self.http_port), str(self.https_port),
             str(self.cert), str(self.key)],
            stdout=subprocess.PIPE, text=True, process_group=0,
        )  # fmt: skip
        _wait_line(self.origin, "origin ready", 20, [])
        self.lua = work / "absform.lua"
        self.lua.write_text(
            f'wrk.method = "GET"\nwrk.path = "http://localhost:{self.http_port}/"\n'
            f'wrk.headers["Host"] = "localhost:{self.http_port}"\n'
        )
        self.proxies: dict[str, Proxy] = {}

    # ------------------------------------------------------------------ proxies

    def _config(self, root: Path) -> Path:
        cfg = yaml.safe_load((REPO / "config.yaml").read_text())
        cfg.update(
            rules_dir=str(REPO / "rules"),
            listen={"host": "127.0.0.1", "port": 0},
            metrics={"listen": "127.0.0.1:0"},
            log={"format": "text", "level": "warning"},
        )
        cfg["audit"] = {**cfg.get("audit", {}), "path": str(root / "audit"), "timezone": "UTC"}
        cfg["tls"] = {
            **cfg.get("tls", {}),
            "confdir": str(self.work / "ca"),
            "upstream_ca": str(self.cert),
            "connect_ports": [443, self.https_port],
        }
        root.mkdir(parents=True, exist_ok=True)
        path = root / "config.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def _run(
        self, root: Path, workers: int, env: dict | None = None, port: int = 0
    ) -> tuple[subprocess.Popen, int, list[str]]:
        cfg = self._config(root)
        log: list[str] = []
        proc = subprocess.Popen(
            [str(BIN / "cipa-proxy"), "run", "--config", str(cfg), "--workers", str(workers),
             "--listen-port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, process_group=0,
            env={**os.environ, **(env or {})}, cwd=root,
        )  # fmt: skip
        m = _wait_line(proc, r"cipa-proxy rules loaded", 120, log)
        del m
        port_m = next(
            (re.search(r"listening at [^ ]+:(\d+)", x) for x in log if "listening at" in x), None
        )
        deadline = time.monotonic() + 30
        while port_m is None and time.monotonic() < deadline:
            time.sleep(0.1)
            port_m = next(
                (re.search(r"listening at [^ ]+:(\d+)", x) for x in log if "listening at" in x),
                None,
            )
        if port_m is None:
            raise BenchError("no listening line:\n" + "".join(log))
        return proc, int(port_m.group(1)), log

    def start(self, name: str) -> Proxy:
        root = self.work / name
        if name == "1w":
            proc, port, log = self._run(root, 1)
            p = Proxy(name, port, [proc], [root / "audit"], [log])
        elif name in ("2w-shared", "2w-reuseport"):
            balance = name.split("-", 1)[1]
            proc, port, log = self._run(root, 2, {"CIPA_WORKERS_BALANCE": balance})
            p = Proxy(name, port, [proc], [root / "audit" / f"worker-{i}" for i in (0, 1)], [log])
        else:  # two single proxies on their own ports, and a front
            singles = [self._run(root / f"w{i}", 1) for i in (0, 1)]
            front_port = free_port()
            if name == "2w-haproxy":
                front = self._haproxy(root, front_port, [s[1] for s in singles])
            else:
                front = self._nft(front_port, [s[1] for s in singles])
            procs = [s[0] for s in singles] + ([front] if front else [])
            p = Proxy(
                name,
                front_port,
                procs,
                [root / f"w{i}" / "audit" for i in (0, 1)],
                [s[2] for s in singles],
            )
        self._check(p)
        return p

    def _haproxy(self, root: Path, port: int, backends: list[int]) -> subprocess.Popen:
        cfg = root / "haproxy.cfg"
        servers = "\n".join(f"    server w{i} 127.0.0.1:{b}" for i, b in enumerate(backends))
        cfg.write_text(
            "global\n    maxconn 4000\n    nbthread 1\n"
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n"
            "    timeout server 60s\n"
            f"frontend f\n    bind 127.0.0.1:{port}\n    default_backend b\n"
            f"backend b\n    balance leastconn\n{servers}\n"
        )
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], process_group=0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return proc
            time.sleep(0.1)
        raise BenchError("haproxy did not start")

    def _nft(self, port: int, backends: list[int]) -> None:
        m = ", ".join(f"{i} : {b}" for i, b in enumerate(backends))
        rules = (
            "table ip cipa_bench {\n  chain out {\n    type nat hook output priority -100;\n"
            f"    ip daddr 127.0.0.1 tcp dport {port} redirect to : numgen inc mod "
            f"{len(backends)} map {{ {m} }}\n  }}\n}}\n"
        )
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
        return None

    def _check(self, p: Proxy) -> None:
        """One allowed request through the variant: the origin's page must come back."""
        with socket.create_connection(("127.0.0.1", p.port), 10) as s:
            s.sendall(
                f"GET http://localhost:{self.http_port}/ HTTP/1.1\r\n"
                f"Host: localhost:{self.http_port}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        if not data.startswith(b"HTTP/1.1 200") or BODY not in data:
            raise BenchError(f"{p.name}: check request failed: {data[:300]!r}")

    # ------------------------------------------------------------------ load

    def load(self, p: Proxy, scenario: str) -> dict | None:
        a = self.args
        kill = scenario.endswith("-kill")
        if kill:
            if not p.name.startswith("2w-") or p.name in ("2w-haproxy", "2w-nft"):
                return None  # only a supervisor restarts a worker
            scenario = scenario.removesuffix("-kill")
        if scenario == "http-keepalive":
            cmd = ["wrk", "-t", "1", "-c", str(a.connections), "-d", f"{a.duration}s",
                   "-s", str(self.lua), f"http://127.0.0.1:{p.port}"]  # fmt: skip
        else:
            url = (
                f"http://localhost:{self.http_port}/"
                if scenario == "http-newconn"
                else f"https://localhost:{self.https_port}/"
            )
            cmd = ["hey", "-z", f"{a.duration}s", "-c", str(a.connections), "-disable-keepalive",
                   "-x", f"http://127.0.0.1:{p.port}", url]  # fmt: skip
        pids = p.pids()
        before_recs = p.records()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        cpu0 = cpu_seconds(pids)
        ocpu0 = cpu_seconds([self.origin.pid])
        idle0 = _idle()
        timer = None
        if kill:  # SIGKILL one worker half-way through; the supervisor restarts it
            victim = _children(p.procs[0].pid)[0]
            timer = threading.Timer(a.duration / 2, os.kill, (victim, signal.SIGKILL))
            timer.start()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.duration + 60)
        if timer is not None:
            timer.join()
            pids = [x for x in pids if x != victim]
        idle1 = _idle()
        cpu1 = cpu_seconds(pids)
        ocpu1 = cpu_seconds([self.origin.pid])
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        after_recs = p.records()
        text = out.stdout + out.stderr
        m = re.search(r"Requests/sec:\s+([\d.]+)", text)
        if out.returncode != 0 or not m:
            raise BenchError(f"{p.name} {scenario}: load generator failed:\n{text[-2000:]}")
        ok, errors = _count(text, scenario)
        served = [b - a_ for a_, b in zip(before_recs, after_recs, strict=True)]
        gen = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        return {
            "rps": float(m.group(1)),
            "ok": ok,
            "errors": errors,
            "wall": wall,
            # (a killed worker takes its CPU time with it: no CPU figure for -kill)
            "proxy_cores": float("nan") if kill else (cpu1 - cpu0) / wall,
            "origin_cores": (ocpu1 - ocpu0) / wall,
            "loadgen_cores": gen / wall,
            "idle_cores": (idle1 - idle0) / CLK_TCK / wall,
            "per_worker": served,
        }


def _idle() -> int:
    with open("/proc/stat") as f:
        parts = f.readline().split()
    return int(parts[4]) + int(parts[5])  # idle + iowait, all CPUs


def _count(text: str, scenario: str) -> tuple[int, int]:
    if scenario == "http-keepalive":
        total = int(re.search(r"(\d+) requests in", text).group(1))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        sock = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
        )
        errors = (int(bad.group(1)) if bad else 0) + (
            sum(int(x) for x in sock.groups()) if sock else 0
        )
        return total - (int(bad.group(1)) if bad else 0), errors
    ok = sum(
        int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text) if code == "200"
    )
    bad = sum(
        int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text) if code != "200"
    )
    err = re.search(r"Error distribution:(.*)", text, re.S)
    errs = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+Get", err.group(1))) if err else 0
    return ok, bad + errs


# ----------------------------------------------------------------------------- report


def summarize(results: dict[str, dict[str, list[dict]]]) -> dict:
    out: dict = {}
    for variant, by_scn in results.items():
        for scn, runs in by_scn.items():
            if not runs:
                continue

            def med(k: str, runs: list[dict] = runs) -> float:
                return statistics.median(r[k] for r in runs)

            served = [
                sum(r["per_worker"][i] for r in runs) for i in range(len(runs[0]["per_worker"]))
            ]
            out.setdefault(variant, {})[scn] = {
                "rps": med("rps"),
                "rps_runs": [round(r["rps"]) for r in runs],
                "proxy_cores": med("proxy_cores"),
                "origin_cores": med("origin_cores"),
                "loadgen_cores": med("loadgen_cores"),
                "idle_cores": med("idle_cores"),
                "rps_per_core": statistics.median(
                    r["rps"] / max(r["proxy_cores"], 1e-9) for r in runs
                ),
                "errors": sum(r["errors"] for r in runs),
                "share": [round(s / max(sum(served), 1) * 100) for s in served],
            }
    return out


def markdown(summary: dict, args: argparse.Namespace) -> str:
    lines = [
        f"`bench/scale.py` — {args.rounds} rounds x {args.duration} s per cell, "
        f"{args.connections} connections, variants measured in turn each round; "
        f"{os.cpu_count()} cores ({_cpu_model()}), Python {platform.python_version()}. "
        "Medians; `runs` lists every round.",
        "",
        "| scenario | variant | req/s (median) | runs | vs 1w | proxy CPU (cores) | req/s per proxy core | per-core vs 1w | origin / loadgen / idle (cores) | share per worker | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scn in SCENARIOS:
        base = summary.get("1w", {}).get(scn)
        for variant in summary:
            s = summary[variant].get(scn)
            if not s:
                continue
            ratio = f"{s['rps'] / base['rps']:.2f}x" if base else "-"
            eff = f"{s['rps_per_core'] / base['rps_per_core']:.2f}" if base else "-"
            lines.append(
                f"| {scn} | {variant} | {s['rps']:.0f} | {' / '.join(map(str, s['rps_runs']))} | "
                f"{ratio} | {s['proxy_cores']:.2f} | {s['rps_per_core']:.0f} | {eff} | "
                f"{s['origin_cores']:.2f} / {s['loadgen_cores']:.2f} / {s['idle_cores']:.2f} | "
                f"{' / '.join(f'{x}%' for x in s['share'])} | {s['errors']} |"
            )
    lines += [
        "",
        "`vs 1w` is the raw throughput ratio on this 2-core machine, where the load generator "
        "and the origin take CPU from the proxy. `per-core vs 1w` is throughput per CPU-second "
        "the proxy processes used, relative to one worker: a value near 1.0 means two workers on "
        "two dedicated cores would give about 2x (the scaling efficiency once the load generator "
        "runs elsewhere). `share per worker` is from each worker's audit records.",
    ]
    return "\n".join(lines)


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--json", default=None, help="write raw results here")
    p.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "origin":
        import uvloop

        http_port, https_port, cert, key = sys.argv[2:6]
        uvloop.run(_origin_main(int(http_port), int(https_port), cert, key))
        return 0
    args = parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for tool in ("wrk", "hey"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found (Debian: apt-get install {tool})")
    if "2w-haproxy" in variants and not shutil.which("haproxy"):
        print("haproxy not installed: skipping 2w-haproxy", file=sys.stderr)
        variants.remove("2w-haproxy")
    if "2w-nft" in variants and not args.in_netns:
        if os.geteuid() == 0 and shutil.which("nft") and shutil.which("unshare"):
            # Everything, load generator included, in a fresh network namespace (loopback only).
            inner = [sys.executable, __file__, *sys.argv[1:], "--in-netns"]
            return subprocess.call(
                ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner]
            )
        print("nftables variant needs root, nft and unshare: skipping 2w-nft", file=sys.stderr)
        variants.remove("2w-nft")

    with tempfile.TemporaryDirectory(prefix="cipa-scale-") as tmp:
        bench = Bench(Path(tmp), args)
        results: dict[str, dict[str, list[dict]]] = {
            v: {s: [] for s in scenarios} for v in variants
        }
        try:
            for v in variants:
                print(f"starting {v}", file=sys.stderr, flush=True)
                bench.proxies[v] = bench.start(v)
            for r in range(args.rounds):
                order = variants if r % 2 == 0 else variants[::-1]  # A/B, then B/A
                for scn in scenarios:
                    for v in order:
                        res = bench.load(bench.proxies[v], scn)
                        if res is None:
                            continue
                        results[v][scn].append(res)
                        print(
                            f"round {r + 1} {scn:15} {v:13} {res['rps']:8.0f} req/s  proxy "
                            f"{res['proxy_cores']:.2f} cores  loadgen {res['loadgen_cores']:.2f}  "
                            f"origin {res['origin_cores']:.2f}  share {res['per_worker']}  "
                            f"errors {res['errors']}",
                            file=sys.stderr,
                            flush=True,
                        )
                        time.sleep(1)
        finally:
            for p in bench.proxies.values():
                p.stop()
            bench.origin.terminate()
            bench.origin.wait(10)
    summary = summarize(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "raw": results}, indent=1))
    print(markdown(summary, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
