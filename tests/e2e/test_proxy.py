"""The real `cipa-proxy run` process, a real origin, real clients (httpx and curl)."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import time

import httpx
import pytest

from .harness import Internet, Origin, ProxyProcess, issuer_cn, metric, tls_through_proxy

BLOCKED_GAMBLING = "www.bet365.com"  # rules/lists/ut1/gambling/domains
HTML = {"Accept": "text/html"}


def client(p: ProxyProcess, **kw) -> httpx.Client:
    return httpx.Client(proxy=p.url, timeout=10, **kw)


def records_for(p: ProxyProcess, rid: str, wait: float = 2.0) -> list[dict]:
    deadline = time.monotonic() + wait
    while True:
        found = [r for r in p.audit_records() if r.get("id") == rid]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# ----------------------------------------------------------------------------- allowed traffic


def test_allowed_http_reaches_the_origin(proxy: ProxyProcess, origin: Origin) -> None:
    with client(proxy) as c:
        r = c.get(f"http://localhost:{origin.http_port}/hello?x=1")
    assert r.status_code == 200 and r.text == "origin GET /hello?x=1\n"


def test_allowed_https_passes_through_with_the_origins_own_certificate(
    proxy: ProxyProcess, origin: Origin
) -> None:
    status, cert, body = tls_through_proxy(
        proxy.port, f"localhost:{origin.https_port}", "localhost", origin.ca
    )
    assert status == 200
    assert (
        issuer_cn(cert) == "test origin CA"
    )  # not decrypted: the origin's certificate reached the client
    assert b"200 OK" in body and body.endswith(b"origin GET /\n")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_through_the_proxy(proxy: ProxyProcess, origin: Origin) -> None:
    out = subprocess.run(
        ["curl", "-sS", "-x", proxy.url, "--cacert", str(origin.ca), f"https://localhost:{origin.https_port}/curl",
         "-w", "\n%{http_code}"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert out.stdout == "origin GET /curl\n\n200", out.stderr
    out = subprocess.run(
        ["curl", "-sS", "-x", proxy.url, "-H", "Accept: text/html", f"http://{BLOCKED_GAMBLING}/", "-w", "\n%{http_code}"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert out.stdout.endswith("\n403") and "Gambling" in out.stdout


# ----------------------------------------------------------------------------- blocking


def test_blocked_http_gets_the_block_page_with_its_audit_record(proxy: ProxyProcess) -> None:
    before = metric(proxy, "cipa_blocks_total", group="students", category="gambling")
    with client(proxy) as c:
        r = c.get(f"http://{BLOCKED_GAMBLING}/poker", headers=HTML)
    assert r.status_code == 403
    assert (
        r.headers["content-type"].startswith("text/html")
        and r.headers["cache-control"] == "no-store"
    )
    page = r.text
    assert "This page is blocked" in page and "Gambling" in page and "students" in page
    assert (
        "<script" not in page and "src=" not in page and 'href="http' not in page
    )  # no external resources
    rid = re.search(r'<code id="request-id">([^<]+)</code>', page).group(1)
    assert rid == r.headers["x-cipa-request-id"]
    (rec,) = records_for(proxy, rid)
    assert (rec["action"], rec["category"], rec["status"], rec["method"]) == (
        "block",
        "gambling",
        403,
        "GET",
    )
    assert rec["url"] == f"http://{BLOCKED_GAMBLING}/poker" and rec["group"] == "students"
    assert rec["rule"].startswith("rules/lists/ut1/gambling/domains:")
    assert metric(proxy, "cipa_blocks_total", group="students", category="gambling") == before + 1


def test_block_page_variants(proxy: ProxyProcess) -> None:
    with client(proxy) as c:
        text = c.get(f"http://{BLOCKED_GAMBLING}/", headers={"Accept": "*/*"})
        image = c.get(
            f"http://{BLOCKED_GAMBLING}/logo.png",
            headers={"Accept": "image/*", "Sec-Fetch-Dest": "image"},
        )
    assert text.status_code == 403 and text.headers["content-type"].startswith("text/plain")
    assert "Category: Gambling" in text.text
    assert image.status_code == 403 and image.content == b""


def test_blocked_https_shows_the_block_page_when_decryption_is_allowed(proxy: ProxyProcess) -> None:
    status, cert, body = tls_through_proxy(
        proxy.port, f"{BLOCKED_GAMBLING}:443", BLOCKED_GAMBLING, proxy.ca
    )
    assert status == 200 and issuer_cn(cert) == "cipa-proxy district CA"
    assert body.startswith(b"HTTP/1.1 403") and b"This page is blocked" in body


def test_blocked_https_connect_is_refused_in_connect_only_mode(connect_only: ProxyProcess) -> None:
    status, cert, body = tls_through_proxy(
        connect_only.port, f"{BLOCKED_GAMBLING}:443", BLOCKED_GAMBLING, None
    )
    assert status == 403 and cert is None and b"Blocked by the school's Internet filter" in body
    with client(connect_only) as c, pytest.raises(httpx.ProxyError, match="403"):
        c.get(f"https://{BLOCKED_GAMBLING}/")
    refused = [
        r
        for r in connect_only.audit_records()
        if r["method"] == "CONNECT" and r["tls"] == "refused"
    ]
    assert refused and refused[-1]["category"] == "gambling" and refused[-1]["status"] == 403


def test_sni_that_differs_from_the_connect_host_is_blocked(
    proxy: ProxyProcess, origin: Origin
) -> None:
    # CONNECT to an allowed host, TLS naming a different site: domain fronting
    status, cert, body = tls_through_proxy(
        proxy.port, f"localhost:{origin.https_port}", "www.wikipedia.org", proxy.ca
    )
    assert status == 200 and issuer_cn(cert) == "cipa-proxy district CA"
    assert body.startswith(b"HTTP/1.1 403") and b"does not match" in body
    # TLS naming a blocked site behind an allowed CONNECT host
    status, cert, body = tls_through_proxy(
        proxy.port, f"localhost:{origin.https_port}", BLOCKED_GAMBLING, proxy.ca
    )
    assert body.startswith(b"HTTP/1.1 403") and b"Gambling" in body


def test_blocked_sni_without_decryption_cuts_the_tunnel(connect_only: ProxyProcess) -> None:
    with pytest.raises((ConnectionError, OSError)):
        tls_through_proxy(
            connect_only.port, "www.wikipedia.org:443", BLOCKED_GAMBLING, None, request_path="/"
        )
    assert connect_only.proc.poll() is None


def test_connect_to_a_port_not_allowed_is_refused(proxy: ProxyProcess) -> None:
    before = metric(proxy, "cipa_bypass_attempts_total", kind="connect_port")
    status, _, body = tls_through_proxy(proxy.port, "localhost:8443", "localhost", None)
    assert status == 403 and b"port 8443 is not allowed" in body
    assert metric(proxy, "cipa_bypass_attempts_total", kind="connect_port") == before + 1


def test_clients_outside_the_allowed_ranges_are_refused(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    p = ProxyProcess.start(tmp_path_factory.mktemp("closed"), {"clients": ["10.0.0.0/8"]})
    try:
        with client(p) as c, pytest.raises(httpx.TransportError):
            c.get("http://www.example.com/")
        assert metric(p, "cipa_clients_refused_total") == 1
        deadline = time.monotonic() + 2
        while not any(r.get("category") == "client_not_allowed" for r in p.audit_records()):
            assert time.monotonic() < deadline, p.audit_records()
            time.sleep(0.05)
    finally:
        p.stop()


# ----------------------------------------------------------------------------- failing closed, bad input


def test_an_engine_fault_blocks_and_the_proxy_keeps_serving(
    proxy: ProxyProcess, origin: Origin
) -> None:
    before = metric(proxy, "cipa_filter_errors_total")
    with client(proxy) as c:
        r = c.get("http://fault.example/anything", headers=HTML)
        assert r.status_code == 403 and "filter error" in r.text
        assert c.get(f"http://localhost:{origin.http_port}/after").status_code == 200
    assert metric(proxy, "cipa_filter_errors_total") == before + 1
    (rec,) = records_for(proxy, r.headers["x-cipa-request-id"])
    assert (rec["action"], rec["category"]) == ("block", "filter_error")


@pytest.mark.parametrize(
    "raw",
    [
        b"GET http://exa%20mple.com/ HTTP/1.1\r\nHost: x\r\n\r\n",  # mitmproxy's own parser refuses it
        b"NONSENSE\r\n\r\n",
        b"GET http://a..b/ HTTP/1.1\r\nHost: a..b\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_and_an_audit_record(
    proxy: ProxyProcess, origin: Origin, raw: bytes
) -> None:
    before = len([r for r in proxy.audit_records() if r.get("category") == "malformed"])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(raw)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400")
    deadline = time.monotonic() + 2
    while len([r for r in proxy.audit_records() if r.get("category") == "malformed"]) != before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with client(proxy) as c:
        assert c.get(f"http://localhost:{origin.http_port}/still-alive").status_code == 200


def test_a_host_the_engine_finds_malformed_gets_400(proxy: ProxyProcess) -> None:
    # mitmproxy accepts this host; the engine's canonicaliser does not (bad IPv4: 256)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET http://1.2.3.256/ HTTP/1.1\r\nHost: 1.2.3.256\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"Malformed request" in answer
    rid = re.search(rb"X-Cipa-Request-Id: (\S+)", answer).group(1).decode()
    (rec,) = records_for(proxy, rid)
    assert (rec["category"], rec["status"]) == ("malformed", 400)


# ----------------------------------------------------------------------------- audit and metrics


def test_every_answered_request_has_exactly_one_audit_record(
    proxy: ProxyProcess, origin: Origin
) -> None:
    answers = []
    with client(proxy) as c:
        for i in range(5):
            for url in (
                f"http://localhost:{origin.http_port}/n{i}",
                f"http://{BLOCKED_GAMBLING}/n{i}",
            ):
                r = c.get(url)
                answers.append(
                    (r.status_code, r.headers["x-cipa-request-id"])
                )  # allowed answers carry it too
    assert sorted(status for status, _ in answers) == [200] * 5 + [403] * 5
    for status, rid in answers:
        (rec,) = records_for(proxy, rid)
        assert rec["status"] == status and rec["action"] == ("allow" if status == 200 else "block")


def test_metrics_endpoint_parses_and_counts(proxy: ProxyProcess, origin: Origin) -> None:
    allowed_before = metric(proxy, "cipa_requests_total", group="students", action="allow")
    blocked_before = metric(proxy, "cipa_requests_total", group="students", action="block")
    with client(proxy) as c:
        for _ in range(3):
            c.get(f"http://localhost:{origin.http_port}/m")
        for _ in range(2):
            c.get("http://miniclip.com/")
    assert (
        metric(proxy, "cipa_requests_total", group="students", action="allow") == allowed_before + 3
    )
    assert (
        metric(proxy, "cipa_requests_total", group="students", action="block") == blocked_before + 2
    )
    assert metric(proxy, "cipa_filter_operative") == 1
    assert metric(proxy, "cipa_rules_entries", category="gambling") > 30000
    assert httpx.get(f"http://127.0.0.1:{proxy.metrics_port}/readyz").status_code == 200


# ----------------------------------------------------------------------------- chaining, shutdown


def test_upstream_chaining_and_selective_inspection(
    chained: ProxyProcess, internet: Internet
) -> None:
    with client(chained, verify=ssl.create_default_context(cafile=str(chained.ca))) as c:
        r = c.get("http://www.example.com/page")
        assert r.text == "internet GET www.example.com /page\n"
        assert c.get(f"http://{BLOCKED_GAMBLING}/").status_code == 403
    # an allowed host with no URL rules passes through: the client sees the (fake) internet's certificate
    status, cert, body = tls_through_proxy(
        chained.port, "www.example.com:443", "www.example.com", internet.ca
    )
    assert (
        status == 200
        and issuer_cn(cert) == "mitmproxy"
        and body.endswith(b"internet GET www.example.com /\n")
    )
    records = chained.audit_records()
    assert any(r["tls"] == "passthrough" and r["host"] == "www.example.com" for r in records)


def test_sigterm_shuts_down_cleanly(tmp_path_factory: pytest.TempPathFactory) -> None:
    p = ProxyProcess.start(tmp_path_factory.mktemp("term"))
    with client(p) as c:
        c.get(f"http://{BLOCKED_GAMBLING}/")
    assert p.stop() == 0
    assert any("cipa-proxy stopped" in line for line in p.log)
    assert len(p.audit_records()) == 1
