"""Compile the category rule files in ``rules/`` into one lookup structure.

Compilation is the slow part (hundreds of thousands of list lines), so it
happens once, off the event loop, into a ``RuleSet`` that the engine only
reads. Every entry keeps a compact pointer to the file and line it came from,
because every decision must be explainable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re2

from .canonical import Malformed
from .lists import Garbage, list_kind, parse_domain, parse_url, read_list
from .yamlpos import InputError, Located, Problem, load_yaml_file

RULE_KEYS = ("category", "description", "domains", "urls", "patterns", "include", "override")

# Packed source reference: category id (8 bits) | file id (16 bits) | line (rest).
_CAT_BITS, _FILE_BITS = 8, 16
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
class RuleSet:
    """Everything the engine needs to classify a URL, built once and then read-only."""

    categories: dict[str, CategoryInfo] = field(default_factory=dict)
    cat_names: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    # canonical domain -> packed ref, or a tuple of refs when several categories list it
    domains: dict[str, int | tuple[int, ...]] = field(default_factory=dict)
    # canonical host -> [(lower-case path prefix, packed ref)]
    urls: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    patterns: list[tuple[int, str]] = field(default_factory=list)
    pattern_set: Any = None  # re2.Set over self.patterns, same order
    garbage: list[Garbage] = field(default_factory=list)
    load_seconds: float = 0.0

    def source(self, ref: int) -> str:
        """``file:line`` of a packed reference."""
        _, f, line = unpack(ref)
        return f"{self.files[f]}:{line}"

    def category_of(self, ref: int) -> str:
        return self.cat_names[ref & (_MAX_CATEGORIES - 1)]

    def url_hosts(self) -> frozenset[str]:
        return frozenset(self.urls)


class _Builder:
    def __init__(self, rules_dir: Path):
        self.rules_dir = rules_dir
        self.display_root = rules_dir.parent
        self.rs = RuleSet()
        self.problems: list[Problem] = []
        self._file_ids: dict[str, int] = {}

    def display(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.display_root))
        except ValueError:
            return str(path)

    def file_id(self, display: str) -> int:
        fid = self._file_ids.get(display)
        if fid is None:
            fid = self._file_ids[display] = len(self.rs.files)
            self.rs.files.append(display)
        return fid

    def add_domain(self, host: str, ref: int) -> None:
        domains = self.rs.domains
        old = domains.get(host)
        if old is None:
            domains[host] = ref
            return
        olds = old if isinstance(old, tuple) else (old,)
        cat = ref & (_MAX_CATEGORIES - 1)
        if any(o & (_MAX_CATEGORIES - 1) == cat for o in olds):
            return  # duplicate within a category: the first line explains it
        domains[host] = (*olds, ref)

    def add_url(self, host: str, path: str, ref: int) -> None:
        self.rs.urls.setdefault(host, []).append((path, ref))

    def load_category(self, path: Path) -> None:
        display = self.display(path)
        try:
            loc = load_yaml_file(path, display)
        except InputError as exc:
            self.problems.extend(exc.problems)
            return
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
        if len(self.rs.cat_names) >= _MAX_CATEGORIES:
            self.problems.append(
                loc.problem(("category",), f"too many categories (max {_MAX_CATEGORIES})")
            )
            return
        cat = len(self.rs.cat_names)
        self.rs.cat_names.append(name)
        info = CategoryInfo(name, str(data.get("description") or ""), display)
        override = data.get("override", "allowed")
        if override not in ("allowed", "never"):
            self.problems.append(
                loc.problem(("override",), f"expected 'allowed' or 'never', got {override!r}")
            )
        info.override_never = override == "never"
        self.rs.categories[name] = info
        fid = self.file_id(display)

        for key in ("domains", "urls", "patterns", "include"):
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
                        self.add_domain(parse_domain(item.strip()), ref)
                        info.domains += 1
                    elif key == "urls":
                        self.add_url(*parse_url(item), ref)
                        info.urls += 1
                    elif key == "patterns":
                        self.add_pattern(item, ref, loc, (key, i))
                        info.patterns += 1
                    else:
                        self.include(item, cat, info, loc, (key, i))
                except Malformed as exc:
                    self.problems.append(loc.problem((key, i), str(exc)))

    def add_pattern(self, pattern: str, ref: int, loc: Located, where: tuple) -> None:
        try:
            re2.compile(pattern)
        except re2.error as exc:
            raise Malformed(f"bad regular expression {pattern!r} (RE2 syntax): {exc}") from None
        self.rs.patterns.append((ref, pattern))

    def include(self, rel: str, cat: int, info: CategoryInfo, loc: Located, where: tuple) -> None:
        path = (self.rules_dir / rel).resolve()
        kind = list_kind(path)
        if kind is None:
            raise Malformed(
                f"cannot tell the list kind of {rel!r}: name it 'domains' or 'urls' (or *.domains, *.urls)"
            )
        if not path.is_file():
            raise Malformed(f"included list {rel!r} not found ({path})")
        display = self.display(path)
        fid = self.file_id(display)
        count = 0
        for item in read_list(path, display, kind):
            if isinstance(item, Garbage):
                self.rs.garbage.append(item)
                continue
            lineno, entry = item
            ref = pack(cat, fid, lineno)
            if kind == "domains":
                self.add_domain(entry, ref)  # type: ignore[arg-type]
            else:
                self.add_url(*entry, ref)  # type: ignore[misc]
            count += 1
        if kind == "domains":
            info.domains += count
        else:
            info.urls += count

    def finish(self) -> RuleSet:
        rs = self.rs
        for entries in rs.urls.values():
            entries.sort(key=lambda e: -len(e[0]))  # longest prefix first: the most specific
        if rs.patterns:
            opts = re2.Options()
            opts.case_sensitive = False
            pset = re2.Set.SearchSet(opts)
            for _, pattern in rs.patterns:
                pset.Add(pattern)
            pset.Compile()
            rs.pattern_set = pset
        return rs


def load_rules(rules_dir: Path) -> RuleSet:
    """Compile every ``*.yaml`` in ``rules_dir``; raise InputError with all fatal problems.

    List garbage is not fatal: it is kept in ``RuleSet.garbage`` for ``lint``.
    """
    start = time.perf_counter()
    b = _Builder(rules_dir)
    if not rules_dir.is_dir():
        raise InputError([Problem(str(rules_dir), None, "", "rules directory not found")])
    files = sorted(rules_dir.glob("*.yaml"))
    if not files:
        raise InputError([Problem(str(rules_dir), None, "", "no rule files (*.yaml) found")])
    for path in files:
        b.load_category(path)
    if b.problems:
        raise InputError(b.problems)
    rs = b.finish()
    rs.load_seconds = time.perf_counter() - start
    return rs
