"""The page a person sees instead of a blocked site.

Rendered from a template file with every variable HTML-escaped; no external
resources (a blocked page must not trigger more requests), ``no-store`` so a
later allow is not hidden by a cache. Clients that do not want HTML (curl,
APIs) get text, and sub-resources (images, scripts) get an empty body.
"""

from __future__ import annotations

import html
import time
from functools import lru_cache
from pathlib import Path
from string import Template

from .model import Decision

_TEMPLATE_DIR = Path(__file__).parent / "templates"

# Plain words for categories on the page; unknown names are shown as they are.
CATEGORY_WORDS = {
    "adult": "Adult / pornographic content",
    "harmful_to_minors": "Content harmful to minors",
    "games": "Online games",
    "gambling": "Gambling",
    "anonymizers": "Anonymous proxy / filter bypass",
    "vpn": "VPN service",
    "doh": "Encrypted DNS (filter bypass)",
    "malformed": "Malformed request",
    "ip_literal": "Site addressed by IP number",
    "filter_error": "Filter error",
    "sni_mismatch": "Mismatched secure connection (possible filter bypass)",
    "not_ready": "Filter starting",
    "audit_unavailable": "Monitoring unavailable",
}


def shorten(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[: limit - 1] + "…"


@lru_cache(maxsize=4)
def _template(name: str) -> Template:
    return Template((_TEMPLATE_DIR / name).read_text(encoding="utf-8"))


def category_words(decision: Decision) -> str:
    if decision.category is None:
        return "Not on the approved list"
    return CATEGORY_WORDS.get(decision.category, decision.category.replace("_", " ").capitalize())


def render(
    decision: Decision,
    host: str,
    request_id: str,
    *,
    accept: str = "",
    dest: str = "",
    district: str = "",
    contact: str = "",
    status: int = 403,
    now: float | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for a blocked request, chosen by what the client accepts.

    ``dest`` is the Sec-Fetch-Dest header: a browser's sub-resource fetches get an empty body.
    """
    headers = {
        "Cache-Control": "no-store",
        "X-Cipa-Request-Id": request_id,
        "X-Content-Type-Options": "nosniff",
    }
    stamp = time.strftime(
        "%Y-%m-%d %H:%M:%S %Z", time.localtime(now if now is not None else time.time())
    )
    words = category_words(decision)
    if decision.category is None:
        heading = "This site is not on the approved list"
        explanation = "Your group can only visit approved sites, and this one is not on the list."
    else:
        heading = "This page is blocked"
        explanation = f"The school's Internet filter blocked this page: {decision.reason}."
    if dest in (
        "image",
        "script",
        "style",
        "font",
        "audio",
        "video",
        "track",
        "object",
        "embed",
        "worker",
    ):
        return status, headers, b""
    if "text/html" in accept or "application/xhtml" in accept:
        body = _template("block.html").substitute(
            title=html.escape(heading),
            heading=html.escape(heading),
            explanation=html.escape(explanation),
            host=html.escape(host),
            url=html.escape(shorten(decision.url)),
            category=html.escape(words),
            group=html.escape(decision.group),
            request_id=html.escape(request_id),
            time=html.escape(stamp),
            contact=html.escape(contact),
            district=html.escape(district),
        )
        headers["Content-Type"] = "text/html; charset=utf-8"
        headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
        return status, headers, body.encode("utf-8")
    text = (
        f"{heading}\n\nSite: {host}\nAddress: {shorten(decision.url)}\nCategory: {words}\n"
        f"Group: {decision.group}\nReason: {decision.reason}\nRequest ID: {request_id}\nTime: {stamp}\n\n{contact}\n"
    )
    headers["Content-Type"] = "text/plain; charset=utf-8"
    return status, headers, text.encode("utf-8")
