"""Bypass attempts as raw bytes against the running proxy, and as many benign look-alikes.

Every attempt must be blocked (a 4xx answer, a refused CONNECT, or a cut
tunnel); every look-alike must pass. The test writes every byte itself: the
request line, the Host header, the CONNECT line and, for tunnels, the TLS
ClientHello (through ``ssl``, whose SNI the test chooses). The README's
"Anti-bypass" section lists what is covered.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator

import pytest

from .harness import ROOT, Internet, ProxyProcess, tls_through_proxy

G = "www.bet365.com"  # gambling list
IP_EXCEPTIONS = (
    "203.0.113.10",
    "198.51.100.7",
)  # educational IP-literal exceptions (district.yaml)


def get(target: str, host: str | None = None) -> bytes:
    host = host if host is not None else target.split("/")[2].rsplit("@", 1)[-1]
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


BLOCKED_HTTP: list[tuple[str, bytes]] = [
    # host spellings of a listed domain
    ("upper case", get(f"http://{G.upper()}/")),
    ("trailing dot", get(f"http://{G}./")),
    ("mixed case and dot", get("http://Www.Bet365.Com./")),
    ("percent-encoded letter", get("http://%77ww.bet365.com/")),
    ("fully percent-encoded", get("http://%77%77%77%2e%62%65%74%33%36%35%2e%63%6f%6d/")),
    ("userinfo", get(f"http://user:pw@{G}/", G)),
    ("explicit default port", get(f"http://{G}:80/")),
    ("deep subdomain", get(f"http://a.b.c.{G}/")),
    ("empty label", get(f"http://{G}../")),
    (
        "fullwidth dots",
        "GET http://www。bet365。com/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    ),
    ("registered domain only", get("http://bet365.com/")),
    ("other TLD subdomain of listed", get("http://sports.bet365.com/")),
    # path tricks against a URL-prefix entry (games: google.com/top/games/)
    ("url entry", get("http://www.google.com/top/games/")),
    ("double slash", get("http://www.google.com//top/games/")),
    ("dot segment", get("http://www.google.com/x/../top/games/")),
    ("encoded dot segment", get("http://www.google.com/x/%2e%2e/top/games/")),
    ("current-dir segment", get("http://www.google.com/top/./games/")),
    ("percent-encoded path", get("http://www.google.com/%74op/games/")),
    ("upper-case path", get("http://www.google.com/TOP/GAMES/")),
    ("slash inside", get("http://www.google.com/top//games/")),
    ("query after prefix", get("http://www.google.com/top/games/?x=1")),
    # IP literals in every spelling (students: ip_literals block)
    ("decimal IPv4", get("http://2130706433/")),
    ("hex IPv4", get("http://0x7f000001/")),
    ("hex dotted IPv4", get("http://0x7f.0.0.1/")),
    ("octal IPv4", get("http://0177.0.0.1/")),
    ("short IPv4", get("http://127.1/")),
    ("dotted quad", get("http://93.184.216.34/")),
    ("octal long", get("http://017700000001/")),
    ("IPv6 loopback", get("http://[::1]/")),
    ("IPv4-mapped IPv6", get("http://[::ffff:127.0.0.1]/")),
    ("IPv6 long form", get("http://[0:0:0:0:0:ffff:7f00:1]/")),
    ("IPv6 global", get("http://[2001:db8::1]/")),
    ("bad IPv4", get("http://1.2.3.256/")),
    # URLs inside URLs
    ("translate u=", get(f"http://translate.google.com/translate?sl=auto&tl=es&u=https://{G}/")),
    ("translate.goog host", get("http://www-bet365-com.translate.goog/")),
    ("AMP viewer", get(f"http://www.google.com/amp/s/{G}/")),
    ("AMP cache host", get(f"http://www-bet365-com.cdn.ampproject.org/c/s/{G}/")),
    ("web archive", get(f"http://web.archive.org/web/2020/https://{G}/")),
    ("google cache", get("http://webcache.googleusercontent.com/search?q=cache:miniclip.com/")),
    ("redirect base64", get("http://redirect.example/?url=aHR0cHM6Ly93d3cuYmV0MzY1LmNvbS8=")),
    (
        "redirect double-encoded",
        get("http://go.example/out?to=https%253A%252F%252Fminiclip.com%252F"),
    ),
    ("link= param", get("http://click.example/?link=http%3A%2F%2Fpokerstars.com%2F")),
    ("next= param", get("http://login.example/?next=https://hidemyass.com/")),
    # another site in the Host header
    ("host header fronting", get("http://www.example.com/", G)),
    ("host header IP", get("http://www.example.com/", "2130706433")),
    # categories
    ("anonymizer", get("http://hidemyass.com/")),
    ("vpn site", get("http://nordvpn.com/")),
    ("DoH provider", get("http://dns.google/")),
    ("DoH provider 2", get("http://cloudflare-dns.com/dns-query?dns=AAABAAABAAAAAAAA")),
    ("poker", get("http://pokerstars.com/")),
    ("games", get("http://miniclip.com/")),
    ("adult pattern", get("http://free-porn-videos.example/")),
    ("no-SafeSearch engine", get("http://search.brave.com/search?q=x")),
    # malformed
    ("space in host", get("http://exa mple.com/", "x")),
    ("angle brackets", get("http://bad<host>/", "x")),
    ("garbage request line", b"NONSENSE\r\n\r\n"),
    ("bad IPv6", get("http://[::zz]/", "x")),
]

BLOCKED_CONNECT: list[tuple[str, str, str | None]] = [
    ("CONNECT listed host", f"{G}:443", G),
    ("CONNECT upper case + dot", f"{G.upper()}.:443", None),
    ("CONNECT decimal IP", "2130706433:443", None),
    ("CONNECT IPv6", "[::1]:443", None),
    ("CONNECT port 22", "www.example.com:22", None),
    ("CONNECT port 8443", "www.example.com:8443", None),
    ("CONNECT vpn", "nordvpn.com:443", None),
    ("CONNECT DoH", "dns.google:443", None),
    ("SNI of a blocked site", "www.example.com:443", G),
    ("SNI of another site (fronting)", "www.example.com:443", "www.wikipedia.org"),
]

BENIGN_HTTP: list[tuple[str, bytes]] = [
    *[
        (f"innocent host {h}", get(f"http://{h}/"))
        for h in (
            "scunthorpe.gov.uk",
            "sextant.com",
            "www.cocktail.com",
            "arsenal.com",
            "essex.ac.uk",
            "middlesex.edu",
            "sussex.ac.uk",
            "analytics.google.com",
            "therapist.com",
            "pennisula.org",
            "mass.gov",
            "shitake-mushrooms.com",
            "www.expertsexchange.com",
            "hoolihan.net",
            "cumberland.k12.nc.us",
        )
    ],
    ("sexual health page", get("http://www.plannedparenthood.org/learn/sex")),
    ("teen health page", get("http://kidshealth.org/en/teens/sexual-health.html")),
    ("casino article", get("http://en.wikipedia.org/wiki/Casino")),
    ("gambling-law history", get("http://www.loc.gov/search?q=history+of+gambling+law")),
    # query parameters that are not URLs
    ("search words", get("http://www.google.com/search?q=math+homework")),
    ("page number", get("http://www.khanacademy.org/?page=2&sort=asc")),
    ("q=node.js", get("http://shop.example/?q=node.js")),
    ("url= not a URL", get("http://news.example/?url=not-a-url")),
    ("u= a number", get("http://www.example.org/?u=12345")),
    ("to= a word", get("http://www.example.org/?to=tomorrow")),
    ("link= a word", get("http://www.example.org/?link=home")),
    ("next= a path", get("http://www.example.org/?next=/dashboard")),
    ("redirect=false", get("http://www.example.org/?redirect=false")),
    ("r=1", get("http://www.example.org/?r=1")),
    ("allowed inner URL", get("http://www.google.com/url?q=https://www.khanacademy.org/")),
    (
        "translate an allowed page",
        get("http://translate.google.com/translate?u=https://en.wikipedia.org/wiki/Casino"),
    ),
    ("base64 of nothing", get("http://www.example.org/?u=aGVsbG8gd29ybGQgaGVsbG8=")),
    # allowed sites in odd but harmless spellings
    ("upper-case allowed", get("http://WWW.WIKIPEDIA.ORG/")),
    ("trailing-dot allowed", get("http://www.wikipedia.org./")),
    ("encoded path allowed", get("http://www.wikipedia.org/wiki/%43asino")),
    ("dot segments allowed", get("http://www.wikipedia.org/a/../wiki/Math")),
    ("port 80 allowed", get("http://www.wikipedia.org:80/")),
    ("search for a film", get("http://www.wikipedia.org/w/index.php?search=casino+royale")),
    ("games word in path", get("http://www.example.org/top/games/")),
    ("library of congress", get("http://www.loc.gov/")),
    ("health class page", get("http://www.cdc.gov/healthyyouth/sexualbehaviors/")),
    ("q= an allowed site", get("http://www.example.org/?q=www.wikipedia.org")),
    ("racing news", get("http://www.bbc.co.uk/sport/horse-racing")),
    ("google other path", get("http://www.google.com/top/news/")),
    *[
        (f"allowed site {h}", get(f"http://{h}/"))
        for h in (
            "nasa.gov",
            "www.britannica.com",
            "www.pbs.org",
            "www.nytimes.com",
            "www.weather.gov",
            "www.cdc.gov",
            "www.smithsonianmag.com",
            "www.nationalgeographic.com",
            "code.org",
            "scratch.mit.edu",
            "www.desmos.com",
            "quizlet.com",
            "www.ixl.com",
        )
    ],
    # educational IP-literal exceptions
    ("IP exception 1", get(f"http://{IP_EXCEPTIONS[0]}/")),
    ("IP exception 2", get(f"http://{IP_EXCEPTIONS[1]}/schedule")),
]

BENIGN_CONNECT = [
    "www.wikipedia.org:443",
    "www.khanacademy.org:443",
    "nasa.gov:443",
    "www.example.org:443",
]


def send(p: ProxyProcess, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.fixture(scope="module")
def filtered(
    tmp_path_factory: pytest.TempPathFactory, internet: Internet
) -> Iterator[ProxyProcess]:
    """The shipped rules plus two IP addresses the district allows (district.yaml)."""
    root = tmp_path_factory.mktemp("bypass")
    rules = root / "rules"
    shutil.copytree(ROOT / "rules", rules, ignore=shutil.ignore_patterns("*.cache.idx"))
    (rules / "district.yaml").write_text(
        "category: district\ndescription: District sites\ndomains: ["
        + ", ".join(IP_EXCEPTIONS)
        + "]\n"
    )
    p = ProxyProcess.start(
        root / "proxy",
        {"rules_dir": str(rules), "upstream": f"http://127.0.0.1:{internet.port}", "tls.upstream_ca": str(internet.ca),
         "tls.inspect": "none"},
    )  # fmt: skip
    yield p
    p.stop()


def test_at_least_sixty_each() -> None:
    assert len(BLOCKED_HTTP) + len(BLOCKED_CONNECT) >= 60
    assert len(BENIGN_HTTP) + len(BENIGN_CONNECT) >= 60
    assert len({n for n, *_ in BLOCKED_HTTP + BLOCKED_CONNECT}) == len(BLOCKED_HTTP) + len(
        BLOCKED_CONNECT
    )


@pytest.mark.parametrize(("name", "raw"), BLOCKED_HTTP, ids=[n for n, _ in BLOCKED_HTTP])
def test_bypass_attempt_is_blocked(filtered: ProxyProcess, name: str, raw: bytes) -> None:
    answer = send(filtered, raw)
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 403")), answer[:300]
    assert b"internet " not in answer  # nothing came from upstream


@pytest.mark.parametrize(
    ("name", "target", "sni"), BLOCKED_CONNECT, ids=[n for n, *_ in BLOCKED_CONNECT]
)
def test_tunnel_attempt_is_blocked(
    filtered: ProxyProcess, internet: Internet, name: str, target: str, sni: str | None
) -> None:
    # Trust the fake internet's CA: a tunnel that wrongly went through would complete the
    # handshake and answer, so only a real refusal or a cut counts as blocked.
    try:
        status, _, body = tls_through_proxy(filtered.port, target, sni, internet.ca, "/")
    except OSError:  # ssl.SSLError, reset, EOF: the proxy cut the tunnel
        return
    assert status in (400, 403), (status, body[:200])


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00\x0e\x38\x12\x34\x56\x78\x9a\xbc\xde\xf0\x00\x00\x00\x00\x00",
    ],
    ids=["ssh", "openvpn"],
)
def test_tunnel_carrying_neither_tls_nor_http_is_cut(
    filtered: ProxyProcess, first_bytes: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", filtered.port), timeout=10) as s:
        s.sendall(b"CONNECT www.example.org:443 HTTP/1.1\r\nHost: www.example.org:443\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")  # an allowed host: the tunnel opens ...
        s.sendall(first_bytes)
        assert s.recv(4096) == b""  # ... and is cut when it turns out not to be TLS
    deadline = time.monotonic() + 3
    while not any(r.get("category") == "raw_tunnel" for r in filtered.audit_records()):
        assert time.monotonic() < deadline, "no audit record for the raw tunnel"
        time.sleep(0.05)


@pytest.mark.parametrize(("name", "raw"), BENIGN_HTTP, ids=[n for n, _ in BENIGN_HTTP])
def test_look_alike_passes(filtered: ProxyProcess, name: str, raw: bytes) -> None:
    answer = send(filtered, raw)
    assert answer.startswith(b"HTTP/1.1 200") and b"internet GET " in answer, answer[:300]


@pytest.mark.parametrize("target", BENIGN_CONNECT)
def test_allowed_tunnel_opens(filtered: ProxyProcess, target: str) -> None:
    with socket.create_connection(("127.0.0.1", filtered.port), timeout=10) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


def test_readme_lists_the_attempts() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "tests/e2e/test_bypass_table.py" in readme
