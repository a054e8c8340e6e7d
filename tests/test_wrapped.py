"""Wrapped URLs: a blocked page reached through an allowed translator, cache or redirector."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.canonical import canonical_url
from proxy.config import load_config
from proxy.engine import Engine
from proxy.model import Request
from proxy.wrapped import inner_urls, might_wrap

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.build(load_config(ROOT / "config.yaml"))


def decide(engine: Engine, url: str):
    u = canonical_url(url)
    return engine.decide(
        Request(host=u.host, path=u.path, scheme=u.scheme, port=u.port, client="10.9.9.9")
    )


@pytest.mark.parametrize(
    ("url", "category"),
    [
        (
            "https://translate.google.com/translate?sl=auto&tl=es&u=https://www.bet365.com/",
            "gambling",
        ),
        ("https://www-bet365-com.translate.goog/poker?_x_tr_sl=auto&_x_tr_tl=es", "gambling"),
        ("https://www.google.com/amp/s/www.pornhub.com/view", "adult"),
        ("https://www-bet365-com.cdn.ampproject.org/c/s/www.bet365.com/", "gambling"),
        ("https://web.archive.org/web/2020/https://www.bet365.com/", "gambling"),
        ("https://webcache.googleusercontent.com/search?q=cache:miniclip.com/games", "games"),
        ("http://redirect.example/?url=aHR0cHM6Ly93d3cuYmV0MzY1LmNvbS8=", "gambling"),  # base64
        (
            "http://go.example/out?to=https%253A%252F%252Fminiclip.com%252F",
            "games",
        ),  # double-encoded
    ],
)
def test_blocked_inner_url_blocks_the_wrapper(engine: Engine, url: str, category: str) -> None:
    d = decide(engine, url)
    assert (d.action, d.category, d.bypass) == ("block", category, "wrapped_url"), d
    assert d.reason.startswith("wraps ")


@pytest.mark.parametrize(
    "url",
    [
        "https://www.google.com/search?q=math+homework",
        "https://www.google.com/url?q=https://www.khanacademy.org/",
        "https://translate.google.com/translate?u=https://en.wikipedia.org/wiki/Casino",
        "http://shop.example/?page=2&sort=price",
    ],
)
def test_allowed_inner_urls_stay_allowed(engine: Engine, url: str) -> None:
    assert decide(engine, url).action == "allow"


def test_precheck_is_cheap_and_exact() -> None:
    assert not might_wrap("www.example.com", "/plain/path")
    assert might_wrap("x.translate.goog", "/")
    assert inner_urls("www.example.com", "/a?b=c") == []
    assert inner_urls("a-b--c-d.translate.goog", "/p?x=1") == ["https://a.b-c.d/p"]
