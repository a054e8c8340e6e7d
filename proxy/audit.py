"""Audit records: durable, tamper-evident JSON lines, and the readers behind ``audit``.

A district has to be able to show, in a disciplinary hearing or to an E-rate
auditor, what the filter saw and decided. So the writer favours completeness
and evidence over convenience:

* **Durable.** Each record is one ``os.write`` on an ``O_APPEND`` descriptor:
  once ``record()`` returns, the line is in the kernel and survives a killed
  process (only a power loss can take the last ``fsync_interval`` seconds).
  There is no user-space buffer and no queue that could die with the process.
* **Tamper-evident.** Every line carries ``prev``, the SHA-256 of the previous
  line's bytes. The first line of every file is a header record whose ``prev``
  is the hash of the last line of the previous file, so editing, deleting or
  reordering any line (or dropping a whole file in the middle) breaks the chain
  at a place :func:`verify` can name.
* **Rotated, compressed, retained.** One file per local day
  (``audit-YYYY-MM-DD.jsonl``; ``.N`` before ``.jsonl`` when ``max_bytes`` forces
  an extra file), gzipped in a background thread after rotation, deleted after
  ``retention_days``.
* **Never a crash, never silent.** Disk full or an unwritable directory makes
  ``record()`` return False, counts ``errors``, logs loudly on
  ``cipa.audit`` and flips ``healthy``; the proxy decides (``on_error``)
  whether unmonitored use is allowed.

The readers (:func:`iter_records`, :func:`verify`) stream plain and gzipped
files in constant memory, because a year of a district's traffic does not
fit in RAM.

Nothing here imports mitmproxy: the addon, the CLI and the tests all use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import heapq
import hmac
import json
import logging
import math
import os
import queue
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import orjson

if TYPE_CHECKING:  # only for type hints: the writer duck-types its config
    from .config import AuditConfig

log = logging.getLogger("cipa.audit")

FORMAT_VERSION = 1
FILE_RE = re.compile(r"^audit-(\d{4}-\d{2}-\d{2})(?:\.(\d+))?\.jsonl(\.gz)?$")
LOCK_NAME = ".lock"
DEFAULT_KEY_NAME = ".pseudonym.key"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_ERROR_LOG_EVERY = 10.0  # seconds between repeated "still failing" log lines


class AuditDirBusy(RuntimeError):
    """Another AuditLog (in this or another process) already writes this directory.

    Two writers on one directory would interleave two hash chains and make the
    whole trail fail verification, so this is refused at start-up: give every
    worker process its own ``audit.path``.
    """


# ---------------------------------------------------------------------- helpers


def _sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def _loads(line: bytes) -> Any:
    """orjson where it can (search scans millions of lines); json for what orjson refuses
    (escaped lone surrogates); None for a line that is not JSON."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            return json.loads(line)
        except ValueError:
            return None


def _dumps(obj: Mapping[str, Any]) -> bytes:
    """Compact, stable serialisation (orjson: a tenth of the stdlib encoder's time on the
    proxy's hot path, byte-identical output). Lone surrogates (from undecodable header
    bytes) are not valid UTF-8 for orjson: the stdlib encoder writes them as ``\\udcXX``."""
    try:
        return orjson.dumps(obj, default=str)
    except TypeError:
        return _ENCODER.encode(obj).encode("utf-8", "backslashreplace")


_iso_cache: tuple[int, str] = (-1, "")


def iso_utc(t: float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``: sorts as a string, which the
    search fast path relies on. The seconds part is cached (hot path)."""
    global _iso_cache
    sec = math.floor(t)
    ms = min(int((t - sec) * 1000), 999)
    cached_sec, prefix = _iso_cache
    if sec != cached_sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _iso_cache = (sec, prefix)
    return f"{prefix}.{ms:03d}Z"


def _ts_to_key(value: str | float | datetime) -> str:
    """Any accepted instant -> the comparable ``iso_utc`` string form."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return iso_utc(value.timestamp())
    if isinstance(value, int | float):
        return iso_utc(float(value))
    return _normalise_ts(value)


def _normalise_ts(ts: str) -> str:
    """A record's ts as the canonical string (fast when it already is one)."""
    if len(ts) == 24 and ts.endswith("Z") and ts[10] == "T":
        return ts
    try:
        dt = datetime.fromisoformat(ts)
    except ValueError:
        return ts
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return iso_utc(dt.timestamp())


def file_name(day: date, n: int = 0) -> str:
    """The file for a local day; ``n`` > 0 for extra files after a size rotation."""
    return f"audit-{day.isoformat()}.jsonl" if n == 0 else f"audit-{day.isoformat()}.{n}.jsonl"


def parse_file_name(name: str) -> tuple[date, int, bool] | None:
    """(day, n, gzipped) for an audit file name, None for anything else."""
    m = FILE_RE.match(name)
    if not m:
        return None
    try:
        day = date.fromisoformat(m.group(1))
    except ValueError:
        return None
    return day, int(m.group(2) or 0), bool(m.group(3))


def _keep(best: dict[tuple[date, int], Path], key: tuple[date, int], path: Path) -> None:
    """A plain file wins over its .gz twin: both exist only if a crash hit
    between compressing and unlinking, and the plain one is the original."""
    if key not in best or not path.name.endswith(".gz"):
        best[key] = path


def _dir_files(directory: Path) -> list[tuple[tuple[date, int], Path]]:
    """Audit files in a directory, chronologically, one per (day, n)."""
    best: dict[tuple[date, int], Path] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for e in entries:
        parsed = parse_file_name(e.name)
        if parsed is not None and e.is_file():
            _keep(best, (parsed[0], parsed[1]), Path(e.path))
    return sorted(best.items())


def audit_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories to their audit files and put everything in chronological order.

    Files whose names are not ``audit-*.jsonl[.gz]`` (copies, exports) keep the
    order they were given in and come after the recognised ones. A named file
    that does not exist raises FileNotFoundError: silently verifying nothing
    would look like success.
    """
    known: dict[tuple[date, int], Path] = {}
    other: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for key, fp in _dir_files(p):
                _keep(known, key, fp)
            continue
        if not p.exists():
            raise FileNotFoundError(errno.ENOENT, "no such audit file", str(p))
        parsed = parse_file_name(p.name)
        if parsed is None:
            other.append(p)
        else:
            _keep(known, (parsed[0], parsed[1]), p)
    return [known[k] for k in sorted(known)] + other


def _natural(name: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def chain_dirs(directory: str | Path, depth: int = 2) -> list[Path]:
    """The directories under an audit path that each hold one writer's hash chain.

    ``cipa-proxy run --workers N`` gives every worker process its own directory
    (``audit.path/worker-N``: one writer per directory), and a cluster may give
    every pod one; the path itself counts when it holds audit files (a single
    process, or files from before workers were used). Subdirectories are looked
    at ``depth`` levels down. A directory without any audit file is returned
    alone, so callers report "no audit files" as before.
    """
    directory = Path(directory)
    found: list[Path] = []

    def walk(d: Path, left: int) -> None:
        if _dir_files(d):
            found.append(d)
        if left <= 0:
            return
        try:
            subs = [
                Path(e.path) for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")
            ]
        except OSError:
            return
        for sub in sorted(subs, key=lambda p: _natural(p.name)):
            walk(sub, left - 1)

    walk(directory, depth)
    return found or [directory]


def split_chains(paths: Iterable[str | Path]) -> list[list[Path]]:
    """Group the given paths into chains: each chain directory alone, named files together."""
    chains: list[list[Path]] = []
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            chains.extend([d] for d in chain_dirs(p))
        else:
            files.append(p)
    return chains + ([files] if files else [])


def _open_read(path: Path) -> tuple[Any, Any]:
    """(raw file, decoded stream): the raw one reports progress in on-disk bytes."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if path.name.endswith(".gz"):
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    return raw, raw


def _read_tail(path: Path) -> tuple[bytes | None, int, int]:
    """(last complete line without its newline, offset just past it, file size).

    Reads backwards from the end of a plain file, so continuing a 1 GB file at
    start-up costs one small read.
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        pos, buf = size, b""
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            end = buf.rfind(b"\n")
            if end < 0:
                continue
            start = buf.rfind(b"\n", 0, end)
            if start >= 0 or pos == 0:
                return buf[start + 1 : end], pos + end + 1, size
        return None, 0, size


def _last_line(path: Path) -> bytes | None:
    """The last complete line of a plain or gzipped file."""
    if not path.name.endswith(".gz"):
        return _read_tail(path)[0]
    last = None
    with gzip.open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                last = line[:-1]
    return last


def load_pseudonym_key(path: Path, create: bool = True) -> bytes:
    """The HMAC key for pseudonyms; created (0600, 32 random bytes) if missing.

    The key, not the algorithm, is what keeps a pseudonym from being reversed
    by hashing every address in the district's ranges, so it is never logged
    and only its owner can read it.
    """
    path = Path(path)
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, secrets.token_bytes(32))
                os.fsync(fd)
            finally:
                os.close(fd)
            log.warning("created pseudonym key %s (keep it: without it pseudonyms change)", path)
    key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"pseudonym key {path} is shorter than 16 bytes")
    return key


def pseudonym_key_path(cfg: AuditConfig) -> Path:
    """Where the pseudonym key lives: ``audit.pseudonym_key_file``, else
    ``.pseudonym.key`` in the audit directory (outside the ``audit-*`` names
    that retention, export and log shipping touch)."""
    return Path(cfg.pseudonym_key_file or Path(cfg.path) / DEFAULT_KEY_NAME)


def pseudonym(key: bytes, value: str) -> str:
    """Keyed, stable pseudonym: the same person gets the same token every day,
    so a pattern is visible without naming anyone; ``ps-`` marks it as one."""
    return (
        "ps-"
        + hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:20]
    )


def strip_userinfo(url: str) -> str:
    """Drop ``user:password@`` from a URL: credentials never reach a record."""
    if "@" not in url:
        return url
    start = url.find("://")
    start = 0 if start < 0 else start + 3
    end = len(url)
    for ch in "/?#":
        i = url.find(ch, start)
        if 0 <= i < end:
            end = i
    at = url.rfind("@", start, end)
    return url if at < 0 else url[:start] + url[at + 1 :]


def redact_query(url: str) -> str:
    """Drop the query string and fragment (search terms, tokens, names)."""
    for ch in "?#":
        i = url.find(ch)
        if i >= 0:
            url = url[:i]
    return url


# ----------------------------------------------------------------------- writer


class AuditLog:
    """Append-only, hash-chained audit writer for one worker process.

    ``record()`` is called on the proxy's event loop, so everything it does is
    bounded and small: serialise, hash, one ``write``. Rotation opens the next
    file inline (microseconds) and hands fsync+close+gzip+retention of the old
    one to a background thread.
    """

    def __init__(self, cfg: AuditConfig, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.path)
        self._clock = clock
        self._tz = ZoneInfo(cfg.timezone)
        self._lock = threading.RLock()  # record/rotate/close
        self._fsync_lock = threading.Lock()  # guards the fd against close during fsync
        self._jobs: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._compressing: set[Path] = set()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._path: Path | None = None
        self._day: date | None = None
        self._n = 0
        self._size = 0
        self._last: str | None = None  # sha256 of the last line of the chain
        self._pending: bytes | None = None  # serialised header not yet on disk
        self._rotate_at = -math.inf
        self._dirty = False
        self._last_fsync = time.monotonic()
        self._stop = threading.Event()
        self._fsync_thread: threading.Thread | None = None
        self._key: bytes | None = None
        self._id_prefix = secrets.token_hex(4)
        self._id_seq = 0
        self._first_error_at: float | None = None
        self._last_error_log = 0.0
        self._closed = False
        self.healthy = True
        self.errors = 0
        self.records = 0
        self.dropped = 0  # allowed requests not logged because log_allowed is false
        with self._lock:
            try:
                self._open(self._clock(), force_new=False, reason="start")
            except AuditDirBusy:
                raise
            except Exception as exc:  # keep filtering; on_error decides the rest
                self._fail("open", exc)

    # -- properties the proxy reads

    @property
    def blocks_new_requests(self) -> bool:
        """True when the trail is broken and policy says unmonitored use must stop."""
        return not self.healthy and self.cfg.on_error == "block"

    @property
    def current_path(self) -> Path | None:
        """The file records go to now (None while the directory is unusable)."""
        return self._path

    # -- writing

    def record(self, rec: Mapping[str, Any]) -> bool:
        """Append one record; True when it is in the kernel (or deliberately not logged).

        Never raises: a proxy must keep filtering when its disk fills up. The
        caller checks ``blocks_new_requests`` to honour ``on_error``.
        """
        if not self.cfg.log_allowed and rec.get("action") == "allow":
            self.dropped += 1
            return True
        with self._lock:
            try:
                if self._closed:
                    raise OSError(errno.EBADF, "audit log is closed")
                now = self._clock()
                if now >= self._rotate_at and self._fd is not None:
                    self._maybe_midnight(now)
                if self._fd is None:
                    self._open(now, force_new=False, reason="reopen")
                out = self._prepare(rec, now)
                line = self._line(out)
                if self._size > 0 and self._size + len(line) + 1 > self.cfg.max_bytes:
                    self._rotate(now, "size")
                    line = self._line(out)  # prev is now the new file's header
                self._emit(line)
            except Exception as exc:
                self._fail("write", exc)
                return False
            self.records += 1
            if not self.healthy:
                self._recovered()
            return True

    def _prepare(self, rec: Mapping[str, Any], now: float) -> dict[str, Any]:
        """Apply the privacy options and fill ts/id; never mutates the caller's dict."""
        ts = rec.get("ts")
        if ts is None:
            ts = iso_utc(now)
        elif isinstance(ts, int | float):
            ts = iso_utc(float(ts))
        rid = rec.get("id")
        if not rid:
            self._id_seq += 1
            rid = f"{self._id_prefix}-{self._id_seq:x}"
        out: dict[str, Any] = {"ts": ts, "id": rid, **rec}  # ts, id keep the first places
        out["ts"], out["id"] = ts, rid
        out.pop("prev", None)
        url = out.get("url")
        if isinstance(url, str) and url:
            url = strip_userinfo(url)
            if self.cfg.redact_query:
                url = redact_query(url)
            out["url"] = url
        if self.cfg.pseudonymize:
            key = self._pseudonym_key()
            for k in ("client", "user"):
                v = out.get(k)
                if isinstance(v, str) and v:
                    out[k] = pseudonym(key, v)
        return out

    def _pseudonym_key(self) -> bytes:
        if self._key is None:
            self._key = load_pseudonym_key(pseudonym_key_path(self.cfg))
        return self._key

    def _line(self, out: dict[str, Any]) -> bytes:
        """Serialise with ``prev`` last, chained after any pending header."""
        prev = _sha(self._pending) if self._pending is not None else self._last
        out["prev"] = prev
        return _dumps(out)

    def _emit(self, line: bytes | None) -> None:
        """Write pending header + line in ONE write; commit chain state only on success."""
        parts = []
        if self._pending is not None:
            parts.append(self._pending)
        if line is not None:
            parts.append(line)
        if not parts or self._fd is None:
            return
        data = b"\n".join(parts) + b"\n"
        self._write_all(data)
        self._size += len(data)
        self._last = _sha(parts[-1])
        self._pending = None
        self._dirty = True

    def _write_all(self, data: bytes) -> None:
        """One os.write normally; a short write continues, and a failure after a
        short write truncates the torn tail so the next record starts on a clean line."""
        assert self._fd is not None
        view = memoryview(data)
        done = 0
        while done < len(data):
            try:
                n = os.write(self._fd, view[done:])
            except OSError:
                if done:
                    try:
                        os.ftruncate(self._fd, self._size)
                    except OSError:
                        # cannot repair in place: reopen later, which trims the torn line
                        self._close_fd()
                raise
            if n <= 0:
                raise OSError(errno.EIO, "write returned 0")
            done += n

    # -- opening and rotation

    def _local_day(self, t: float) -> date:
        return datetime.fromtimestamp(t, self._tz).date()

    def _next_midnight(self, t: float) -> float:
        d = self._local_day(t) + timedelta(days=1)
        return datetime(d.year, d.month, d.day, tzinfo=self._tz).timestamp()

    def _lock_dir(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditDirBusy(
                f"audit directory {self.dir} is already being written by another process or "
                "AuditLog; give each worker its own audit.path"
            ) from None
        self._lock_fd = fd

    def _open(self, now: float, *, force_new: bool, reason: str) -> None:
        """Open today's file: continue the newest one, or start a new one with a header.

        The chain state always comes from disk (or from memory when the file
        before is the one this writer just closed), so a restart, a crash or a
        failed rotation all continue the same chain.
        """
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._lock_dir()
        day = self._local_day(now)
        files = _dir_files(self.dir)
        same = [(key[1], p) for key, p in files if key[0] == day]
        path: Path | None = None
        n = 0
        header_needed = True
        if same:
            top_n, top_path = max(same)
            if not force_new and not top_path.name.endswith(".gz"):
                path, n = top_path, top_n
            else:
                n = top_n + 1
        if path is not None:
            last, good_end, size = _read_tail(path)
            if size > good_end:
                log.warning(
                    "audit: %s ends with an incomplete line (%d bytes, a write cut short by a "
                    "crash or full disk); removing it",
                    path,
                    size - good_end,
                )
                with open(path, "r+b") as f:
                    f.truncate(good_end)
            if last is not None:
                header_needed = False
                self._last = _sha(last)
        else:
            path = self.dir / file_name(day, n)
        pending = None
        if header_needed:
            pending = self._header(path, (day, n), files, now, reason)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        with self._fsync_lock:
            self._fd = fd
        self._path, self._day, self._n = path, day, n
        self._size = os.fstat(fd).st_size
        self._rotate_at = self._next_midnight(now)
        self._pending = pending
        stale = [p for key, p in files if key < (day, n) and p.name.endswith(".jsonl")]
        self._housekeep(stale, day)
        if pending is not None:
            self._emit(None)

    def _header(
        self,
        path: Path,
        key: tuple[date, int],
        files: list[tuple[tuple[date, int], Path]],
        now: float,
        reason: str,
    ) -> bytes:
        """The first line of a file: names the file before it and chains from its last line."""
        before = [p for k, p in files if k < key]
        prev_path = before[-1] if before else None
        prev: str | None = None
        hdr: dict[str, Any] = {
            "ts": iso_utc(now),
            "type": "header",
            "file": path.name,
            "prev_file": prev_path.name if prev_path else None,
            "reason": reason,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "tz": self.cfg.timezone,
            "format": FORMAT_VERSION,
        }
        if prev_path is not None:
            if prev_path == self._path and self._last is not None:
                prev = self._last
            else:
                try:
                    last = _last_line(prev_path)
                    prev = _sha(last) if last is not None else None
                    if last is None:
                        hdr["prev_error"] = "previous file has no complete line"
                except (OSError, EOFError, gzip.BadGzipFile) as exc:
                    hdr["prev_error"] = f"cannot read previous file: {exc}"
                    log.error("audit: cannot read %s to chain from it: %s", prev_path, exc)
        hdr["prev"] = prev
        self._last = prev
        return _dumps(hdr)

    def _maybe_midnight(self, now: float) -> None:
        if self._local_day(now) != self._day:
            self._rotate(now, "midnight")
        else:  # DST or a clock step: recompute and carry on
            self._rotate_at = self._next_midnight(now)

    def _rotate(self, now: float, reason: str) -> None:
        """Close the current file (fsync+close in the background) and open the next one."""
        with self._fsync_lock:
            old_fd, self._fd = self._fd, None
        if old_fd is not None:
            self._background(self._finish_fd, old_fd)
        self._open(now, force_new=True, reason=reason)

    def _close_fd(self) -> None:
        with self._fsync_lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- background work: fsync+close old fds, gzip, retention

    def _background(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue work for the one housekeeping thread: jobs run in order, so the
        old descriptor is fsynced and closed before its file is compressed."""
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(
                target=self._work, name="cipa-audit-housekeeping", daemon=True
            )
            self._worker.start()
        self._jobs.put((fn, args))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                fn, args = job
                fn(*args)
            except Exception:
                log.exception("audit: background housekeeping failed")
            finally:
                self._jobs.task_done()

    def _finish_fd(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            self._fail("fsync", exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _housekeep(self, stale: list[Path], today: date) -> None:
        todo = [p for p in stale if p not in self._compressing and p != self._path]
        self._compressing.update(todo)
        self._background(self._compress_and_expire, todo, today)

    def _expired(self, day: date, today: date) -> bool:
        return (today - day).days > self.cfg.retention_days

    def _compress_and_expire(self, todo: list[Path], today: date) -> None:
        for tmp in self.dir.glob("audit-*.jsonl.gz.tmp"):  # a compress cut short by a crash
            with contextlib.suppress(OSError):
                tmp.unlink()
        try:
            for p in todo:
                parsed = parse_file_name(p.name)
                if parsed and self._expired(parsed[0], today):
                    continue  # the sweep below deletes it
                try:
                    gzip_file(p)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.error("audit: cannot compress %s: %s (left uncompressed)", p, exc)
        finally:
            self._compressing.difference_update(todo)
        for entry in os.scandir(self.dir):
            parsed = parse_file_name(entry.name)
            if (
                parsed is None
                or not self._expired(parsed[0], today)
                or Path(entry.path) == self._path
            ):
                continue
            try:
                os.unlink(entry.path)
                log.info(
                    "audit: deleted %s (older than %d days)", entry.path, self.cfg.retention_days
                )
            except OSError as exc:
                log.error("audit: cannot delete expired %s: %s", entry.path, exc)

    def wait_idle(self) -> None:
        """Wait until background fsync/compression/retention work is done (tests, shutdown)."""
        if self._worker is not None and self._worker.is_alive():
            self._jobs.join()

    # -- fsync

    def maybe_fsync(self, force: bool = False) -> None:
        """fsync if ``fsync_interval`` has elapsed and something was written.

        Runs on the fsync thread (or the caller's timer); it never takes the
        record lock, so a slow disk flush does not hold up the event loop.
        """
        if not self._dirty:
            return
        now = time.monotonic()
        if not force and now - self._last_fsync < self.cfg.fsync_interval:
            return
        failure = None
        with self._fsync_lock:
            fd = self._fd
            if fd is None:
                return
            self._dirty = False
            self._last_fsync = now
            try:
                os.fsync(fd)
            except OSError as exc:
                failure = exc
        if failure is not None:
            with self._lock:
                self._fail("fsync", failure)

    def start_fsync_thread(self) -> threading.Thread:
        """A daemon thread calling maybe_fsync every ``fsync_interval``; stopped by close()."""
        if self._fsync_thread is not None and self._fsync_thread.is_alive():
            return self._fsync_thread
        interval = max(0.01, float(self.cfg.fsync_interval))

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.maybe_fsync()
                except Exception:
                    log.exception("audit: fsync thread")

        t = threading.Thread(target=loop, name="cipa-audit-fsync", daemon=True)
        self._fsync_thread = t
        t.start()
        return t

    def close(self) -> None:
        """Flush (fsync) and close; waits for background compression. Idempotent."""
        self._stop.set()
        if self._fsync_thread is not None:
            self._fsync_thread.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._pending is not None and self._fd is not None:
                with contextlib.suppress(OSError):
                    self._emit(None)
            with self._fsync_lock:
                fd, self._fd = self._fd, None
            if fd is not None:
                try:
                    os.fsync(fd)
                except OSError as exc:
                    self._fail("fsync", exc)
                finally:
                    os.close(fd)
        self.wait_idle()
        if self._worker is not None and self._worker.is_alive():
            self._jobs.put(None)
            self._worker.join()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health

    def _fail(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        was_healthy = self.healthy
        self.healthy = False
        now = time.monotonic()
        if was_healthy:
            self._first_error_at = now
            self._last_error_log = now
            level_msg = "AUDIT %s FAILED for %s: %s. Requests are %s until the audit trail is writable again."
            log.error(
                level_msg,
                what,
                self._path or self.dir,
                exc,
                "BLOCKED"
                if self.cfg.on_error == "block"
                else "still allowed (on_error: allow), UNMONITORED",
                exc_info=not isinstance(exc, OSError),
            )
        elif now - self._last_error_log >= _ERROR_LOG_EVERY:
            self._last_error_log = now
            log.error("audit still failing (%d errors so far): %s: %s", self.errors, what, exc)

    def _recovered(self) -> None:
        self.healthy = True
        since = time.monotonic() - (self._first_error_at or time.monotonic())
        log.warning("audit recovered after %.1f s; %d errors in total", since, self.errors)


def gzip_file(path: Path) -> Path:
    """Compress a closed audit file to ``.gz`` crash-safely: temp file, fsync,
    rename, then unlink the original. Returns the .gz path."""
    gz_path = path.with_name(path.name + ".gz")
    tmp = path.with_name(path.name + ".gz.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        with open(fd, "wb") as raw, open(path, "rb") as src:
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, compresslevel=6) as gz:
                while chunk := src.read(_CHUNK):
                    gz.write(chunk)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, gz_path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    path.unlink()
    return gz_path


# ---------------------------------------------------------------------- readers


Progress = Callable[[int, int], None]


def _iter_lines(
    files: list[Path], needle: bytes | None, progress: Progress | None
) -> Iterator[bytes]:
    """Lines (without newline) from files, in 1 MiB chunks: constant memory.

    With a needle, only lines containing it are produced, found with
    ``bytes.find`` over the chunk, so a selective search costs C-speed
    scanning instead of a Python loop over every line.
    """
    total = sum(p.stat().st_size for p in files) if progress else 0
    base = 0
    for path in files:
        raw, stream = _open_read(path)
        with raw, stream:
            rest = b""
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                data = rest + chunk if rest else chunk
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
                rest = data[cut:]
                if needle is None:
                    lines = data[: cut - 1].split(b"\n")
                    yield from lines
                else:
                    pos = 0
                    while True:
                        i = data.find(needle, pos, cut)
                        if i < 0:
                            break
                        start = data.rfind(b"\n", 0, i) + 1
                        end = data.find(b"\n", i)
                        yield data[start:end]
                        pos = end + 1
                if progress:
                    progress(base + raw.tell(), total)
            if rest and (needle is None or needle in rest):
                yield rest  # a last line without newline (a file being written)
            if progress:
                base += raw.tell()
                progress(base, total)


def _alternatives(value: Any) -> tuple[Any, ...]:
    if isinstance(value, str | int | float):
        return (value,)
    return tuple(value)


def _needles(name: str, alts: tuple[Any, ...]) -> list[bytes]:
    """Byte strings one of which every matching line must contain: the value as
    JSON (a string quoted, a number bare), both raw UTF-8 and ASCII-escaped so
    files from other writers still match."""
    out = []
    for v in alts:
        for ascii_ in (False, True):
            enc = json.dumps(v, ensure_ascii=ascii_).encode()
            if name == "host":
                enc = enc[1:]  # suffix match: …example.com"
            if enc not in out:
                out.append(enc)
    return out


def _matches(rec: dict[str, Any], filters: dict[str, tuple[Any, ...]]) -> bool:
    for name, alts in filters.items():
        v = rec.get(name)
        if v is None:
            return False
        if name == "host":
            h = str(v).lower()
            if not any(h == a or h.endswith("." + a) for a in alts):
                return False
        elif str(v) not in alts and v not in alts:
            return False
    return True


def scan(
    paths: Iterable[str | Path],
    since: str | float | datetime | None = None,
    until: str | float | datetime | None = None,
    *,
    include_headers: bool = False,
    progress: Progress | None = None,
    **filters: Any,
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(raw line, record) pairs matching the filters; see :func:`iter_records`.

    Several chains (worker directories, see :func:`chain_dirs`) are read side by
    side and merged by ``ts``, still streaming."""
    chains = split_chains(paths) or [[]]
    if len(chains) == 1:
        yield from _scan_chain(
            chains[0], since, until, include_headers=include_headers, progress=progress, **filters
        )
        return
    done = [0] * len(chains)
    total = sum(p.stat().st_size for c in chains for p in audit_files(c)) if progress else 0

    def part(i: int) -> Progress | None:
        def report(d: int, _t: int) -> None:
            done[i] = d
            progress(sum(done), total)  # type: ignore[misc]

        return report if progress else None

    streams = [
        _scan_chain(c, since, until, include_headers=include_headers, progress=part(i), **filters)
        for i, c in enumerate(chains)
    ]
    yield from heapq.merge(*streams, key=lambda lr: _normalise_ts(str(lr[1].get("ts", ""))))


def _scan_chain(
    paths: Iterable[str | Path],
    since: str | float | datetime | None = None,
    until: str | float | datetime | None = None,
    *,
    include_headers: bool = False,
    progress: Progress | None = None,
    **filters: Any,
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    flt: dict[str, tuple[Any, ...]] = {}
    for k, v in filters.items():
        if v is None:
            continue
        alts = _alternatives(v)
        if k == "host":
            alts = tuple(str(a).lower().rstrip(".") for a in alts)
        flt[k] = alts
    lo = _ts_to_key(since) if since is not None else None
    hi = _ts_to_key(until) if until is not None else None
    files = audit_files(paths)
    if lo is not None or hi is not None:
        # a local day's file holds UTC instants from the day before to the day after
        lo_day = date.fromisoformat(lo[:10]) - timedelta(days=1) if lo else None
        hi_day = date.fromisoformat(hi[:10]) + timedelta(days=1) if hi else None

        def in_range(p: Path) -> bool:
            parsed = parse_file_name(p.name)
            if parsed is None:
                return True
            d = parsed[0]
            return (lo_day is None or d >= lo_day) and (hi_day is None or d <= hi_day)

        files = [p for p in files if in_range(p)]
    # Prefilter on the most selective-looking single-valued string filter.
    needle: bytes | None = None
    line_needles: list[list[bytes]] = []
    for name, alts in sorted(flt.items(), key=lambda kv: -max(len(str(a)) for a in kv[1])):
        ns = _needles(name, alts)
        if needle is None and len(ns) == 1:
            needle = ns[0]
        else:
            line_needles.append(ns)
    for line in _iter_lines(files, needle, progress):
        if not line:
            continue
        if line_needles and not all(any(n in line for n in ns) for ns in line_needles):
            continue
        if (lo or hi) and line.startswith(b'{"ts":"') and line[30:32] == b'Z"':
            ts = line[7:31].decode("ascii", "replace")
            if (lo and ts < lo) or (hi and ts >= hi):
                continue
        rec = _loads(line)
        if not isinstance(rec, dict):
            continue
        if rec.get("type") == "header" and not include_headers:
            continue
        if lo or hi:
            ts = rec.get("ts")
            if not isinstance(ts, str):
                continue
            ts = _normalise_ts(ts)
            if (lo and ts < lo) or (hi and ts >= hi):
                continue
        if flt and not _matches(rec, flt):
            continue
        yield line, rec


def iter_records(
    paths: Iterable[str | Path],
    since: str | float | datetime | None = None,
    until: str | float | datetime | None = None,
    **filters: Any,
) -> Iterator[dict[str, Any]]:
    """Records from audit files or directories, oldest first, streaming.

    ``since`` is inclusive and ``until`` exclusive (datetimes, epoch seconds or
    ISO strings). Each keyword filter is a field name with a value or a
    collection of accepted values; ``host`` also matches subdomains, the rest
    match exactly. Header records are skipped (``include_headers=True`` keeps
    them); ``progress=callable(done_bytes, total_bytes)`` reports on-disk bytes.
    """
    for _line, rec in scan(paths, since, until, **filters):
        yield rec


# ---------------------------------------------------------------------- verify


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`. Falsy when the chain is broken.

    ``line`` is the first line that fails to verify (1-based). For a changed
    line that is usually the line after it: only its successor's ``prev``
    attests a line's content; ``reason`` says which lines are involved.
    """

    ok: bool
    files: int = 0
    lines: int = 0
    file: Path | None = None
    line: int | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"OK: {self.files} file(s), {self.lines} line(s), hash chain intact"
        return f"BROKEN: {self.file}:{self.line}: {self.reason}"


def _lookahead(stream: Any, want: str, after: int) -> int | None:
    """Line number of a later line hashing to ``want`` (diagnoses reordering)."""
    n = after
    for raw in stream:
        n += 1
        if _sha(raw.rstrip(b"\n")) == want:
            return n
    return None


_PREV_TAIL = b',"prev":"'  # the writer puts prev last: ...,"prev":"<64 hex>"}


def _parse(body: bytes) -> tuple[dict[str, Any] | None, str]:
    """(record, "") or (None, why it is not an audit record)."""
    try:
        rec = json.loads(body)
    except ValueError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(rec, dict) or "prev" not in rec:
        return None, "not an audit record (no prev field)"
    return rec, ""


def _prev_of(body: bytes) -> tuple[Any, str]:
    """(prev, "") from a line, or (None, why not). Lines as this writer makes
    them are read from their fixed suffix without a JSON parse: a line whose
    hash the next line attests is byte-for-byte what was written, so parsing
    it again would prove nothing (lines that fail get parsed for the reason)."""
    if body[-75:-66] == _PREV_TAIL and body[-2:] == b'"}':
        return body[-66:-2].decode("ascii", "replace"), ""
    rec, why = _parse(body)
    return (rec["prev"], "") if rec is not None else (None, why)


def _link_break(stream: Any, prev: Any, lineno: int, recent: deque[tuple[str, int]]) -> str:
    """Why line ``lineno`` does not chain from the line before it, as precisely as the hashes allow."""
    if not isinstance(prev, str) or not _HEX64.match(prev):
        return "prev is not a SHA-256 hex digest"
    earlier = next((n for h, n in recent if h == prev), None)
    if earlier is not None:
        return (
            f"chains from line {earlier}, not from line {lineno - 1}: lines were inserted or moved"
        )
    later = _lookahead(stream, prev, lineno)
    if later is not None:
        return f"chains from line {later}, which comes later in the file: lines were reordered"
    return (
        f"prev is not the hash of line {lineno - 1}: line {lineno - 1} was altered, "
        f"or lines were removed between {lineno - 1} and {lineno}"
    )


def verify(paths: Iterable[str | Path], progress: Progress | None = None) -> VerifyResult:
    """Check every ``prev`` link, within and across files, in chronological order.

    Stops at the first break and says where and why: a line that is not JSON,
    a line whose ``prev`` is not the hash of the line before it, a file whose
    header does not chain from the end of the file before it, a missing
    header. A chain whose first file names a predecessor that is not in the
    set (deleted by retention, or simply not given) is accepted with a note.
    """
    files = audit_files(paths)
    res = VerifyResult(ok=True, files=len(files))
    total = sum(p.stat().st_size for p in files) if progress else 0
    base = 0
    prev_hash: str | None = None
    prev_file: Path | None = None

    def broken(path: Path, lineno: int, reason: str) -> VerifyResult:
        res.ok, res.file, res.line, res.reason = False, path, lineno, reason
        return res

    for path in files:
        raw, stream = _open_read(path)
        with raw, stream:
            lineno = 0
            recent: deque[tuple[str, int]] = deque(maxlen=256)
            last_hash: str | None = None
            last_body = b""
            try:
                for line in stream:
                    lineno += 1
                    res.lines += 1
                    if progress and lineno % 65536 == 0:
                        progress(base + raw.tell(), total)
                    if not line.endswith(b"\n"):
                        why = "incomplete last line (no newline): the write was cut short"
                        return broken(path, lineno, why)
                    body = line[:-1]
                    if lineno == 1:
                        rec, why = _parse(body)
                        if rec is None:
                            return broken(path, 1, why)
                        if rec.get("type") != "header":
                            why = (
                                "first line is not a header record (line 1 was deleted or replaced)"
                            )
                            return broken(path, 1, why)
                        named = rec.get("prev_file")
                        if prev_file is None:
                            res.notes.append(
                                f"chain starts at {path.name}; the file before it ({named}) is not "
                                "among those checked (removed by retention, or not given)"
                                if named
                                else f"chain starts at {path.name} (first file ever written)"
                            )
                        elif rec["prev"] is None or rec["prev"] != prev_hash:
                            why = rec.get("prev_error") or (
                                f"its header chains from {named or 'nothing'} but the file before it "
                                f"is {prev_file.name}, whose last line has a different hash: a file is "
                                f"missing between them, or the end of {prev_file.name} was altered"
                            )
                            return broken(path, 1, why)
                    else:
                        prev, why = _prev_of(body)
                        if why:
                            return broken(path, lineno, why)
                        if prev != last_hash:
                            _, why = _parse(last_body)  # the line before may be the damaged one
                            if why:
                                return broken(path, lineno - 1, why)
                            _, why = _parse(body)
                            if why:
                                return broken(path, lineno, why)
                            return broken(path, lineno, _link_break(stream, prev, lineno, recent))
                    last_hash = _sha(body)
                    last_body = body
                    recent.append((last_hash, lineno))
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                return broken(path, lineno + 1, f"cannot read: {exc}")
            if lineno == 0:
                res.notes.append(f"{path.name} is empty")
                continue
            _, why = _parse(last_body)  # attested only by the next file, if any
            if why:
                return broken(path, lineno, why)
            base += raw.tell()
        prev_hash, prev_file = last_hash, path
    if progress:
        progress(total, total)
    return res


__all__ = [
    "AuditDirBusy",
    "AuditLog",
    "VerifyResult",
    "audit_files",
    "chain_dirs",
    "file_name",
    "gzip_file",
    "iso_utc",
    "iter_records",
    "load_pseudonym_key",
    "parse_file_name",
    "pseudonym",
    "pseudonym_key_path",
    "redact_query",
    "scan",
    "split_chains",
    "strip_userinfo",
    "verify",
]
