"""What students and staff see, in real Chromium through the running proxy."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from e2e.harness import ProxyProcess

from .conftest import CHROMEBOOK, DISTRICT, PHONE, REVIEW_EMAIL, audit_record

BLOCKED = "www.bet365.com"  # gambling (rules/lists/ut1/gambling/domains)

# WCAG 2.x contrast of every element that has its own text, against the first opaque background
# behind it. Returns the failures: [text, ratio, needed].
CONTRAST_JS = """
() => {
  const parse = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const bg = (el) => { for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
    if (c && c[3] > 0.5) return c; } return [255, 255, 255, 1]; };
  const bad = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const cs = getComputedStyle(el);
    if (!own || cs.visibility === 'hidden' || el.getClientRects().length === 0) continue;
    const fg = parse(cs.color), back = bg(el);
    const [a, b] = [lum(fg), lum(back)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(cs.fontSize), weight = parseInt(cs.fontWeight, 10);
    const needed = size >= 24 || (size >= 18.66 && weight >= 700) ? 3 : 4.5;
    if (ratio < needed) bad.push([el.textContent.trim().slice(0, 40), Math.round(ratio * 100) / 100, needed]);
  }
  return bad;
}
"""


def mailto_parts(href: str) -> tuple[str, str, str]:
    parts = urlsplit(href)
    assert parts.scheme == "mailto"
    q = parse_qs(parts.query)
    return unquote(parts.path), q["subject"][0], q["body"][0]


def landmarks_ok(page) -> None:
    assert page.get_by_role("banner").count() == 1
    assert page.get_by_role("main").count() == 1
    assert page.get_by_role("contentinfo").count() == 1
    assert page.get_by_role("heading", level=1).count() == 1


def fits_width(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


# ----------------------------------------------------------------------------- block page


def test_blocked_http_site_shows_the_block_page(
    site_proxy: ProxyProcess, new_page, screenshot
) -> None:
    page = new_page()
    url = f"http://{BLOCKED}/poker?table=7"
    resp = page.goto(url)
    assert resp is not None and resp.status == 403
    assert page.url == url  # the browser stayed on the plain-HTTP address
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.get_by_role("heading", level=1).inner_text() == "This page is blocked"
    assert page.locator("#category").inner_text() == "Gambling"
    assert page.get_by_text(DISTRICT).first.is_visible()
    assert page.locator("img.logo").evaluate("i => i.complete && i.naturalWidth > 0")
    landmarks_ok(page)

    rid = page.locator("#request-id").inner_text()
    assert rid == resp.headers["x-cipa-request-id"]
    rec = audit_record(site_proxy, rid)
    assert (rec["action"], rec["category"], rec["url"], rec["tls"]) == (
        "block",
        "gambling",
        url,
        "none",
    )

    to, subject, body = mailto_parts(
        page.get_by_role("link", name="Request a review").get_attribute("href")
    )
    assert to == REVIEW_EMAIL and BLOCKED in subject and "Gambling" in subject
    assert f"Address: {url}" in body and "Category: Gambling (gambling)" in body
    assert f"Request ID: {rid}" in body
    screenshot(page, "block-http-chromebook")


def test_blocked_https_site_shows_the_block_page(
    site_proxy: ProxyProcess, new_page, screenshot
) -> None:
    page = new_page()
    resp = page.goto(f"https://{BLOCKED}/")
    assert resp is not None and resp.status == 403  # a page, not a certificate error
    assert page.get_by_role("heading", level=1).inner_text() == "This page is blocked"
    assert page.locator("#category").inner_text() == "Gambling"
    rid = page.locator("#request-id").inner_text()
    rec = audit_record(site_proxy, rid)
    assert (rec["category"], rec["url"], rec["tls"]) == (
        "gambling",
        f"https://{BLOCKED}/",
        "intercepted",
    )
    screenshot(page, "block-https-chromebook")


def test_spanish_block_page_on_a_phone(site_proxy: ProxyProcess, new_page, screenshot) -> None:
    page = new_page(
        locale="es-MX", viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2
    )
    resp = page.goto(f"http://{BLOCKED}/")
    assert resp is not None and resp.status == 403
    assert page.locator("html").get_attribute("lang") == "es"
    assert page.get_by_role("heading", level=1).inner_text() == "Esta página está bloqueada"
    assert page.locator("#category").inner_text() == "Apuestas y juegos de azar"
    landmarks_ok(page)
    link = page.get_by_role("link", name="Pedir una revisión")
    _, subject, body = mailto_parts(link.get_attribute("href"))
    rid = page.locator("#request-id").inner_text()
    assert subject.startswith("Solicitud de revisión") and f"ID de solicitud: {rid}" in body
    assert audit_record(site_proxy, rid)["category"] == "gambling"
    assert fits_width(page)
    assert link.bounding_box()["height"] >= 44  # a comfortable touch target
    screenshot(page, "block-es-phone")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("viewport", [PHONE, CHROMEBOOK], ids=["phone", "chromebook"])
def test_block_page_contrast_and_fit(new_page, screenshot, scheme: str, viewport: dict) -> None:
    page = new_page(viewport=viewport, color_scheme=scheme)
    page.goto(f"http://{BLOCKED}/")
    assert page.evaluate(CONTRAST_JS) == []
    assert fits_width(page)
    # the facts sit side by side on a Chromebook and stack on a phone
    dt, dd = page.locator("dt").first.bounding_box(), page.locator("dd").first.bounding_box()
    assert (dd["y"] > dt["y"]) == (viewport is PHONE)
    if scheme == "dark":
        screenshot(page, f"block-dark-{'phone' if viewport is PHONE else 'chromebook'}")


# ----------------------------------------------------------------------------- allowed traffic


def test_allowed_sites_load_through_the_proxy(new_page) -> None:
    page = new_page()
    for url in ("http://www.khanacademy.org/learn", "https://www.khanacademy.org/learn"):
        resp = page.goto(url)
        assert resp is not None and resp.status == 200
        assert (
            page.locator("body").inner_text().strip() == "internet GET www.khanacademy.org /learn"
        )


def test_safesearch_is_visible_to_the_page(new_page) -> None:
    page = new_page()
    page.goto("https://www.google.com/search?q=cats&safe=off")
    assert (
        page.locator("body").inner_text().strip()
        == "internet GET www.google.com /search?q=cats&safe=active"
    )
    page.goto("https://www.youtube.com/watch?v=abc")
    assert "youtube-restrict: Strict" in page.locator("body").inner_text()


# ----------------------------------------------------------------------------- CA setup page


def test_setup_page_says_trusted_and_downloads_the_ca(
    site_proxy: ProxyProcess, new_page, screenshot, tmp_path: Path
) -> None:
    page = new_page()
    resp = page.goto("http://cipa-proxy.setup/")
    assert resp is not None and resp.status == 200
    landmarks_ok(page)
    status = page.locator("#trust-check")
    status.and_(page.locator("[data-state=trusted]")).wait_for(timeout=15000)
    assert status.inner_text().startswith("✓ This device trusts the district certificate")

    pem = site_proxy.ca.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex().upper()
    assert page.locator("#fingerprint").inner_text().replace(":", "") == fingerprint

    for button, name, content in (
        ("#download-pem", "cipa-proxy-ca.pem", pem),
        ("#download-der", "cipa-proxy-ca.cer", der),
    ):
        with page.expect_download() as info:
            page.click(button)
        download = info.value
        assert download.suggested_filename == name
        saved = tmp_path / name
        download.save_as(saved)
        assert saved.read_bytes() == content
    screenshot(page, "setup-trusted-chromebook")


def test_setup_page_without_the_ca_says_so(new_page, screenshot) -> None:
    page = new_page(
        trusting=False, locale="es-US", viewport=PHONE, is_mobile=True, device_scale_factor=2
    )
    page.goto("http://cipa-proxy.setup/")
    status = page.locator("#trust-check")
    status.and_(page.locator("[data-state=untrusted]")).wait_for(timeout=15000)
    assert "todavía no confía" in status.inner_text()
    assert page.locator("html").get_attribute("lang") == "es"
    assert fits_width(page)
    assert page.evaluate(CONTRAST_JS) == []
    screenshot(page, "setup-untrusted-es-phone")
    # the same browser gets a certificate error, not a block page, for a blocked HTTPS site
    with pytest.raises(Exception, match=re.compile("ERR_CERT_AUTHORITY_INVALID")):
        page.goto(f"https://{BLOCKED}/")
