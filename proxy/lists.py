"""Plain-text category lists in the squidGuard / UT1 format.

One entry per line; ``#`` starts a comment; blank lines, CRLF line ends, a
UTF-8 BOM and duplicates are tolerated. A garbage line is reported with its
file and line but never spoils the rest of the list: one bad line in a
130,000-line list must not leave a category unenforced.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .canonical import Malformed, canonical_host, canonical_path

# Most list lines are already canonical host names; checking that with one
# regex is far cheaper than the full host parser, and keeps load time low.
_PLAIN_HOST = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.)*[a-z][a-z0-9-]*[a-z0-9]")


@dataclass(frozen=True, slots=True)
class Garbage:
    """A list line that could not be used, kept for `lint`."""

    file: str
    line: int
    text: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: ignored {self.text!r}: {self.why}"


def list_kind(path: Path) -> str | None:
    """'domains' or 'urls' from the file name, as squidGuard's dest blocks name them."""
    name = path.name
    for kind in ("domains", "urls"):
        if name == kind or name.endswith("." + kind) or name.endswith("_" + kind):
            return kind
    return None


def read_lines(path: Path) -> list[str]:
    """The file's lines (UTF-8, a BOM dropped, undecodable bytes replaced), line 1 first."""
    with path.open("rb") as fh:
        data = fh.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="replace").splitlines()


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    for lineno, raw in enumerate(read_lines(path), 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        if "#" in line:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
        yield lineno, line


def parse_domain(text: str) -> str:
    """Canonical form of a domain entry; raises Malformed for garbage."""
    entry = text.lower()
    if entry.startswith("*."):
        entry = entry[2:]  # "*.example.com" means what "example.com" already means
    elif entry.startswith("."):
        entry = entry[1:]  # squid's ".example.com" dstdomain form
    if _PLAIN_HOST.fullmatch(entry):
        return entry
    if " " in entry or "/" in entry or "\t" in entry:
        raise Malformed(f"not a host name: {text!r}")
    return canonical_host(entry)


def parse_url(text: str) -> tuple[str, str]:
    """(canonical host, lower-case canonical path prefix) of a ``host/path`` entry."""
    entry = text.strip()
    low = entry.lower()
    for scheme in ("http://", "https://"):
        if low.startswith(scheme):
            entry = entry[len(scheme) :]
            break
    host, slash, path = entry.partition("/")
    if not slash:
        path = ""
    if " " in entry or "\t" in entry:
        raise Malformed(f"not a URL: {text!r}")
    if "@" in host:
        host = host.rsplit("@", 1)[1]
    if ":" in host and not host.startswith("["):
        host = host.split(":", 1)[0]
    return parse_domain(host), canonical_path("/" + path).lower()


def read_domains(path: Path, display: str, add, garbage: list[Garbage]) -> int:
    """``add(line, host)`` for every good line of a domain list; the same lines, entries and
    garbage as ``read_list(path, display, "domains")``, without a generator (millions of lines).
    Returns the number of good lines."""
    plain = _PLAIN_HOST.fullmatch
    count = 0
    for lineno, raw in enumerate(read_lines(path), 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        if "#" in line:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
        entry = line.lower()
        if plain(entry) is None:
            try:
                entry = parse_domain(line)
            except Malformed as exc:
                garbage.append(Garbage(display, lineno, line, str(exc)))
                continue
        add(lineno, entry)
        count += 1
    return count


def read_list(path: Path, display: str, kind: str) -> Iterator[tuple[int, object] | Garbage]:
    """Yield ``(line, entry)`` for good lines and ``Garbage`` for bad ones.

    ``entry`` is a host for domain lists and ``(host, path)`` for URL lists. The
    common line (an already canonical host name) takes a fast path that gives the
    same result as ``parse_domain``: lists of millions of names load in seconds.
    """
    parse = parse_domain if kind == "domains" else parse_url
    plain = _PLAIN_HOST.fullmatch if kind == "domains" else None
    for lineno, line in _lines(path):
        if plain is not None:
            entry = line.lower()
            if plain(entry):
                yield lineno, entry
                continue
        try:
            yield lineno, parse(line)
        except Malformed as exc:
            yield Garbage(display, lineno, line, str(exc))
