"""Phrase search straight on a page's HTML bytes (Hyperscan), without extracting the text first.

Why: the reference pipeline in ``proxy/content.py`` (strip scripts and tags,
decode entities, normalize, then the Aho–Corasick scan) costs ~14 µs per KB in
Python, because every tag is one regex match run by the interpreter: scoring
a 50 KB page cost more than proxying it. Here every phrase key becomes one
Hyperscan pattern that allows what lies between words on a raw page (spaces,
line breaks, punctuation), all compiled into one SIMD automaton that reads the
page once in C (~1 µs per KB).

What a reader does not see does not count: text inside ``<script>``,
``<style>``, ``<template>``, ``<svg>``, a comment or a tag
(``href="/casino/"``), except ``alt=`` text and ``<meta
name=description|keywords>`` (the reference pipeline reads those too). Two
ways, with the same results (``tests/test_fastscan.py``):

- ``proxy/_visible.c`` (built at install where a C compiler is): the page's
  visible text, each tag or hidden part replaced by one ``<``, is what the
  automaton reads. Fewer bytes, and no Python per hit: on a busy proxy the
  Python that checked hits cost more than its tight-loop timing suggests.
- without it: the automaton reads the raw page and also reports where hidden
  parts start; Python checks each phrase's first hit, and when it is hidden, a
  database of that phrase alone finds its next occurrence, up to ``LOOKS``
  times.

A page with a letter written as an entity (``pornograf&iacute;a``,
``p&#111;rn``) goes to the reference pipeline instead (``scan`` returns None):
the raw bytes do not spell the word.

Known differences from the reference, found by ``tests/test_fastscan.py`` and
accepted for the speed (the labelled evaluation set scores identically):

- the words of a phrase must be separated by at most 32 bytes of spaces and
  punctuation: ``free <b>porn</b>`` or ``free&nbsp;porn`` is not the phrase
  "free porn" (each word still counts where it is a phrase itself);
- a formatting tag inside a word (``<b>P</b>orn``) hides the word here; the
  reference joins the pieces.

Hyperscan is installed on x86-64 Linux (pyproject marks the dependency);
elsewhere ``available()`` is False and every page takes the reference pipeline.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

try:  # x86-64 wheels only (pyproject marks the dependency); the reference pipeline covers the rest
    import hyperscan
except ImportError:  # pragma: no cover - exercised on platforms without a wheel
    hyperscan = None
try:  # proxy/_visible.c, built at install when a C compiler is there (setup.py: optional)
    from proxy import _visible
except ImportError:  # pragma: no cover - exercised by tests/test_fastscan.py with it removed
    _visible = None

LOOKS = 8  # further occurrences tried for a phrase first seen hidden, before the reference decides
# Up to this many keys, each also gets a database of its own (~5 KB, ~1 ms to compile) to find
# its next occurrence cheaply; above, the whole database is scanned again from there.
ALONE_UP_TO = 5000

_WORD = rb"a-zA-Z0-9\x80-\xff"  # a word byte, as in proxy.content.normalize_bytes
# The edges of a phrase and the gaps between its words are single byte classes: one class per
# position keeps the database small (0.5-2 MB instead of 10 MB with alternations) and the scan
# fast. Typographic punctuation is multi-byte (nbsp ¡ « · » ¿ in C2 xx; quotes, dashes, ellipsis,
# bullets, thin spaces in E2 80 xx), so:
# - before a phrase: a non-word ASCII byte, or the *last* byte of such punctuation (a few Latin-1
#   letters end in the same byte, e.g. á = C3 A1 like ¡ = C2 A1: "áporn" would count as a word
#   edge; no real word is written that way);
_BEFORE = (
    rb"[^a-zA-Z0-9\x80-\x88\x8a\x8c-\x92\x95-\x97\x9b\x9f\xa3-\xa5\xa7-\xaa\xac-\xae\xb0-\xb6"
    rb"\xb8-\xba\xbc-\xbe\xc0-\xff]"
)
# - after it: a non-word ASCII byte or the lead byte C2/E2 (no letter of ours starts with them);
_AFTER = rb"[^a-zA-Z0-9\x80-\xc1\xc3-\xe1\xe3-\xff]"
# - between words: up to 32 spaces or punctuation bytes (a line break and its indentation);
#   a tag or an entity ends the phrase.
_GAP_BYTE = (
    rb"[^a-zA-Z0-9<&\x81-\x88\x8a\x8c-\x92\x95-\x97\x9b\x9f\xa3-\xa5\xa7-\xaa\xac-\xae"
    rb"\xb0-\xb6\xb8-\xba\xbc-\xbe\xc0\xc1\xc3-\xe1\xe3-\xff]"
)
_SEP = _GAP_BYTE + rb"{1,32}"  # bounded: an unbounded gap makes the scan 1.5x slower
# A letter written as an entity, by name or number (A-Z a-z, Latin-1 letters): the page goes to
# the reference pipeline. Punctuation entities (&#8217; &amp; &nbsp;) do not count.
_LETTER_ENTITY = (
    rb"&(?:[a-zA-Z](?:acute|grave|circ|tilde|uml|ring|cedil|slash|lig)|szlig|eth|thorn"
    rb"|#0*(?:6[5-9]|[7-8][0-9]|9[07-9]|1[01][0-9]|12[0-2]|19[2-9]|2[0-4][0-9]|25[0-5])"
    rb"|#[xX]0*(?:4[1-9a-fA-F]|5[0-9aA]|6[1-9a-fA-F]|7[0-9aA]|[c-fC-F][0-9a-fA-F]));"
)
# Elements whose content is never shown, for both pipelines (lower or upper case as written; a
# "<Script>" in mixed case is left in: more text to score, never less), and comments.
HIDDEN_TAGS = (b"script", b"SCRIPT", b"style", b"STYLE", b"template", b"svg", b"SVG")
_HIDDEN = (*(b"<" + t for t in HIDDEN_TAGS), b"<!--")
_HIDDEN_LENGTHS = tuple(len(m) for m in _HIDDEN)
_HIDDEN_NAMES = (*HIDDEN_TAGS, None)  # what ``hidden_end`` closes, by marker
# The start of a <meta> tag whose content a reader is told (proxy/content.py reads the whole tag).
META_START = rb"""<meta\b[^>]*?\b(?:name|property)\s*=\s*["']?(?:description|keywords|og:title|og:description)"""
_META = re.compile(META_START, re.I)
_WORDCHAR = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def available() -> bool:
    return hyperscan is not None


def hidden_end(doc: bytes, tag: bytes | None, after: int) -> int:
    """Where a hidden part opened by ``<tag`` (None: a comment) ends: after its closing tag's
    ``>`` (or ``-->``), searching from ``after``; the end of ``doc`` when it is never closed."""
    if tag is None:
        close = doc.find(b"-->", after)
        return len(doc) if close < 0 else close + 3
    close = doc.find(b"</" + tag, after)
    return len(doc) if close < 0 else (doc.find(b">", close) + 1 or len(doc))


def _word_pattern(word: bytes) -> bytes:
    """A normalized word as a pattern: ASCII letters match either case (the flag), Latin-1
    accented lower-case letters also match their capitals (UTF-8 C3 A0..BE -> C3 80..9E)."""
    out: list[bytes] = []
    i = 0
    while i < len(word):
        b = word[i]
        nxt = word[i + 1] if i + 1 < len(word) else -1
        if b < 0x80:
            out.append(re.escape(bytes((b,))))
            i += 1
        elif b == 0xC3 and 0xA0 <= nxt <= 0xBE and nxt != 0xB7:
            out.append(b"\\xc3[\\x%02x\\x%02x]" % (nxt, nxt - 0x20))
            i += 2
        else:
            out.append(b"\\x%02x" % b)
            i += 1
    return b"".join(out)


def key_pattern(key: str) -> bytes:
    """The pattern of an automaton key of ``proxy.content`` (" free porn ", or " porn star" for a
    word-beginning phrase): the words, separators between them, and a non-word byte on each side."""
    words = key.strip(" ").encode("latin-1").split(b" ")
    body = _SEP.join(_word_pattern(w) for w in words)
    return _BEFORE + body + (_AFTER if key.endswith(" ") else b"")


class _Page:
    """Where text is visible on one page: hidden regions from the marker hits, tags by lookback."""

    def __init__(self, doc: bytes, markers: list[tuple[int, int]]):
        """``markers``: (end offset, index in ``_HIDDEN``) of every hidden-part marker."""
        self.doc = doc
        self.starts: list[int] = []
        self.ends: list[int] = []
        end = 0
        size = len(doc)
        for name_end, k in sorted(markers):  # markers never overlap: by end is by start
            start = name_end - _HIDDEN_LENGTHS[k]
            if start < end:
                continue  # inside a region already
            name = _HIDDEN_NAMES[k]
            if name is not None and name_end < size and doc[name_end] in _WORDCHAR:
                continue  # "<scripts", "<svgfoo": another tag
            end = hidden_end(doc, name, name_end)
            self.starts.append(start)
            self.ends.append(end)

    def hidden(self, pos: int) -> tuple[int, int] | None:
        """The hidden span around ``pos`` (a script, a comment, a tag), None where a reader sees it."""
        i = bisect.bisect_right(self.starts, pos) - 1
        if i >= 0 and pos < self.ends[i]:
            return self.starts[i], self.ends[i]
        doc = self.doc
        lt = doc.rfind(b"<", 0, pos)
        if lt < 0 or doc.rfind(b">", lt, pos) >= 0:
            return None  # text
        gt = doc.find(b">", pos)
        tag = lt, (len(doc) if gt < 0 else gt + 1)
        alt = doc.rfind(b"alt=", lt, pos)
        if alt >= 0 and alt + 4 < pos:
            quote = doc[alt + 4 : alt + 5]
            if quote in (b'"', b"'") and doc.find(quote, alt + 5, pos) < 0:
                return None  # alt text: what the picture shows
        if doc[lt + 1 : lt + 5].lower() == b"meta" and _META.match(doc, lt, tag[1]):
            return None  # the page's description and keywords
        return tag


class Scanner:
    """Every phrase key in one Hyperscan database; ``scan`` returns the phrase ids seen on a page."""

    def __init__(self, keys: Iterable[tuple[str, int]]):
        keys = list(keys)
        self._pid = [pid for _, pid in keys]
        n = len(keys)
        self._entity_id, self._marker0 = n, n + 1
        single = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_CASELESS
        patterns = [key_pattern(k) for k, _ in keys]
        self._visible = _visible
        # Without proxy/_visible.c the raw page is read: the database also reports where hidden
        # parts start (exact case, like the reference), and one small database per key finds its
        # next occurrence when the first one is hidden (a few µs, where a second pass of the
        # whole database costs as much as the first). The visible text needs neither.
        raw_page = _visible is None
        self.db = _compile(
            (
                *[(p, single) for p in patterns],
                (_LETTER_ENTITY, single),
                *[(re.escape(m), 0) for m in (_HIDDEN if raw_page else ())],
            )
        )
        self._alone = _compile_each(patterns, single) if raw_page and n <= ALONE_UP_TO else None
        self._local = threading.local()  # Hyperscan scratch space is per thread

    def _scratch(self) -> object:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self.db)
        return scratch

    def _hits(self, doc: bytes | memoryview) -> tuple[dict[int, int], list[tuple[int, int]]]:
        """One pass: the first end offset of every phrase key and of a letter written as an entity
        (id ``_entity_id``), and the (end offset, index in ``_HIDDEN``) of every hidden-part marker.
        The callback runs once per match: it does as little as it can."""
        hits: dict[int, int] = {}
        markers: list[tuple[int, int]] = []
        last, marker0 = self._entity_id, self._marker0

        def on_match(i: int, _from: int, to: int, _flags: int, _ctx: object) -> None:
            if i <= last:
                hits[i] = to
            else:
                markers.append((to, i - marker0))

        self.db.scan(doc, match_event_handler=on_match, scratch=self._scratch())
        return hits, markers

    def _next(self, i: int, doc: bytes, start: int) -> int | None:
        """End offset of key ``i``'s first occurrence at or after ``start``."""
        rest = memoryview(doc)[start:]
        if self._alone is None:  # a very large phrase set: the whole database again
            to = self._hits(rest)[0].get(i)
            return None if to is None else start + to
        found: list[int] = []
        self._alone[i].scan(
            rest, match_event_handler=lambda _i, _f, to, _fl, _c: found.append(to)
        )  # the database's own scratch: pages are scored on one thread (the event loop)
        return start + found[0] if found else None

    def scan(self, doc: bytes, markup: bool = True) -> set[int] | None:
        """Phrase ids with at least one visible hit in ``doc`` (UTF-8 HTML when ``markup``, else
        plain text); None when the page must go to the reference pipeline."""
        entity = self._entity_id
        if not markup:
            hits = self._hits(b" " + doc + b" ")[0]
            hits.pop(entity, None)  # plain text: an entity is just text
            return {self._pid[i] for i in hits}
        visible = self._visible
        hits, markers = self._hits(doc if visible is None else visible.visible(doc))
        if hits.pop(entity, None) is not None:
            return None  # a letter written as an entity: the reference pipeline decodes it
        pids = self._pid
        if visible is not None:  # the visible text only: every hit counts
            return {pids[i] for i in hits}
        if not hits:
            return set()
        page = _Page(doc, markers)
        hidden = page.hidden
        found: set[int] = set()
        for i, to in hits.items():
            pid = pids[i]
            if pid in found:
                continue
            span = hidden(to - 1)
            if span is not None:  # first seen where nobody reads it: look further on
                for _ in range(LOOKS):
                    nxt = self._next(i, doc, span[1] - 1)  # -1: the edge byte before a word
                    span = None if nxt is None else page.hidden(nxt - 1)
                    if span is None:
                        break
                else:
                    return None  # hidden again and again: the reference pipeline decides
                if nxt is None:
                    continue
            found.add(pid)
        return found


# Compiled databases by pattern set: tests and reloads build the same phrase lists again and
# again, and compiling the shipped lists costs ~0.6 s (Hyperscan releases the GIL: reloads
# compile on their own thread without stalling the event loop). Eight sets are kept.
_CACHE: dict[bytes, object] = {}
_CACHE_LOCK = threading.Lock()


def _compile(patterns: Iterable[tuple[bytes, int]]) -> object:
    """A block-mode database of (pattern, flags); ids are the positions."""
    patterns = list(patterns)
    return _cached(("all", patterns), lambda: _build(patterns))


def _compile_each(patterns: list[bytes], flags: int) -> tuple[object, ...]:
    """One database per pattern."""
    return _cached(("each", flags, patterns), lambda: tuple(_build([(p, flags)]) for p in patterns))


def _cached(key: object, build: Callable[[], Any]) -> Any:
    digest = hashlib.sha256(repr(key).encode()).digest()  # bytes, str and ints: repr is exact
    with _CACHE_LOCK:
        db = _CACHE.get(digest)
    if db is not None:
        return db
    db = build()
    with _CACHE_LOCK:
        if len(_CACHE) >= 8:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[digest] = db
    return db


def _build(patterns: list[tuple[bytes, int]]) -> object:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(
        expressions=[p for p, _ in patterns],
        ids=list(range(len(patterns))),
        elements=len(patterns),
        flags=[hyperscan.HS_FLAG_DOTALL | f for _, f in patterns],
    )
    return db
