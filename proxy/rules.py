"""Compile the category rule files in ``rules/`` into one lookup structure.

Compilation is the slow part (up to millions of list lines), so it happens
once, off the event loop, into a ``RuleSet`` that the engine only reads. Every
entry keeps a compact pointer to the file and line it came from, because every
decision must be explainable.

Two stages: ``plan_rules`` reads the rule YAML (small: every problem is
reported with file:line) and names the lists they include, and hashes all of
it into a key; ``compile_plan`` reads the lists into the compact index of
``index.py``. ``load_rules`` skips the second stage when the cache directory
already holds an index for that key (a warm start maps it in well under a
second), and can run it in a child process (``isolate``) so that a running
proxy neither stalls nor keeps the compiler's temporary memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re2

from . import index as _index
from .canonical import Malformed
from .lists import Garbage, list_kind, parse_domain, parse_url, read_domains, read_list
from .yamlpos import InputError, Problem, load_yaml_file

log = logging.getLogger("cipa.rules")

RULE_KEYS = (
    "category", "description", "domains", "urls", "patterns", "include", "include_if_present",
    "override",
)  # fmt: skip

# Packed source reference: category id (8 bits) | file id (16 bits) | line (rest).
_CAT_BITS, _FILE_BITS = 8, 16
_LINE_SHIFT = _CAT_BITS + _FILE_BITS
_MAX_CATEGORIES = 1 << _CAT_BITS


def pack(cat: int, file: int, line: int) -> int:
    return cat | (file << _CAT_BITS) | (line << (_CAT_BITS + _FILE_BITS))


def unpack(ref: int) -> tuple[int, int, int]:
    return (
        ref & (_MAX_CATEGORIES - 1),
        (ref >> _CAT_BITS) & ((1 << _FILE_BITS) - 1),
        ref >> (_CAT_BITS + _FILE_BITS),
    )


@dataclass
class CategoryInfo:
    name: str
    description: str
    file: str
    domains: int = 0
    urls: int = 0
    patterns: int = 0
    override_never: bool = False  # `override: never`: no adult override may lift this category

    @property
    def entries(self) -> int:
        return self.domains + self.urls + self.patterns


@dataclass
class SourceStats:
    """One included list (or a rule file's inline entries), for ``lists stats``."""

    file: str
    category: str
    kind: str  # domains | urls
    entries: int = 0
    ignored: int = 0
    bytes: int = 0
    mtime: float = 0.0
    present: bool = True


@dataclass
class RuleSet:
    """Everything the engine needs to classify a URL, built once and then read-only."""

    categories: dict[str, CategoryInfo] = field(default_factory=dict)
    cat_names: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    # every domain entry: canonical domain -> packed ref, or a tuple of refs when several
    # categories list it (a read-only Mapping view of the compact index; see index.py)
    domains: Any = None
    # canonical host -> [(lower-case path prefix, packed ref)], longest prefix first
    urls: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    patterns: list[tuple[int, str]] = field(default_factory=list)
    pattern_set: Any = None  # re2.Set over self.patterns, same order
    garbage: list[Garbage] = field(default_factory=list)
    load_seconds: float = 0.0
    # about the compiled index
    sources: list[SourceStats] = field(default_factory=list)
    key: str = ""  # SHA-256 of every rule file and list compiled
    index_path: Path | None = None  # the cache file in use (None: built in memory)
    index_bytes: int = 0
    build_seconds: float = 0.0  # how long the compile took (when it was built)
    built_at: float = 0.0  # when it was built (epoch seconds)
    from_cache: bool = False

    def source(self, ref: int) -> str:
        """``file:line`` of a packed reference."""
        _, f, line = unpack(ref)
        return f"{self.files[f]}:{line}"

    def category_of(self, ref: int) -> str:
        return self.cat_names[ref & (_MAX_CATEGORIES - 1)]

    def url_hosts(self) -> frozenset[str]:
        return frozenset(self.urls)


@dataclass
class _Include:
    rel: str
    path: Path  # the file read (an overlay may put it elsewhere than ``display`` says)
    display: str
    kind: str
    cat: int
    fid: int
    optional: bool
    present: bool


@dataclass
class Plan:
    """The rule files read and checked, the lists they include, and the key of it all."""

    rules_dir: Path
    categories: dict[str, CategoryInfo] = field(default_factory=dict)
    cat_names: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    patterns: list[tuple[int, str]] = field(default_factory=list)
    # in the order the compiler must meet them: ("d", host, ref), ("u", host, path, ref),
    # ("i", _Include)
    steps: list[tuple] = field(default_factory=list)
    yaml_files: list[tuple[str, Path]] = field(default_factory=list)
    key: str = ""

    @property
    def includes(self) -> list[_Include]:
        return [s[1] for s in self.steps if s[0] == "i"]


class _Planner:
    def __init__(self, rules_dir: Path, overlay: dict[str, Path] | None = None):
        self.rules_dir = rules_dir
        self.display_root = rules_dir.parent
        self.plan = Plan(rules_dir)
        self.problems: list[Problem] = []
        self._file_ids: dict[str, int] = {}
        # "lists/ut1" -> a directory read instead of rules_dir/lists/ut1 (`lists update` checks
        # new lists with it before they replace the old ones)
        self.overlay = {k.strip("/"): v for k, v in (overlay or {}).items()}

    def display(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.display_root))
        except ValueError:
            return str(path)

    def file_id(self, display: str) -> int:
        fid = self._file_ids.get(display)
        if fid is None:
            fid = self._file_ids[display] = len(self.plan.files)
            self.plan.files.append(display)
        return fid

    def load_category(self, path: Path) -> None:
        display = self.display(path)
        try:
            loc = load_yaml_file(path, display)
        except InputError as exc:
            self.problems.extend(exc.problems)
            return
        self.plan.yaml_files.append((display, path))
        data = loc.data
        if not isinstance(data, dict):
            self.problems.append(
                Problem(display, 1, "", "a rule file must be a mapping with a 'category' key")
            )
            return
        for key in data:
            if key not in RULE_KEYS:
                self.problems.append(
                    loc.problem((key,), f"unknown key (expected one of: {', '.join(RULE_KEYS)})")
                )
        name = data.get("category")
        if name != path.stem:
            self.problems.append(
                loc.problem(
                    ("category",), f"category {name!r} must match the file name {path.stem!r}"
                )
            )
            return
        plan = self.plan
        if len(plan.cat_names) >= _MAX_CATEGORIES:
            self.problems.append(
                loc.problem(("category",), f"too many categories (max {_MAX_CATEGORIES})")
            )
            return
        cat = len(plan.cat_names)
        plan.cat_names.append(name)
        info = CategoryInfo(name, str(data.get("description") or ""), display)
        override = data.get("override", "allowed")
        if override not in ("allowed", "never"):
            self.problems.append(
                loc.problem(("override",), f"expected 'allowed' or 'never', got {override!r}")
            )
        info.override_never = override == "never"
        plan.categories[name] = info
        fid = self.file_id(display)

        for key in ("domains", "urls", "patterns", "include", "include_if_present"):
            items = data.get(key) or []
            if not isinstance(items, list):
                self.problems.append(loc.problem((key,), "expected a list"))
                continue
            for i, item in enumerate(items):
                line = loc.line((key, i)) or 0
                if not isinstance(item, str) or not item.strip():
                    self.problems.append(
                        loc.problem((key, i), f"expected a non-empty string, got {item!r}")
                    )
                    continue
                ref = pack(cat, fid, line)
                try:
                    if key == "domains":
                        plan.steps.append(("d", parse_domain(item.strip()), ref))
                        info.domains += 1
                    elif key == "urls":
                        plan.steps.append(("u", *parse_url(item), ref))
                        info.urls += 1
                    elif key == "patterns":
                        self.add_pattern(item, ref)
                        info.patterns += 1
                    else:
                        self.include(item, cat, optional=key == "include_if_present")
                except Malformed as exc:
                    self.problems.append(loc.problem((key, i), str(exc)))

    def add_pattern(self, pattern: str, ref: int) -> None:
        try:
            re2.compile(pattern)
        except re2.error as exc:
            raise Malformed(f"bad regular expression {pattern!r} (RE2 syntax): {exc}") from None
        self.plan.patterns.append((ref, pattern))

    def include(self, rel: str, cat: int, optional: bool) -> None:
        nominal = (self.rules_dir / rel).resolve()
        kind = list_kind(nominal)
        if kind is None:
            raise Malformed(
                f"cannot tell the list kind of {rel!r}: name it 'domains' or 'urls' (or *.domains, *.urls)"
            )
        path = nominal
        if self.overlay:
            # lexically, not resolved: rules/lists may be a symbolic link (deploy/kubernetes)
            clean = os.path.normpath(rel.strip()).replace(os.sep, "/")
            for prefix, directory in self.overlay.items():
                if clean.startswith(prefix + "/"):
                    path = (directory / clean[len(prefix) + 1 :]).resolve()
        present = path.is_file()
        if not present and not optional:
            raise Malformed(f"included list {rel!r} not found ({path})")
        display = self.display(nominal)
        fid = self.file_id(display)
        inc = _Include(rel, path, display, kind, cat, fid, optional, present)
        self.plan.steps.append(("i", inc))

    def finish(self) -> Plan:
        plan = self.plan
        h = hashlib.sha256()
        h.update(f"cipa-rules/{_index.FORMAT}/{self.display(self.rules_dir)}\n".encode())
        for display, path in plan.yaml_files:
            data = path.read_bytes()
            h.update(f"yaml {display} {len(data)}\n".encode())
            h.update(data)
        for inc in plan.includes:
            h.update(f"list {inc.display} {inc.kind} {inc.cat} ".encode())
            if inc.present:
                with open(inc.path, "rb") as fh:
                    h.update(hashlib.file_digest(fh, "sha256").digest())
            else:
                h.update(b"absent")
            h.update(b"\n")
        plan.key = h.hexdigest()
        return plan


def plan_rules(rules_dir: Path, overlay: dict[str, Path] | None = None) -> Plan:
    """Read and check every ``*.yaml`` in ``rules_dir``; raise InputError with all problems."""
    if not rules_dir.is_dir():
        raise InputError([Problem(str(rules_dir), None, "", "rules directory not found")])
    files = sorted(rules_dir.glob("*.yaml"))
    if not files:
        raise InputError([Problem(str(rules_dir), None, "", "no rule files (*.yaml) found")])
    planner = _Planner(rules_dir, overlay)
    for path in files:
        planner.load_category(path)
    if planner.problems:
        raise InputError(planner.problems)
    return planner.finish()


def compile_plan(plan: Plan) -> tuple[bytes, dict]:
    """Read every list the plan includes and build the index file's bytes (and its metadata)."""
    start = time.perf_counter()
    domains: dict[str, int | tuple[int, ...]] = {}
    urls: dict[str, list[tuple[str, int]]] = {}
    garbage: list[Garbage] = []
    categories = {name: CategoryInfo(**vars(info)) for name, info in plan.categories.items()}
    by_id = list(categories.values())
    inline: dict[tuple[int, str], SourceStats] = {}
    sources: list[SourceStats] = []
    mask = _MAX_CATEGORIES - 1

    def add_domain(host: str, ref: int) -> None:
        key = host[::-1] + "."
        old = domains.get(key)
        if old is None:
            domains[key] = ref
            return
        olds = old if type(old) is tuple else (old,)
        cat = ref & mask
        for o in olds:
            if o & mask == cat:
                return  # duplicate within a category: the first line explains it
        domains[key] = (*olds, ref)

    for step in plan.steps:
        kind = step[0]
        if kind == "d":
            add_domain(step[1], step[2])
        elif kind == "u":
            urls.setdefault(step[1], []).append((step[2], step[3]))
        if kind in ("d", "u"):
            ref = step[-1]
            info = by_id[ref & mask]
            k = (ref & mask, "domains" if kind == "d" else "urls")
            st = inline.get(k)
            if st is None:
                st = inline[k] = SourceStats(info.file, info.name, k[1])
                sources.append(st)
            st.entries += 1
            continue
        inc: _Include = step[1]
        info = by_id[inc.cat]
        st = SourceStats(inc.display, info.name, inc.kind, present=inc.present)
        sources.append(st)
        if not inc.present:
            continue
        try:
            fst = inc.path.stat()
            st.bytes, st.mtime = fst.st_size, fst.st_mtime
        except OSError:
            pass
        base = pack(inc.cat, inc.fid, 0)
        count, before = 0, len(garbage)

        def add_line(lineno: int, host: str, base: int = base) -> None:
            key = host[::-1] + "."
            ref = base | (lineno << _LINE_SHIFT)
            old = domains.get(key)
            if old is None:
                domains[key] = ref
            else:
                add_domain(host, ref)

        if inc.kind == "domains":
            count = read_domains(inc.path, inc.display, add_line, garbage)
            info.domains += count
        else:
            for item in read_list(inc.path, inc.display, "urls"):
                if type(item) is Garbage:
                    garbage.append(item)
                    continue
                lineno, (host, path) = item  # type: ignore[misc]
                urls.setdefault(host, []).append(
                    (path, base | (lineno << (_CAT_BITS + _FILE_BITS)))
                )
                count += 1
            info.urls += count
        st.entries = count
        st.ignored = len(garbage) - before
    for entries in urls.values():
        entries.sort(key=lambda e: -len(e[0]))  # longest prefix first: the most specific
    meta = {
        "key": plan.key,
        "files": list(plan.files),
        "cat_names": list(plan.cat_names),
        "categories": [tuple(vars(i).values()) for i in categories.values()],
        "patterns": list(plan.patterns),
        "garbage": [(g.file, g.line, g.text, g.why) for g in garbage],
        "sources": [tuple(vars(s).values()) for s in sources],
        "built_at": time.time(),
    }
    meta["build_seconds"] = time.perf_counter() - start
    blob = _index.build(domains, urls, meta, plan.key)
    meta["build_seconds"] = time.perf_counter() - start
    return blob, meta


def _ruleset(index: _index.DomainIndex, meta: dict, size: int) -> RuleSet:
    rs = RuleSet()
    for row in meta["categories"]:
        info = CategoryInfo(*row)
        rs.categories[info.name] = info
    rs.cat_names = list(meta["cat_names"])
    rs.files = list(meta["files"])
    rs.domains = index
    rs.urls = meta["urls"]
    rs.patterns = [tuple(p) for p in meta["patterns"]]
    rs.garbage = [Garbage(*g) for g in meta["garbage"]]
    rs.sources = [SourceStats(*s) for s in meta["sources"]]
    rs.key = meta["key"]
    rs.index_bytes = size
    rs.build_seconds = meta.get("build_seconds", 0.0)
    rs.built_at = meta.get("built_at", 0.0)
    if rs.patterns:
        opts = re2.Options()
        opts.case_sensitive = False
        pset = re2.Set.SearchSet(opts)
        for _, pattern in rs.patterns:
            pset.Add(pattern)
        pset.Compile()
        rs.pattern_set = pset
    return rs


def _compile_in_child(rules_dir: Path, cache_dir: Path | None) -> Path:
    """Run the compiler in a child process; returns the index file it wrote."""
    cmd = [sys.executable, "-m", "proxy.index", "compile", str(rules_dir)]
    tmp = None
    if cache_dir is not None and _writable(cache_dir):
        cmd += ["--cache-dir", str(cache_dir)]
    else:
        fd, tmp = tempfile.mkstemp(prefix="cipa-rules-", suffix=".cache.idx")
        os.close(fd)
        cmd += ["--out", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise RuntimeError(
            f"rule compiler exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def load_rules(
    rules_dir: Path,
    cache_dir: Path | None = None,
    *,
    isolate: bool = False,
    overlay: dict[str, Path] | None = None,
) -> RuleSet:
    """Compile every ``*.yaml`` in ``rules_dir``; raise InputError with all fatal problems.

    List garbage is not fatal: it is kept in ``RuleSet.garbage`` for ``lint``.
    ``cache_dir``: reuse (and write) the compiled index there, keyed by the sources' hash.
    ``isolate``: compile in a child process (the proxy: no event-loop stall, no leftover heap).
    ``overlay``: read the lists under an include prefix from another directory, with the
    names (and the cache key) they will have once moved into place (``lists update``).
    """
    start = time.perf_counter()
    plan = plan_rules(rules_dir, overlay)
    path = _index.cache_path(cache_dir, plan.key) if cache_dir is not None else None
    if path is not None:
        try:
            index, meta = _index.read_cache(path, plan.key)
        except _index.CacheError as exc:
            if path.exists():
                log.warning("rebuilding the rule index: %s: %s", path, exc)
        else:
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used: kept by prune()
            rs = _ruleset(index, meta, path.stat().st_size)
            rs.index_path, rs.from_cache = path, True
            rs.load_seconds = time.perf_counter() - start
            return rs
    if isolate and overlay is None:
        out = _compile_in_child(rules_dir, cache_dir)
        index, meta = _index.read_cache(out)  # the child's own key, should files have changed
        rs = _ruleset(index, meta, out.stat().st_size)
        if cache_dir is not None and out.parent == cache_dir:
            rs.index_path = out
        else:
            out.unlink(missing_ok=True)  # the mapping stays valid
    else:
        blob, _ = compile_plan(plan)
        if path is not None:
            try:
                _index.write_cache(path, blob)
            except OSError as exc:
                log.warning("cannot cache the rule index in %s: %s", cache_dir, exc)
                path = None
        index, meta = _index.load(blob)
        rs = _ruleset(index, meta, len(blob))
        rs.index_path = path
    rs.load_seconds = time.perf_counter() - start
    return rs
