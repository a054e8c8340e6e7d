"""URLs carried inside other URLs: translators, caches, AMP viewers, redirectors.

Students reach a blocked page through an allowed service that fetches it for
them: ``translate.google.com/translate?u=<blocked>``,
``<blocked-with-dashes>.translate.goog``, ``www.google.com/amp/s/<blocked>``,
``web.archive.org/web/2020/<blocked>``, or any ``?url=`` redirector, with the
inner URL percent- or base64-encoded. The engine decides each inner URL too.

Only the cheap test ``might_wrap`` runs on every request; extraction runs when
it says yes.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import parse_qsl, unquote

# Query parameters that carry a URL in translate/cache/proxy/redirect services.
URL_PARAMS = frozenset(
    {"url", "u", "q", "link", "target", "dest", "destination", "redirect", "redirect_url", "to", "goto", "out",
     "r", "continue", "next", "site", "page", "uri", "path", "href", "go"}
)  # fmt: skip
_HOST_WRAPPERS = (
    ".translate.goog",
    ".cdn.ampproject.org",
    "webcache.googleusercontent.com",
    "web.archive.org",
)
_LOOKS_LIKE_URL = re.compile(
    r"^(?:https?:/{0,3}|//|www\.)[^\s]+|^[a-z0-9-]+(?:\.[a-z0-9-]+)+(?::\d+)?(?:/|$)", re.I
)
_B64 = re.compile(r"^[A-Za-z0-9+/_-]{12,}={0,2}$")
_PATH_URL = re.compile(r"/(https?)(?::|%3a)/{1,2}(.+)", re.I)
_AMP = re.compile(r"^/(?:amp|c)/(s/)?([^/]+\.[^/]+)(/.*)?$")
MAX_INNER = 4


def might_wrap(host: str, path: str) -> bool:
    """Cheap pre-check on the canonical host and path: a wrapper host, a URL in the path, or a
    query parameter whose name carries URLs."""
    if host.endswith(_HOST_WRAPPERS):
        return True
    base, sep, query = path.partition("?")
    low = base.lower()
    if "http" in low or "/amp/" in low:
        return True
    if sep:
        for part in query.split("&"):
            if part.partition("=")[0].lower() in URL_PARAMS:
                return True
    return False


def _from_translate_goog(host: str, path: str) -> str | None:
    # www-example-com.translate.goog -> www.example.com ("--" stands for a literal "-")
    label = host[: -len(".translate.goog")]
    if "." in label:
        label = label.rsplit(".", 1)[-1]
    inner = label.replace("--", "\x00").replace("-", ".").replace("\x00", "-")
    return f"https://{inner}{path.split('?', 1)[0]}" if inner else None


def _decode_value(value: str) -> str | None:
    value = value.strip()
    for _ in range(2):  # doubly percent-encoded values are common in redirect chains
        if "%" in value:
            value = unquote(value)
    if value.lower().startswith("cache:"):
        value = value[6:]
    if _LOOKS_LIKE_URL.match(value):
        return value
    if _B64.match(value):
        padded = value + "=" * (-len(value) % 4)
        for decode in (base64.urlsafe_b64decode, base64.b64decode):
            try:
                text = decode(padded).decode("utf-8")
            except (binascii.Error, ValueError, UnicodeDecodeError):
                continue
            if re.match(r"^https?://", text, re.I):
                return text
    return None


def inner_urls(host: str, path: str) -> list[str]:
    """URL strings wrapped in this canonical host and path (not yet canonical; at most MAX_INNER)."""
    found: list[str] = []
    if host.endswith(".translate.goog"):
        inner = _from_translate_goog(host, path)
        if inner:
            found.append(inner)
    base, _, query = path.partition("?")
    m = _AMP.match(base) if (host.endswith("ampproject.org") or "/amp/" in base.lower()) else None
    if m:
        found.append(f"https://{m.group(2)}{m.group(3) or '/'}")
    m = _PATH_URL.search(
        base
    )  # web.archive.org/web/2020/http://x, proxies that take the URL in the path
    if m:
        found.append(f"{m.group(1)}://{m.group(2)}")
    if query:
        for key, value in parse_qsl(query, keep_blank_values=False):
            if key.lower() in URL_PARAMS:
                inner = _decode_value(value)
                if inner:
                    found.append(inner)
    return found[:MAX_INNER]
