"""The setup host on the wire (no browser needed): what the proxy answers itself, and what it refuses."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from e2e.harness import Internet, ProxyProcess, issuer_cn, tls_through_proxy

SETUP = "cipa-proxy.setup"


def get(p: ProxyProcess, url: str, **kw) -> httpx.Response:
    with httpx.Client(proxy=p.url, timeout=10) as c:
        return c.request(kw.pop("method", "GET"), url, **kw)


def test_the_proxy_answers_the_setup_host_itself(site_proxy: ProxyProcess) -> None:
    page = get(site_proxy, f"http://{SETUP}/", headers={"Accept-Language": "es"})
    assert page.status_code == 200 and page.headers["content-language"] == "es"
    assert page.headers["cache-control"] == "no-store"
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and f"img-src data: https://{SETUP};" in csp
    assert f'data-check-url="https://{SETUP}/trust-check.png"' in page.text

    js = get(site_proxy, f"http://{SETUP}/setup.js")
    assert js.headers["content-type"].startswith("text/javascript") and "trust-check" in js.text

    pem = get(site_proxy, f"http://{SETUP}/cipa-proxy-ca.pem")
    der = get(site_proxy, f"http://{SETUP}/cipa-proxy-ca.cer")
    cert = x509.load_pem_x509_certificate(site_proxy.ca.read_bytes())
    assert pem.content == site_proxy.ca.read_bytes()
    assert der.content == cert.public_bytes(serialization.Encoding.DER)
    assert der.headers["content-type"] == "application/x-x509-ca-cert"
    assert pem.headers["content-disposition"] == 'attachment; filename="cipa-proxy-ca.pem"'

    # the trust check only means something over TLS; other paths and methods are refused
    assert get(site_proxy, f"http://{SETUP}/trust-check.png").status_code == 404
    assert get(site_proxy, f"http://{SETUP}/etc/passwd").status_code == 404
    assert get(site_proxy, f"http://{SETUP}/", method="POST", content=b"x").status_code == 405
    # answered here, never asked of the (fake) internet behind the proxy, and not audited as a visit
    assert all(b"internet" not in r.content for r in (page, js, pem, der))
    assert not [r for r in site_proxy.audit_records() if SETUP in (r.get("url") or "")]


def test_https_setup_host_is_signed_by_the_district_ca(site_proxy: ProxyProcess) -> None:
    status, cert, body = tls_through_proxy(
        site_proxy.port, f"{SETUP}:443", SETUP, site_proxy.ca, "/trust-check.png"
    )
    assert status == 200 and issuer_cn(cert) == "cipa-proxy district CA"
    head, _, png = body.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"image/png" in head.lower()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_setup_tunnels_cannot_reach_anything_else(site_proxy: ProxyProcess) -> None:
    # a CONNECT to the setup name with TLS naming another site: closed, never passed through
    with pytest.raises((ssl.SSLError, OSError)):
        tls_through_proxy(site_proxy.port, f"{SETUP}:443", "www.khanacademy.org", site_proxy.ca)
    status, _, body = tls_through_proxy(site_proxy.port, f"{SETUP}:8443", SETUP, site_proxy.ca)
    assert status == 403 and b"http://cipa-proxy.setup/" in body


def test_without_decryption_and_with_another_name(tmp_path: Path, fake_internet: Internet) -> None:
    p = ProxyProcess.start(
        tmp_path,
        {
            "tls.inspect": "none",
            "district.setup_host": "setup.district.example",
            "upstream": f"http://127.0.0.1:{fake_internet.port}",
            "tls.upstream_ca": str(fake_internet.ca),
        },
    )
    try:
        page = get(p, "http://setup.district.example/")
        assert page.status_code == 200 and 'data-inspects="no"' in page.text
        assert 'data-check-url=""' in page.text and "does\nnot need the certificate" in page.text
        status, _, _ = tls_through_proxy(
            p.port, "setup.district.example:443", "setup.district.example", None, None
        )
        assert status == 403  # nothing is decrypted under tls.inspect: none, this name included
        # the default name is an ordinary site again
        assert get(p, f"http://{SETUP}/").text == f"internet GET {SETUP} /\n"
    finally:
        p.stop()
