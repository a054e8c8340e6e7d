"""Gateway mode for real: a student namespace routed through a gateway namespace that runs
``cipa-proxy run`` (listen.mode: both) with the nftables rules ``cipa-proxy gateway rules``
printed, to origins in a third namespace. The student has no proxy configured.

Skipped only when the kernel refuses network namespaces (e.g. not root); see tests/e2e/netns.py.
"""

from __future__ import annotations

import glob
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from . import netns
from .harness import BIN, ROOT, _wait_for_lines
from .netns import (
    DISTRICT_SERVER_V4,
    ECHO_PORT,
    GATEWAY_STUDENT_V4,
    ORIGIN_V4,
    ORIGIN_V6,
    STUDENT2_V4,
    STUDENT_V4,
    STUDENT_V6,
)

ALLOWED = "www.example.org"
EDU = "www.khanacademy.org"
BLOCKED = "www.bet365.com"  # gambling: blocked for students by the shipped rules
INTRANET = "intranet.district.example"
EXPLICIT_PORT, TRANSPARENT_PORT = 3128, 3129
NO_DNS = (
    "192.0.2.53"  # TEST-NET-1: a "public resolver" a student might try; DNAT'd to the district one
)


@dataclass
class Gateway:
    lab: netns.Lab
    root: Path
    origin_ca: Path
    proxy: subprocess.Popen
    proxy_log: list[str]
    origin: subprocess.Popen
    origin_log: list[str]
    rules: str
    syncs: int = 0

    def proxy_said(self, needle: str) -> None:
        """Wait for the proxy to print a line with ``needle`` (it prints it before it answers)."""
        deadline = time.monotonic() + 15
        while not any(needle in line for line in self.proxy_log):
            assert time.monotonic() < deadline, f"{needle!r} not in:\n{''.join(self.proxy_log)}"
            time.sleep(0.01)

    def origin_saw(self, needle: str) -> list[str]:
        """The origin's lines containing ``needle``, once every line it printed so far is in."""
        self.syncs += 1
        mark = f"sync {self.syncs}"
        assert self.origin.stdin is not None
        self.origin.stdin.write(mark + "\n")
        self.origin.stdin.flush()
        deadline = time.monotonic() + 15
        while not any(line.strip() == mark for line in self.origin_log):
            assert time.monotonic() < deadline, "the origin stopped answering"
            time.sleep(0.01)
        return [line for line in self.origin_log if needle in line]

    @property
    def proxy_ca(self) -> Path:
        return self.root / "ca" / "mitmproxy-ca-cert.pem"

    def student(self, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        return self.lab.ns(self.lab.student, *cmd, check=check)

    def curl(self, *args: str) -> tuple[int, int, str, str]:
        """(curl exit code, HTTP status, body, stderr) for a curl run in the student namespace."""
        res = self.student("curl", "-sS", "-m", "15", "-w", "\n%{http_code}", *args)
        body, _, status = res.stdout.rpartition("\n")
        return res.returncode, int(status or 0), body.removesuffix("\n"), res.stderr

    def python(self, code: str) -> str:
        res = self.student(sys.executable, "-c", textwrap.dedent(code))
        assert res.returncode == 0, res.stderr
        return res.stdout

    def records(self) -> list[dict]:
        out = []
        for path in sorted(
            glob.glob(str(self.root / "audit" / "**" / "audit-*.jsonl"), recursive=True)
        ):
            out += [json.loads(line) for line in Path(path).read_text().splitlines() if line]
        return [r for r in out if r.get("type") != "header"]

    def records_for(self, host: str, client: str = STUDENT_V4) -> list[dict]:
        return [
            r
            for r in self.records()
            if r.get("client") == client and host in (r.get("host"), r.get("sni"))
        ]

    def counter(self, comment: str) -> int:
        """Packets counted by the generated rule carrying ``comment``."""
        text = self.lab.ns(self.lab.gateway, "nft", "list", "table", "inet", "cipa_proxy").stdout
        for line in text.splitlines():
            if comment in line:
                m = re.search(r"counter packets (\d+)", line)
                assert m, line
                return int(m.group(1))
        raise AssertionError(f"no rule with comment {comment!r} in:\n{text}")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    missing = netns.missing_tools()
    assert not missing, f"install {', '.join(missing)} (iproute2, nftables, curl; see .ci/run)"
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    root = tmp_path_factory.mktemp("gateway")
    lab = netns.Lab()
    procs: list[subprocess.Popen] = []
    try:
        lab.build({ALLOWED: ORIGIN_V4, EDU: ORIGIN_V4, BLOCKED: ORIGIN_V4})

        origin_dir = root / "origin"
        origin = lab.popen(
            lab.origin,
            [sys.executable, str(Path(netns.__file__)), "origin", str(origin_dir), ALLOWED, EDU, BLOCKED, ORIGIN_V4],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        procs.append(origin)
        origin_log: list[str] = []
        _wait_for_lines(origin, {"ready": r"^origin ready"}, 30, origin_log)

        cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
        cfg.update(
            rules_dir=str(ROOT / "rules"),
            listen={"host": "", "port": EXPLICIT_PORT, "mode": "both", "transparent_port": TRANSPARENT_PORT},
            metrics={"listen": "127.0.0.1:0"},
            audit={**cfg.get("audit", {}), "path": str(root / "audit"), "timezone": "UTC"},
            tls={**cfg.get("tls", {}), "confdir": str(root / "ca"), "upstream_ca": str(origin_dir / "ca.pem")},
            groups=[
                {"name": "staff", "policy": "staff", "clients": [f"{STUDENT2_V4}/32"]},
                {"name": "students", "policy": "students"},
            ],
            gateway={
                "interfaces": [lab.student_if],
                "exempt": [DISTRICT_SERVER_V4],
                "dns": [ORIGIN_V4, ORIGIN_V6],
            },
        )  # fmt: skip
        cfg.pop("workers", None)
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))

        # The rules exactly as an admin gets them, loaded into the gateway with nft.
        gen = subprocess.run(
            [str(BIN / "cipa-proxy"), "gateway", "rules", "--config", str(config)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert gen.returncode == 0, gen.stderr
        rules = root / "gateway.nft"
        rules.write_text(gen.stdout)
        load = lab.ns(lab.gateway, "nft", "-f", str(rules), check=False)
        assert load.returncode == 0, f"nft -f failed: {load.stderr}\n{gen.stdout}"

        proxy = lab.popen(
            lab.gateway,
            [str(BIN / "cipa-proxy"), "run", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root,
        )  # fmt: skip
        procs.append(proxy)
        proxy_log: list[str] = []
        _wait_for_lines(
            proxy,
            {
                "explicit": rf"cipa-proxy listening at \S+:{EXPLICIT_PORT}$",
                "transparent": rf"cipa-proxy listening at \S+:{TRANSPARENT_PORT} \(transparent\)",
                "rules": r"cipa-proxy rules loaded",
            },
            60,
            proxy_log,
        )
        yield Gateway(
            lab, root, origin_dir / "ca.pem", proxy, proxy_log, origin, origin_log, gen.stdout
        )
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        lab.close()


# ----------------------------------------------------------------------------- HTTP


def test_allowed_http_passes_with_the_students_address_in_the_audit(gw: Gateway) -> None:
    rc, status, body, err = gw.curl(
        "--resolve", f"{ALLOWED}:80:{ORIGIN_V4}", f"http://{ALLOWED}/hello?x=1"
    )
    assert (rc, status) == (0, 200), err
    assert body == f"origin http GET {ALLOWED} /hello?x=1"
    # It went through the proxy: the origin saw the gateway, not the student.
    assert gw.origin_saw(f"GET {ALLOWED} /hello?x=1 from {netns.GATEWAY_ORIGIN_V4}")
    (rec,) = [r for r in gw.records_for(ALLOWED) if "/hello" in (r.get("url") or "")]
    assert rec["action"] == "allow" and rec["group"] == "students" and rec["status"] == 200
    assert rec["url"] == f"http://{ALLOWED}/hello?x=1"


def test_blocked_http_gets_the_block_page_and_the_site_is_never_contacted(gw: Gateway) -> None:
    rc, status, body, err = gw.curl(
        "-H", "Accept: text/html", "--resolve", f"{BLOCKED}:80:{ORIGIN_V4}", f"http://{BLOCKED}/poker"
    )  # fmt: skip
    assert (rc, status) == (0, 403), err
    assert "gambling" in body.lower() and "<html" in body.lower()
    assert not gw.origin_saw(BLOCKED)
    (rec,) = [r for r in gw.records_for(BLOCKED) if (r.get("url") or "").endswith("/poker")]
    assert rec["action"] == "block" and rec["category"] == "gambling"
    assert rec["group"] == "students" and rec["client"] == STUDENT_V4


def test_allowed_host_header_cannot_reach_another_address(gw: Gateway) -> None:
    """The proxy connects to the name the student asked for, never to the address it picked:
    `Host: www.example.org` sent to an address where nothing answers is served by the origin
    the gateway resolves www.example.org to (an allowed name cannot front for another server)."""
    rc, status, body, err = gw.curl(
        "--resolve", f"{ALLOWED}:80:10.77.2.99", f"http://{ALLOWED}/where"
    )
    assert (rc, status) == (0, 200), err
    assert body == f"origin http GET {ALLOWED} /where"


# ----------------------------------------------------------------------------- HTTPS


def test_allowed_https_passes_through_with_the_origins_certificate(gw: Gateway) -> None:
    rc, status, body, err = gw.curl(
        "-v", "--cacert", str(gw.origin_ca), "--resolve", f"{ALLOWED}:443:{ORIGIN_V4}", f"https://{ALLOWED}/tls"
    )  # fmt: skip
    assert (rc, status) == (0, 200), err
    assert body == f"origin https GET {ALLOWED} /tls"
    assert "issuer: CN=test origin CA" in err  # not the district CA: passed through, not decrypted
    recs = [r for r in gw.records_for(ALLOWED) if r.get("tls") == "passthrough"]
    assert recs and recs[-1]["action"] == "allow" and recs[-1]["sni"] == ALLOWED
    assert recs[-1]["group"] == "students"


def test_blocked_https_shows_the_block_page_when_the_ca_is_trusted(gw: Gateway) -> None:
    rc, status, body, err = gw.curl(
        "-H", "Accept: text/html", "--cacert", str(gw.proxy_ca),
        "--resolve", f"{BLOCKED}:443:{ORIGIN_V4}", f"https://{BLOCKED}/casino",
    )  # fmt: skip
    assert (rc, status) == (0, 403), err
    assert "gambling" in body.lower()
    recs = [r for r in gw.records_for(BLOCKED) if (r.get("url") or "").endswith("/casino")]
    assert recs and recs[-1]["action"] == "block" and recs[-1]["tls"] == "intercepted"
    assert recs[-1]["client"] == STUDENT_V4 and recs[-1]["group"] == "students"
    assert not gw.origin_saw(BLOCKED)


def test_blocked_https_without_the_ca_never_reaches_the_site(gw: Gateway) -> None:
    """Trusting only the real origin's CA (which did sign www.bet365.com here): the student
    gets a certificate error, never the site."""
    rc, status, body, err = gw.curl(
        "--cacert", str(gw.origin_ca), "--resolve", f"{BLOCKED}:443:{ORIGIN_V4}", f"https://{BLOCKED}/"
    )  # fmt: skip
    assert rc != 0 and status == 0, (rc, status, body)
    assert not gw.origin_saw(BLOCKED)


def test_client_hello_without_sni_is_blocked_for_students(gw: Gateway) -> None:
    # curl sends no SNI for an address: only the destination is known.
    rc, status, _, err = gw.curl("-k", f"https://{ORIGIN_V4}/nosni")
    assert rc != 0 and status == 0, err
    recs = [r for r in gw.records_for(ORIGIN_V4) if r.get("tls") == "refused"]
    assert recs, gw.records()
    assert recs[-1]["action"] == "block" and recs[-1]["category"] == "ip_literal"
    assert recs[-1]["sni"] is None and "no server name (SNI)" in recs[-1]["reason"]
    assert not gw.origin_saw("/nosni")


def test_client_hello_without_sni_follows_the_policy_for_staff(gw: Gateway) -> None:
    """The same connection from the staff address: ip_literals: allow, so it passes through."""
    rc, status, body, err = gw.curl(
        "-k", "--interface", STUDENT2_V4, f"https://{ORIGIN_V4}/nosni-staff"
    )
    assert (rc, status) == (0, 200), err
    assert body.startswith("origin https GET")
    recs = gw.records_for(ORIGIN_V4, client=STUDENT2_V4)
    assert recs and recs[-1]["group"] == "staff" and recs[-1]["tls"] == "passthrough"


def test_bytes_that_are_neither_tls_nor_http_on_443_are_blocked(gw: Gateway) -> None:
    out = gw.python(f"""
        import socket
        s = socket.create_connection(("{ORIGIN_V4}", 443), timeout=10)
        s.sendall(b"SSH-2.0-tunnel\\r\\n")
        print(repr(s.recv(100)))
    """)
    assert out.strip() == "b''"  # closed, nothing relayed
    recs = [
        r for r in gw.records_for(ORIGIN_V4) if "neither HTTP nor TLS" in (r.get("reason") or "")
    ]
    assert recs and recs[-1]["action"] == "block" and recs[-1]["group"] == "students"


# ----------------------------------------------------------------------------- the network


def test_ipv6_is_redirected_too(gw: Gateway) -> None:
    rc, status, body, err = gw.curl(
        "-6", "--resolve", f"{ALLOWED}:80:[{ORIGIN_V6}]", f"http://{ALLOWED}/six"
    )
    assert (rc, status) == (0, 200), err
    assert body == f"origin http GET {ALLOWED} /six"
    rc, status, body, err = gw.curl(
        "-6", "--resolve", f"{BLOCKED}:80:[{ORIGIN_V6}]", f"http://{BLOCKED}/six"
    )
    assert (rc, status) == (0, 403), err
    recs = [r for r in gw.records_for(BLOCKED, client=STUDENT_V6) if "/six" in (r.get("url") or "")]
    assert recs and recs[-1]["group"] == "students"


def test_quic_cannot_reach_udp_443(gw: Gateway) -> None:
    before = gw.counter("QUIC/HTTP3")
    out = gw.python(f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(b"quic", ("{ORIGIN_V4}", 443))
        s.sendto(b"control", ("{ORIGIN_V4}", {ECHO_PORT}))
        got = []
        try:
            while True:
                got.append(s.recv(100))
                s.settimeout(1)  # the control answer is in: give a 443 answer a moment more
        except socket.timeout:
            pass
        print(sorted(got))
    """)
    assert out.strip() == "[b'control']"  # UDP is routed; only 443 is dropped
    assert gw.counter("QUIC/HTTP3") > before
    assert not gw.origin_saw("origin udp 443")


def test_dns_is_forced_to_the_district_resolver_and_dot_is_dropped(gw: Gateway) -> None:
    out = gw.python(f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(b"query", ("{NO_DNS}", 53))
        data, addr = s.recvfrom(100)
        print(data, addr[0])
        try:
            socket.create_connection(("{ORIGIN_V4}", 853), timeout=2)
            print("dot connected")
        except OSError as exc:
            print("dot failed", type(exc).__name__)
    """)
    first, second = out.strip().splitlines()
    assert (
        first == f"b'query' {NO_DNS}"
    )  # answered, seemingly by the resolver the student chose ...
    assert gw.origin_saw(f"origin udp 53 from {STUDENT_V4}")  # ... but by the district's
    assert second.startswith("dot failed")
    assert not gw.origin_saw("origin tcp 853")
    assert gw.counter("DNS over TLS/QUIC") >= 1


def test_district_servers_are_exempt(gw: Gateway) -> None:
    rc, status, body, err = gw.curl(
        "-H", f"Host: {INTRANET}", f"http://{DISTRICT_SERVER_V4}/intranet"
    )
    assert (rc, status) == (0, 200), err
    assert gw.origin_saw(f"GET {INTRANET} /intranet from {STUDENT_V4}")  # direct, not via the proxy
    assert not gw.records_for(INTRANET)


def test_explicit_clients_coexist_on_the_same_gateway(gw: Gateway) -> None:
    proxy = f"http://{GATEWAY_STUDENT_V4}:{EXPLICIT_PORT}"
    rc, status, body, err = gw.curl("-x", proxy, f"http://{BLOCKED}/explicit")
    assert (rc, status) == (0, 403), err
    rc, status, body, err = gw.curl(
        "-x", proxy, "--cacert", str(gw.origin_ca), "--resolve", f"{ALLOWED}:443:{ORIGIN_V4}",
        f"https://{ALLOWED}/explicit",
    )  # fmt: skip
    assert (rc, status) == (0, 200), err
    recs = [r for r in gw.records_for(BLOCKED) if (r.get("url") or "").endswith("/explicit")]
    assert recs and recs[-1]["client"] == STUDENT_V4 and recs[-1]["group"] == "students"


def test_a_direct_connection_to_the_transparent_port_is_refused(gw: Gateway) -> None:
    """Not redirected, its "original destination" is the listener itself: a loop, refused."""
    rc, status, _, _ = gw.curl(
        "-H", f"Host: {ALLOWED}", f"http://{GATEWAY_STUDENT_V4}:{TRANSPARENT_PORT}/loop"
    )
    assert rc != 0 and status == 0
    gw.proxy_said("connected to the transparent port directly")
    assert gw.proxy.poll() is None


def test_the_generated_rules_are_what_was_loaded(gw: Gateway) -> None:
    assert f"redirect to :{TRANSPARENT_PORT}" in gw.rules
    loaded = gw.lab.ns(gw.lab.gateway, "nft", "list", "table", "inet", "cipa_proxy").stdout
    assert f"redirect to :{TRANSPARENT_PORT}" in loaded and gw.lab.student_if in loaded
    assert gw.counter("HTTP/HTTPS: cipa-proxy transparent listener") > 0
