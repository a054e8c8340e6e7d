"""Canonicalisation: every spelling a student can type must reduce to the form rules use."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy import canonical
from proxy.canonical import (
    URL,
    Malformed,
    canonical_host,
    canonical_path,
    canonical_url,
    is_ip_literal,
    split_host_port,
)

# --------------------------------------------------------------------------- tricky inputs

HOSTS = [
    ("www.example.com", "www.example.com"),
    ("WWW.Example.COM", "www.example.com"),
    ("example.com.", "example.com"),
    ("example.com..", "example.com"),
    ("  example.com\t", "example.com"),  # header whitespace; other controls are errors
    ("%65xample.com", "example.com"),
    ("%45XAMPLE%2ecom", "example.com"),
    ("bücher.de", "xn--bcher-kva.de"),
    ("BÜCHER.de", "xn--bcher-kva.de"),
    ("xn--bcher-kva.de", "xn--bcher-kva.de"),
    ("XN--BCHER-KVA.DE", "xn--bcher-kva.de"),
    ("b%C3%BCcher.de", "xn--bcher-kva.de"),
    ("аpple.com", "xn--pple-43d.com"),  # Cyrillic U+0430: a homograph, not apple.com
    ("faß.example", "xn--fa-hia.example"),  # non-transitional: ß is kept, not "ss"
    ("ｅｘａｍｐｌｅ。com", "example.com"),  # fullwidth letters, ideographic full stop
    ("example．com", "example.com"),  # U+FF0E
    ("example｡com", "example.com"),  # U+FF61
    ("ex\u00adample.com", "example.com"),  # soft hyphen is ignored by UTS #46
    ("💩.la", "xn--ls8h.la"),  # browsers accept emoji names; IDNA2008 alone would not
    ("_dmarc.example.com", "_dmarc.example.com"),
    ("مثال.إختبار", "xn--mgbh0fb.xn--kgbechtv"),  # right-to-left labels
    ("\u05d0.com", "xn--4db.com"),
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"),
    ("0X7F.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("１２７.０.０.１", "127.0.0.1"),  # fullwidth digits map to ASCII, then IPv4
    ("%31%32%37.0.0.1", "127.0.0.1"),
    ("0x.0x.0", "0.0.0.0"),
    ("192.0x00A80001", "192.168.0.1"),
    ("0x7f.0.0.0x7g", "0x7f.0.0.0x7g"),  # last label is not a number: a name
    ("[0:0::1]", "[::1]"),
    ("[::1]", "[::1]"),
    ("::1", "[::1]"),  # bare, as mitmproxy reports request.host for IPv6
    ("[2001:DB8:0:0:1:0:0:1]", "[2001:db8::1:0:0:1]"),  # first longest run compressed
    ("[::FFFF:127.0.0.1]", "[::ffff:7f00:1]"),  # WHATWG form, on every Python version
    ("[1:0:1:0:1:0:1:0]", "[1:0:1:0:1:0:1:0]"),
]

BAD_HOSTS = [
    ("", "empty"),
    ("   ", "empty"),
    ("a b.com", 'forbidden character " "'),
    ("a<b", 'forbidden character "<"'),
    ("user@host", 'forbidden character "@"'),
    ("a/b", 'forbidden character "/"'),
    ("a\\b", 'forbidden character "\\"'),
    ("a^b", 'forbidden character "^"'),
    ("a|b", 'forbidden character "|"'),
    ("a%b", 'forbidden character "%"'),
    ("ho%00st", "forbidden character U+0000"),
    ("\x00example.com", "forbidden character U+0000"),
    ("ho%2Fst", 'forbidden character "/"'),
    ("host:80", 'forbidden character ":"'),
    ("a..b", "empty label"),
    (".a", "empty label"),
    ("..", "only dots"),
    ("foo.09..", "numeric last label"),
    ("a" * 250 + ".com", "longer than 253"),
    ("256.0.0.1", "out of range"),
    ("0x100000000", "out of range"),
    ("1.2.3.4.5", "at most 4 parts"),
    ("1.2.3.08", "not a number"),
    ("foo.1.2.3", "not a number"),
    ("[::1", "closing"),
    ("[www.google.com]", "invalid IPv6"),
    ("[fe80::1%25eth0]", "invalid IPv6"),  # zone ids are refused, as browsers do
    ("[0::0::0]", "invalid IPv6"),
    ("xn--", "does not encode"),
    ("a.b.c.xn--pokxncvks", "mapped form"),  # decodes to characters UTS #46 maps
    ("example.com%80", "not allowed"),  # invalid UTF-8 -> U+FFFD -> disallowed
    ("\u0301a.com", "combining mark"),
    ("a\u05d0.com", "left-to-right label"),  # CheckBidi
    ("1a.\u05d0", "directionality"),  # in a bidi name every label obeys RFC 5893
    ("a\u200db.com", "zero-width joiner"),  # CheckJoiners: ZWJ only after a virama
]


@pytest.mark.parametrize(("raw", "want"), HOSTS)
def test_canonical_host(raw: str, want: str) -> None:
    assert canonical_host(raw) == want
    assert canonical_host(want) == want


def test_homograph_is_not_the_original() -> None:
    assert canonical_host("аpple.com") != canonical_host("apple.com")


@pytest.mark.parametrize(("raw", "why"), BAD_HOSTS)
def test_bad_host(raw: str, why: str) -> None:
    with pytest.raises(Malformed, match=re.escape(why)):
        canonical_host(raw)


def test_error_message_names_input_and_character() -> None:
    with pytest.raises(Malformed) as exc:
        canonical_host("a b.com")
    assert str(exc.value) == 'bad host "a b.com": forbidden character " "'


def test_fast_path_does_not_touch_idna(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> str:
        raise AssertionError("idna called on the fast path")

    monkeypatch.setattr(canonical.idna, "uts46_remap", boom)
    uncached = canonical_host.__wrapped__
    for host in ("www.example.com", "localhost", "a-b.c0.example", "1.2.3.example"):
        assert uncached(host) == host


@pytest.mark.parametrize(
    ("host", "ip"),
    [("127.0.0.1", True), ("[::1]", True), ("example.com", False), ("1.2.3.example", False)],
)
def test_is_ip_literal(host: str, ip: bool) -> None:
    assert is_ip_literal(host) is ip


@pytest.mark.parametrize(
    ("authority", "default", "want"),
    [
        ("Example.com:8080", None, ("example.com", 8080)),
        ("example.com", 443, ("example.com", 443)),
        ("example.com:", 80, ("example.com", 80)),
        ("user:pw@host", None, ("host", None)),
        ("user:pw@host:80", None, ("host", 80)),
        ("allowed.com@BLOCKED.com", None, ("blocked.com", None)),  # last "@" wins
        ("a@b@c:1", None, ("c", 1)),
        ("[::1]:443", None, ("[::1]", 443)),
        ("[::1]", 8443, ("[::1]", 8443)),
        ("::1", None, ("[::1]", None)),
        ("host:000080", None, ("host", 80)),
    ],
)
def test_split_host_port(authority: str, default: int | None, want: tuple[str, int | None]) -> None:
    assert split_host_port(authority, default) == want


@pytest.mark.parametrize(
    "authority",
    ["host:-80", "host:65536", "host:8o", "host:٨٠", "host:1_0", "[::1]x", "[::1]:x", "@", ":80"],
)
def test_split_host_port_bad(authority: str) -> None:
    with pytest.raises(Malformed):
        split_host_port(authority)


PATHS = [
    ("", "/"),
    ("*", "*"),
    ("/", "/"),
    ("a/b", "/a/b"),
    ("/a/b?c=d", "/a/b?c=d"),
    ("/A/B", "/A/B"),  # paths are case-sensitive
    ("//a//b", "/a/b"),
    ("/a//b/", "/a/b/"),
    ("/a/./b/../c", "/a/c"),
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("/../../x", "/x"),  # ".." above the root stays at the root
    ("/a/%2e%2E/casino/", "/casino/"),
    ("/a/.%2e/casino", "/casino"),
    ("/%2e/x", "/x"),
    ("/..%2f", "/..%2F"),  # an encoded slash is not a separator: no traversal, no error
    ("/..%2f..%2fetc", "/..%2F..%2Fetc"),
    ("/c%61sino", "/casino"),
    ("/%7e%41-%5f", "/~A-_"),
    ("/a%2fb%3a%3C", "/a%2Fb%3A%3C"),
    ("/foo%", "/foo%25"),
    ("/foo%2zbar", "/foo%252zbar"),
    ("/%%34%31", "/%2541"),  # one decoding pass, so the result is stable
    ("/a#frag", "/a"),
    ("/a?q#frag", "/a?q"),
    ("/a?", "/a"),
    ("/a?#x", "/a"),
    ("/a?x=/../%2e&y=%41", "/a?x=/../%2e&y=%41"),  # the query is kept as sent
    ("/a?q=a b'\"<>é", "/a?q=a%20b%27%22%3C%3E%C3%A9"),  # ...but encoded as browsers do
    ("/it's", "/it's"),  # "'" is encoded only in queries
    ("\\a\\..\\casino\\", "/casino/"),
    ("/a\\b", "/a/b"),
    ("/你好", "/%E4%BD%A0%E5%A5%BD"),  # as browsers send it
    ('/a b\t"<>`{}', "/a%20b%09%22%3C%3E%60%7B%7D"),
    ("/\udcff", "/%FF"),  # a raw byte decoded with surrogateescape
    ("/\ud800", "/%EF%BF%BD"),
]


@pytest.mark.parametrize(("raw", "want"), PATHS)
def test_canonical_path(raw: str, want: str) -> None:
    assert canonical_path(raw) == want
    assert canonical_path(want) == want


URLS = [
    ("http://example.com", "http://example.com/"),
    ("HTTPS://EXAMPLE.COM:443/A", "https://example.com/A"),
    ("http://example.com:80/", "http://example.com/"),
    ("https://example.com:80/", "https://example.com:80/"),
    ("example.com/x", "http://example.com/x"),
    ("example.com:8080/x", "http://example.com:8080/x"),
    ("localhost:3000", "http://localhost:3000/"),
    ("//example.com/x", "http://example.com/x"),
    ("http://user:pw@example.com/", "http://example.com/"),
    ("http://allowed.com@blocked.com/", "http://blocked.com/"),
    ("http://example.com/a/../casino/#top", "http://example.com/casino/"),
    ("http://example.com/a/%2e%2e/casino", "http://example.com/casino"),
    ("http://example.com\\a\\..\\b", "http://example.com/b"),
    ("http:example.com", "http://example.com/"),
    ("http:\\\\example.com", "http://example.com/"),
    ("http:///example.com", "http://example.com/"),  # special schemes skip any slashes
    ("  \x00http://exa\tmple.com/a\n  ", "http://example.com/a"),
    ("http://example.com?q=1", "http://example.com/?q=1"),
    ("http://0x7f.1:8080/", "http://127.0.0.1:8080/"),
    ("http://[0:0::1]/", "http://[::1]/"),
    ("http://bücher.de/", "http://xn--bcher-kva.de/"),
    ("ftp://files.example.com/x", "ftp://files.example.com/x"),
    ("ftp://files.example.com:21/x", "ftp://files.example.com/x"),
    ("wss://chat.example.com:443/", "wss://chat.example.com/"),
    ("git://Example.com/repo", "git://example.com/repo"),
]


@pytest.mark.parametrize(("raw", "want"), URLS)
def test_canonical_url(raw: str, want: str) -> None:
    url = canonical_url(raw)
    assert str(url) == want
    assert canonical_url(want) == url


def test_url_parts() -> None:
    url = canonical_url("HTTP://u:p@Example.COM:8080/a/./b?c=d#e")
    assert url == URL("http", "example.com", 8080, "/a/b?c=d")
    assert str(URL("https", "x.org", 443, "/")) == "https://x.org/"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "http://",
        "///x",
        "javascript:alert(1)",
        "JavaScript://%0Aalert(1)",
        "data:text/html,hi",
        "mailto:a@b.c",
        "file:///etc/passwd",
        "foo:bar",
        "/just/a/path",
        "http://user@/x",
        "http://a b/",
        "http://example.com:99999/",
    ],
)
def test_canonical_url_bad(raw: str) -> None:
    with pytest.raises(Malformed):
        canonical_url(raw)


# --------------------------------------------------------------------------- WHATWG conformance

_DATA = (
    Path(__file__).parent / "data" / "whatwg-url" / "urltestdata.json"
)  # vendored, BSD (see README)

# Cases where we knowingly differ from the URL Standard, each toward refusing a host that no
# DNS name can have rather than inventing a canonical form for it.
WHATWG_SKIP = {
    "http://./": "host is only dots; WHATWG keeps '.', we refuse (stripping leaves nothing)",
    "http://../": "host is only dots; WHATWG keeps '..', we refuse (stripping leaves nothing)",
    "http://foo.09..": "WHATWG keeps 'foo.09..' as a name; stripping the trailing dots leaves"
    " 'foo.09', which is an invalid IPv4 address, so we refuse instead",
}


def _whatwg_cases() -> list[dict[str, object]]:
    cases = []
    for case in json.loads(_DATA.read_text(encoding="utf-8")):
        if not isinstance(case, dict) or case.get("base") is not None:
            continue
        text = case["input"].lstrip("".join(map(chr, range(0x21))))
        if re.match(r"(?i)https?:(?://)", text):
            cases.append(case)
    return cases


WHATWG_CASES = _whatwg_cases()


def test_whatwg_selection_is_substantial() -> None:
    assert len(WHATWG_CASES) > 200
    assert set(WHATWG_SKIP) <= {c["input"] for c in WHATWG_CASES}


@pytest.mark.parametrize("case", WHATWG_CASES, ids=lambda c: repr(c["input"])[1:-1][:60])
def test_whatwg(case: dict[str, object]) -> None:
    raw = str(case["input"])
    if raw in WHATWG_SKIP:
        pytest.skip(WHATWG_SKIP[raw])
    if case.get("failure"):
        with pytest.raises(Malformed):
            canonical_url(raw)
        return
    url = canonical_url(raw)
    assert url.host == str(case["hostname"]).rstrip(".")
    assert canonical_host(url.host) == url.host
    want_port = int(str(case["port"])) if case["port"] else None
    assert url.port == want_port
    # Our path of the raw input equals our path of what the browser made of it.
    assert url.path == canonical_path(str(case["pathname"]) + str(case["search"]))


# --------------------------------------------------------------------------- properties

_HOST_ALPHABET = st.sampled_from(
    list("abcxyzABXZ0179-._%:[]@ ")
    + ["xn--", "0x", "%2e", "%41", "ß", "ü", "а", "。", "．"]
    + ["\u00ad", "\u200d", "\u0301", "💩", "ｅ", "１", "\u05d0", "\u0663"]
)
host_like = st.lists(_HOST_ALPHABET, max_size=20).map("".join)
path_like = st.lists(
    st.sampled_from(list("/\\.?#%aZ09 ~-") + ["%2e", "%2E", "%2f", "%41", "..", "%", "é"]),
    max_size=25,
).map("".join)
url_like = st.builds(
    lambda scheme, userinfo, host, port, path: f"{scheme}{userinfo}{host}{port}{path}",
    st.sampled_from(["", "http://", "HTTPS://", "http:", "ftp://", "x://", "javascript:", "//"]),
    st.sampled_from(["", "u@", "u:p@", "@"]),
    st.one_of(host_like, st.sampled_from(["example.com", "[::1]", "0x7f.1", "bücher.de"])),
    st.sampled_from(["", ":", ":80", ":443", ":8080", ":x"]),
    path_like,
)


@settings(deadline=None)
@given(st.one_of(host_like, st.text(max_size=30)))
def test_canonical_host_idempotent(raw: str) -> None:
    try:
        host = canonical_host(raw)
    except Malformed:
        assume(False)
        return
    assert canonical_host(host) == host
    assert host.isascii() and host == host.lower() and not host.endswith(".")


@settings(deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_ipv4_spellings(n: int) -> None:
    dotted = str(ipaddress.IPv4Address(n))
    a, b, c, d = (int(x) for x in dotted.split("."))
    for spelling in (
        str(n),
        hex(n),
        f"0{n:o}",
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"{a}.{b}.{hex((c << 8) | d)}",
    ):
        assert canonical_host(spelling) == dotted


@settings(deadline=None)
@given(st.ip_addresses(v=6))
def test_ipv6_spellings(addr: ipaddress.IPv6Address) -> None:
    host = canonical_host(f"[{addr.exploded.upper()}]")
    assert ipaddress.IPv6Address(host[1:-1]) == addr
    assert canonical_host(f"[{addr.compressed}]") == host == canonical_host(addr.compressed)


@settings(deadline=None)
@given(st.one_of(path_like, st.text()))
def test_canonical_path_idempotent(raw: str) -> None:
    path = canonical_path(raw)
    assert canonical_path(path) == path
    assert path == "*" or path.startswith("/")
    assert "#" not in path


@settings(deadline=None)
@given(st.one_of(url_like, st.text()))
def test_canonical_url_total_and_stable(raw: str) -> None:
    try:
        url = canonical_url(raw)
    except Malformed:
        return
    assert canonical_url(str(url)) == url
    assert canonical_host(url.host) == url.host
