"""Helpers shared by the benchmarks in ``bench/``.

- ``Procs``: start child processes (optionally pinned with ``taskset``) in their
  own process groups and stop every one of them, even on Ctrl-C or an error.
- ``cpu_seconds`` / ``rss_mb``: a process's CPU time (utime + stime of all its
  threads) and resident memory, from ``/proc/PID``.
- ``make_cert``: a self-signed certificate for ``localhost`` (ECDSA P-256).
- ``start_origin``: a fast local origin on loopback (HTTP and HTTPS, ~1 KB
  body): nginx when installed, else an asyncio (uvloop) origin in a subprocess.
  Run this file as ``python bench/common.py origin ...`` to get that origin.
- ``parse_wrk`` / ``parse_hey``: the load generators' summaries as dicts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
BODY = (b"cipa-proxy bench origin " + b"0123456789abcdef" * 64)[:1024]


class BenchError(RuntimeError):
    """A benchmark could not run (a tool missing, a process that did not start, a failed check)."""


# ---------------------------------------------------------------------------- processes


def venv_tool(name: str) -> str:
    """The console script ``name`` next to the running interpreter (the venv), else from PATH."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise BenchError(f"{name} not found (run the bench with the project's venv python)")
    return found


def can_pin(*cpus: int) -> bool:
    if not shutil.which("taskset") or not hasattr(os, "sched_getaffinity"):
        return False
    return set(cpus) <= os.sched_getaffinity(0)


class Procs:
    """Every process a benchmark starts, each in its own session so it can be stopped as a group."""

    def __init__(self, pin: bool = True):
        self.pin = pin
        self.procs: list[subprocess.Popen] = []
        self.terminated: set[int] = set()

    def start(
        self, cmd: list[str], cpu: int | None = None, log: Path | None = None, **kw
    ) -> subprocess.Popen:
        """Start ``cmd`` (pinned to ``cpu``), its stderr (and with ``stdout=STDOUT`` its stdout)
        appended to ``log`` when given."""
        if cpu is not None and self.pin:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        kw.setdefault("stdin", subprocess.DEVNULL)
        with contextlib.ExitStack() as stack:
            if log is not None:
                kw["stderr"] = stack.enter_context(open(log, "ab"))
                if kw.get("stdout") is subprocess.STDOUT:
                    kw["stdout"] = kw["stderr"]
            p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def run(
        self, cmd: list[str], cpu: int | None = None, timeout: float = 120
    ) -> tuple[int, str, str]:
        """Run to completion (stopped with the rest on Ctrl-C); returns (rc, stdout, stderr)."""
        p = self.start(cmd, cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(p)
            raise BenchError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from None
        finally:
            if p.poll() is not None and p in self.procs:
                self.procs.remove(p)
        return p.returncode, out, err

    def terminate(self, p: subprocess.Popen) -> None:
        """SIGTERM the process group once, without waiting (a second SIGTERM can cut a clean shutdown short)."""
        if p.poll() is None and p.pid not in self.terminated:
            self.terminated.add(p.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)

    def stop(self, p: subprocess.Popen, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, then SIGKILL it after ``grace`` seconds."""
        if p.poll() is None:
            self.terminate(p)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        # Children that outlived their group leader (nginx workers) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(p, grace=5.0)


def raise_on_sigterm() -> None:
    """Turn SIGINT/SIGTERM/SIGHUP into KeyboardInterrupt so ``finally`` blocks stop the children.

    SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    """

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, handler)


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        stat = fh.read()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15, cutime 16, cstime 17.
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """CPU time (utime + stime, all threads) of ``pid`` and every process under it, in seconds.

    Children count too (a proxy with worker processes): live ones by their own
    utime + stime, exited ones through their parent's cutime + cstime.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            f = _stat_fields(p)
        except (OSError, ValueError):
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        todo.extend(children.get(p, ()))
    return total / CLK_TCK


def cpu_jiffies(cpu: int) -> tuple[int, int]:
    """(busy, total) clock ticks of one CPU since boot, from /proc/stat (busy includes steal)."""
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
                total = sum(
                    v[:8]
                )  # user nice system idle iowait irq softirq steal (guest is inside user)
                return total - idle, total
    raise BenchError(f"cpu{cpu} not in /proc/stat")


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def self_rss_mb() -> float:
    """This process's resident memory."""
    return rss_mb(os.getpid()) or 0.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def wait_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(
                f"{what or 'process'} exited with {proc.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what or 'process'} did not listen on {host}:{port} within {timeout:.0f}s")


# ---------------------------------------------------------------------------- TLS


def make_cert(directory: Path, hostname: str = "localhost") -> tuple[Path, Path, bytes]:
    """A self-signed ECDSA P-256 certificate for ``hostname`` and 127.0.0.1; returns (cert, key, DER)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostname),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cipa-proxy bench origin"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "origin-cert.pem", directory / "origin-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o644)  # nginx workers (nobody) never read it, but a non-root origin may
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)


# ---------------------------------------------------------------------------- origin


class Origin:
    def __init__(
        self, kind: str, proc: subprocess.Popen, http_port: int, https_port: int, der: bytes
    ):
        self.kind, self.proc, self.http_port, self.https_port, self.der = (
            kind,
            proc,
            http_port,
            https_port,
            der,
        )

    @property
    def http_url(self) -> str:
        return f"http://localhost:{self.http_port}/"

    @property
    def https_url(self) -> str:
        return f"https://localhost:{self.https_port}/"


# nginx on loopback for the benches: one worker, no access log, keep-alive without limits.
_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
{http}
}}
"""
# start_origin: one fixed body over HTTP and HTTPS.
_FIXED_BODY = """\
    ssl_certificate {cert};
    ssl_certificate_key {key};
    server {{
        {listens}
        server_name localhost;
        default_type text/html;
        location / {{ return 200 "{body}"; }}
    }}"""
# start_file_origin: the files under a directory.
_FILES = """\
    types {{ text/html html; image/jpeg jpg; }}
    server {{ listen 127.0.0.1:{port}; root {root}; }}"""


def _start_nginx(procs: Procs, workdir: Path, cpu: int | None, http: str) -> subprocess.Popen:
    nginx = shutil.which("nginx")
    if not nginx:
        raise BenchError("nginx not installed (apt-get install -y nginx-light)")
    conf = workdir / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(d=workdir, http=http))
    cmd = [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "nginx-error.log")]
    return procs.start(cmd, cpu, workdir / "nginx-stderr.log", stdout=subprocess.DEVNULL)


def start_file_origin(
    procs: Procs, workdir: Path, root: Path, cpu: int | None
) -> tuple[subprocess.Popen, int]:
    """nginx serving the files under ``root`` (HTML, JPEG) on a free loopback port: no access
    log, keep-alive without limits. ``root`` and its parents must be readable by nginx's worker."""
    port = free_port()
    proc = _start_nginx(procs, workdir, cpu, _FILES.format(port=port, root=root))
    wait_port("127.0.0.1", port, 15, proc, "nginx")
    return proc, port


def start_origin(procs: Procs, workdir: Path, cpu: int | None, kind: str = "auto") -> Origin:
    """Start nginx (or the asyncio origin) on loopback; HTTP and HTTPS on free ports."""
    cert, key, der = make_cert(workdir)
    http_port, https_port = free_port(), free_port()
    hosts = ["127.0.0.1"] + (["[::1]"] if have_ipv6_loopback() else [])
    if kind == "auto":
        kind = "nginx" if shutil.which("nginx") else "python"
    if kind == "nginx":
        if not shutil.which("nginx"):
            raise BenchError(
                "nginx not installed (apt-get install -y nginx-light), or use --origin python"
            )
        os.chmod(workdir, 0o755)
        listens = " ".join(f"listen {h}:{http_port}; listen {h}:{https_port} ssl;" for h in hosts)
        http = _FIXED_BODY.format(cert=cert, key=key, listens=listens, body=BODY.decode())
        proc = _start_nginx(procs, workdir, cpu, http)
    else:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "origin",
            "--http-port",
            str(http_port),
            "--https-port",
            str(https_port),
            "--cert",
            str(cert),
            "--key",
            str(key),
        ]
        proc = procs.start(cmd, cpu, workdir / "origin-stderr.log", stdout=subprocess.DEVNULL)
    wait_port("127.0.0.1", http_port, 15, proc, f"{kind} origin")
    wait_port("127.0.0.1", https_port, 15, proc, f"{kind} origin")
    origin = Origin(kind, proc, http_port, https_port, der)
    status, body, _ = fetch_direct(origin)
    if status != 200 or body != BODY:
        raise BenchError(f"{kind} origin answered {status} with an unexpected body")
    return origin


def fetch_direct(origin: Origin) -> tuple[int, bytes, bytes]:
    """GET / from the origin over HTTPS directly; returns (status, body, peer certificate DER)."""
    import http.client

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", origin.https_port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": f"localhost:{origin.https_port}"})
        r = conn.getresponse()
        return r.status, r.read(), conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()


def _serve_origin(args: argparse.Namespace) -> None:
    """The fallback origin: asyncio (uvloop when available), HTTP/1.1 keep-alive, GET only."""
    import asyncio

    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n" % len(BODY)
    keep = head + b"\r\n" + BODY
    close = head + b"Connection: close\r\n\r\n" + BODY

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.buf = b""

        def data_received(self, data):
            self.buf += data
            while True:
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(self.buf) > 65536:
                        self.t.close()
                    return
                req, self.buf = self.buf[:i].lower(), self.buf[i + 4 :]
                if b"connection: close" in req or req.endswith(b"http/1.0"):
                    self.t.write(close)
                    self.t.close()
                    return
                self.t.write(keep)

    async def main():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        loop = asyncio.get_running_loop()
        hosts = ["127.0.0.1"] + (["::1"] if have_ipv6_loopback() else [])
        servers = [
            await loop.create_server(Proto, hosts, args.http_port, backlog=4096),
            await loop.create_server(Proto, hosts, args.https_port, ssl=ctx, backlog=4096),
        ]
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for s in servers:
            s.close()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# ---------------------------------------------------------------------------- load generators


def _secs(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def parse_wrk(out: str) -> dict:
    """Requests, duration, errors and latency percentiles (seconds) from ``wrk --latency``."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not m:
        raise BenchError(f"cannot parse wrk output:\n{out}")
    res = {"requests": int(m.group(1)), "seconds": _secs(m.group(2), m.group(3))}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["bad_status"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        res[f"p{pct}"] = _secs(m.group(1), m.group(2)) if m else None
    res["good"] = res["requests"] - res["bad_status"]
    return res


def parse_hey(out: str, expect_status: int | None = 200, expect_error: str | None = None) -> dict:
    """Counts of expected outcomes, the run's duration and latency percentiles (seconds) from ``hey``.

    ``expect_error``: a substring of the error text that counts as the expected outcome
    (a refused CONNECT is an error to the client: Go reports the CONNECT status text).
    """
    m = re.search(r"Total:\s+([\d.]+) secs", out)
    if not m:
        raise BenchError(f"cannot parse hey output:\n{out}")
    res: dict = {"seconds": float(m.group(1))}
    statuses = {int(s): int(n) for s, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors: dict[str, int] = {}
    if "Error distribution:" in out:
        for n, text in re.findall(
            r"^\s+\[(\d+)\]\s+(.+)$", out.split("Error distribution:", 1)[1], re.M
        ):
            errors[text.strip()] = errors.get(text.strip(), 0) + int(n)
    good = statuses.get(expect_status, 0) if expect_status else 0
    if expect_error:
        good += sum(n for text, n in errors.items() if expect_error in text)
    res.update(
        statuses=statuses,
        errors=errors,
        good=good,
        requests=sum(statuses.values()) + sum(errors.values()),
    )
    res["unexpected"] = res["requests"] - good
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%+ in ([\d.]+) secs", out, re.M)
        res[f"p{pct}"] = float(m.group(1)) if m else None
    return res


# ---------------------------------------------------------------------------- reporting


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def machine_facts() -> dict:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    facts = {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        facts["mitmproxy"] = version("mitmproxy")
    with contextlib.suppress(Exception):
        import uvloop

        facts["uvloop"] = uvloop.__version__
    return facts


def tool_version(name: str, flag: str | None = "-v") -> str:
    """``name``'s version: from ``name flag`` output, else from the Debian package database."""
    cmds = ([[name, flag]] if flag else []) + [["dpkg-query", "-W", "-f=${Version}", name]]
    for cmd in cmds:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        m = re.search(r"\b(\d+\.\d+(?:\.\d+)?(?:-[\w.+~]+)?)", p.stdout + p.stderr)
        if m:
            return m.group(1)
    return ""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="bench helpers; 'origin' runs the fallback origin")
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("origin")
    o.add_argument("--http-port", type=int, required=True)
    o.add_argument("--https-port", type=int, required=True)
    o.add_argument("--cert", required=True)
    o.add_argument("--key", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "origin":
        _serve_origin(args)


if __name__ == "__main__":
    main()
