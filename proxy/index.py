"""The compact compiled index of every domain entry, and its on-disk cache.

Millions of list entries must not cost a Python string and a dict slot each
(about 100 bytes, plus the garbage collector walking them). The index is:

- a MARISA trie (``marisa-trie``) of the domain names written backwards with a
  trailing dot (``www.example.com`` -> ``moc.elpmaxe.www.``). Every entry that
  covers a host (the host itself or a parent domain) is then a prefix of the
  host's reversed form that ends at a dot, so one prefix search answers "which
  entries match, from the shortest suffix to the longest" exactly: no hashes,
  no false positives. The trie also compresses the shared suffixes
  (``.com``, ``.blogspot.com``) that make up most of a list's bytes;
- a parallel array (stdlib ``array``/``memoryview``; 32-bit when it fits)
  giving, for each trie key id, where the entry came from: a source number
  (category + file) and the line, so every match still explains itself as
  ``file:line``. A name listed by several categories points into a small side
  table of full references, in the order the compiler met them;
- the URL entries (tens of thousands at most: UT1 has no big URL list) and the
  metadata (files, categories, patterns, ignored lines) as ``marshal`` data.

One cache file (``rules-<key>.cache.idx``) holds all of it, keyed by the
SHA-256 of every rule file and list it was compiled from. It is memory-mapped:
a warm start maps it and checks its digest (no parsing, no per-entry objects),
and several worker processes share its pages. Files are written to a temporary
name and renamed, so readers never see half a file.

``python -m proxy.index compile RULES_DIR --out FILE`` compiles in a separate
process: ``addons/master.py`` uses it so that a 5-million-entry compile (a
minute of CPU in C++ calls that hold the GIL, and a gigabyte of temporary
strings) never stalls the proxy's event loop nor stays in its heap.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import marshal
import mmap
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import marisa_trie

MAGIC = b"CIPAIDX\x01"
FORMAT = 1
_ALIGN = 8
_LINE_SHIFT = 24  # where rules.pack() puts the line number


def _pad(n: int) -> int:
    return (-n) % _ALIGN


class DomainIndex:
    """Read-only view of the compiled domain entries (a Mapping of name -> ref or refs)."""

    __slots__ = ("_trie", "_refs", "_moff", "_mrefs", "_src", "_sbits", "_smask", "_flag", "_keep")

    def __init__(self, trie, refs, moff, mrefs, src: tuple[int, ...], sbits: int, flag: int, keep):
        self._trie = trie
        self._refs = refs  # memoryview 'I' or 'Q': encoded ref per key id
        self._moff = moff  # memoryview 'I': multi table offsets (len m+1)
        self._mrefs = mrefs  # memoryview 'Q': full packed refs
        self._src = src  # source id -> packed (category, file) with line 0
        self._sbits = sbits
        self._smask = (1 << sbits) - 1
        self._flag = flag
        self._keep = keep  # the buffer (mmap or bytes) the views point into

    # -------------------------------------------------------------- lookups

    def _decode(self, kid: int) -> tuple[int, ...]:
        e = self._refs[kid]
        if e & self._flag:
            i = e ^ self._flag
            return tuple(self._mrefs[self._moff[i] : self._moff[i + 1]])
        return (self._src[e & self._smask] | ((e >> self._sbits) << _LINE_SHIFT),)

    def hits(self, host: str, ip: bool = False) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """Entries covering ``host``: ``(labels, refs)``, the most specific (longest) first.

        ``ip``: an IP literal matches only an entry for itself, never a "parent".
        """
        rev = host[::-1] + "."
        found = self._trie.prefixes(rev)
        if not found:
            return ()
        key_id = self._trie.key_id
        if ip:
            return tuple(
                (k.count("."), self._decode(key_id(k))) for k in found if len(k) == len(rev)
            )
        return tuple((k.count("."), self._decode(key_id(k))) for k in reversed(found))

    def refs(self, name: str) -> tuple[int, ...] | None:
        kid = self._trie.get(name[::-1] + ".")
        return None if kid is None else self._decode(kid)

    # -------------------------------------------------------------- Mapping-like, for tools

    def get(self, name: str, default=None):
        refs = self.refs(name)
        if refs is None:
            return default
        return refs[0] if len(refs) == 1 else refs

    def __getitem__(self, name: str):
        refs = self.refs(name)
        if refs is None:
            raise KeyError(name)
        return refs[0] if len(refs) == 1 else refs

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name[::-1] + ".") in self._trie

    def __len__(self) -> int:
        return len(self._trie)

    def __iter__(self) -> Iterator[str]:
        for key in self._trie.iterkeys():
            yield key[-2::-1]

    def keys(self) -> Iterator[str]:
        return iter(self)

    def items(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        for key, kid in self._trie.iteritems():
            yield key[-2::-1], self._decode(kid)


# ------------------------------------------------------------------ building


def reversed_key(host: str) -> str:
    return host[::-1] + "."


def build(domains: dict[str, int | tuple[int, ...]], urls: dict, meta: dict, key: str) -> bytes:
    """Serialize a compiled rule set: ``domains`` maps reversed keys (``reversed_key``) to
    packed refs (or tuples of them, in the order they were met)."""
    trie = marisa_trie.Trie(domains.keys()) if domains else marisa_trie.Trie([])
    # Source table: every (category, file) that a single ref uses.
    src_ids: dict[int, int] = {}
    line_max = 0
    for v in domains.values():
        if type(v) is int:
            base = v & ((1 << _LINE_SHIFT) - 1)
            if base not in src_ids:
                src_ids[base] = len(src_ids)
            if v >> _LINE_SHIFT > line_max:
                line_max = v >> _LINE_SHIFT
    sbits = max(1, (len(src_ids) - 1).bit_length())
    if sbits + line_max.bit_length() <= 31:
        code, width = "I", 32
    else:
        code, width = "Q", 64
    flag = 1 << (width - 1)
    refs = array.array(code, bytes(len(trie) * array.array(code).itemsize))
    moff = array.array("I", [0])
    mrefs = array.array("Q")
    for name, kid in trie.iteritems():  # key order, with ids: faster than restore_key(id)
        v = domains[name]
        if type(v) is int:
            refs[kid] = src_ids[v & ((1 << _LINE_SHIFT) - 1)] | ((v >> _LINE_SHIFT) << sbits)
        else:
            refs[kid] = flag | (len(moff) - 1)
            mrefs.extend(v)
            moff.append(len(mrefs))
    src = [0] * len(src_ids)
    for base, i in src_ids.items():
        src[i] = base
    meta = dict(meta, src=src, sbits=sbits, flag=flag, urls=urls)
    sections = [
        ("trie", trie.tobytes()),
        ("refs", refs.tobytes()),
        ("moff", moff.tobytes()),
        ("mrefs", mrefs.tobytes()),
        ("meta", marshal.dumps(meta)),
    ]
    header = {"format": FORMAT, "key": key, "refs_code": code, "sections": {}}
    # offsets are relative to the body (after magic + lengths + header), so compute them first
    off = 0
    for name, data in sections:
        header["sections"][name] = [off, len(data)]
        off += len(data) + _pad(len(data))
    body = b"".join(data + b"\0" * _pad(len(data)) for _, data in sections)
    header["digest"] = hashlib.sha256(body).hexdigest()
    head = json.dumps(header, sort_keys=True).encode()
    head += b" " * _pad(len(head))
    return MAGIC + struct.pack("<QQ", len(head), len(body)) + head + body


class CacheError(Exception):
    """A cache file that is missing, stale or damaged (it is then rebuilt)."""


def load(buf, key: str | None = None) -> tuple[DomainIndex, dict]:
    """The index and the metadata from a buffer made by ``build`` (bytes or an mmap)."""
    view = memoryview(buf)
    if len(view) < 24 or bytes(view[:8]) != MAGIC:
        raise CacheError("not a cipa-proxy index file")
    hlen, blen = struct.unpack("<QQ", view[8:24])
    if 24 + hlen + blen != len(view):
        raise CacheError("index file has the wrong length (truncated?)")
    try:
        header = json.loads(bytes(view[24 : 24 + hlen]))
    except ValueError:
        raise CacheError("index file header is damaged") from None
    if header.get("format") != FORMAT:
        raise CacheError(f"index format {header.get('format')} (this version reads {FORMAT})")
    if key is not None and header.get("key") != key:
        raise CacheError("index file was built from other sources")
    body = view[24 + hlen :]
    if hashlib.sha256(body).hexdigest() != header.get("digest"):
        raise CacheError("index file is damaged (digest mismatch)")

    def section(name: str) -> memoryview:
        off, n = header["sections"][name]
        return body[off : off + n]

    meta = marshal.loads(section("meta"))
    trie = marisa_trie.Trie()
    tb = section("trie")
    trie.map(tb)
    refs = section("refs").cast(header["refs_code"])
    moff = section("moff").cast("I")
    mrefs = section("mrefs").cast("Q")
    index = DomainIndex(
        trie, refs, moff, mrefs, tuple(meta["src"]), meta["sbits"], meta["flag"], (buf, tb)
    )
    return index, meta


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"rules-{key[:40]}.cache.idx"


def read_cache(path: Path, key: str | None = None) -> tuple[DomainIndex, dict]:
    """Map a cache file; raises CacheError when it is missing, stale or damaged."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise CacheError("empty index file")
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise CacheError("no cached index") from None
    except OSError as exc:
        raise CacheError(f"cannot read {path}: {exc}") from None
    return load(mm, key)


def write_cache(path: Path, blob: bytes, keep: int = 3) -> Path:
    """Write atomically (temporary file, fsync, rename); keep the ``keep`` newest cache files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    prune(path.parent, keep, protect=path)
    return path


def prune(cache_dir: Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the ``keep`` most recently used cache files (a mapped file stays readable)."""
    try:
        files = sorted(
            cache_dir.glob("rules-*.cache.idx"), key=lambda p: p.stat().st_mtime, reverse=True
        )
    except OSError:
        return
    for p in files[keep:]:
        if p != protect:
            with contextlib.suppress(OSError):
                p.unlink()


# ------------------------------------------------------------------ compiling in a child process


def compile_to(rules_dir: Path, out: Path | None, cache_dir: Path | None) -> Path:
    """Compile ``rules_dir`` and write the index file; returns its path."""
    from .rules import compile_plan, plan_rules

    plan = plan_rules(rules_dir)
    blob, _ = compile_plan(plan)
    if out is None:
        assert cache_dir is not None
        out = cache_path(cache_dir, plan.key)
    return write_cache(out, blob, keep=3 if cache_dir is not None else 1_000_000)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .yamlpos import InputError

    ap = argparse.ArgumentParser(prog="python -m proxy.index")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="compile a rules directory into an index file")
    c.add_argument("rules_dir", type=Path)
    c.add_argument("--out", type=Path, default=None, help="write here")
    c.add_argument("--cache-dir", type=Path, default=None, help="or into this cache directory")
    args = ap.parse_args(argv)
    try:
        path = compile_to(args.rules_dir, args.out, args.cache_dir)
    except InputError as exc:
        for p in exc.problems:
            print(f"problem: {p}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover - run by rules.load_rules(isolate=True)
    sys.exit(main())
