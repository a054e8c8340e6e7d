"""``cipa-proxy lists update|import|stats``: keep the category lists current.

``update`` replaces ``rules/lists/ut1/`` from the UT1 ``blacklists.tar.gz``
(``lists.source`` in config.yaml: a URL or a local file) in steps that each
refuse a bad archive before anything changes:

1. fetch (size limit ``lists.max_archive_bytes``) next to the lists;
2. read the whole compressed stream to its end (gzip checks its CRC and length
   there: a truncated or corrupt download is refused);
3. read every tar member: absolute names, ``..``, hard links, devices, FIFOs,
   sparse files and members over ``lists.max_member_bytes`` (or a total over
   ``lists.max_total_bytes``) refuse the archive. Symbolic links are never
   extracted nor followed; the category aliases UT1 ships at the top level
   (``blacklists/porn -> adult``) are skipped, any other link refuses it;
4. extract only ``domains`` and ``urls`` of the categories the rules include
   (``--categories`` to choose) into ``rules/lists/.ut1.new-PID`` beside the
   old directory (unchanged files are hard-linked);
5. compile the whole rule set against the new lists (``load_rules`` with an
   overlay), which also writes the index cache the proxy will want; refuse
   lists that are mostly garbage or shrank below ``lists.min_keep_ratio`` of
   their old size (``--force`` accepts the shrink);
6. swap the directories in one atomic ``renameat2(RENAME_EXCHANGE)``; the old
   lists stay in ``rules/lists/.ut1.previous`` (``lists update --rollback``
   swaps them back). A running proxy sees the changed files and reloads.

``import`` turns a hosts file, an adblock list or a plain list into a
squidGuard list under ``rules/lists/local/<category>/`` and includes it.
``stats`` prints entries per category and source, the index and its age.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import ctypes
import errno
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .canonical import Malformed
from .config import Config
from .lists import parse_domain, parse_url
from .yamlpos import InputError

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
UT1 = "ut1"
LIST_FILES = ("domains", "urls")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CHUNK = 1 << 20


class Refused(Exception):
    """The archive (or the lists in it) cannot be used; nothing was changed."""


# ---------------------------------------------------------------------------- output


class Progress:
    """A progress bar on a terminal; plain log lines (start and end) otherwise."""

    def __init__(self, label: str, total: int | None, stream=None):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self._last = 0.0
        if not self.tty:
            size = f" ({_mb(total)})" if total else ""
            print(f"lists: {label}{size} ...", file=self.stream, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            text = f"\r{self.label} [{bar:<30}] {frac:4.0%} {_mb(self.done)}/{_mb(self.total)}"
        else:
            text = f"\r{self.label} {_mb(self.done)}"
        self.stream.write(text)
        self.stream.flush()

    def finish(self, note: str = "") -> None:
        secs = time.monotonic() - self.start
        if self.tty:
            self.stream.write("\r\x1b[K")
        print(
            f"lists: {self.label}: {_mb(self.done) if self.done else 'done'} in {secs:.1f}s"
            + (f"; {note}" if note else ""),
            file=self.stream,
            flush=True,
        )


def _mb(n: int | None) -> str:
    return f"{(n or 0) / 1e6:.1f} MB"


def _say(text: str) -> None:
    print(f"lists: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- fetch and verify


def fetch(source: str, directory: Path, limit: int) -> tuple[Path, bool]:
    """The archive as a local file: (path, is_temporary)."""
    if not re.match(r"(?i)https?://", source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise Refused(f"source {source}: no such file")
        if path.stat().st_size > limit:
            raise Refused(
                f"source {source} is {_mb(path.stat().st_size)}, over lists.max_archive_bytes ({_mb(limit)})"
            )
        return path, False
    fd, tmp = tempfile.mkstemp(prefix=".ut1-download-", suffix=".tar.gz", dir=directory)
    req = urllib.request.Request(source, headers={"User-Agent": "cipa-proxy lists update"})
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            if total and total > limit:
                raise Refused(
                    f"{source} is {_mb(total)}, over lists.max_archive_bytes ({_mb(limit)})"
                )
            bar = Progress(f"download {source}", total)
            got = 0
            while chunk := resp.read(_CHUNK):
                got += len(chunk)
                if got > limit:
                    raise Refused(f"{source}: more than lists.max_archive_bytes ({_mb(limit)})")
                out.write(chunk)
                bar.update(len(chunk))
            if total and got != total:
                raise Refused(f"{source}: download ended after {got} of {total} bytes")
            bar.finish()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise Refused(f"cannot download {source}: {exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp), True


def _opener(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open, "gzip"
    if magic.startswith(b"BZh"):
        return bz2.open, "bzip2"
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open, "xz"
    return open, "tar"


def verify_stream(path: Path, max_total: int) -> str:
    """Read the whole (compressed) archive to its end; returns its SHA-256.

    gzip, bzip2 and xz check their own end-of-stream records and checksums, so a
    truncated or damaged download fails here, before any tar header is trusted.
    """
    opener, kind = _opener(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    bar = Progress("verify archive", size)
    try:
        with open(path, "rb") as raw:
            raw_pos = 0
            total = 0
            with contextlib.nullcontext(raw) if kind == "tar" else opener(raw, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    total += len(chunk)
                    if total > max_total:
                        raise Refused(
                            f"archive unpacks to more than lists.max_total_bytes ({_mb(max_total)})"
                        )
                    pos = raw.tell()
                    bar.update(pos - raw_pos)
                    raw_pos = pos
        with open(path, "rb") as raw:
            while chunk := raw.read(_CHUNK):
                digest.update(chunk)
    except Refused:
        raise
    except (EOFError, OSError, zlib_error(), lzma.LZMAError) as exc:
        raise Refused(f"the archive is incomplete or corrupt ({kind}: {exc})") from None
    bar.finish(f"{kind}, {_mb(total)} unpacked")
    return digest.hexdigest()


def zlib_error():
    import zlib

    return zlib.error


@dataclass
class ArchiveScan:
    files: dict[tuple[str, str], tarfile.TarInfo] = field(default_factory=dict)  # (cat, name)
    categories: set[str] = field(default_factory=set)
    aliases: dict[str, str] = field(default_factory=dict)
    license: tarfile.TarInfo | None = None
    members: int = 0


def _member_path(name: str) -> list[str]:
    if "\\" in name or "\x00" in name:
        raise Refused(f"archive member {name!r}: unusual characters in the name")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise Refused(f"archive member {name!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused(f"archive member {name!r}: '..' in the path (path traversal)")
    return parts


def check_member(m: tarfile.TarInfo, scan: ArchiveScan, max_member: int) -> tuple[str, str] | None:
    """Refuse what must never be extracted; return (category, file) for a list file."""
    parts = _member_path(m.name)
    scan.members += 1
    if m.issym():
        target = m.linkname
        if (
            len(parts) == 2
            and parts[0] == "blacklists"
            and _NAME.fullmatch(target or "")
            and ".." not in target
        ):
            scan.aliases[parts[1]] = target  # UT1's category aliases: skipped, never followed
            return None
        raise Refused(f"archive member {m.name!r}: symbolic link to {m.linkname!r}")
    if m.islnk():
        raise Refused(f"archive member {m.name!r}: hard link to {m.linkname!r}")
    if m.isdir():
        return None
    if not m.isreg() or m.issparse():
        raise Refused(f"archive member {m.name!r}: not a regular file (device, FIFO or sparse)")
    if m.size > max_member:
        raise Refused(
            f"archive member {m.name!r} is {_mb(m.size)}, over lists.max_member_bytes ({_mb(max_member)})"
        )
    if len(parts) == 2 and parts[0] == "blacklists" and parts[1] == "LICENSE.pdf":
        scan.license = m
        return None
    if len(parts) == 3 and parts[0] == "blacklists" and parts[2] in LIST_FILES:
        if not _NAME.fullmatch(parts[1]):
            raise Refused(f"archive member {m.name!r}: unusual category name")
        scan.categories.add(parts[1])
        return parts[1], parts[2]
    return None


def _copy_member(tf: tarfile.TarFile, m: tarfile.TarInfo, dest: Path) -> None:
    src = tf.extractfile(m)
    if src is None:
        raise Refused(f"archive member {m.name!r} cannot be read")
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with src, open(dest, "wb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > m.size:
                raise Refused(f"archive member {m.name!r} is longer than its header says")
            out.write(chunk)
    if written != m.size:
        raise Refused(f"archive member {m.name!r} is truncated ({written} of {m.size} bytes)")


def extract(
    path: Path, wanted: set[str] | None, new_dir: Path, max_member: int, max_total: int
) -> ArchiveScan:
    """Check every member, extract the wanted categories' list files into ``new_dir``."""
    scan = ArchiveScan()
    total = 0
    bar = Progress("check and extract", path.stat().st_size)
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tf:
            last = 0
            for m in tf:
                where = check_member(m, scan, max_member)
                total += max(m.size, 0)
                if total > max_total:
                    raise Refused(
                        f"archive unpacks to more than lists.max_total_bytes ({_mb(max_total)})"
                    )
                if where is not None and (wanted is None or where[0] in wanted):
                    _copy_member(tf, m, new_dir / where[0] / where[1])
                elif m is scan.license:
                    _copy_member(tf, m, new_dir / "LICENSE.pdf")
                pos = raw.tell()
                bar.update(pos - last)
                last = pos
    except Refused:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib_error(), lzma.LZMAError) as exc:
        raise Refused(f"the archive is not a complete tar file: {exc}") from None
    if not scan.categories:
        raise Refused("not a UT1 archive: no blacklists/<category>/domains or urls in it")
    bar.finish(f"{scan.members} members, {len(scan.categories)} categories")
    return scan


# ---------------------------------------------------------------------------- the swap


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a))


def swap_in(new_dir: Path, target: Path, previous: Path) -> None:
    """Make ``new_dir`` the ``target``; the old target ends up as ``previous``."""
    if previous.exists():
        shutil.rmtree(previous)
    if not target.exists():
        new_dir.rename(target)
        return
    if _renameat2_exchange(new_dir, target):
        new_dir.rename(previous)  # new_dir now holds the old lists
        return
    target.rename(previous)  # no atomic exchange here: two renames, microseconds apart
    new_dir.rename(target)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _count_lines(path: Path) -> int:
    n = 0
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            n += chunk.count(b"\n")
    return n


def used_categories(rules_dir: Path) -> set[str]:
    """UT1 categories that some rule includes (``include`` or ``include_if_present``)."""
    from .rules import plan_rules

    base = (rules_dir / "lists" / UT1).resolve()
    found = set()
    for inc in plan_rules(rules_dir).includes:
        nominal = (rules_dir / inc.rel).resolve()
        with contextlib.suppress(ValueError):
            found.add(nominal.relative_to(base).parts[0])
    return found


def update(
    cfg: Config,
    source: str | None = None,
    categories: list[str] | None = None,
    force: bool = False,
) -> int:
    from .rules import load_rules

    rules_dir = cfg.rules_dir
    lists_dir = rules_dir / "lists"
    target = lists_dir / UT1
    previous = lists_dir / f".{UT1}.previous"
    source = source or cfg.lists.source
    lists_dir.mkdir(parents=True, exist_ok=True)
    with _lock(lists_dir / f".{UT1}.lock"):
        wanted = set(categories) if categories else used_categories(rules_dir)
        if not wanted:
            raise Refused("no rule includes a list under lists/ut1/ (and no --categories given)")
        archive, temporary = fetch(source, lists_dir, cfg.lists.max_archive_bytes)
        new_dir = Path(tempfile.mkdtemp(prefix=f".{UT1}.new-", dir=lists_dir))
        os.chmod(new_dir, 0o755)
        try:
            sha = verify_stream(archive, cfg.lists.max_total_bytes)
            scan = extract(
                archive, wanted, new_dir, cfg.lists.max_member_bytes, cfg.lists.max_total_bytes
            )
            got = sorted(wanted & scan.categories)
            missing = sorted(wanted - scan.categories)
            if not got:
                raise Refused(f"the archive has none of the categories wanted: {sorted(wanted)}")
            for cat in missing:
                _say(f"warning: category {cat!r} is not in the archive: its old lists are kept")
            if scan.aliases:
                _say(
                    "skipped symbolic links (UT1 category aliases): "
                    + ", ".join(f"{a} -> {t}" for a, t in sorted(scan.aliases.items()))
                )
            # Everything the new directory does not replace comes from the old one.
            if target.is_dir():
                for old in sorted(target.rglob("*")):
                    rel = old.relative_to(target)
                    if old.is_dir() or rel.name == ".update.json":
                        continue
                    if not (new_dir / rel).exists():
                        _link_or_copy(old, new_dir / rel)
            shrunk = []
            for cat in got:
                for name in LIST_FILES:
                    new, old = new_dir / cat / name, target / cat / name
                    if new.is_file() and old.is_file():
                        a, b = _count_lines(old), _count_lines(new)
                        if a >= 100 and b < a * cfg.lists.min_keep_ratio:
                            shrunk.append(f"{cat}/{name}: {a} -> {b} lines")
            if shrunk and not force:
                raise Refused(
                    "lists shrank below lists.min_keep_ratio "
                    f"({cfg.lists.min_keep_ratio:.0%}) of their old size (use --force if that is right): "
                    + "; ".join(shrunk)
                )
            start = time.monotonic()
            _say("compiling the rules with the new lists ...")
            try:
                rs = load_rules(rules_dir, cfg.lists.cache_dir, overlay={f"lists/{UT1}": new_dir})
            except InputError as exc:
                raise Refused(
                    "the rules do not compile with the new lists: "
                    + "; ".join(str(p) for p in exc.problems[:10])
                ) from None
            bad = [
                f"{s.file}: {s.ignored} of {s.entries + s.ignored} lines unusable"
                for s in rs.sources
                if f"/{UT1}/" in s.file and s.ignored > max(10, s.entries)
            ]
            if bad:
                raise Refused("new lists are mostly garbage: " + "; ".join(bad))
            entries = {s.file: s.entries for s in rs.sources if f"/{UT1}/" in s.file and s.present}
            _say(
                f"compiled: {sum(i.entries for i in rs.categories.values())} entries in "
                f"{time.monotonic() - start:.1f}s (index {_mb(rs.index_bytes)})"
            )
            (new_dir / ".update.json").write_text(
                json.dumps(
                    {
                        "source": source,
                        "sha256": sha,
                        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "categories": got,
                        "entries": entries,
                    },
                    indent=1,
                )
                + "\n"
            )
            swap_in(new_dir, target, previous)
        except BaseException:
            shutil.rmtree(new_dir, ignore_errors=True)
            raise
        finally:
            if temporary:
                archive.unlink(missing_ok=True)
    _say(
        f"updated {len(got)} categor{'y' if len(got) == 1 else 'ies'} from {source}: {', '.join(got)}; "
        f"previous lists kept in {previous} (lists update --rollback)"
    )
    return EXIT_OK


def rollback(cfg: Config) -> int:
    lists_dir = cfg.rules_dir / "lists"
    target, previous = lists_dir / UT1, lists_dir / f".{UT1}.previous"
    with _lock(lists_dir / f".{UT1}.lock"):
        if not previous.is_dir():
            raise Refused(f"no previous lists to go back to ({previous} does not exist)")
        if not _renameat2_exchange(previous, target):
            tmp = lists_dir / f".{UT1}.swap-{os.getpid()}"
            target.rename(tmp)
            previous.rename(target)
            tmp.rename(previous)
    _say(f"rolled back: {target} holds the previous lists again (the newer ones are in {previous})")
    return EXIT_OK


@contextlib.contextmanager
def _lock(path: Path):
    import fcntl

    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Refused("another `lists update` is running") from None
        yield


# ---------------------------------------------------------------------------- import

HOSTS_SKIP = frozenset(
    [
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    ]
)
_HOSTNAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\]")
_ADBLOCK = re.compile(r"\|\|([^\^/$*|]+)\^\|?")


def convert(lines: list[str], fmt: str) -> tuple[list[str], list[tuple[int, str, str]], int]:
    """(entries, rejected (line, text, why), duplicates) of a list in ``fmt``."""
    entries: list[str] = []
    seen: set[str] = set()
    rejected: list[tuple[int, str, str]] = []
    dups = 0
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip().lstrip("\ufeff")
        if not line:
            continue
        if fmt == "adblock":
            if line[0] in "![" or line.startswith("#"):
                continue
            if line.startswith("@@"):
                rejected.append((lineno, line, "exception rule: add an allow entry instead"))
                continue
            m = _ADBLOCK.fullmatch(line)
            if not m:
                why = "has options ($...)" if "$" in line else "not a ||domain^ rule"
                rejected.append((lineno, line, why))
                continue
            names = [m.group(1)]
        else:
            if line.startswith("#"):
                continue
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if fmt == "hosts":
                fields = line.split()
                if len(fields) < 2:
                    rejected.append((lineno, line, "expected 'address name [name...]'"))
                    continue
                names = [n for n in fields[1:] if n.lower() not in HOSTS_SKIP]
                if not names:
                    continue
            else:
                names = [line]
        for name in names:
            try:
                if fmt == "urls":
                    host, path = parse_url(name)
                    entry = host + (path if path != "/" else "")
                else:
                    entry = parse_domain(name)
            except Malformed as exc:
                rejected.append((lineno, name, str(exc)))
                continue
            if not _HOSTNAME.fullmatch(entry.split("/", 1)[0]):
                rejected.append((lineno, name, "not a host name"))
                continue
            if entry in seen:
                dups += 1
                continue
            seen.add(entry)
            entries.append(entry)
    return entries, rejected, dups


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def add_include(yaml_path: Path, rel: str) -> bool:
    """Add ``rel`` to the rule file's ``include:`` list, keeping its comments; False if there."""
    import yaml

    text = yaml_path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if rel in (data.get("include") or []):
        return False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"include:\s*(\[.*\])?\s*(#.*)?$", line)
        if not m:
            continue
        if m.group(1) is not None:  # flow style: include: [a, b]
            items = yaml.safe_load(m.group(1)) or []
            lines[i : i + 1] = ["include:"] + [f"  - {x}" for x in [*items, rel]]
        else:
            j = i + 1
            while j < len(lines) and re.match(r"\s+-\s|\s*#|\s*$", lines[j]):
                j += 1
            while j > i + 1 and not re.match(r"\s+-\s", lines[j - 1]):
                j -= 1
            lines.insert(j, f"  - {rel}")
        break
    else:
        lines += ["", "include:", f"  - {rel}"]
    _atomic_write(yaml_path, "\n".join(lines) + "\n")
    return True


def import_list(cfg: Config, file: Path, category: str, fmt: str, name: str | None) -> int:
    from .rules import load_rules

    if not re.fullmatch(r"[a-z0-9_-]+", category):
        raise Refused(f"category name {category!r}: use lower-case letters, digits, '-' and '_'")
    kind = "urls" if fmt == "urls" else "domains"
    stem = name or re.sub(r"[^A-Za-z0-9_-]+", "-", file.name.split(".")[0]).strip("-").lower()
    if not stem:
        raise Refused("cannot make a list name from the file name: give --name")
    text = file.read_bytes().decode("utf-8", errors="replace")
    entries, rejected, dups = convert(text.splitlines(), fmt)
    print(
        f"{file}: {len(entries)} entries accepted, {len(rejected)} lines rejected, "
        f"{dups} duplicates dropped ({fmt} -> {kind})"
    )
    for lineno, line, why in rejected[:10]:
        print(f"  rejected {file.name}:{lineno}: {line[:80]!r}: {why}")
    if len(rejected) > 10:
        print(f"  ... and {len(rejected) - 10} more")
    if not entries:
        raise Refused("nothing to import")
    rules_dir = cfg.rules_dir
    rel = f"lists/local/{category}/{stem}.{kind}"
    out = rules_dir / rel
    yaml_path = rules_dir / f"{category}.yaml"
    old_list = out.read_bytes() if out.exists() else None
    old_yaml = yaml_path.read_bytes() if yaml_path.exists() else None
    header = (
        f"# imported by `cipa-proxy lists import` from {file.name} ({fmt}) on "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {len(entries)} entries.\n"
        "# Re-run the import to replace it; keep the source's licence terms with it.\n"
    )
    if fmt == "hosts":
        header += "# hosts entries are domain entries here: they also cover subdomains.\n"
    _atomic_write(out, header + "\n".join(entries) + "\n")
    try:
        if old_yaml is None:
            _atomic_write(
                yaml_path,
                f"# {category}: imported with `cipa-proxy lists import`. Name it in a policy's\n"
                f"# block (or allow) list in config.yaml to use it.\n"
                f"category: {category}\ndescription: Imported list ({category})\n"
                f"include:\n  - {rel}\n",
            )
            print(f"created {yaml_path} (add {category!r} to a policy in config.yaml to use it)")
        elif add_include(yaml_path, rel):
            print(f"added {rel} to include: in {yaml_path}")
        rs = load_rules(rules_dir, cfg.lists.cache_dir)
    except BaseException as exc:
        for path, old in ((out, old_list), (yaml_path, old_yaml)):
            if old is None:
                path.unlink(missing_ok=True)
            else:
                _atomic_write(path, old.decode("utf-8"))
        if isinstance(exc, InputError):
            raise Refused(
                "the rules do not compile with the import (undone): "
                + "; ".join(str(p) for p in exc.problems[:5])
            ) from None
        raise
    info = rs.categories.get(category)
    print(f"wrote {out}; category {category} now has {info.entries if info else 0} entries")
    return EXIT_OK


# ---------------------------------------------------------------------------- stats


def stats(cfg: Config) -> int:
    from .rules import load_rules

    rs = load_rules(cfg.rules_dir, cfg.lists.cache_dir)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rs.built_at)) if rs.built_at else "?"
    where = str(rs.index_path) if rs.index_path else "in memory (no lists.cache_dir)"
    print(
        f"index: {where}, {_mb(rs.index_bytes)}, {len(rs.domains)} names; built {when} in "
        f"{rs.build_seconds:.1f}s; key {rs.key[:12]}; loaded in {rs.load_seconds:.2f}s"
    )
    print(
        f"{'category':20} {'kind':7} {'entries':>9} {'ignored':>7} {'size':>9}  {'date':16} source"
    )
    for s in rs.sources:
        date = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.mtime)) if s.mtime else ""
        size = (_mb(s.bytes) if s.bytes >= 1e6 else f"{s.bytes / 1e3:.1f} kB") if s.bytes else ""
        entries = s.entries if s.present else "absent"
        print(
            f"{s.category:20} {s.kind:7} {entries:>9} {s.ignored:7d} {size:>9}  {date:16} {s.file}"
        )
    totals = {
        "domains": sum(i.domains for i in rs.categories.values()),
        "urls": sum(i.urls for i in rs.categories.values()),
        "patterns": sum(i.patterns for i in rs.categories.values()),
    }
    print(
        f"total: {len(rs.categories)} categories, {totals['domains']} domain entries "
        f"({len(rs.domains)} distinct names), {totals['urls']} urls, {totals['patterns']} patterns"
    )
    meta = cfg.rules_dir / "lists" / UT1 / ".update.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        print(
            f"UT1: updated {m.get('updated')} from {m.get('source')} (sha256 {str(m.get('sha256'))[:16]}...), "
            f"categories: {', '.join(m.get('categories', []))}"
        )
    else:
        print("UT1: the lists shipped with cipa-proxy (no `lists update` yet)")
    return EXIT_OK


# ---------------------------------------------------------------------------- commands


def cmd_lists(args: argparse.Namespace) -> int:
    from .cli import load

    cfg = load(args)
    try:
        if args.lists_command == "update":
            if args.rollback:
                return rollback(cfg)
            cats = [c for item in args.categories or [] for c in item.split(",") if c]
            return update(cfg, args.source, cats or None, args.force)
        if args.lists_command == "import":
            return import_list(cfg, Path(args.file), args.category, args.format, args.name)
        return stats(cfg)
    except Refused as exc:
        print(f"cipa-proxy lists {args.lists_command}: refused: {exc}", file=sys.stderr)
        print("nothing was changed", file=sys.stderr)
        return EXIT_PROBLEMS


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``lists update|import|stats`` to the top-level parser."""
    p = subparsers.add_parser(
        "lists",
        help="category lists: update UT1, import other lists, statistics",
        description="Keep the category lists current (UT1 blacklists, CC BY-SA 4.0, "
        "Université Toulouse Capitole).",
    )
    sub = p.add_subparsers(dest="lists_command", required=True, metavar="COMMAND")
    q = sub.add_parser(
        "update", help="fetch the UT1 tarball, check it, and swap the new lists in atomically"
    )
    q.add_argument("--source", default=None, help="URL or file (default: lists.source)")
    q.add_argument(
        "--categories", nargs="+", default=None, metavar="CAT",
        help="UT1 categories to update (default: those the rules include)",
    )  # fmt: skip
    q.add_argument("--force", action="store_true", help="accept lists that shrank a lot")
    q.add_argument(
        "--rollback", action="store_true", help="swap the previous lists back in and stop"
    )
    q.set_defaults(func=cmd_lists)
    q = sub.add_parser("import", help="convert a hosts/adblock/plain list into a category list")
    q.add_argument("file")
    q.add_argument("--category", required=True, help="the category (rules/<category>.yaml)")
    q.add_argument("--format", choices=("domains", "urls", "hosts", "adblock"), required=True)
    q.add_argument("--name", default=None, help="list name (default: from the file name)")
    q.set_defaults(func=cmd_lists)
    q = sub.add_parser("stats", help="entries per category and source, index size and age")
    q.set_defaults(func=cmd_lists)


__all__ = ["Refused", "convert", "register", "update"]
