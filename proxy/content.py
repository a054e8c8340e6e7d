"""Page content scoring: the visible text of a page, scored against weighted phrase lists.

New adult and gambling sites appear faster than any list; the words on the page
give them away. This is E2Guardian's weighted-phrase idea, built to avoid its
two known weaknesses:

- **Cost.** Every phrase of every category is compiled into one automaton, so
  a page is read once, in C. ``PhraseSet.score_body`` (what the proxy calls)
  hands HTML and plain text to ``proxy/fastscan.py``, which finds the phrases
  on the raw page with Hyperscan (~2 µs per KB); JSON, pages it hands back
  and platforms without Hyperscan take the reference pipeline below (text
  extraction in Python, then ``pyahocorasick``; ~14 µs per KB). Both score
  the evaluation set identically (``tests/test_fastscan.py``).
- **False positives** (the Scunthorpe problem). Text is matched on whole words
  ("sex" never matches "Essex", "anal" never "analysis"; a trailing ``*`` in a
  phrase opts into word beginnings), each phrase counts once per page (a long
  article that says "casino" forty times is not forty times more of a casino),
  and negative "good context" phrases (sexual health, anatomy, problem
  gambling, legislation) pull educational pages back under the threshold.

Reference pipeline (``page_text``): ``decode_body`` (gzip/br/deflate/zstd, capped: a
compression bomb cannot blow up memory) -> ``text_bytes`` (charset, then the
visible text of HTML/JSON/plain text, as UTF-8) -> ``normalize_bytes`` (lower
case, punctuation and space runs to one space) -> ``PhraseSet.score_normalized``.
Accents are handled on the phrase side: each phrase is also added with its
accents folded (``línea`` matches "línea" and "linea"), never ñ ("año" is not
"ano").

This module imports no mitmproxy; ``addons/content.py`` adapts it to flows.
Run ``python -m proxy.content FILE...`` to see how a saved page scores.
"""

from __future__ import annotations

import codecs
import functools
import html
import io
import json
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import ahocorasick

from . import fastscan
from .yamlpos import InputError, Key, Located, Problem, load_yaml_file

# --------------------------------------------------------------------------- text
#
# Everything up to the automaton works on UTF-8 *bytes*: lower-casing and turning
# punctuation into spaces is one C-level bytes.translate, tags are stripped with byte
# regexes, and the automaton sees the bytes as a Latin-1 string (one character per
# byte, decoded for free). str.translate and Unicode regex classes cost ~10x more.


class ContentError(ValueError):
    """A body that cannot be decoded (corrupt compression, unknown encoding)."""


# ASCII letters lower-cased, ASCII digits kept, every other ASCII byte a space; bytes >= 0x80
# (the parts of non-ASCII characters) kept as they are.
_BYTE_MAP = bytes(
    c + 32 if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122 or c >= 128) else 32
    for c in range(256)
)
# Latin-1 capitals (À..Þ except ×, UTF-8 C3 80..C3 9E) to lower case (C3 A0..C3 BE).
_LATIN1_UPPER = re.compile(rb"\xc3[\x80-\x96\x98-\x9e]")
# Spanish and typographic punctuation and spaces: ¡ ¿ « » · nbsp, and ‘ ’ ‚ “ ” „ – — … • and thin/zero-width spaces.
_PUNCT_C2 = re.compile(rb"\xc2[\xa0\xa1\xab\xb7\xbb\xbf]")
_PUNCT_E2 = re.compile(rb"\xe2\x80[\x89\x8b\x93\x94\x98\x99\x9a\x9c\x9d\x9e\xa2\xa6\xaf]")
_SPACES = re.compile(rb"  +")  # after _BYTE_MAP every ASCII space character is " "


def _lower_latin1(m: re.Match[bytes]) -> bytes:
    return b"\xc3" + bytes((m.group()[1] + 0x20,))


def normalize_bytes(b: bytes) -> str:
    """Normalized text for the automaton: lower case, every run of punctuation/space one space,
    padded with spaces; returned as Latin-1 (one character per UTF-8 byte)."""
    b = b.translate(_BYTE_MAP)
    if not b.isascii():
        if b"\xc3" in b:
            b = _LATIN1_UPPER.sub(_lower_latin1, b)
        if b"\xc2" in b:
            b = _PUNCT_C2.sub(b" ", b)
        if b"\xe2" in b:
            b = _PUNCT_E2.sub(b" ", b)
    b = _SPACES.sub(b" ", b)
    return " " + b.strip().decode("latin-1") + " "


def normalize(text: str) -> str:
    """``normalize_bytes`` of a str. Phrases are normalized the same way and matched with
    their spaces, so a match always starts and ends on a word boundary."""
    return normalize_bytes(text.encode("utf-8", "replace"))


# Accents folded in *phrases* (each phrase is also added without its accents, so
# "pornografía" matches pages that write "pornografia"); ñ is kept: "año" is not "ano".
_FOLD = str.maketrans(
    {
        **dict.fromkeys("áàâäã", "a"),
        **dict.fromkeys("éèêë", "e"),
        **dict.fromkeys("íìîï", "i"),
        **dict.fromkeys("óòôöõ", "o"),
        **dict.fromkeys("úùûü", "u"),
        "ç": "c",
    }
)


def fold_accents(text: str) -> str:
    return text.lower().translate(_FOLD)


# Elements whose content is never shown, and comments (the list is fastscan.HIDDEN_TAGS).
_INVISIBLE_OPEN = re.compile(rb"<(" + b"|".join(fastscan.HIDDEN_TAGS) + rb")\b[^>]*>|<!--")
# Alt text of images: what a reader of the page is told the picture shows.
_ALT = re.compile(rb"""alt=(?:"([^"<>]{1,300})"|'([^'<>]{1,300})')""")
_META = re.compile(fastscan.META_START + rb"""["']?[^>]*>""", re.I)
_CONTENT_ATTR = re.compile(rb"""\bcontent\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)
# Formatting tags do not separate words ("<b>P</b>orn" reads "Porn"); every other tag does
# (links and spans are often laid out side by side as separate items: "Home</a><a>About").
_INLINE_TAG = re.compile(
    rb"</?(?:b|big|em|font|i|mark|s|small|strike|strong|sub|sup|tt|u|wbr)\b[^>]*>"
)
_TAG = re.compile(rb"<[^>]*>")
_ENTITY = re.compile(rb"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[a-zA-Z][a-zA-Z0-9]{1,31});?")


def _unescape(m: re.Match[bytes]) -> bytes:
    return html.unescape(m.group().decode("ascii")).encode("utf-8", "replace")


def _strip_invisible(doc: bytes) -> bytes:
    out: list[bytes] = []
    i, n = 0, len(doc)
    while i < n:
        m = _INVISIBLE_OPEN.search(doc, i)
        if m is None:
            out.append(doc[i:])
            break
        out.append(doc[i : m.start()])
        i = fastscan.hidden_end(doc, m.group(1), m.end())
    return b" ".join(out)


def html_to_text_bytes(doc: bytes) -> bytes:
    """The text a reader sees (plus image alt text and the meta description/keywords), UTF-8 in and out."""
    doc = _strip_invisible(doc)
    extra = [a or b for a, b in _ALT.findall(doc)]
    body_at = doc.find(b"<body")
    for tag in _META.findall(doc[: body_at if body_at >= 0 else 8192]):
        m = _CONTENT_ATTR.search(tag)
        if m:
            extra.append(m.group(1) or m.group(2) or b"")
    text = _TAG.sub(b" ", _INLINE_TAG.sub(b"", doc))
    if extra:
        text = text + b" \n " + b" \n ".join(extra)
    if b"&" in text:
        text = _ENTITY.sub(_unescape, text)
    return text


def html_to_text(doc: str) -> str:
    """``html_to_text_bytes`` for a str (tests, the CLI)."""
    return html_to_text_bytes(doc.encode("utf-8", "replace")).decode("utf-8", "replace")


def json_to_text(doc: str) -> str:
    """Every string in a JSON document (keys included); unparseable JSON is taken as it is."""
    try:
        data = json.loads(doc)
    except ValueError:
        return doc
    out: list[str] = []
    stack: list[Any] = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            out.extend(k for k in v if isinstance(k, str))
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    # Strings may themselves carry markup (rendered by a script): strip it too.
    text = "\n".join(out)
    return html_to_text(text) if "<" in text else text


def content_kind(content_type: str | None) -> str | None:
    """``html``, ``text`` or ``json`` for the media types we score; None for everything else.

    A missing Content-Type counts as HTML: browsers sniff such bodies and render them.
    """
    if not content_type:
        return "html"
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in ("text/html", "application/xhtml+xml"):
        return "html"
    if mime == "text/plain":
        return "text"
    if mime in ("application/json", "text/json") or mime.endswith("+json"):
        return "json"
    return None


_CHARSET_PARAM = re.compile(r"""charset\s*=\s*["']?([\w.:-]+)""", re.I)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([\w.:-]+)""", re.I)


@functools.lru_cache(maxsize=256)
def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def charset_of(content_type: str | None, body: bytes, kind: str) -> str:
    """Charset from a BOM, else the Content-Type, else (HTML) a <meta> in the first 2 KB, else UTF-8."""
    if body.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if content_type and "charset" in content_type.lower():
        m = _CHARSET_PARAM.search(content_type)
        cs = _codec(m.group(1)) if m else None
        if cs:
            return cs
    if kind == "html":
        at = body.find(b"charset", 0, 2048)
        if at < 0:
            at = body[:2048].lower().find(b"charset")
        if at >= 0:  # match from the tag around it: a regex search over 2 KB costs more
            m2 = _META_CHARSET.match(body, max(body.rfind(b"<", 0, at), 0), 2048) or (
                _META_CHARSET.search(body, 0, 2048)
            )
            cs = _codec(m2.group(1).decode("ascii", "replace")) if m2 else None
            if cs:
                return cs
    return "utf-8"


_UTF8 = frozenset({"utf-8", "ascii"})


def _brotli(data: bytes, limit: int) -> bytes:
    import brotli

    d = brotli.Decompressor()
    out = bytearray()
    # Brotli <= 1.1 has no output limit: feed small slices and stop once past the cap, so a
    # bomb costs at most one slice's expansion beyond it.
    for i in range(0, len(data), 1024):
        out += d.process(data[i : i + 1024])
        if len(out) > limit:
            return bytes(out[:limit])
    if not d.is_finished():
        raise ContentError("truncated brotli stream")
    return bytes(out)


def _zstd(data: bytes, limit: int) -> bytes:
    import zstandard

    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as r:
        return r.read(limit)


def _zlib(data: bytes, limit: int, wbits: int) -> bytes:
    return zlib.decompressobj(wbits).decompress(data, limit)


def decode_body(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding (gzip, x-gzip, deflate, br, zstd, identity), keeping at most ``limit`` bytes.

    Raises ContentError for an unknown coding or corrupt data. Only the first
    ``limit`` decoded bytes are kept: the page's beginning is scored, and a
    compression bomb costs no more memory than ``limit``.
    """
    if not content_encoding:
        return raw[:limit]
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    data = raw
    for coding in reversed(codings):
        try:
            if coding in ("identity", "none"):
                continue
            if coding in ("gzip", "x-gzip"):
                data = _zlib(data, limit, 16 + zlib.MAX_WBITS)
            elif coding == "deflate":
                try:
                    data = _zlib(data, limit, zlib.MAX_WBITS)
                except zlib.error:
                    data = _zlib(data, limit, -zlib.MAX_WBITS)  # raw deflate, as some servers send
            elif coding == "br":
                data = _brotli(data, limit)
            elif coding == "zstd":
                data = _zstd(data, limit)
            else:
                raise ContentError(f"unknown content-encoding {coding!r}")
        except ContentError:
            raise
        except Exception as exc:  # zlib.error, brotli.error, zstandard.ZstdError
            raise ContentError(f"cannot decode {coding} body: {exc}") from None
    return data[:limit]


def utf8_body(
    raw: bytes, content_type: str | None, content_encoding: str | None, limit: int, kind: str
) -> bytes:
    """The body decoded (Content-Encoding) and in UTF-8 (charset), markup still in."""
    body = decode_body(raw, content_encoding, limit)
    cs = charset_of(content_type, body, kind)
    if cs not in _UTF8:
        body = body.decode(cs, errors="replace").encode("utf-8")
    return body


def text_bytes(
    raw: bytes,
    content_type: str | None,
    content_encoding: str | None = None,
    limit: int = 4 << 20,
) -> bytes:
    """The visible text of a response body as UTF-8: decoded, charset applied, markup stripped."""
    kind = content_kind(content_type) or "text"
    return visible_text_bytes(utf8_body(raw, content_type, content_encoding, limit, kind), kind)


def visible_text_bytes(body: bytes, kind: str) -> bytes:
    """The visible text of a UTF-8 body of ``kind`` (html, json, text)."""
    if kind == "html":
        return html_to_text_bytes(body)
    if kind == "json":
        return json_to_text(body.decode("utf-8", "replace")).encode("utf-8", "replace")
    return body


def body_text(
    raw: bytes,
    content_type: str | None,
    content_encoding: str | None = None,
    limit: int = 4 << 20,
) -> str:
    """``text_bytes`` as a str (for people: the CLI, tests)."""
    return text_bytes(raw, content_type, content_encoding, limit).decode("utf-8", "replace")


def page_text(
    raw: bytes,
    content_type: str | None,
    content_encoding: str | None = None,
    limit: int = 4 << 20,
) -> str:
    """The normalized text of a response body, ready for ``PhraseSet.score_normalized``."""
    return normalize_bytes(text_bytes(raw, content_type, content_encoding, limit))


# --------------------------------------------------------------------------- phrase lists


@dataclass(frozen=True, slots=True)
class Phrase:
    text: str  # as written in the file (shown on the block page and in the audit record)
    category: str
    weight: int
    source: str  # "rules/phrases/adult.en.yaml:12"


@dataclass(frozen=True, slots=True)
class Combination:
    parts: tuple[str, ...]  # phrase keys that must all be on the page
    label: str  # "webcam + private show"
    category: str
    weight: int
    source: str


class Hit(NamedTuple):
    phrase: str
    weight: int


class Score(NamedTuple):
    """Per-category totals and the phrases that made them (each phrase once).

    A NamedTuple, not a dataclass: one is built for every page the proxy scores."""

    totals: dict[str, int]
    hits: dict[str, list[Hit]]
    partial: bool = False  # good-context phrases not searched (``PhraseSet.score_body``)

    def top(self, category: str, n: int = 5) -> list[str]:
        """The ``n`` heaviest positive phrases for ``category``: what the block page names."""
        pos = sorted(
            (h for h in self.hits.get(category, ()) if h.weight > 0),
            key=lambda h: (-h.weight, h.phrase),
        )
        return [h.phrase for h in pos[:n]]

    def worst(self, categories: Iterable[str] | None = None) -> tuple[str | None, int]:
        """The highest-scoring category among ``categories`` (all when None) and its score."""
        best: tuple[str | None, int] = (None, 0)
        for cat, total in self.totals.items():
            if categories is not None and cat not in categories:
                continue
            if best[0] is None or total > best[1]:
                best = (cat, total)
        return best


class PhraseSet:
    """Every phrase of every category in one automaton; ``score`` scans a page once."""

    def __init__(
        self,
        phrases: list[tuple[tuple[str, ...], Phrase]],
        combos: list[Combination],
        files: Sequence[str],
    ):
        self.files = tuple(files)
        self.categories = frozenset({p.category for _, p in phrases} | {c.category for c in combos})
        self.count = len(phrases) + len(combos)
        ids: dict[str, int] = {}  # canonical key -> phrase id
        self._entries: list[list[Phrase]] = []  # phrase id -> its phrases (one per category)
        self._auto = ahocorasick.Automaton()
        for keys, p in phrases:
            i = ids.setdefault(keys[0], len(ids))
            if i == len(self._entries):
                self._entries.append([])
            self._entries[i].append(p)
            for key in keys:
                self._auto.add_word(key, i)
        self._keys = ids
        # Per phrase id, its (category, Hit) pairs that carry a weight: built once, shared by scores.
        self._weighted = [
            tuple((p.category, Hit(p.text, p.weight)) for p in entries if p.weight)
            for entries in self._entries
        ]
        self._combos = [(tuple(ids[k] for k in c.parts), c) for c in combos]
        self._combo_keys = {i for parts, _ in self._combos for i in parts}
        # Two Hyperscan databases: the phrases that can raise a score (and the parts of
        # combinations), then the good-context phrases, searched only when the first alone
        # reaches a threshold (see ``score_body``). Splitting them makes the usual page's one
        # pass ~35% cheaper: good context is made of common words ("students", "history").
        self._fast: fastscan.Scanner | None = None
        self._fast_rest: fastscan.Scanner | None = None
        if ids and fastscan.available():
            raising = self._combo_keys | {
                i for i, w in enumerate(self._weighted) if any(h.weight > 0 for _, h in w)
            }
            items = list(self._auto.items())
            self._fast = fastscan.Scanner((k, i) for k, i in items if i in raising)
            rest = [(k, i) for k, i in items if i not in raising]
            self._fast_rest = fastscan.Scanner(rest) if rest else None
        if ids:
            self._auto.make_automaton()

    def matches(self, normalized: str) -> set[int]:
        """Indices of the distinct phrase keys found in already-normalized text."""
        if not self._keys:
            return set()
        found: set[int] = set()
        add = found.add
        for _end, i in self._auto.iter(normalized):
            add(i)
        return found

    def score_normalized(self, normalized: str, categories: Iterable[str] | None = None) -> Score:
        return self._score_found(self.matches(normalized), categories)

    def score_body(
        self,
        raw: bytes,
        content_type: str | None,
        content_encoding: str | None = None,
        limit: int = 4 << 20,
        categories: Iterable[str] | None = None,
        threshold: int | None = None,
    ) -> Score:
        """Score a response body as served. HTML and plain text are searched as they are by the
        Hyperscan scanner (``proxy/fastscan.py``) where it is available; JSON, pages it hands
        back, and platforms without it take the reference pipeline (``page_text``).

        With a ``threshold``, a page whose score-raising phrases alone stay under it is not
        searched for good-context phrases (they could only lower its score): the Score is then
        ``partial``, its totals the sum of what raised them (an upper bound of the full score)."""
        kind = content_kind(content_type) or "text"
        if self._fast is not None and kind != "json":
            body = utf8_body(raw, content_type, content_encoding, limit, kind)
            markup = kind == "html"
            found = self._fast.scan(body, markup)
            if found is not None and threshold is not None and self._fast_rest is not None:
                score = self._score_found(found, categories)
                if max(score.totals.values(), default=0) < threshold:
                    return score._replace(partial=True)
            found = self._with_context(found, body, markup)
            if found is not None:
                return self._score_found(found, categories)
            text = normalize_bytes(visible_text_bytes(body, kind))
        else:
            text = page_text(raw, content_type, content_encoding, limit)
        return self._score_found(self.matches(text), categories)

    def fast_matches(self, body: bytes, markup: bool = True) -> set[int] | None:
        """Phrase ids the Hyperscan scanner sees on a UTF-8 body, both databases (None: the
        page must take the reference pipeline, or there is no scanner)."""
        if self._fast is None:
            return None
        return self._with_context(self._fast.scan(body, markup), body, markup)

    def _with_context(self, found: set[int] | None, body: bytes, markup: bool) -> set[int] | None:
        """``found`` (the raising phrases' ids) with the good-context phrases seen on ``body``;
        None when either scan hands the page to the reference pipeline."""
        if found is None or self._fast_rest is None:
            return found
        more = self._fast_rest.scan(body, markup)
        return None if more is None else found | more

    def _score_found(self, found: set[int], categories: Iterable[str] | None) -> Score:
        cats = None if categories is None else frozenset(categories)
        totals: dict[str, int] = {}
        hits: dict[str, list[Hit]] = {}
        weighted = self._weighted
        for i in found:
            for cat, hit in weighted[i]:
                if cats is None or cat in cats:
                    totals[cat] = totals.get(cat, 0) + hit.weight
                    if cat in hits:
                        hits[cat].append(hit)
                    else:
                        hits[cat] = [hit]
        if found & self._combo_keys:
            for parts, c in self._combos:
                if (cats is None or c.category in cats) and found.issuperset(parts):
                    totals[c.category] = totals.get(c.category, 0) + c.weight
                    hits.setdefault(c.category, []).append(Hit(c.label, c.weight))
        return Score(totals, hits)

    def score(self, text: str, categories: Iterable[str] | None = None) -> Score:
        """Score plain text (normalized here) for ``categories`` (all when None)."""
        return self.score_normalized(normalize(text), categories)


def phrase_keys(phrase: str) -> tuple[str, ...]:
    """The automaton keys of a phrase as written: normalized and padded with spaces (``word*``
    keeps only the leading space: it matches word beginnings). The first key has the accents
    folded and is the phrase's identity (duplicates are found on it); the phrase with its
    accents follows when it differs. Empty for a phrase with no letters or digits."""
    prefix = phrase.rstrip().endswith("*")
    core = phrase.rstrip().rstrip("*")
    keys: list[str] = []
    for form in (fold_accents(core), core):
        words = normalize(form).strip()
        if words:
            key = " " + words + ("" if prefix else " ")
            if key not in keys:
                keys.append(key)
    return tuple(keys)


def phrase_key(phrase: str) -> str | None:
    """The identity key of a phrase (accents folded), None for a phrase with no letters."""
    keys = phrase_keys(phrase)
    return keys[0] if keys else None


_FILE_KEYS = ("category", "language", "description", "phrases", "combinations")


def _rel(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return str(path.relative_to(base))
        except ValueError:
            pass
    return str(path)


def load_phrases(
    directory: Path, categories: Iterable[str] | None = None, display_base: Path | None = None
) -> PhraseSet:
    """Compile every ``*.yaml`` in ``directory``; raise InputError with file:line for every problem.

    ``categories`` (when given) are the known category names: a phrase file for
    any other category is an error. A missing directory is an empty set.
    """
    known = None if categories is None else frozenset(categories)
    problems: list[Problem] = []
    phrases: list[tuple[tuple[str, ...], Phrase]] = []
    combos: list[Combination] = []
    files: list[str] = []
    if not directory.is_dir():
        return PhraseSet([], [], [])
    seen: dict[tuple[str, str], str] = {}  # (category, key) -> where it was first defined
    pending: list[tuple[Located, Key, list[Any], str, int]] = []
    for path in sorted(directory.glob("*.yaml")):
        name = _rel(path, display_base)
        files.append(name)
        try:
            loc = load_yaml_file(path, name)
        except InputError as exc:
            problems.extend(exc.problems)
            continue
        data = loc.data
        if not isinstance(data, dict):
            problems.append(loc.problem((), "expected a mapping with category: and phrases:"))
            continue
        for k in data:
            if k not in _FILE_KEYS:
                problems.append(
                    loc.problem((k,), f"unknown key (expected one of: {', '.join(_FILE_KEYS)})")
                )
        cat = data.get("category")
        if not isinstance(cat, str) or not cat:
            problems.append(loc.problem(("category",), "a phrase file needs category: NAME"))
            continue
        if known is not None and cat not in known:
            problems.append(
                loc.problem(("category",), f"unknown category {cat!r} (no {cat}.yaml rule file)")
            )
        ph = data.get("phrases")
        if ph is None:
            ph = {}
        if not isinstance(ph, dict):
            problems.append(loc.problem(("phrases",), "expected a mapping of phrase: weight"))
            ph = {}
        for text, weight in ph.items():
            path_k: Key = ("phrases", text)
            where = f"{name}:{loc.line(path_k)}"
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int)
                or not -1000 <= weight <= 1000
            ):
                problems.append(
                    loc.problem(path_k, f"weight must be an integer -1000..1000, got {weight!r}")
                )
                continue
            key = phrase_key(str(text))
            if key is None:
                problems.append(loc.problem(path_k, "a phrase needs at least one letter or digit"))
                continue
            if (cat, key) in seen:
                problems.append(
                    loc.problem(path_k, f"duplicate phrase (also at {seen[(cat, key)]})")
                )
                continue
            seen[(cat, key)] = where
            phrases.append(
                (phrase_keys(str(text)), Phrase(str(text).rstrip().rstrip("*"), cat, weight, where))
            )
        cb = data.get("combinations") or []
        if not isinstance(cb, list):
            problems.append(
                loc.problem(("combinations",), "expected a list of {all: [...], weight: N}")
            )
            cb = []
        for i, c in enumerate(cb):
            ck: Key = ("combinations", i)
            if not isinstance(c, dict) or set(c) - {"all", "weight"}:
                problems.append(loc.problem(ck, "expected {all: [phrase, phrase, ...], weight: N}"))
                continue
            parts, weight = c.get("all"), c.get("weight")
            if (
                not isinstance(parts, list)
                or len(parts) < 2
                or not all(isinstance(p, str) for p in parts)
            ):
                problems.append(
                    loc.problem((*ck, "all"), "expected a list of at least two phrases")
                )
                continue
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int)
                or not -1000 <= weight <= 1000
            ):
                problems.append(
                    loc.problem(
                        (*ck, "weight"), f"weight must be an integer -1000..1000, got {weight!r}"
                    )
                )
                continue
            pending.append((loc, ck, parts, cat, weight))
    # Combination parts need automaton keys; parts not listed as phrases get weight 0.
    for loc, ck, parts, cat, weight in pending:
        keys = []
        for j, part in enumerate(parts):
            key = phrase_key(part)
            if key is None:
                problems.append(
                    loc.problem((*ck, "all", j), "a phrase needs at least one letter or digit")
                )
                break
            if (cat, key) not in seen:
                where = f"{loc.file}:{loc.line((*ck, 'all', j))}"
                seen[(cat, key)] = where
                phrases.append(
                    (phrase_keys(part), Phrase(part.rstrip().rstrip("*"), cat, 0, where))
                )
            keys.append(key)
        else:
            combos.append(
                Combination(
                    tuple(keys), " + ".join(parts), cat, weight, f"{loc.file}:{loc.line(ck)}"
                )
            )
    if problems:
        raise InputError(problems)
    return PhraseSet(phrases, combos, files)


# --------------------------------------------------------------------------- CLI


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m proxy.content", description="Score saved pages against rules/phrases/."
    )
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--phrases", type=Path, default=Path("rules/phrases"))
    ap.add_argument(
        "--type", default=None, help="Content-Type to assume (default: from the file name)"
    )
    args = ap.parse_args(argv)
    try:
        ps = load_phrases(args.phrases)
    except InputError as exc:
        print(exc)
        return 2
    for f in args.files:
        ctype = args.type or (
            "application/json"
            if f.suffix == ".json"
            else "text/plain"
            if f.suffix == ".txt"
            else "text/html"
        )
        score = ps.score_body(f.read_bytes(), ctype)  # as the proxy scores it
        parts = [
            f"{cat}={total} [{', '.join(f'{h.phrase}:{h.weight:+d}' for h in score.hits.get(cat, ()))}]"
            for cat, total in sorted(score.totals.items())
        ]
        print(f"{f}: " + ("; ".join(parts) or "no phrases"))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
