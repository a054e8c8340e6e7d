"""A small routed network made of Linux network namespaces, for the gateway (transparent) tests.

    student (10.77.1.2, .3; fd77:1::2)  --veth--  gateway (10.77.1.1 | 10.77.2.1)  --veth--  origin (10.77.2.2)
                                                   cipa-proxy + the generated rules          HTTP :80, HTTPS :443,
                                                                                             UDP echo, DNS, DoT

Nothing here touches the host's own network namespace: the three namespaces
are new, joined only to each other by veth pairs, and removed (with every rule
in them) when the lab closes, also on failure. Needs root (``ip netns add``);
:func:`unavailable` says precisely why not when the kernel refuses.

Run as ``python tests/e2e/netns.py origin DIR NAME...`` (inside the origin
namespace) it is the origin: the test's servers, printing one line per thing it
receives so a test can tell what reached it and what never did. Each line it
reads on stdin is echoed, so a test knows when it has seen every earlier line;
it stops at the end of stdin.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STUDENT_V4, STUDENT2_V4, GATEWAY_STUDENT_V4 = "10.77.1.2", "10.77.1.3", "10.77.1.1"
GATEWAY_ORIGIN_V4, ORIGIN_V4 = "10.77.2.1", "10.77.2.2"
DISTRICT_SERVER_V4 = "10.77.2.3"  # a second origin address, listed in gateway.exempt
STUDENT_V6, GATEWAY_STUDENT_V6 = "fd77:1::2", "fd77:1::1"
GATEWAY_ORIGIN_V6, ORIGIN_V6 = "fd77:2::1", "fd77:2::2"
ECHO_PORT = 5353  # UDP control: proves UDP is routed while 443 is dropped
ORIGIN_TCP_PORTS = (80, 443, 853)
ORIGIN_UDP_PORTS = (53, 443, ECHO_PORT)


def run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, input=input)


def missing_tools() -> list[str]:
    return [t for t in ("ip", "nft", "curl") if shutil.which(t) is None]


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (the exact command and error), or None."""
    name = f"cipa-probe-{uuid.uuid4().hex[:6]}"
    res = run("ip", "netns", "add", name, check=False)
    if res.returncode != 0:
        return f"`ip netns add {name}` failed: {res.stderr.strip() or res.returncode}"
    try:
        res = run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up", check=False)
        if res.returncode != 0:
            return f"`ip netns exec {name} ip link set lo up` failed: {res.stderr.strip()}"
    finally:
        run("ip", "netns", "del", name, check=False)
    return None


@dataclass
class Lab:
    """Three namespaces: ``student`` routes through ``gateway`` to ``origin``."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    created: list[str] = field(default_factory=list)
    etcs: list[Path] = field(default_factory=list)  # /etc/netns/NAME: hosts, resolv.conf

    @property
    def student(self) -> str:
        return f"cipa-student-{self.tag}"

    @property
    def gateway(self) -> str:
        return f"cipa-gw-{self.tag}"

    @property
    def origin(self) -> str:
        return f"cipa-origin-{self.tag}"

    @property
    def student_if(self) -> str:
        return f"cs{self.tag}"  # the gateway's student-facing interface (<= 15 characters)

    def ns(self, name: str, *cmd: str, check: bool = True, input: str | None = None):
        return run("ip", "netns", "exec", name, *cmd, check=check, input=input)

    def popen(self, name: str, cmd: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", name, *cmd], **kw)

    def build(self, gateway_hosts: dict[str, str]) -> None:
        """Create the namespaces, links, addresses and routes; ``gateway_hosts`` becomes the
        gateway's /etc/hosts (``ip netns exec`` mounts /etc/netns/NAME/* over /etc), so the
        proxy resolves the test's host names without any DNS."""
        for name in (self.student, self.gateway, self.origin):
            etc = Path("/etc/netns") / name
            etc.mkdir(parents=True, exist_ok=True)
            self.etcs.append(etc)
            hosts = gateway_hosts if name == self.gateway else {}
            (etc / "hosts").write_text(
                "127.0.0.1 localhost\n" + "".join(f"{ip} {n}\n" for n, ip in hosts.items())
            )
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # never a real resolver
            run("ip", "netns", "add", name)
            self.created.append(name)
            self.ns(name, "ip", "link", "set", "lo", "up")
        t = self.tag
        # veth pairs are created inside the gateway namespace, then one end moved: the host
        # namespace never holds them.
        for gw_end, other_end, other in (
            (self.student_if, f"st{t}", self.student),
            (f"co{t}", f"or{t}", self.origin),
        ):
            self.ns(self.gateway, "ip", "link", "add", gw_end, "type", "veth", "peer", other_end)
            self.ns(self.gateway, "ip", "link", "set", other_end, "netns", other)
        g = self.gateway
        for ns, dev, addrs in (
            (self.student, f"st{t}", [f"{STUDENT_V4}/24", f"{STUDENT2_V4}/24", f"{STUDENT_V6}/64"]),
            (g, self.student_if, [f"{GATEWAY_STUDENT_V4}/24", f"{GATEWAY_STUDENT_V6}/64"]),
            (g, f"co{t}", [f"{GATEWAY_ORIGIN_V4}/24", f"{GATEWAY_ORIGIN_V6}/64"]),
            (
                self.origin,
                f"or{t}",
                [f"{ORIGIN_V4}/24", f"{DISTRICT_SERVER_V4}/24", f"{ORIGIN_V6}/64"],
            ),
        ):
            for a in addrs:
                extra = ["nodad"] if ":" in a else []  # IPv6 usable at once, no duplicate detection
                self.ns(ns, "ip", "addr", "add", a, "dev", dev, *extra)
            self.ns(ns, "ip", "link", "set", dev, "up")
        self.ns(self.student, "ip", "route", "add", "default", "via", GATEWAY_STUDENT_V4)
        self.ns(self.student, "ip", "-6", "route", "add", "default", "via", GATEWAY_STUDENT_V6)
        self.ns(self.origin, "ip", "route", "add", "default", "via", GATEWAY_ORIGIN_V4)
        self.ns(self.origin, "ip", "-6", "route", "add", "default", "via", GATEWAY_ORIGIN_V6)
        self.ns(g, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.ns(g, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")

    def close(self) -> None:
        """Remove everything this lab made (namespaces take their links and rules with them)."""
        for name in reversed(self.created):
            run("ip", "netns", "del", name, check=False)
        self.created.clear()
        for etc in self.etcs:
            shutil.rmtree(etc, ignore_errors=True)
        if self.etcs:
            with contextlib.suppress(OSError):
                self.etcs[0].parent.rmdir()  # /etc/netns, when nothing else is in it
        self.etcs.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- the origin


_lock = threading.Lock()


def _say(line: str) -> None:
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _peer(address: tuple) -> str:
    return address[0].removeprefix("::ffff:")  # dual-stack sockets show IPv4 peers mapped


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    scheme = "http"

    def _answer(self) -> None:
        host = self.headers.get("host", "")
        _say(
            f"origin {self.scheme} {self.command} {host} {self.path} from {_peer(self.client_address)}"
        )
        body = f"origin {self.scheme} {self.command} {host} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


class _TLSHandler(_Handler):
    scheme = "https"


class _Dual(ThreadingHTTPServer):
    """IPv6 and IPv4 on one socket; no reverse lookup of its own name (HTTPServer would)."""

    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "origin", self.server_address[1]


class _UDP(socketserver.ThreadingUDPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve_origin(directory: Path, names: list[str]) -> None:
    """HTTP :80, HTTPS :443 (certificate for ``names`` from a test CA written to DIR/ca.pem),
    UDP echo on 53, 443 and ECHO_PORT, a TCP listener on 853; all on every address."""
    try:
        from .harness import make_ca_and_leaf
    except ImportError:  # run as a script: python tests/e2e/netns.py origin ...
        from harness import make_ca_and_leaf  # type: ignore[no-redef]

    _, leaf, key = make_ca_and_leaf(directory, names)
    plain = _Dual(("::", 80), _Handler)
    secure = _Dual(("::", 443), _TLSHandler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(leaf, key)
    secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
    servers: list[socketserver.BaseServer] = [plain, secure]

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            port = sock.getsockname()[1]
            _say(f"origin udp {port} from {_peer(self.client_address)}")
            sock.sendto(data, self.client_address)

    class Touch(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            _say(f"origin tcp {self.server.server_address[1]} from {_peer(self.client_address)}")

    servers += [_UDP(("::", port), Echo) for port in ORIGIN_UDP_PORTS]
    dot = _Dual(("::", 853), Touch)
    servers.append(dot)
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    _say("origin ready")
    for line in sys.stdin:  # "sync X" comes back as "sync X": every line said before it is out
        _say(line.strip())


if __name__ == "__main__":  # pragma: no cover - run inside the origin namespace
    if len(sys.argv) >= 4 and sys.argv[1] == "origin":
        serve_origin(Path(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit("usage: python tests/e2e/netns.py origin DIR NAME...")
