"""The pages a person sees: the block page, and the CA setup (onboarding) page.

Rendered from template files with every variable HTML-escaped. The block page
loads no external resources (a blocked page must not trigger more requests;
the district logo is inlined as a ``data:`` URI) and is ``no-store`` so a
later allow is not hidden by a cache. Clients that do not want HTML (curl,
APIs) get text, and sub-resources (images, scripts) get an empty body.

Both pages come in English and Spanish, chosen by ``Accept-Language``; the
block page's strings are in ``STRINGS`` below, the setup page has one
template per language (``templates/setup.<lang>.html``).
"""

from __future__ import annotations

import base64
import html
import logging
import time
from functools import lru_cache
from pathlib import Path
from string import Template
from urllib.parse import quote

from .model import Decision

log = logging.getLogger("cipa.blockpage")

_TEMPLATE_DIR = Path(__file__).parent / "templates"

LANGUAGES = ("en", "es")  # the first is the default

# Plain words for categories on the page; unknown names are shown as they are.
CATEGORY_WORDS = {
    "adult": "Adult / pornographic content",
    "harmful_to_minors": "Content harmful to minors",
    "games": "Online games",
    "gambling": "Gambling",
    "anonymizers": "Anonymous proxy / filter bypass",
    "vpn": "VPN service",
    "doh": "Encrypted DNS (filter bypass)",
    "cheating": "Cheating / answer sharing",
    "dating": "Dating",
    "drugs": "Illegal drugs",
    "hacking": "Hacking / cracking",
    "social_networks": "Social networks",
    "violence": "Violence / hate",
    "warez": "Pirated software",
    "nosafesearch": "Search engine without SafeSearch",
    "child_abuse": "Illegal content",
    "learned_adult": "Adult / pornographic content",
    "educational": "Educational",
    "district": "District site",
    "malformed": "Malformed request",
    "ip_literal": "Site addressed by IP number",
    "filter_error": "Filter error",
    "sni_mismatch": "Mismatched secure connection (possible filter bypass)",
    "not_ready": "Filter starting",
    "audit_unavailable": "Monitoring unavailable",
    "port": "Connection to a port that is not allowed",
    "auth_required": "Sign-in required",
}

CATEGORY_WORDS_ES = {
    "adult": "Contenido para adultos / pornográfico",
    "harmful_to_minors": "Contenido dañino para menores",
    "games": "Juegos en línea",
    "gambling": "Apuestas y juegos de azar",
    "anonymizers": "Proxy anónimo / evasión del filtro",
    "vpn": "Servicio de VPN",
    "doh": "DNS cifrado (evasión del filtro)",
    "cheating": "Trampas / respuestas compartidas",
    "dating": "Citas en línea",
    "drugs": "Drogas ilegales",
    "hacking": "Hacking / cracking",
    "social_networks": "Redes sociales",
    "violence": "Violencia / odio",
    "warez": "Software pirata",
    "nosafesearch": "Buscador sin SafeSearch",
    "child_abuse": "Contenido ilegal",
    "learned_adult": "Contenido para adultos / pornográfico",
    "educational": "Educativo",
    "district": "Sitio del distrito",
    "malformed": "Solicitud mal formada",
    "ip_literal": "Sitio con dirección IP numérica",
    "filter_error": "Error del filtro",
    "sni_mismatch": "Conexión segura que no coincide (posible evasión del filtro)",
    "not_ready": "El filtro se está iniciando",
    "audit_unavailable": "Supervisión no disponible",
    "port": "Conexión a un puerto no permitido",
    "auth_required": "Hay que iniciar sesión",
}

_WORDS = {"en": CATEGORY_WORDS, "es": CATEGORY_WORDS_ES}

# Every string of the block page, per language. ``{...}`` fields are filled in before escaping.
STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "heading_blocked": "This page is blocked",
        "heading_walled": "This site is not on the approved list",
        "explain_blocked": "The school's Internet filter blocked this page.",
        "explain_walled": "Your group can only visit approved sites, and this one is not on the list.",
        "not_approved": "Not on the approved list",
        "site": "Site",
        "address": "Address",
        "category": "Category",
        "group": "Group",
        "request_id": "Request ID",
        "time": "Time",
        "reason": "Reason",
        "next_heading": "What you can do",
        "next_review": "If you need this page for schoolwork, ask for a review. The request ID tells staff exactly which block to look at.",
        "next_no_review": "If you need this page for schoolwork, give the request ID to your teacher or the help desk.",
        "review_button": "Request a review",
        "footer": "Filtered under the district's Internet Safety Policy (Children's Internet Protection Act).",
        "mail_subject": "Review request: {host} ({category})",
        "mail_body": "Please review this blocked page.\n\nAddress: {url}\nCategory: {category} ({raw})\nGroup: {group}\nRequest ID: {rid}\nTime: {time}\n\nWhy I need it:\n",
    },
    "es": {
        "heading_blocked": "Esta página está bloqueada",
        "heading_walled": "Este sitio no está en la lista aprobada",
        "explain_blocked": "El filtro de Internet de la escuela bloqueó esta página.",
        "explain_walled": "Tu grupo solo puede visitar sitios aprobados, y este no está en la lista.",
        "not_approved": "No está en la lista aprobada",
        "site": "Sitio",
        "address": "Dirección",
        "category": "Categoría",
        "group": "Grupo",
        "request_id": "ID de solicitud",
        "time": "Hora",
        "reason": "Motivo",
        "next_heading": "Qué puedes hacer",
        "next_review": "Si necesitas esta página para tus tareas, pide una revisión. El ID de solicitud le indica al personal exactamente qué bloqueo revisar.",
        "next_no_review": "Si necesitas esta página para tus tareas, dale el ID de solicitud a tu maestro o a la mesa de ayuda.",
        "review_button": "Pedir una revisión",
        "footer": "Filtrado según la Política de Seguridad en Internet del distrito (Ley de Protección de Niños en Internet, CIPA).",
        "mail_subject": "Solicitud de revisión: {host} ({category})",
        "mail_body": "Por favor, revisen esta página bloqueada.\n\nDirección: {url}\nCategoría: {category} ({raw})\nGrupo: {group}\nID de solicitud: {rid}\nHora: {time}\n\nPor qué la necesito:\n",
    },
}

# Labels of the block page, substituted as $t_<name>.
_LABELS = (
    "site",
    "address",
    "category",
    "reason",
    "group",
    "request_id",
    "time",
    "next_heading",
    "footer",
)

# Sec-Fetch-Dest values of sub-resources: they get an empty body, never a page.
_SUBRESOURCES = frozenset(
    ("image", "script", "style", "font", "audio", "video", "track", "object", "embed", "worker")
)

_LOGO_TYPES = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
LOGO_MAX_BYTES = 256 * 1024

BLOCK_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def shorten(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[: limit - 1] + "…"


@lru_cache(maxsize=16)
def _template(name: str) -> Template:
    return Template((_TEMPLATE_DIR / name).read_text(encoding="utf-8"))


@lru_cache(maxsize=8)
def asset(name: str) -> bytes:
    """A static file shipped beside the templates (the setup page's script)."""
    return (_TEMPLATE_DIR / name).read_bytes()


def choose_language(accept_language: str, available: tuple[str, ...] = LANGUAGES) -> str:
    """The best of ``available`` for an Accept-Language header (RFC 9110 q-values); the first by default."""
    choices: list[tuple[float, int, str]] = []
    for i, item in enumerate(accept_language.split(",")):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if tag and q > 0:
            choices.append((-q, i, tag.strip().lower()))
    for _, _, tag in sorted(choices):
        if tag == "*":
            return available[0]
        primary = tag.split("-", 1)[0]
        if primary in available:
            return primary
    return available[0]


_logo_missing: set[Path] = set()


def logo_data_uri(path: Path | None) -> str:
    """The district logo as a ``data:`` URI (re-read when the file changes); "" when there is none
    or it cannot be read (the page is shown without it, never not at all)."""
    if path is None:
        return ""
    try:
        st = path.stat()
    except OSError as exc:
        if path not in _logo_missing:  # once, not on every block page
            _logo_missing.add(path)
            log.warning("district logo %s: %s", path, exc)
        return ""
    _logo_missing.discard(path)
    return _logo(path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4)
def _logo(path: Path, mtime_ns: int, size: int) -> str:
    kind = _LOGO_TYPES.get(path.suffix.lower())
    if kind is None or size > LOGO_MAX_BYTES:
        log.warning(
            "district logo %s: must be png/svg/jpg/gif/webp of at most %d bytes",
            path,
            LOGO_MAX_BYTES,
        )
        return ""
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("district logo %s: %s", path, exc)
        return ""
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def _logo_html(path: Path | None) -> str:
    """The logo beside the district name: decorative (empty alt), the name is the text next to it."""
    uri = logo_data_uri(path)
    if not uri:
        return ""
    return f'<img class="logo" src="{html.escape(uri, quote=True)}" alt="" height="40">'


def category_words(decision: Decision, lang: str = "en") -> str:
    if decision.category is None:
        return STRINGS.get(lang, STRINGS["en"])["not_approved"]
    words = _WORDS.get(lang, CATEGORY_WORDS).get(decision.category) or CATEGORY_WORDS.get(
        decision.category
    )
    return words or decision.category.replace("_", " ").capitalize()


def review_mailto(
    email: str,
    lang: str,
    *,
    host: str,
    url: str,
    category: str,
    raw_category: str,
    group: str,
    request_id: str,
    stamp: str,
) -> str:
    """A ``mailto:`` URI (RFC 6068) with subject and body prefilled: address, category, request ID."""
    t = STRINGS[lang]
    subject = t["mail_subject"].format(host=host, category=category)
    body = (
        t["mail_body"]
        .format(
            url=shorten(url, 1000),
            category=category,
            raw=raw_category,
            group=group,
            rid=request_id,
            time=stamp,
        )
        .replace("\n", "\r\n")
    )
    return f"mailto:{quote(email, safe='@')}?subject={quote(subject, safe='')}&body={quote(body, safe='')}"


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
    accept_language: str = "",
    review_email: str = "",
    logo: Path | None = None,
    override_url: str = "",
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for a blocked request, chosen by what the client accepts.

    ``dest`` is the Sec-Fetch-Dest header: a browser's sub-resource fetches get an empty body.
    ``accept_language`` picks English or Spanish; ``review_email`` adds a "request a review"
    mailto link; ``logo`` is an image file shown beside the district name; ``override_url``
    links authorised adults to the override sign-in page (CIPA bona fide research).
    """
    headers = {
        "Cache-Control": "no-store",
        "X-Cipa-Request-Id": request_id,
        "X-Content-Type-Options": "nosniff",
    }
    if dest in _SUBRESOURCES:
        return status, headers, b""
    lang = choose_language(accept_language)
    headers["Content-Language"] = lang
    headers["Vary"] = "Accept, Accept-Language"
    t = STRINGS[lang]
    stamp = time.strftime(
        "%Y-%m-%d %H:%M:%S %Z", time.localtime(now if now is not None else time.time())
    )
    words = category_words(decision, lang)
    if decision.category is None:
        heading, explanation = t["heading_walled"], t["explain_walled"]
    else:
        heading = t["heading_blocked"]
        explanation = t["explain_blocked"]
    if "text/html" in accept or "application/xhtml" in accept:
        e = html.escape
        if review_email:
            href = review_mailto(
                review_email,
                lang,
                host=host,
                url=decision.url,
                category=words,
                raw_category=decision.category or "not_approved",
                group=decision.group,
                request_id=request_id,
                stamp=stamp,
            )
            review = (
                f'<p>{e(t["next_review"])}</p>\n<p><a class="button" id="request-review" '
                f'href="{e(href, quote=True)}">{e(t["review_button"])}</a></p>'
            )
        else:
            review = f"<p>{e(t['next_no_review'])}</p>"
        if override_url:
            review += (
                f'\n<p><a class="button" id="staff-override" href="{e(override_url, quote=True)}">'
                f"{e(_OVERRIDE_LINK[lang])}</a></p>"
            )
        body = _template("block.html").substitute(
            style=asset("page.css").decode("utf-8"),
            lang=lang,
            title=e(heading),
            heading=e(heading),
            explanation=e(explanation),
            host=e(host),
            url=e(shorten(decision.url)),
            category=e(words),
            reason=e(decision.reason),
            group=e(decision.group),
            request_id=e(request_id),
            time=e(stamp),
            contact=e(contact),
            district=e(district),
            logo=_logo_html(logo),
            review=review,
            **{f"t_{k}": e(t[k]) for k in _LABELS},
        )
        headers["Content-Type"] = "text/html; charset=utf-8"
        headers["Content-Security-Policy"] = BLOCK_CSP
        return status, headers, body.encode("utf-8")
    text = (
        f"{heading}\n\n{t['site']}: {host}\n{t['address']}: {shorten(decision.url)}\n"
        f"{t['category']}: {words}\n{t['group']}: {decision.group}\n{t['reason']}: {decision.reason}\n"
        f"{t['request_id']}: {request_id}\n{t['time']}: {stamp}\n\n{contact}\n"
    )
    headers["Content-Type"] = "text/plain; charset=utf-8"
    return status, headers, text.encode("utf-8")


# --------------------------------------------------------------------------- setup page


_OVERRIDE_LINK = {
    "en": "Staff: open this site for research (sign-in required)",
    "es": "Personal: abrir este sitio para investigación (requiere iniciar sesión)",
}


def setup_csp(setup_host: str) -> str:
    """Its own script, inline styles, and the HTTPS trust-check image on the setup host only."""
    return (
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
        f"img-src data: https://{setup_host}; base-uri 'none'; form-action 'none'"
    )


def render_setup(
    *,
    accept_language: str = "",
    district: str = "",
    contact: str = "",
    logo: Path | None = None,
    setup_host: str,
    ca_name: str,
    fingerprint: str,
    inspects: bool = True,
) -> tuple[str, bytes]:
    """(language, HTML) of the CA setup page served at ``http://<setup_host>/``.

    ``inspects`` is false under ``tls.inspect: none``: nothing is decrypted, so the page says the
    certificate is not needed and runs no trust check.
    """
    lang = choose_language(accept_language)
    e = html.escape
    body = _template(f"setup.{lang}.html").substitute(
        style=asset("page.css").decode("utf-8"),
        district=e(district),
        contact=e(contact),
        logo=_logo_html(logo),
        setup_host=e(setup_host),
        check_url=e(f"https://{setup_host}/trust-check.png", quote=True) if inspects else "",
        inspects="yes" if inspects else "no",
        ca_name=e(ca_name),
        fingerprint=e(fingerprint),
    )
    return lang, body.encode("utf-8")
