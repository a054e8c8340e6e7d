"""Canonical forms of hosts, paths and URLs, so that rules match what browsers fetch.

A block list is only as good as its matching: if ``EXAMPLE.COM.``, ``%65xample.com``,
``ｅxample。com`` or ``0x7f.1`` reach the engine in a form that differs from the one a rule
was written in, the rule is silently bypassed. Browsers turn all of those spellings into one
URL following the WHATWG URL Standard (https://url.spec.whatwg.org/), so this module follows
the same algorithms for *special* schemes (http, https, ws, wss, ftp) and reduces every
spelling to a single canonical string that the engine compares with ``==`` and prefix tests.

Deliberate differences from the standard, all in the direction of fewer spellings:

* a trailing dot is removed from a domain (``example.com.`` is the same site);
* empty labels (``a..b``, ``.a``) and hosts made only of dots are refused, since they cannot
  name a real site and would otherwise be one more spelling to worry about;
* paths are further normalised: escapes of unreserved characters are decoded, other escapes
  are upper-cased, a ``%`` that starts no escape becomes ``%25``, repeated slashes collapse,
  and the fragment is dropped (it never reaches the server).

Only the standard library and ``idna`` (for the UTS #46 mapping table) are used, so the
module can be imported by the CLI and by tests without mitmproxy.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

import idna
from idna.core import check_bidi, valid_contextj

__all__ = [
    "DEFAULT_PORTS",
    "URL",
    "Malformed",
    "canonical_host",
    "canonical_path",
    "canonical_url",
    "is_ip_literal",
    "split_host_port",
]


class Malformed(ValueError):
    """Unparseable input; the message names the input and what was wrong with it.

    A subclass of ValueError so that callers that only care about "bad input" can catch that,
    while the engine can tell a refusal to canonicalise apart from a bug.
    """


#: Ports that the URL Standard omits when serialising; a URL that names them explicitly is
#: the same URL as one that does not.
DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}

_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_WHITESPACE = " \t\r\n\f\v"  # what may surround a header value; other controls are errors
_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")
_MAX_HOST = 253  # RFC 1035 limit of a name, without its trailing dot
_MAX_RAW_HOST = 4096  # generous bound on a (percent-encoded, Unicode) spelling of one

# An already-canonical name: lower-case LDH labels, the last starting with a letter so that
# it cannot "end in a number" (and be an IPv4 address). "xn--" labels must be validated, so
# they are excluded separately.
_FAST_HOST = re.compile(r"(?:[a-z0-9-]+\.)*[a-z][a-z0-9-]*")

# WHATWG "forbidden domain code point": forbidden host code points, C0 controls, % and DEL.
_FORBIDDEN_DOMAIN = re.compile(r"[\x00-\x20#%/:<>?@\[\\\]^|\x7f]")
_UNICODE_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_RTL = frozenset({"R", "AL", "AN"})  # bidi classes that make a label right-to-left
_DIGITS = re.compile(r"[0-9]+")
_IPV4_NUMBER = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")
_IPV6_CHARS = re.compile(r"[0-9a-fA-F:.]+")
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")


def _show(text: str, limit: int = 80) -> str:
    """Quote user input for an error message without letting control characters through."""
    if len(text) > limit:
        text = text[:limit] + "..."
    out = []
    for c in text:
        if c.isprintable():
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}")
    return '"' + "".join(out) + '"'


def _char(c: str) -> str:
    return f'"{c}"' if c.isprintable() and not c.isspace() or c == " " else f"U+{ord(c):04X}"


def _bad_host(raw: str, why: str) -> Malformed:
    return Malformed(f"bad host {_show(raw)}: {why}")


# --------------------------------------------------------------------------- IPv4 / IPv6


def _ipv4_number(part: str) -> int | None:
    """WHATWG IPv4 number parser: decimal, 0x-hex or 0-octal; None when it is not a number."""
    if not _IPV4_NUMBER.fullmatch(part):
        return None
    if part[:2] in ("0x", "0X"):
        return int(part[2:], 16) if len(part) > 2 else 0
    if len(part) > 1 and part[0] == "0":
        return int(part[1:], 8)
    if len(part) > 40:  # far beyond 2**32; also keeps int() away from huge strings
        return 1 << 40
    return int(part)


def _ends_in_number(domain: str) -> bool:
    """WHATWG "ends in a number": decides that a host is to be read as an IPv4 address."""
    parts = domain.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    return bool(_DIGITS.fullmatch(last)) or (last != "" and _ipv4_number(last) is not None)


def _parse_ipv4(raw: str, domain: str) -> str:
    parts = domain.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        raise _bad_host(raw, "an IPv4 address has at most 4 parts")
    numbers = []
    for part in parts:
        n = _ipv4_number(part) if part else None
        if n is None:
            raise _bad_host(raw, f"looks like an IPv4 address but {_show(part)} is not a number")
        numbers.append(n)
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise _bad_host(raw, "IPv4 address out of range")
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n << (8 * (3 - i))
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _parse_ipv6(raw: str, text: str) -> str:
    """Parse the inside of "[...]" and serialise it the WHATWG way.

    ``ipaddress`` does the parsing, but the serialisation is done here: Python 3.13 started
    printing IPv4-mapped addresses as ``::ffff:1.2.3.4``, and a canonical form must not
    depend on the interpreter version. Zone ids (``%eth0``) are refused, as browsers do.
    """
    if not _IPV6_CHARS.fullmatch(text):
        bad = next((c for c in text if c not in "0123456789abcdefABCDEF:."), None)
        why = f"forbidden character {_char(bad)}" if bad else "empty"
        raise _bad_host(raw, f"invalid IPv6 address: {why}")
    try:
        value = int(ipaddress.IPv6Address(text))
    except ValueError as exc:
        raise _bad_host(raw, f"invalid IPv6 address: {exc}") from None
    pieces = [(value >> (16 * (7 - i))) & 0xFFFF for i in range(8)]
    # Compress the first longest run of two or more zero pieces.
    best_start, best_len, i = -1, 1, 0
    while i < 8:
        if pieces[i] == 0:
            j = i
            while j < 8 and pieces[j] == 0:
                j += 1
            if j - i > best_len:
                best_start, best_len = i, j - i
            i = j
        else:
            i += 1
    hexes = [f"{p:x}" for p in pieces]
    if best_start < 0:
        return "[" + ":".join(hexes) + "]"
    head = ":".join(hexes[:best_start])
    tail = ":".join(hexes[best_start + best_len :])
    return f"[{head}::{tail}]"


# --------------------------------------------------------------------------- IDNA


def _check_unicode_label(raw: str, label: str) -> None:
    """UTS #46 validity criteria for one label (CheckHyphens=false, CheckJoiners, non-transitional).

    The ``idna`` package's own ``encode`` applies IDNA2008, which is stricter than what
    browsers accept (it rejects ``_`` and emoji, for example); a filter that refuses names a
    browser resolves would be one that cannot block them, so the UTS #46 rules are applied
    here using idna's mapping table and helpers.
    """
    if label.startswith("xn--"):
        raise _bad_host(raw, f"label {_show(label)} decodes to another xn-- label")
    if not unicodedata.is_normalized("NFC", label):
        raise _bad_host(raw, f"label {_show(label)} is not in Unicode normal form C")
    if unicodedata.category(label[0]).startswith("M"):
        raise _bad_host(raw, f"label {_show(label)} starts with a combining mark")
    try:
        if idna.uts46_remap(label, std3_rules=False) != label:
            raise _bad_host(raw, f"label {_show(label)} is not in its UTS #46 mapped form")
        for i, c in enumerate(label):
            if c in "\u200c\u200d" and not valid_contextj(label, i):
                raise _bad_host(raw, f"zero-width joiner not allowed in {_show(label)}")
    except Malformed:
        raise
    except ValueError as exc:  # IDNAError and unicodedata lookups
        raise _bad_host(raw, str(exc)) from None


def _to_ascii(raw: str, domain: str) -> str:
    """UTS #46 ToASCII as the URL Standard calls it (domain to ASCII, beStrict=false)."""
    if domain.isascii():
        mapped = domain.lower()
    else:
        try:
            mapped = idna.uts46_remap(domain, std3_rules=False)
        except ValueError as exc:
            raise _bad_host(raw, str(exc)) from None
    if len(mapped.rstrip(".")) > _MAX_HOST:  # every label's ASCII form is at least as long
        raise _bad_host(raw, f"longer than {_MAX_HOST} characters")
    labels = mapped.split(".")
    unicode_labels = labels[:]
    for i, label in enumerate(labels):
        if label.isascii():
            if label.startswith("xn--"):
                try:
                    decoded = label[4:].encode("ascii").decode("punycode")
                except (UnicodeError, ValueError, OverflowError):
                    raise _bad_host(raw, f"{_show(label)} is not valid punycode") from None
                if not decoded or decoded.isascii():
                    raise _bad_host(raw, f"{_show(label)} does not encode a Unicode label")
                _check_unicode_label(raw, decoded)
                unicode_labels[i] = decoded
        else:
            _check_unicode_label(raw, label)
            labels[i] = "xn--" + label.encode("punycode").decode("ascii")
    # CheckBidi: in a name with any right-to-left label, every label must obey RFC 5893.
    if any(_RTL.intersection(map(unicodedata.bidirectional, u)) for u in unicode_labels):
        for u in unicode_labels:
            try:
                if u:
                    check_bidi(u, check_ltr=True)
            except ValueError as exc:
                raise _bad_host(raw, str(exc)) from None
    return ".".join(labels)


# --------------------------------------------------------------------------- hosts


@lru_cache(maxsize=65536)
def canonical_host(raw: str) -> str:
    """Reduce every spelling of a host to the one a browser would connect to.

    Cached because the proxy sees the same few thousand hosts over and over; an
    already-canonical name is recognised by one regex so that the common case never
    reaches the IDNA machinery.
    """
    if len(raw) <= _MAX_HOST and _FAST_HOST.fullmatch(raw) and "xn--" not in raw:
        return raw
    return _canonical_host_slow(raw)


def _canonical_host_slow(raw: str) -> str:
    s = raw.strip(_WHITESPACE)
    if not s:
        raise _bad_host(raw, "empty")
    if len(s) > _MAX_RAW_HOST:
        raise _bad_host(raw, f"longer than {_MAX_HOST} characters")
    if s[0] == "[":
        if s[-1] != "]":
            raise _bad_host(raw, 'IPv6 address without closing "]"')
        return _parse_ipv6(raw, s[1:-1])
    if s.count(":") > 1 and _IPV6_CHARS.fullmatch(s):
        # A bare IPv6 address, as mitmproxy reports request.host for IPv6 targets.
        return _parse_ipv6(raw, s)
    if "%" in s:
        # The URL Standard percent-decodes, then UTF-8-decodes with replacement (U+FFFD is
        # then refused by UTS #46). Lone surrogates cannot be UTF-8, so pass them through.
        s = unquote_to_bytes(s.encode("utf-8", "surrogatepass")).decode("utf-8", "replace")
    bad = _FORBIDDEN_DOMAIN.search(s)
    if bad:
        raise _bad_host(raw, f"forbidden character {_char(bad.group())}")
    if s.isascii():
        s = s.lower()
        if "xn--" in s:
            s = _to_ascii(raw, s)
    else:
        s = _to_ascii(raw, s.translate(_UNICODE_DOTS))
        bad = _FORBIDDEN_DOMAIN.search(s)  # UTS #46 maps e.g. U+FF1C to "<"
        if bad:
            raise _bad_host(raw, f"forbidden character {_char(bad.group())}")
    if not s:
        raise _bad_host(raw, "empty")
    if _ends_in_number(s):
        return _parse_ipv4(raw, s)
    if s[-1] == ".":
        s = s.rstrip(".")
        if not s:
            raise _bad_host(raw, "no name, only dots")
        if _ends_in_number(s):
            # "foo.09.." is a name to a browser, but "foo.09" would be an invalid address:
            # refuse rather than produce a canonical form that does not canonicalise.
            raise _bad_host(raw, "trailing dots hide a numeric last label")
    if s[0] == "." or ".." in s:
        raise _bad_host(raw, "empty label")
    if len(s) > _MAX_HOST:
        raise _bad_host(raw, f"longer than {_MAX_HOST} characters")
    return s


def is_ip_literal(host: str) -> bool:
    """Whether a canonical host is an address rather than a name (no DNS, no domain rules)."""
    return host[:1] == "[" or _DOTTED_QUAD.fullmatch(host) is not None


def _parse_port(authority: str, text: str) -> int:
    digits = text.lstrip("0")
    if not _DIGITS.fullmatch(text) or len(digits) > 5 or int(digits or "0") > 65535:
        raise Malformed(f"bad port {_show(text)} in {_show(authority)}: not a number 0-65535")
    return int(digits or "0")


def split_host_port(authority: str, default_port: int | None = None) -> tuple[str, int | None]:
    """Split a Host header or URL authority, canonicalising the host and dropping userinfo.

    Userinfo is dropped because ``http://allowed.com@blocked.com/`` goes to blocked.com; the
    last ``@`` wins, as in browsers.
    """
    a = authority.strip(_WHITESPACE)
    if "@" in a:
        a = a.rpartition("@")[2]
    if a[:1] == "[":
        end = a.find("]")
        if end < 0:
            raise Malformed(f'bad host {_show(authority)}: IPv6 address without closing "]"')
        host, rest = a[: end + 1], a[end + 1 :]
        if rest and rest[0] != ":":
            raise Malformed(f"bad authority {_show(authority)}: text after IPv6 address")
        port_text = rest[1:] if rest else ""
    elif a.count(":") > 1:
        return canonical_host(a), default_port  # bare IPv6, or else a clear error
    else:
        host, _, port_text = a.partition(":")
    port = _parse_port(authority, port_text) if port_text else default_port
    return canonical_host(host), port


# --------------------------------------------------------------------------- paths

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Anything that can make a path non-canonical: escapes, fragments, backslashes, repeated
# slashes, dot segments, and characters a browser would have percent-encoded.
_PATH_SLOW = re.compile(r"[%#\\\"'<>`{}\x00-\x20\x7f]|//|/\.")
# WHATWG path and special-query percent-encode sets (less "#" and "?", which delimit).
_PATH_ESCAPES = re.compile(r'%(?:[0-9A-Fa-f]{2})?|[^\x21-\x7e]|["<>`{}]')
_QUERY_ESCAPES = re.compile(r"[^\x21-\x7e]|[\"'<>]")


def _encode_char(t: str) -> str:
    if "\udc80" <= t <= "\udcff":  # a raw byte smuggled through surrogateescape decoding
        data = bytes([ord(t) - 0xDC00])
    elif "\ud800" <= t <= "\udfff":  # a lone surrogate: what browsers send for one
        data = b"\xef\xbf\xbd"
    else:
        data = t.encode("utf-8")
    return "".join(f"%{b:02X}" for b in data)


def _fix_escape(m: re.Match[str]) -> str:
    t = m.group()
    if t[0] != "%":
        return _encode_char(t)
    if len(t) == 1:
        return "%25"  # a "%" that starts no escape; encoding it keeps decoding one-pass
    byte = int(t[1:], 16)
    return chr(byte) if byte in _UNRESERVED else t.upper()


def _encode_match(m: re.Match[str]) -> str:
    return _encode_char(m.group())


def canonical_path(raw: str) -> str:
    """Reduce a request target ("/path?query") to the form rules are written against.

    Dot segments matter because ``/a/../casino/`` fetches ``/casino/``; encoded unreserved
    characters because ``/c%61sino/`` does too; backslashes because browsers treat them as
    slashes. The query's meaning belongs to the site, so it is kept as sent except for the
    characters a browser would have percent-encoded (spaces, controls, quotes, non-ASCII):
    anything a browser sends passes through unchanged.
    """
    if not raw:
        return "/"
    if raw[0] != "/":
        if raw == "*":  # asterisk-form (OPTIONS *) names the server, not a path
            return raw
        raw = "/" + raw
    if raw.isascii() and _PATH_SLOW.search(raw) is None and raw[-1] != "?":
        return raw

    s = raw.partition("#")[0]
    path, _, query = s.partition("?")
    path = _PATH_ESCAPES.sub(_fix_escape, path.replace("\\", "/"))

    # WHATWG dot-segment resolution first (".." removes an empty segment too, as in
    # browsers), then empty segments are dropped, keeping a trailing slash.
    segments = path.split("/")
    out: list[str] = []
    last = len(segments) - 1
    for i in range(1, last + 1):
        seg = segments[i]
        if seg == "..":
            if out:
                out.pop()
            if i == last:
                out.append("")
        elif seg == ".":
            if i == last:
                out.append("")
        else:
            out.append(seg)
    parts = [seg for seg in out if seg]
    path = "/" + "/".join(parts)
    if parts and out[-1] == "":
        path += "/"
    if not query:
        return path
    return f"{path}?{_QUERY_ESCAPES.sub(_encode_match, query)}"


# --------------------------------------------------------------------------- URLs

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_SPECIAL = frozenset({"http", "https", "ws", "wss", "ftp"})
_HOSTLESS = frozenset({"javascript", "vbscript", "data", "blob", "about", "mailto", "tel"})
_AUTHORITY_END = re.compile(r"[/?#\\]")
_HOST_PORT_TAIL = re.compile(r"[0-9]+(?:[/?#\\]|$)")


@dataclass(frozen=True, slots=True)
class URL:
    """A canonical absolute URL; ``path`` includes the ``?query``."""

    scheme: str
    host: str
    port: int | None
    path: str

    def __str__(self) -> str:
        if self.port is None or self.port == DEFAULT_PORTS.get(self.scheme):
            return f"{self.scheme}://{self.host}{self.path}"
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


def canonical_url(raw: str) -> URL:
    """Parse a URL the way a person types it, and a browser reads it, into canonical parts.

    Without a scheme, ``http`` is assumed (``example.com/x``, ``example.com:8080``) since
    that is what the address bar does; the ``check`` command takes what people paste.
    """
    s = raw.strip(_C0_AND_SPACE).translate(_TAB_NEWLINE)
    m = _SCHEME.match(s)
    if m and not (
        ("." in m.group(1) or m.group(1).lower() == "localhost")
        and _HOST_PORT_TAIL.match(s, m.end())
    ):
        scheme = m.group(1).lower()
        rest = s[m.end() :]
        if scheme in _HOSTLESS:
            raise Malformed(f"bad URL {_show(raw)}: {scheme}: URLs have no host")
        if scheme in _SPECIAL:
            rest = rest.lstrip("/\\")  # "http:example.com", "http:\\\\x" are fine to browsers
        elif rest.startswith("//"):
            rest = rest[2:]
        else:
            raise Malformed(f"bad URL {_show(raw)}: no host")
    else:
        scheme = "http"
        rest = s[2:] if s[:2] == "//" else s  # "//example.com/x", scheme-relative
        if rest[:1] in ("/", "\\"):
            raise Malformed(f"bad URL {_show(raw)}: no host")
    end = _AUTHORITY_END.search(rest)
    authority, tail = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    if not authority.rpartition("@")[2]:
        raise Malformed(f"bad URL {_show(raw)}: no host")
    host, port = split_host_port(authority)
    if port == DEFAULT_PORTS.get(scheme):
        port = None
    return URL(scheme, host, port, canonical_path(tail))
