"""Real parts for end-to-end tests: origin servers, a fake internet, the proxy process.

- ``Origin``: an HTTP and an HTTPS server on 127.0.0.1 (certificate from a
  test CA for ``localhost``), answering ``origin <method> <path>``.
- ``Internet``: a second mitmproxy process that answers every request with a
  canned page naming the host it was asked for, so tests can use real-looking
  host names without DNS; cipa-proxy chains to it with ``upstream``.
- ``ProxyProcess``: ``cipa-proxy run`` started exactly as an admin would,
  on an ephemeral port, with a config written for the test.
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- certificates


def make_ca_and_leaf(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """(ca.pem, leaf.pem, leaf.key) for a test CA and a server certificate for ``names``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test origin CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            import ipaddress

            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem, leaf_pem, leaf_key = (
        directory / "ca.pem",
        directory / "leaf.pem",
        directory / "leaf.key",
    )
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    leaf_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_pem, leaf_pem, leaf_key


# ----------------------------------------------------------------------------- origin


class _OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = f"origin {self.command} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Origin:
    http_port: int
    https_port: int
    ca: Path
    servers: list = field(default_factory=list)

    @classmethod
    def start(cls, directory: Path) -> Origin:
        ca, leaf, key = make_ca_and_leaf(directory, ["localhost", "127.0.0.1"])
        plain = ThreadingHTTPServer(("127.0.0.1", 0), _OriginHandler)
        secure = ThreadingHTTPServer(("127.0.0.1", 0), _OriginHandler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(leaf, key)
        secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
        for s in (plain, secure):
            s.daemon_threads = True
            threading.Thread(target=s.serve_forever, daemon=True).start()
        return cls(plain.server_address[1], secure.server_address[1], ca, [plain, secure])

    def stop(self) -> None:
        for s in self.servers:
            s.shutdown()


# ----------------------------------------------------------------------------- processes


def _wait_for_lines(
    proc: subprocess.Popen, patterns: dict[str, str], timeout: float, log: list[str]
) -> dict[str, re.Match]:
    """Read the process output (in a thread, into ``log``) until every pattern has matched once."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    found: dict[str, re.Match] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(found) < len(patterns):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"timed out waiting for {set(patterns) - set(found)}:\n" + "".join(log)
                ) from None
            if line is None:
                raise RuntimeError(f"process exited with {proc.wait()}:\n" + "".join(log))
            for name, pattern in patterns.items():
                m = re.search(pattern, line)
                if m and name not in found:
                    found[name] = m
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return found


INTERNET_SCRIPT = """
from mitmproxy import http

ECHOED = ("youtube-restrict", "cookie")


def request(flow: http.HTTPFlow) -> None:
    body = f"internet {flow.request.method} {flow.request.pretty_host} {flow.request.path}\\n"
    for name in ECHOED:  # headers a test may want to see arrive upstream
        if name in flow.request.headers:
            body += f"{name}: {flow.request.headers[name]}\\n"
    flow.response = http.Response.make(200, body.encode(), {"Content-Type": "text/plain"})
"""


@dataclass
class Internet:
    """A mitmdump that plays every web site: answers all requests itself, contacts nothing."""

    port: int
    ca: Path
    proc: subprocess.Popen

    @classmethod
    def start(cls, directory: Path) -> Internet:
        directory.mkdir(parents=True, exist_ok=True)
        script = directory / "internet.py"
        script.write_text(INTERNET_SCRIPT)
        proc = subprocess.Popen(
            [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "--listen-port", "0", "-s", str(script),
             "--set", f"confdir={directory}", "--set", "connection_strategy=lazy", "--set", "flow_detail=0",
             "--set", "termlog_verbosity=info"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        log: list[str] = []
        found = _wait_for_lines(proc, {"port": r"proxy listening at .*:(\d+)"}, 30, log)
        return cls(int(found["port"].group(1)), directory / "mitmproxy-ca-cert.pem", proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class ProxyProcess:
    port: int
    metrics_port: int
    root: Path
    proc: subprocess.Popen
    log: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.root / "ca" / "mitmproxy-ca-cert.pem"

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @classmethod
    def start(
        cls, root: Path, overrides: dict | None = None, env: dict | None = None, timeout: float = 60
    ) -> ProxyProcess:
        """Write a config (the shipped one plus ``overrides``) under ``root`` and run the proxy on it."""
        root.mkdir(parents=True, exist_ok=True)
        cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
        cfg.update(
            rules_dir=str(ROOT / "rules"),
            listen={"host": "127.0.0.1", "port": 0},
            metrics={"listen": "127.0.0.1:0"},
            audit={**cfg.get("audit", {}), "path": str(root / "audit"), "timezone": "UTC"},
            tls={**cfg.get("tls", {}), "confdir": str(root / "ca")},
        )
        for key, value in (overrides or {}).items():
            node = cfg
            *parents, last = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        proc = subprocess.Popen(
            [str(BIN / "cipa-proxy"), "run", "--config", str(root / "config.yaml")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **(env or {})}, cwd=root,
        )  # fmt: skip
        log: list[str] = []
        found = _wait_for_lines(
            proc,
            {
                "port": r"cipa-proxy listening at [^ ]+:(\d+)",
                "metrics": r"cipa-proxy metrics at [^ ]+:(\d+)",
                "rules": r"cipa-proxy rules loaded",
            },
            timeout,
            log,
        )
        return cls(int(found["port"].group(1)), int(found["metrics"].group(1)), root, proc, log)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(15)

    def audit_records(self) -> list[dict]:
        records = []
        for path in sorted(self.audit_dir.glob("audit-*.jsonl")):
            for line in path.read_text().splitlines():
                records.append(json.loads(line))
        return [r for r in records if r.get("type") != "header"]


def metric(p: ProxyProcess, name: str, **labels: str) -> float:
    """The sum of the samples ``name{labels}`` scraped from the proxy's /metrics right now."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{p.metrics_port}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# ----------------------------------------------------------------------------- raw TLS client


def tls_through_proxy(
    proxy_port: int,
    connect: str,
    sni: str | None,
    cafile: Path | None,
    request_path: str | None = "/",
) -> tuple[int, dict | None, bytes]:
    """CONNECT ``connect`` through the proxy, then TLS with ``sni``.

    Returns (CONNECT status, peer certificate or None, response bytes). Lets a
    test make the CONNECT host and the SNI differ, as a fronting client would.
    """
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    try:
        sock.sendall(f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        if status != 200:
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            while m and len(head.split(b"\r\n\r\n", 1)[1]) < int(m.group(1)):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            return status, None, head
        ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        if sni is None:
            ctx.check_hostname = False
        tls = ctx.wrap_socket(sock, server_hostname=sni)
        cert = tls.getpeercert()
        data = b""
        if request_path is not None:
            host = sni or connect.rsplit(":", 1)[0]
            tls.sendall(
                f"GET {request_path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\nConnection: close\r\n\r\n".encode()
            )
            while True:
                try:
                    chunk = tls.recv(65536)
                except (ssl.SSLError, OSError):
                    break
                if not chunk:
                    break
                data += chunk
        return status, cert, data
    finally:
        sock.close()


def issuer_cn(cert: dict | None) -> str | None:
    if not cert:
        return None
    for rdn in cert.get("issuer", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
