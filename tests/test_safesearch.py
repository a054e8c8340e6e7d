"""SafeSearch mechanics: which requests are rewritten, and how."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.engine import Engine
from proxy.model import Request
from proxy.safesearch import SafeSearch, force_cookie, force_query

ROOT = Path(__file__).resolve().parent.parent
TABLE = SafeSearch.load(ROOT / "rules" / "safesearch" / "hosts.tsv")


def test_table_covers_the_engines() -> None:
    for host, engine, route in [
        ("www.google.com", "google", "forcesafesearch.google.com"),
        ("www.google.co.uk", "google", "forcesafesearch.google.com"),
        ("www.bing.com", "bing", "strict.bing.com"),
        ("duckduckgo.com", "duckduckgo", "safe.duckduckgo.com"),
        ("www.ecosia.org", "ecosia", "strict-safe-search.ecosia.org"),
        ("www.ya.ru", "yandex", "213.180.193.56"),
    ]:
        t = TABLE.target(host)
        assert t is not None and (t.engine, TABLE.route_for(t, "strict")) == (engine, route)
    yt = TABLE.target("youtubei.googleapis.com")
    assert TABLE.route_for(yt, "strict") == "restrict.youtube.com"
    assert TABLE.route_for(yt, "moderate") == "restrictmoderate.youtube.com"
    assert TABLE.route_for(yt, "off") is None
    assert TABLE.target("maps.google.com") is None


@pytest.mark.parametrize(
    ("host", "path", "mode", "query", "headers"),
    [
        ("www.google.com", "/search?q=cats&safe=off", "strict", {"safe": "active"}, {}),
        ("www.google.com", "/maps?q=cats", "strict", None, None),  # not a search URL: untouched
        ("www.bing.com", "/images/search?q=x", "moderate", {"adlt": "moderate"}, {}),
        ("duckduckgo.com", "/?q=x&kp=-2", "strict", {"kp": "1"}, {}),
        ("duckduckgo.com", "/about", "strict", None, None),
        ("www.youtube.com", "/watch?v=1", "moderate", {}, {"YouTube-Restrict": "Moderate"}),
        ("www.google.com", "/search?q=x", "off", None, None),
    ],
)
def test_rewrite_for(host: str, path: str, mode: str, query, headers) -> None:
    from urllib.parse import parse_qs

    q = {k: v[0] for k, v in parse_qs(path.partition("?")[2]).items()}
    rw = TABLE.rewrite_for(TABLE.target(host), mode, path, q)
    if query is None:
        assert rw is None
    else:
        assert (rw.query, rw.headers) == (query, headers)


def test_force_query_replaces_every_occurrence() -> None:
    assert (
        force_query("/search?q=a+b&safe=off&safe=images", {"safe": "active"})
        == "/search?q=a+b&safe=active"
    )
    assert force_query("/search", {"safe": "active"}) == "/search?safe=active"


def test_force_cookie() -> None:
    assert force_cookie("", "SRCHHPGUSR", "ADLT", "STRICT") == "SRCHHPGUSR=ADLT=STRICT"
    assert (
        force_cookie("a=1; SRCHHPGUSR=SRCHLANG=en&ADLT=OFF; b=2", "SRCHHPGUSR", "ADLT", "STRICT")
        == "a=1; SRCHHPGUSR=SRCHLANG=en&ADLT=STRICT; b=2"
    )


def test_nosafesearch_is_blocked_only_under_strict() -> None:
    strict = Engine.build(load_config(ROOT / "config.yaml"))
    d = strict.decide(Request(host="search.brave.com", path="/search?q=x", client="10.0.0.1"))
    assert (d.action, d.category) == ("block", "nosafesearch")
    off = Engine.build(load_config(ROOT / "config.yaml", ["policies.students.safesearch=off"]))
    assert off.decide(Request(host="search.brave.com", client="10.0.0.1")).action == "allow"
