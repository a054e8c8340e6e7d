"""The block page and the setup page as rendered (no proxy): language, escaping, mailto, logo."""

from __future__ import annotations

import re
from pathlib import Path
from string import Template
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from proxy import blockpage
from proxy.config import load_config
from proxy.model import BLOCK, Decision
from proxy.yamlpos import InputError

ROOT = Path(__file__).resolve().parents[1]
GAMBLING = Decision(
    BLOCK,
    "gambling",
    "students",
    "students",
    "rules/gambling.yaml:3",
    "Online betting (gambling): blocked for group students",
    "http://www.bet365.com/poker?x=1&y=2",
)
HTML = "text/html,application/xhtml+xml,*/*;q=0.8"


def page(decision: Decision = GAMBLING, **kw) -> tuple[int, dict[str, str], str]:
    kw.setdefault("accept", HTML)
    status, headers, body = blockpage.render(decision, "www.bet365.com", "abc-1-2", now=0, **kw)
    return status, headers, body.decode("utf-8")


@pytest.mark.parametrize(
    "header, lang",
    [
        ("", "en"),
        ("es", "es"),
        ("es-MX,es;q=0.9,en;q=0.8", "es"),
        ("en-US,en;q=0.9,es;q=0.8", "en"),
        ("fr-FR,fr;q=0.9,es;q=0.5,en;q=0.4", "es"),  # the best language we have
        ("en;q=0.2, es;q=0.9", "es"),  # q-values, not order
        ("es;q=0, en", "en"),  # q=0 means "not this one"
        ("de, *;q=0.5", "en"),
        ("ES-419", "es"),
        ("garbage;;q=x, es", "es"),
        ("zh-Hant", "en"),
    ],
)
def test_language_from_accept_language(header: str, lang: str) -> None:
    assert blockpage.choose_language(header) == lang


def test_english_page_has_every_fact_and_landmark() -> None:
    status, headers, body = page()
    assert status == 403 and headers["Content-Language"] == "en"
    assert headers["Cache-Control"] == "no-store" and headers["X-Cipa-Request-Id"] == "abc-1-2"
    assert "script-src" not in headers["Content-Security-Policy"]
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert '<html lang="en">' in body and "<title>This page is blocked</title>" in body
    for landmark in ("<header", "<main", "<footer", "<h1>"):
        assert body.count(landmark) == 1, landmark
    assert '<code id="request-id">abc-1-2</code>' in body
    assert '<dd id="category">Gambling</dd>' in body and "students" in body
    assert "Online betting (gambling): blocked for group students" in body
    assert "http://www.bet365.com/poker?x=1&amp;y=2" in body
    assert "<script" not in body and "src=" not in body and "$" not in body  # nothing left unfilled


def test_spanish_page() -> None:
    _, headers, body = page(accept_language="es-US,es;q=0.9")
    assert headers["Content-Language"] == "es" and '<html lang="es">' in body
    assert "Esta página está bloqueada" in body and "Apuestas y juegos de azar" in body
    assert "ID de solicitud" in body and "Categoría" in body


def test_every_string_and_category_is_translated() -> None:
    assert set(blockpage.STRINGS["es"]) == set(blockpage.STRINGS["en"])
    assert set(blockpage.CATEGORY_WORDS_ES) == set(blockpage.CATEGORY_WORDS)
    for lang in blockpage.LANGUAGES:
        for key in blockpage._LABELS:
            assert blockpage.STRINGS[lang][key]
    # a category without words (a district's own rule file) is shown by its name
    d = Decision(BLOCK, "local_games", "students", "students", "r", "reason", "http://x.org/")
    assert blockpage.category_words(d, "es") == "Local games"


def test_walled_garden_wording() -> None:
    d = Decision(
        BLOCK, None, "k2", "k2", "config.yaml:9", "not on the approved list", "http://x.org/"
    )
    _, _, en = page(d)
    _, _, es = page(d, accept_language="es")
    assert "This site is not on the approved list" in en and "Not on the approved list" in en
    assert "Este sitio no está en la lista aprobada" in es


def test_text_variant_is_localized_too() -> None:
    _, headers, en = page(accept="*/*")
    _, _, es = page(accept="*/*", accept_language="es")
    assert headers["Content-Type"].startswith("text/plain")
    assert "Category: Gambling\n" in en and "Request ID: abc-1-2\n" in en
    assert "Categoría: Apuestas y juegos de azar\n" in es and "ID de solicitud: abc-1-2\n" in es


def test_subresources_get_an_empty_body() -> None:
    status, headers, body = page(dest="image")
    assert (status, body) == (403, "") and headers["X-Cipa-Request-Id"] == "abc-1-2"


def test_hostile_values_are_escaped() -> None:
    evil = '"><script>alert(1)</script>'
    d = Decision(BLOCK, "x<y", "g<b>", "p", "r", f"reason {evil}", f"http://a.b/{evil}")
    _, _, body = page(
        d, district=evil, contact=evil, review_email="a@b.org", accept_language=f"es{evil}"
    )
    assert "<script>" not in body and "<b>" not in body
    assert "&lt;script&gt;" in body


def review_href(body: str) -> tuple[str, str, str]:
    href = re.search(r'id="request-review" href="([^"]+)"', body).group(1)
    parts = urlsplit(href.replace("&amp;", "&"))
    q = parse_qs(parts.query)
    assert parts.scheme == "mailto" and set(q) == {"subject", "body"}
    return unquote(parts.path), q["subject"][0], q["body"][0]


def test_review_mailto_is_prefilled() -> None:
    _, _, body = page(review_email="filter-review@example.org")
    to, subject, text = review_href(body)
    assert to == "filter-review@example.org"
    assert subject == "Review request: www.bet365.com (Gambling)"
    assert "\r\nAddress: http://www.bet365.com/poker?x=1&y=2\r\n" in text  # & survives the query
    assert "Category: Gambling (gambling)\r\n" in text and "Request ID: abc-1-2\r\n" in text
    assert "Group: students" in text and "Why I need it:" in text


def test_review_mailto_in_spanish_and_without_address() -> None:
    _, _, body = page(review_email="r@example.org", accept_language="es")
    _, subject, text = review_href(body)
    assert subject.startswith("Solicitud de revisión") and "ID de solicitud: abc-1-2" in text
    _, _, none = page()
    assert "request-review" not in none and "give the request ID to your teacher" in none


def test_logo_is_inlined_and_a_bad_one_is_left_out(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    logo.write_bytes(b"\x89PNG fake")
    _, _, body = page(logo=logo, district="Springfield USD")
    assert 'src="data:image/png;base64,iVBORyBmYWtl" alt=""' in body  # the name is beside it
    logo.write_bytes(b"\x89PNG changed")  # picked up without a restart
    assert "iVBORyBjaGFuZ2Vk" in page(logo=logo)[2]
    (tmp_path / "logo.txt").write_text("not an image type")
    for bad in (tmp_path / "missing.png", tmp_path / "logo.txt"):
        status, _, body = page(logo=bad)
        assert status == 403 and "<img" not in body


@pytest.mark.parametrize("lang", blockpage.LANGUAGES)
@pytest.mark.parametrize("inspects", [True, False])
def test_setup_page_renders(lang: str, inspects: bool) -> None:
    got, body = blockpage.render_setup(
        accept_language=lang,
        district="Springfield USD",
        contact="Call <IT>",
        setup_host="setup.springfield.k12",
        ca_name="Springfield CA",
        fingerprint="AA:BB",
        inspects=inspects,
    )
    html = body.decode("utf-8")
    assert got == lang and f'<html lang="{lang}">' in html
    assert f'data-inspects="{"yes" if inspects else "no"}"' in html
    assert ('data-check-url="https://setup.springfield.k12/trust-check.png"' in html) == inspects
    assert "Call &lt;IT&gt;" in html and "Springfield CA" in html and "AA:BB" in html
    assert 'href="/cipa-proxy-ca.pem"' in html and 'href="/cipa-proxy-ca.cer"' in html
    assert "$HOME" in html and re.search(r"\$[a-z_]", html.replace("$HOME", "")) is None
    for steps in ("chromeos", "windows", "macos", "ios", "android", "firefox", "linux"):
        assert f'id="steps-{steps}"' in html


def test_setup_templates_have_the_same_placeholders() -> None:
    names = {}
    for lang in blockpage.LANGUAGES:
        t = (ROOT / "proxy" / "templates" / f"setup.{lang}.html").read_text()
        names[lang] = {m[1] or m[2] for m in Template.pattern.findall(t) if m[1] or m[2]}
    assert names["en"] == names["es"]


# --------------------------------------------------------------------------- district config


def load(tmp_path: Path, district: str):
    cfg = (ROOT / "config.yaml").read_text()
    cfg = cfg.replace("rules_dir: rules", f"rules_dir: {ROOT / 'rules'}")
    cfg = re.sub(r"(?m)^district:\n(  .*\n)+", district, cfg)
    path = tmp_path / "config.yaml"
    path.write_text(cfg)
    return load_config(path, [])


def test_district_keys(tmp_path: Path) -> None:
    (tmp_path / "logo.svg").write_text("<svg/>")
    cfg = load(
        tmp_path,
        "district:\n  name: X\n  logo: logo.svg\n  review_email: review@x.org\n"
        "  setup_host: Setup.X.Example.\n",
    )
    d = cfg.district
    assert (d.logo, d.review_email, d.setup_host) == (
        tmp_path / "logo.svg",
        "review@x.org",
        "setup.x.example",
    )
    d = load(tmp_path, "district:\n  name: X\n").district
    assert (d.logo, d.review_email, d.setup_host) == (None, "", "cipa-proxy.setup")
    assert load(tmp_path, 'district:\n  setup_host: ""\n').district.setup_host == ""


def test_bad_district_keys_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(b"x" * (blockpage.LOGO_MAX_BYTES + 1))
    (tmp_path / "logo.bmp").write_bytes(b"x")
    problems = []
    for district in (
        "district:\n  logo: nothere.png\n",
        "district:\n  logo: big.png\n",
        "district:\n  logo: logo.bmp\n",
        "district:\n  review_email: not an address\n",
        "district:\n  setup_host: setup\n",
        "district:\n  setup_host: bad_name.example\n",
    ):
        with pytest.raises(InputError) as info:
            load(tmp_path, district)
        problems.append(str(info.value))
    for text, key in zip(problems, ["logo", "logo", "logo", "review_email", "setup_host", "setup_host"], strict=True):  # fmt: skip
        assert re.search(rf"config\.yaml:\d+: district\.{key}: ", text), text
