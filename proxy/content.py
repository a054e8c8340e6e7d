"""Page content scoring: the visible text of a page, scored against weighted phrase lists.

New adult and gambling sites appear faster than any list; the words on the page
give them away. This is E2Guardian's weighted-phrase idea, built to avoid its
two known weaknesses:

- **Cost.** Every phrase of every category is compiled into one Aho–Corasick
  automaton (``pyahocorasick``), so a page is scanned once, in C, whatever the
  number of phrases; only the (few) hits cost Python work.
- **False positives** (the Scunthorpe problem). Text is matched on whole words
  ("sex" never matches "Essex", "anal" never "analysis"; a trailing ``*`` in a
  phrase opts into word beginnings), each phrase counts once per page (a long
  article that says "casino" forty times is not forty times more of a casino),
  and negative "good context" phrases (sexual health, anatomy, problem
  gambling, legislation) pull educational pages back under the threshold.

Pipeline: ``decode_body`` (gzip/br/deflate/zstd, capped: a compression bomb
cannot blow up memory) -> ``body_text`` (charset, then visible text of
HTML/JSON/plain text) -> ``normalize`` (lower case, accents folded except ñ,
punctuation to single spaces) -> ``PhraseSet.score``.

This module imports no mitmproxy; ``addons/content.py`` adapts it to flows.
Run ``python -m proxy.content FILE...`` to see how a saved page scores.
"""

from __future__ import annotations

import codecs
import html
import io
import json
import re
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ahocorasick

from .yamlpos import InputError, Key, Located, Problem, load_yaml_file

# --------------------------------------------------------------------------- text


class ContentError(ValueError):
    """A body that cannot be decoded (corrupt compression, unknown encoding)."""


# Accents folded so that "apuesta" and "apuésta", "pornografía" and "pornografia" match
# alike. ñ is kept: folding it would turn "año" (year) into "ano".
_FOLD = str.maketrans(
    {
        **dict.fromkeys("áàâäãå", "a"),
        **dict.fromkeys("éèêë", "e"),
        **dict.fromkeys("íìîï", "i"),
        **dict.fromkeys("óòôöõø", "o"),
        **dict.fromkeys("úùûü", "u"),
        "ç": "c",
        "ý": "y",
        "ÿ": "y",
        "’": "'",
    }
)
_NON_WORD = re.compile(r"[\W_]+")
_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")  # "don't" -> "dont", "o'clock" -> "oclock"


def normalize(text: str) -> str:
    """Lower case, accents folded, every run of non-letters/digits one space, padded with spaces.

    Phrases are normalized the same way and matched with their spaces, so a
    match always starts and ends on a word boundary.
    """
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    text = text.lower().translate(_FOLD)
    if "'" in text:
        text = _APOSTROPHE.sub("", text)
    return " " + _NON_WORD.sub(" ", text).strip() + " "


# Elements whose content is never shown as text.
_INVISIBLE = re.compile(
    r"<(script|style|template|svg)\b[^>]*>.*?</\1\s*>|<!--.*?-->",
    re.S | re.I,
)
# Attributes a person sees (tooltips, alt text for images) and metadata search engines show.
_ATTRS = re.compile(
    r"""\b(?:alt|title|aria-label)\s*=\s*(?:"([^"<>]{1,500})"|'([^'<>]{1,500})')""", re.I
)
_META = re.compile(
    r"""<meta\b[^>]*?\b(?:name|property)\s*=\s*["']?(?:description|keywords|og:title|og:description)["']?[^>]*>""",
    re.I,
)
_CONTENT_ATTR = re.compile(r"""\bcontent\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)
# Inline elements do not separate words ("<b>P</b>orn" reads "Porn"); every other tag does.
_INLINE_TAG = re.compile(
    r"</?(?:a|abbr|b|bdi|bdo|big|cite|code|del|dfn|em|font|i|ins|kbd|mark|q|s|samp|small|span|strike|strong|sub|sup|tt|u|var|wbr)\b[^>]*>",
    re.I,
)
_TAG = re.compile(r"<[^>]*>")


def html_to_text(doc: str) -> str:
    """The text a reader sees (plus alt/title attributes and the meta description/keywords)."""
    doc = _INVISIBLE.sub(" ", doc)
    extra = [a or b for a, b in _ATTRS.findall(doc)]
    for tag in _META.findall(doc):
        m = _CONTENT_ATTR.search(tag)
        if m:
            extra.append(m.group(1) or m.group(2) or "")
    text = _TAG.sub(" ", _INLINE_TAG.sub("", doc))
    if extra:
        text = text + " \n " + " \n ".join(extra)
    return html.unescape(text) if "&" in text else text


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


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def charset_of(content_type: str | None, body: bytes, kind: str) -> str:
    """Charset from the Content-Type, else a BOM, else (HTML) a <meta> in the first 2 KB, else UTF-8."""
    m = _CHARSET_PARAM.search(content_type or "")
    cs = _codec(m.group(1)) if m else None
    if cs:
        return cs
    if body.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if kind == "html":
        m2 = _META_CHARSET.search(body[:2048])
        cs = _codec(m2.group(1).decode("ascii", "replace")) if m2 else None
        if cs:
            return cs
    return "utf-8"


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
    d = zlib.decompressobj(wbits)
    out = d.decompress(data, limit)
    return out


def decode_body(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding (gzip, x-gzip, deflate, br, zstd, identity), keeping at most ``limit`` bytes.

    Raises ContentError for an unknown coding or corrupt data. Only the first
    ``limit`` decoded bytes are kept: the page's beginning is scored, and a
    compression bomb costs no more memory than ``limit``.
    """
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
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


def body_text(
    raw: bytes,
    content_type: str | None,
    content_encoding: str | None = None,
    limit: int = 4 << 20,
) -> str:
    """The visible text of a response body (decoded, charset applied, markup stripped)."""
    kind = content_kind(content_type) or "text"
    body = decode_body(raw, content_encoding, limit)
    text = body.decode(charset_of(content_type, body, kind), errors="replace")
    if kind == "html":
        return html_to_text(text)
    if kind == "json":
        return json_to_text(text)
    return text


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


@dataclass(frozen=True)
class Hit:
    phrase: str
    weight: int


@dataclass(frozen=True)
class Score:
    """Per-category totals and the phrases that made them (each phrase once)."""

    totals: dict[str, int] = field(default_factory=dict)
    hits: dict[str, tuple[Hit, ...]] = field(default_factory=dict)

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
        self, phrases: list[tuple[str, Phrase]], combos: list[Combination], files: Sequence[str]
    ):
        self.files = tuple(files)
        self.categories = frozenset({p.category for _, p in phrases} | {c.category for c in combos})
        self.count = len(phrases) + len(combos)
        keys: dict[str, int] = {}
        self._entries: list[
            list[Phrase]
        ] = []  # key index -> phrases (one per category) with that key
        for key, p in phrases:
            i = keys.setdefault(key, len(keys))
            if i == len(self._entries):
                self._entries.append([])
            self._entries[i].append(p)
        self._keys = keys
        self._combos = [(tuple(keys[k] for k in c.parts), c) for c in combos]
        self._combo_keys = {i for parts, _ in self._combos for i in parts}
        self._auto = ahocorasick.Automaton()
        for key, i in keys.items():
            self._auto.add_word(key, i)
        if keys:
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
        cats = None if categories is None else frozenset(categories)
        found = self.matches(normalized)
        totals: dict[str, int] = {}
        hits: dict[str, list[Hit]] = {}
        for i in found:
            for p in self._entries[i]:
                if cats is not None and p.category not in cats:
                    continue
                if p.weight:
                    totals[p.category] = totals.get(p.category, 0) + p.weight
                    hits.setdefault(p.category, []).append(Hit(p.text, p.weight))
        if found & self._combo_keys:
            for parts, c in self._combos:
                if (cats is None or c.category in cats) and all(i in found for i in parts):
                    totals[c.category] = totals.get(c.category, 0) + c.weight
                    hits.setdefault(c.category, []).append(Hit(c.label, c.weight))
        return Score(totals, {k: tuple(v) for k, v in hits.items()})

    def score(self, text: str, categories: Iterable[str] | None = None) -> Score:
        """Score plain text (normalized here) for ``categories`` (all when None)."""
        return self.score_normalized(normalize(text), categories)


def phrase_key(phrase: str) -> str | None:
    """The automaton key of a phrase as written: normalized, padded with spaces; ``word*`` keeps
    only the leading space (matches word beginnings). None for a phrase with no letters."""
    prefix = phrase.rstrip().endswith("*")
    words = normalize(phrase.rstrip().rstrip("*")).strip()
    if not words:
        return None
    return " " + words + ("" if prefix else " ")


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
    phrases: list[tuple[str, Phrase]] = []
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
            phrases.append((key, Phrase(str(text).rstrip().rstrip("*"), cat, weight, where)))
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
                phrases.append((key, Phrase(part, cat, 0, where)))
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
        score = ps.score(body_text(f.read_bytes(), ctype))
        parts = [
            f"{cat}={total} [{', '.join(f'{h.phrase}:{h.weight:+d}' for h in score.hits.get(cat, ()))}]"
            for cat, total in sorted(score.totals.items())
        ]
        print(f"{f}: " + ("; ".join(parts) or "no phrases"))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
