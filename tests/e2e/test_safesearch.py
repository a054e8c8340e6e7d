"""SafeSearch through the running proxy: rewritten when decrypted, routed when not."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from .harness import Internet, ProxyProcess, issuer_cn, make_ca_and_leaf, tls_through_proxy
from .test_proxy import metric


class SafeListener:
    """Plays forcesafesearch.google.com / restrict.youtube.com: valid certificates for the original names."""

    def __init__(self, directory: Path):
        self.ca, leaf, key = make_ca_and_leaf(directory, ["www.google.com", "www.youtube.com"])
        self.snis: list[str] = []
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(leaf, key)
        ctx.sni_callback = lambda sock, name, c: self.snis.append(name)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                body = f"safe listener {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SafeListener]:
    s = SafeListener(tmp_path_factory.mktemp("safe"))
    yield s
    s.server.shutdown()


def test_decrypted_search_requests_are_forced(chained: ProxyProcess) -> None:
    before = metric(chained, "cipa_safesearch_enforced_total", engine="google", mode="rewrite")
    ctx = ssl.create_default_context(cafile=str(chained.ca))
    with httpx.Client(proxy=chained.url, verify=ctx, timeout=10) as c:
        g = c.get("https://www.google.com/search?q=cats&safe=off")
        maps = c.get("https://www.google.com/maps?q=cats")
        yt = c.get("https://www.youtube.com/watch?v=abc")
        bing = c.get(
            "https://www.bing.com/search?q=x&adlt=off",
            headers={"Cookie": "SRCHHPGUSR=SRCHLANG=en&ADLT=OFF"},
        )
        ddg = c.get("https://duckduckgo.com/?q=x&kp=-2")
    assert g.text == "internet GET www.google.com /search?q=cats&safe=active\n"
    assert maps.text == "internet GET www.google.com /maps?q=cats\n"
    assert "youtube-restrict: Strict" in yt.text
    assert (
        "/search?q=x&adlt=strict" in bing.text and "SRCHHPGUSR=SRCHLANG=en&ADLT=STRICT" in bing.text
    )
    assert "/?q=x&kp=1" in ddg.text
    assert (
        metric(chained, "cipa_safesearch_enforced_total", engine="google", mode="rewrite")
        == before + 1
    )
    recs = [
        r
        for r in chained.audit_records()
        if (r.get("url") or "").startswith("https://www.google.com/search")
    ]
    assert recs and recs[-1]["safesearch"] == "google"


def test_without_decryption_the_connection_is_routed(
    tmp_path: Path, listener: SafeListener
) -> None:
    p = ProxyProcess.start(
        tmp_path / "proxy",
        {
            "tls.inspect": "none",
            "safesearch": {
                "addresses": {
                    "forcesafesearch.google.com": f"127.0.0.1:{listener.port}",
                    "restrict.youtube.com": f"127.0.0.1:{listener.port}",
                }
            },
        },
    )
    try:
        status, cert, body = tls_through_proxy(
            p.port, "www.google.com:443", "www.google.com", listener.ca, "/search?q=x"
        )
        # the client's TLS session is end to end with the SafeSearch address: its certificate, not the proxy's
        assert status == 200 and issuer_cn(cert) == "test origin CA"
        assert (
            body.endswith(b"safe listener /search?q=x\n") and listener.snis[-1] == "www.google.com"
        )
        status, cert, body = tls_through_proxy(
            p.port, "www.youtube.com:443", "www.youtube.com", listener.ca, "/"
        )
        assert body.endswith(b"safe listener /\n")
        assert metric(p, "cipa_safesearch_enforced_total", engine="youtube", mode="route") == 1
        tunnels = [r for r in p.audit_records() if r.get("tls") == "passthrough"]
        assert {r["safesearch"] for r in tunnels} == {"google", "youtube"}
    finally:
        p.stop()


def test_safesearch_off_groups_are_untouched(tmp_path: Path, internet: Internet) -> None:
    p = ProxyProcess.start(
        tmp_path / "proxy",
        {
            "policies.students.safesearch": "off",
            "upstream": f"http://127.0.0.1:{internet.port}",
            "tls.upstream_ca": str(internet.ca),
        },
    )
    try:
        ctx = ssl.create_default_context(cafile=str(p.ca))
        with httpx.Client(proxy=p.url, verify=ctx, timeout=10) as c:
            r = c.get("https://www.google.com/search?q=cats&safe=off")
        # decrypted here (anonymizers has URL rules on www.google.com), but nothing is forced
        assert r.text == "internet GET www.google.com /search?q=cats&safe=off\n"
        assert metric(p, "cipa_safesearch_enforced_total") == 0
    finally:
        p.stop()


def test_search_terms_of_blocked_searches_are_recorded_only_when_asked(
    tmp_path: Path, internet: Internet
) -> None:
    for enabled in (True, False):
        p = ProxyProcess.start(
            tmp_path / f"proxy-{enabled}",
            {"audit.log_search_terms": enabled, "upstream": f"http://127.0.0.1:{internet.port}"},
        )
        try:
            with httpx.Client(proxy=p.url, timeout=10) as c:
                assert (
                    c.get(
                        "http://search.brave.com/search?q=how+to+get+around+the+filter"
                    ).status_code
                    == 403
                )
                assert c.get("http://www.example.com/?q=allowed+search").status_code == 200
            recs = [
                r
                for r in p.audit_records()
                if r.get("host") in ("search.brave.com", "www.example.com")
            ]
            terms = {r["host"]: r.get("search_terms") for r in recs}
            expected = "how to get around the filter" if enabled else None
            assert terms == {"search.brave.com": expected, "www.example.com": None}
        finally:
            p.stop()
