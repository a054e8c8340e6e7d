"""Audit trail: the writer's durability and chain, rotation, privacy, failure
handling, and the ``audit`` review commands, all on real files in tmp_path."""

from __future__ import annotations

import argparse
import csv
import errno
import gzip
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import audit as audit_mod
from proxy.audit import (
    AuditDirBusy,
    AuditLog,
    iter_records,
    load_pseudonym_key,
    pseudonym,
    verify,
)
from proxy.audit_cli import _Progress, parse_when, register
from proxy.config import AuditConfig

REPO = Path(__file__).resolve().parents[1]
NY = ZoneInfo("America/New_York")


class Clock:
    """Injectable wall clock (epoch seconds)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def at(y: int, mo: int, d: int, h: int = 12, mi: int = 0, s: int = 0, tz: ZoneInfo = NY) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp()


def rec(i: int, **kw: object) -> dict:
    base = {
        "client": f"10.1.0.{i % 200}",
        "user": None,
        "group": "students",
        "method": "GET",
        "url": f"http://site{i % 7}.example/page/{i}",
        "host": f"site{i % 7}.example",
        "action": "block" if i % 3 == 0 else "allow",
        "category": "games" if i % 3 == 0 else None,
        "rule": "rules/games.yaml:3",
        "status": 403 if i % 3 == 0 else 200,
        "n": i,
    }
    base.update(kw)
    return base


def cfg_for(path: Path, **kw: object) -> AuditConfig:
    return AuditConfig(path=path, timezone="America/New_York", **kw)


def lines_of(path: Path) -> list[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read().splitlines()


def write_n(path: Path, n: int, clock: Clock | None = None, **kw: object) -> AuditLog:
    log = AuditLog(cfg_for(path, **kw), clock=clock or Clock(at(2024, 5, 1)))
    for i in range(1, n + 1):
        assert log.record(rec(i))
    log.close()
    return log


# ---------------------------------------------------------------- chain and verify


def test_records_are_compact_json_lines_chained_by_prev(tmp_path: Path) -> None:
    write_n(tmp_path, 5)
    (f,) = tmp_path.glob("audit-*.jsonl")
    assert f.name == "audit-2024-05-01.jsonl"
    assert oct(f.stat().st_mode & 0o777) == "0o640"
    raw = lines_of(f)
    assert len(raw) == 6
    header = json.loads(raw[0])
    assert header["type"] == "header" and header["prev_file"] is None and header["prev"] is None
    import hashlib

    for before, line in zip(raw, raw[1:], strict=False):
        d = json.loads(line)
        assert d["prev"] == hashlib.sha256(before).hexdigest()
        assert b", " not in line and b'": ' not in line  # compact separators
    first = json.loads(raw[1])
    assert list(first)[:2] == ["ts", "id"] and list(first)[-1] == "prev"
    assert first["ts"] == "2024-05-01T16:00:00.000Z" and first["id"]
    res = verify([tmp_path])
    assert res.ok and res.lines == 6 and res.files == 1, res


def _tamper(src: Path, dst: Path, how: str, k: int) -> Path:
    shutil.copytree(src, dst)
    (f,) = dst.glob("audit-*.jsonl")
    lines = f.read_bytes().splitlines(keepends=True)
    i = k - 1
    if how == "edit":  # still valid JSON: only the chain can tell
        lines[i] = lines[i].replace(b'"ts":"2024', b'"ts":"2023', 1)
    elif how == "edit-json":
        lines[i] = lines[i][:20] + b"\n"
    elif how == "edit-json-keep-tail":  # the prev suffix still parses; the line does not
        lines[i] = lines[i].replace(b'{"ts"', b'{ts"', 1)
    elif how == "delete":
        del lines[i]
    elif how == "swap":
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif how == "move-up":  # line k+3 moved up to k
        lines.insert(i, lines.pop(i + 3))
    elif how == "truncate":
        lines[-1] = lines[-1][:-10]
    f.write_bytes(b"".join(lines))
    return f


@pytest.mark.parametrize(
    ("how", "k", "want_line", "reason"),
    [
        ("edit", 10, 11, "line 10 was altered"),  # only line 11's prev attests line 10
        ("edit-json", 10, 10, "not valid JSON"),
        ("edit-json-keep-tail", 10, 10, "not valid JSON"),
        ("edit-json-keep-tail", 21, 21, "not valid JSON"),  # the last line: no successor attests it
        ("delete", 10, 10, "removed between 9 and 10"),
        ("swap", 10, 10, "reordered"),
        ("move-up", 10, 10, "chains from line 13"),
        ("delete", 1, 1, "not a header"),
        ("edit", 1, 2, "line 1 was altered"),
        ("truncate", 0, 21, "incomplete last line"),
    ],
)
def test_verify_names_first_broken_line(
    tmp_path: Path, how: str, k: int, want_line: int, reason: str
) -> None:
    # line 10 is record 9 (record i%3==0 blocks); line 1 is the header
    write_n(tmp_path / "orig", 20)
    assert verify([tmp_path / "orig"]).ok
    f = _tamper(tmp_path / "orig", tmp_path / "copy", how, k)
    res = verify([tmp_path / "copy"])
    assert not res.ok
    assert (res.file, res.line) == (f, want_line), res
    assert reason in res.reason, res.reason
    assert verify([tmp_path / "orig"]).ok  # the original is untouched


def test_verify_across_files_and_missing_middle_file(tmp_path: Path) -> None:
    clock = Clock(at(2024, 5, 1))
    log = AuditLog(cfg_for(tmp_path), clock=clock)
    for day in (1, 2, 3):
        clock.t = at(2024, 5, day)
        for i in range(3):
            assert log.record(rec(i))
    log.close()
    names = sorted(p.name for p in tmp_path.glob("audit-*"))
    assert names == [
        "audit-2024-05-01.jsonl.gz",
        "audit-2024-05-02.jsonl.gz",
        "audit-2024-05-03.jsonl",
    ]
    res = verify([tmp_path])
    assert res.ok and res.files == 3 and res.lines == 12, res

    # oldest file gone (retention): still OK, with a note
    only_later = [tmp_path / names[1], tmp_path / names[2]]
    res = verify(only_later)
    assert res.ok and "not among those checked" in res.notes[0]

    # a file missing in the middle breaks the chain at the next file's header
    res = verify([tmp_path / names[0], tmp_path / names[2]])
    assert not res.ok and res.file == tmp_path / names[2] and res.line == 1
    assert "file is missing" in res.reason


# ---------------------------------------------------------------- rotation and retention


def test_rotation_at_local_midnight_across_dst(tmp_path: Path) -> None:
    clock = Clock(at(2024, 3, 9, 23, 59, 59))  # Saturday before the spring-forward night
    log = AuditLog(cfg_for(tmp_path), clock=clock)
    assert log.record(rec(1))
    clock.t = at(2024, 3, 10, 0, 0, 1)  # 05:00:01Z: a new local day
    assert log.record(rec(2))
    clock.t = at(2024, 3, 10, 23, 59, 59)  # the 23-hour day
    assert log.record(rec(3))
    clock.t = at(2024, 3, 11, 0, 0, 0)
    assert log.record(rec(4))
    assert log.current_path == tmp_path / "audit-2024-03-11.jsonl"
    log.wait_idle()
    names = sorted(p.name for p in tmp_path.glob("audit-*"))
    assert names == [
        "audit-2024-03-09.jsonl.gz",
        "audit-2024-03-10.jsonl.gz",
        "audit-2024-03-11.jsonl",
    ]
    hdr = json.loads(lines_of(tmp_path / "audit-2024-03-10.jsonl.gz")[0])
    assert (
        hdr["type"] == "header"
        and hdr["prev_file"] == "audit-2024-03-09.jsonl"
        and hdr["reason"] == "midnight"
    )
    log.close()
    res = verify([tmp_path])
    assert res.ok and res.files == 3, res
    assert [r["n"] for r in iter_records([tmp_path])] == [1, 2, 3, 4]
    assert [
        r["ts"]
        for r in iter_records(
            [tmp_path], since="2024-03-10T05:00:00Z", until="2024-03-11T04:00:00Z"
        )
    ] == [
        "2024-03-10T05:00:01.000Z",
        "2024-03-11T03:59:59.000Z",
    ]


def test_rotation_at_max_bytes(tmp_path: Path) -> None:
    clock = Clock(at(2024, 5, 1))
    log = AuditLog(cfg_for(tmp_path, max_bytes=2000), clock=clock)
    for i in range(1, 31):
        assert log.record(rec(i))
    log.close()
    files = sorted(tmp_path.glob("audit-*"), key=lambda p: audit_mod.parse_file_name(p.name)[:2])
    assert len(files) > 3
    assert files[0].name == "audit-2024-05-01.jsonl.gz"
    assert files[1].name == "audit-2024-05-01.1.jsonl.gz"
    assert files[-1].name.endswith(".jsonl")
    for f in files:
        size = sum(len(line) + 1 for line in lines_of(f))
        assert size <= 2000, f
        assert json.loads(lines_of(f)[0])["type"] == "header"
    assert verify([tmp_path]).ok
    assert [r["n"] for r in iter_records([tmp_path])] == list(range(1, 31))


def test_retention_deletes_old_files_and_compresses_leftovers(tmp_path: Path) -> None:
    for name in (
        "audit-2024-01-01.jsonl.gz",
        "audit-2024-01-04.jsonl.gz",
        "audit-2024-01-04.1.jsonl",
    ):
        (tmp_path / name).write_bytes(b"")
    # the day before today, left plain by a process that died before midnight
    clock = Clock(at(2024, 1, 9))
    log = AuditLog(cfg_for(tmp_path, retention_days=5), clock=clock)
    assert log.record(rec(1))
    log.close()
    clock.t = at(2024, 1, 10)
    (tmp_path / "audit-2024-01-05.jsonl.gz").write_bytes(gzip.compress(b""))
    log = AuditLog(cfg_for(tmp_path, retention_days=5), clock=clock)
    assert log.record(rec(2))
    log.wait_idle()
    names = sorted(p.name for p in tmp_path.glob("audit-*"))
    assert names == [
        "audit-2024-01-05.jsonl.gz",
        "audit-2024-01-09.jsonl.gz",
        "audit-2024-01-10.jsonl",
    ]
    log.close()
    # the new day's header chains from the file left uncompressed at the last shutdown
    assert verify([tmp_path / "audit-2024-01-09.jsonl.gz", tmp_path / "audit-2024-01-10.jsonl"]).ok


def test_restart_same_day_continues_the_chain(tmp_path: Path) -> None:
    write_n(tmp_path, 3)
    (tmp_path / "audit-2024-05-01.jsonl").open("ab").write(
        b'{"ts":"2024-05-01T16:00:00'
    )  # torn by a crash
    log = AuditLog(cfg_for(tmp_path), clock=Clock(at(2024, 5, 1, 13)))
    assert log.record(rec(4))
    log.close()
    raw = lines_of(tmp_path / "audit-2024-05-01.jsonl")
    assert len(raw) == 5 and sum(b'"type":"header"' in x for x in raw) == 1
    assert verify([tmp_path]).ok


def test_second_writer_on_same_directory_is_refused(tmp_path: Path) -> None:
    log = AuditLog(cfg_for(tmp_path), clock=Clock(at(2024, 5, 1)))
    with pytest.raises(AuditDirBusy):
        AuditLog(cfg_for(tmp_path), clock=Clock(at(2024, 5, 1)))
    log.close()
    AuditLog(cfg_for(tmp_path), clock=Clock(at(2024, 5, 1))).close()


def test_fsync_thread_and_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    log = AuditLog(cfg_for(tmp_path, fsync_interval=0.02), clock=Clock(at(2024, 5, 1)))
    log.start_fsync_thread()
    assert log.record(rec(1))
    deadline = time.monotonic() + 2
    while not synced and time.monotonic() < deadline:
        time.sleep(0.01)
    assert synced, "fsync thread never synced"
    log.close()
    assert log.record(rec(2)) is False  # closed: refused, not raised


# ---------------------------------------------------------------- privacy


def test_pseudonymize_client_and_user(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "audit.key"
    cfg = cfg_for(tmp_path / "a", pseudonymize=True, pseudonym_key_file=key_file)
    log = AuditLog(cfg, clock=Clock(at(2024, 5, 1)))
    assert log.record(rec(1, client="10.9.8.7", user="jsmith"))
    assert log.record(rec(2, client="10.9.8.7", user="jsmith"))
    assert log.record(rec(3, client="10.9.8.6", user=None))
    log.close()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    data = b"".join(p.read_bytes() for p in (tmp_path / "a").glob("audit-*"))
    assert b"10.9.8.7" not in data and b"jsmith" not in data and b"10.9.8.6" not in data
    r1, r2, r3 = iter_records([tmp_path / "a"])
    assert r1["client"] == r2["client"] != r3["client"]
    assert r1["user"] == r2["user"] and r1["user"].startswith("ps-") and r3["user"] is None
    key = load_pseudonym_key(key_file, create=False)
    assert r1["client"] == pseudonym(key, "10.9.8.7")
    # same key, new process: same pseudonym (patterns stay visible across days)
    log = AuditLog(replace(cfg, path=tmp_path / "b"), clock=Clock(at(2024, 5, 2)))
    assert log.record(rec(4, client="10.9.8.7"))
    log.close()
    assert next(iter_records([tmp_path / "b"]))["client"] == r1["client"]
    assert [r["n"] for r in iter_records([tmp_path / "a"], client=pseudonym(key, "10.9.8.7"))] == [
        1,
        2,
    ]


def test_redact_query_and_credentials(tmp_path: Path) -> None:
    log = AuditLog(cfg_for(tmp_path, redact_query=True), clock=Clock(at(2024, 5, 1)))
    assert log.record(rec(1, url="https://alice:s3cret@www.google.com/search?q=my+name#top"))
    assert log.record(rec(2, url="http://example.org/@user/page?token=abc"))
    log.close()
    urls = [r["url"] for r in iter_records([tmp_path])]
    assert urls == ["https://www.google.com/search", "http://example.org/@user/page"]
    data = (tmp_path / "audit-2024-05-01.jsonl").read_bytes()
    assert b"s3cret" not in data and b"alice" not in data and b"token" not in data


def test_credentials_dropped_even_without_redaction(tmp_path: Path) -> None:
    log = AuditLog(cfg_for(tmp_path), clock=Clock(at(2024, 5, 1)))
    assert log.record(rec(1, url="http://bob:pw@example.org/a?b=c"))
    log.close()
    assert next(iter_records([tmp_path]))["url"] == "http://example.org/a?b=c"


def test_log_allowed_false_drops_allowed_records(tmp_path: Path) -> None:
    log = AuditLog(cfg_for(tmp_path, log_allowed=False), clock=Clock(at(2024, 5, 1)))
    results = [log.record(rec(i)) for i in range(1, 10)]
    log.close()
    assert all(results)
    assert [r["n"] for r in iter_records([tmp_path])] == [3, 6, 9]
    assert log.records == 3 and log.dropped == 6
    assert verify([tmp_path]).ok


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(("on_error", "blocks"), [("block", True), ("allow", False)])
def test_disk_full_counts_logs_and_recovers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    on_error: str,
    blocks: bool,
) -> None:
    log = AuditLog(cfg_for(tmp_path, on_error=on_error), clock=Clock(at(2024, 5, 1)))
    assert log.record(rec(1)) and log.healthy and not log.blocks_new_requests
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with caplog.at_level(logging.ERROR, logger="cipa.audit"):
        assert log.record(rec(2)) is False
        assert log.record(rec(3)) is False
    assert log.errors == 2 and not log.healthy
    assert log.blocks_new_requests is blocks
    assert any(
        "AUDIT write FAILED" in r.getMessage() and "No space" in r.getMessage()
        for r in caplog.records
    )
    monkeypatch.setattr(os, "write", real_write)
    assert log.record(rec(4)) is True
    assert log.healthy and not log.blocks_new_requests and log.errors == 2
    log.close()
    assert [r["n"] for r in iter_records([tmp_path])] == [1, 4]
    assert verify([tmp_path]).ok


def test_short_write_then_failure_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(cfg_for(tmp_path), clock=Clock(at(2024, 5, 1)))
    assert log.record(rec(1))
    real_write = os.write
    calls = {"n": 0}

    def short_then_full(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:17]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    assert log.record(rec(2)) is False
    monkeypatch.setattr(os, "write", real_write)
    assert log.record(rec(3))
    log.close()
    assert [r["n"] for r in iter_records([tmp_path])] == [1, 3]
    assert verify([tmp_path]).ok


def test_short_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(cfg_for(tmp_path), clock=Clock(at(2024, 5, 1)))
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:50])))
    assert log.record(rec(1))
    monkeypatch.setattr(os, "write", real_write)
    log.close()
    assert verify([tmp_path]).ok and next(iter_records([tmp_path]))["n"] == 1


def test_unusable_directory_at_start_then_fixed(tmp_path: Path) -> None:
    target = tmp_path / "audit"
    target.write_text("not a directory")
    log = AuditLog(cfg_for(target), clock=Clock(at(2024, 5, 1)))  # must not raise
    assert not log.healthy and log.blocks_new_requests and log.errors == 1
    assert log.record(rec(1)) is False
    target.unlink()
    assert log.record(rec(2)) is True and log.healthy
    log.close()
    assert [r["n"] for r in iter_records([target])] == [2]


def test_killed_writer_leaves_complete_verifiable_lines(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from proxy.audit import AuditLog\n"
        "from proxy.config import AuditConfig\n"
        "log = AuditLog(AuditConfig(path=Path(sys.argv[1]), fsync_interval=0.05))\n"
        "log.start_fsync_thread()\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    assert log.record({'client': '10.0.0.%d' % (i % 250), 'url': 'http://e.example/%d' % i,\n"
        "                       'host': 'e.example', 'action': 'allow', 'n': i, 'ua': 'x' * (i % 300)})\n"
        "    if i % 100 == 0:\n"
        "        print(i, flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    reported = 0
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 20
        while reported < 3000 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            reported = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.communicate()[0]
    reported = max([reported, *(int(x) for x in rest.split())])
    assert reported >= 3000, "writer did not get going"
    for f in tmp_path.glob("audit-*"):  # one file, or two if the run straddled UTC midnight
        data = lines_of(f)
        assert all(json.loads(line) for line in data)  # every line is complete JSON
        assert f.name.endswith(".gz") or f.read_bytes().endswith(b"\n")
    ns = [r["n"] for r in iter_records([tmp_path])]
    # every record whose record() returned is there, once, in order
    assert ns == list(range(1, len(ns) + 1)) and len(ns) >= reported
    assert verify([tmp_path]).ok
    # a new writer continues the same chain
    log = AuditLog(AuditConfig(path=tmp_path))
    assert log.record({"action": "allow", "n": -1})
    log.close()
    assert verify([tmp_path]).ok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "url": st.text(max_size=40),
                "ua": st.text(max_size=40),
                "user": st.none() | st.text(max_size=10),
            }
        ),
        min_size=1,
        max_size=8,
    )
)
def test_any_text_round_trips_and_verifies(recs: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as d:
        log = AuditLog(cfg_for(Path(d)), clock=Clock(at(2024, 5, 1)))
        for r in recs:
            assert log.record({"action": "block", **r})
        log.close()
        assert verify([Path(d)]).ok
        got = list(iter_records([Path(d)]))
        assert len(got) == len(recs)
        for r, g in zip(recs, got, strict=True):
            if not any("\ud800" <= c <= "\udfff" for c in r["ua"] + r["url"] + (r["user"] or "")):
                assert g["ua"] == r["ua"] and g["user"] == r["user"]


# ---------------------------------------------------------------- review commands


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="cipa-proxy")
    parser.add_argument(
        "--config", default=str(Path(tempfile.gettempdir()) / "no-such-config.yaml")
    )
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(list(argv))
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """Three local days of records (two gzipped), with a hostile host name."""
    d = tmp_path / "trail"
    clock = Clock(at(2024, 5, 1, 8))
    log = AuditLog(cfg_for(d), clock=clock)
    i = 0
    for day in (1, 2, 3):
        for hour in range(8, 14):
            clock.t = at(2024, 5, day, hour)
            for _ in range(5):
                i += 1
                log.record(rec(i, user=f"u{i % 4}"))
    clock.t = at(2024, 5, 3, 15)
    log.record(
        rec(0, host="<script>x</script>.example", url='=HYPERLINK("http://evil")', action="block")
    )
    log.record(
        rec(
            0,
            host="www.youtube.com",
            url="https://www.youtube.com/",
            category="video",
            action="block",
        )
    )
    log.close()
    return d


def test_search_filters_and_formats(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(capsys, "audit", "search", "--dir", str(trail), "--format", "json")
    assert rc == 0
    allrecs = json.loads(out)
    assert len(allrecs) == 92
    rc, out, _ = run_cli(
        capsys, "audit", "search", "--dir", str(trail), "--host", "youtube.com", "--format", "json"
    )
    assert [r["host"] for r in json.loads(out)] == ["www.youtube.com"]  # subdomains match
    rc, out, _ = run_cli(
        capsys, "audit", "search", "--dir", str(trail), "--action", "block", "--user", "u1",
        "--category", "games", "--format", "json",
    )  # fmt: skip
    got = json.loads(out)
    want = [
        r
        for r in allrecs
        if r["action"] == "block" and r["user"] == "u1" and r["category"] == "games"
    ]
    assert got == want and got
    # local dates: --since/--until are the district's days (America/New_York from the header)
    rc, out, _ = run_cli(
        capsys, "audit", "search", "--dir", str(trail), "--since", "2024-05-02", "--until", "2024-05-02",
        "--format", "csv",
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 30 and {r["ts"][:10] for r in rows} == {"2024-05-02"}
    rc, out, _ = run_cli(
        capsys,
        "audit",
        "search",
        "--dir",
        str(trail),
        "--since",
        "2024-05-03 13:00",
        "--limit",
        "3",
        "--format",
        "csv",
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["ts"] for r in rows] == ["2024-05-03T17:00:00.000Z"] * 3
    rc, out, err = run_cli(capsys, "audit", "search", "--dir", str(trail), "--client", "10.1.0.7")
    assert out.splitlines()[0].split()[:3] == ["time", "client", "user"]
    assert len(out.splitlines()) == 2 and "2024-05-01 09:00:00" in out  # local time
    assert "1 record(s); times in America/New_York" in err
    assert err.count("\r") == 0  # no progress bar when stderr is not a terminal


def test_search_bad_time_is_a_usage_error(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "audit", "search", "--dir", str(trail), "--since", "last tuesday")
    assert rc == 2 and "cannot read time" in err


def test_export_csv_is_spreadsheet_safe_and_jsonl_is_verbatim(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "out.csv"
    rc, _, err = run_cli(
        capsys, "audit", "export", "--dir", str(trail), "--action", "block", "-o", str(out_file)
    )
    assert rc == 0 and "wrote" in err
    rows = list(csv.DictReader(out_file.open(encoding="utf-8")))
    assert rows[-2]["url"] == '\'=HYPERLINK("http://evil")'
    assert all(r["action"] == "block" for r in rows)
    rc, out, _ = run_cli(
        capsys, "audit", "export", "--dir", str(trail), "--format", "jsonl", "--limit", "4"
    )
    day1 = lines_of(trail / "audit-2024-05-01.jsonl.gz")
    assert out.encode().splitlines() == day1[1:5]


def test_report_text_and_self_contained_html(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "report.html"
    rc, out, _ = run_cli(
        capsys,
        "audit",
        "report",
        "--dir",
        str(trail),
        "--by",
        "host",
        "--top",
        "20",
        "--html",
        str(page),
    )
    assert rc == 0
    assert "Requests            92" in out
    assert "blocked           32" in out
    top = out.split("Top 20 blocked by host")[1].splitlines()[2:]
    assert len(top) == 9 and top[0].split()[0] == "5" and top[-1].split()[0] == "1"
    html_text = page.read_text(encoding="utf-8")
    assert html_text.count("<svg") == 2
    assert "<script>" not in html_text and "&lt;script&gt;x&lt;/script&gt;.example" in html_text
    for external in ("<link", "src=", "@import", "url(", "<script"):
        assert external not in html_text
    assert "2024-05-01 games: 10" in html_text  # per-day per-category bar tooltip
    for chunk in html_text.split("<svg")[1:]:  # each chart is well-formed SVG
        root = ElementTree.fromstring("<svg" + chunk.split("</svg>")[0] + "</svg>")
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and len(root) > 3


def test_verify_command_exit_codes(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run_cli(capsys, "audit", "verify", "--dir", str(trail))
    assert rc == 0 and out.startswith("OK: 3 file(s), 95 line(s)")
    f = _tamper(trail, tmp_path / "copy", "delete", 5)
    rc, out, _ = run_cli(capsys, "audit", "verify", str(tmp_path / "copy"))
    assert rc == 1 and out.startswith(f"BROKEN: {f}:5: ")
    rc, _, err = run_cli(capsys, "audit", "verify", str(tmp_path / "empty-dir-that-is-missing"))
    assert rc == 2
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(capsys, "audit", "verify", str(tmp_path / "empty"))
    assert rc == 1 and "no audit files" in err


def test_parse_when() -> None:
    now = datetime(2024, 5, 10, 15, 0, tzinfo=UTC)
    assert parse_when("2h", NY, now=now) == datetime(2024, 5, 10, 13, 0, tzinfo=UTC)
    assert parse_when("7d", NY, now=now) == datetime(2024, 5, 3, 15, 0, tzinfo=UTC)
    assert parse_when("2024-05-01", NY) == datetime(2024, 5, 1, tzinfo=NY)
    assert parse_when("2024-05-01", NY, end=True) == datetime(2024, 5, 2, tzinfo=NY)
    assert parse_when("2024-05-01T08:30", NY) == datetime(2024, 5, 1, 8, 30, tzinfo=NY)
    assert parse_when("2024-05-01T08:30Z", NY) == datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
    assert parse_when("yesterday", NY, now=now) == datetime(2024, 5, 9, tzinfo=NY)
    with pytest.raises(ValueError):
        parse_when("soon", NY)


def test_progress_bar_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = _Progress("scanning", stream)
        bar(0, 100)
        bar(100, 100)
        bar.close()
    assert "scanning [" in tty.getvalue() and "100.0%" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_iter_records_reads_gzip_and_since_until(trail: Path) -> None:
    since = datetime(2024, 5, 1, 12, tzinfo=NY)
    got = list(
        iter_records([trail], since=since, until=date(2024, 5, 2).isoformat() + "T00:00:00-04:00")
    )
    assert len(got) == 10 and all(r["ts"].startswith("2024-05-01T1") for r in got)


def test_iter_records_numeric_and_multi_value_filters(trail: Path) -> None:
    blocked = list(iter_records([trail], status=403))
    assert len(blocked) == 32 and all(r["action"] == "block" for r in blocked)
    both = list(iter_records([trail], user=("u1", "u2"), status=403, host="site3.example"))
    assert both and all(r["user"] in ("u1", "u2") and r["host"] == "site3.example" for r in both)
    assert len(both) == sum(
        1 for r in blocked if r["user"] in ("u1", "u2") and r["host"] == "site3.example"
    )


def test_commands_take_dir_and_key_from_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rules").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        "rules_dir: rules\n"
        "audit:\n  path: trail\n  timezone: America/Chicago\n  pseudonymize: true\n"
        "policies:\n  everyone:\n    default: allow\n"
        "groups:\n  - name: all\n    policy: everyone\n"
    )
    log = AuditLog(
        AuditConfig(path=tmp_path / "trail", timezone="America/Chicago", pseudonymize=True),
        clock=Clock(at(2024, 5, 1, 9, tz=ZoneInfo("America/Chicago"))),
    )
    assert log.record(rec(1, client="10.7.7.7"))
    assert log.record(rec(2, client="10.7.7.8"))
    log.close()
    assert b"10.7.7.7" not in (tmp_path / "trail" / "audit-2024-05-01.jsonl").read_bytes()
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    parser.add_argument("--config")
    args = parser.parse_args(["--config", str(config), "audit", "search", "--client", "10.7.7.7"])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()[1:]
    assert len(rows) == 1 and "2024-05-01 09:00:00" in rows[0] and "ps-" in rows[0]
    assert "times in America/Chicago" in err


def test_plain_and_gz_twins_after_a_crash_count_once(tmp_path: Path) -> None:
    clock = Clock(at(2024, 5, 1))
    log = AuditLog(cfg_for(tmp_path), clock=clock)
    assert log.record(rec(1))
    clock.t = at(2024, 5, 2)
    assert log.record(rec(2))
    log.close()
    gz = tmp_path / "audit-2024-05-01.jsonl.gz"
    plain = tmp_path / "audit-2024-05-01.jsonl"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))  # crashed after rename, before unlink
    assert verify([tmp_path]).ok and len(list(iter_records([tmp_path]))) == 2
    log = AuditLog(cfg_for(tmp_path), clock=clock)  # start-up compresses the leftover again
    log.close()
    assert not plain.exists() and gz.exists()
    assert verify([tmp_path]).ok and len(list(iter_records([tmp_path]))) == 2
