"""`cipa-proxy lists update` against a running proxy: new lists enforced, bad archives refused.

The proxy runs on a COPY of the shipped rules (never the repository's rules/).
UT1-shaped tarballs are built here: a good one (a new adult/domains list, the
list the shipped adult.yaml names in include_if_present), a malicious one
(``../`` and a symbolic link) and a truncated one.
"""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from .harness import BIN, ROOT, Internet, ProxyProcess


def tarball(members: list[tuple]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data, *link in members:
            info = tarfile.TarInfo(name)
            info.mtime = int(time.time())
            if data is None:
                info.type, info.linkname = link
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue())


def status(p: ProxyProcess, url: str) -> int:
    return httpx.get(url, proxy=p.url, timeout=10).status_code


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


def lists(p: ProxyProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cipa-proxy"), "lists", *args, "--config", str(p.root / "config.yaml")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def live(tmp_path: Path, internet: Internet):
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules, ignore=shutil.ignore_patterns(".ut1*"))
    p = ProxyProcess.start(
        tmp_path / "proxy",
        {"rules_dir": str(rules), "upstream": f"http://127.0.0.1:{internet.port}"},
    )
    yield p, rules
    p.stop()


def test_update_enforced_live_and_bad_archives_refused(live, tmp_path: Path) -> None:
    p, rules = live
    gambling = (rules / "lists/ut1/gambling/domains").read_bytes()
    assert status(p, "http://new-adult-site.example/") == 200
    assert status(p, "http://www.bet365.com/") == 403  # shipped gambling list

    # 1. a good archive: the new adult/domains list is enforced without a restart
    good = tmp_path / "good.tar.gz"
    good.write_bytes(
        tarball([
            ("blacklists/adult/domains", b"first-adult.example\nnew-adult-site.example\n"),
            ("blacklists/gambling/domains", gambling + b"new-casino-site.example\n"),
            ("blacklists/porn", None, tarfile.SYMTYPE, "adult"),
            ("blacklists/shopping/domains", b"shop.example\n"),
        ])
    )  # fmt: skip
    r = lists(p, "update", "--source", str(good))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: status(p, "http://new-adult-site.example/") == 403, 30, "the new list")
    assert status(p, "http://new-casino-site.example/") == 403
    assert status(p, "http://www.bet365.com/") == 403  # the rest of the list still enforced
    check = subprocess.run(
        [str(BIN / "cipa-proxy"), "check", "--config", str(p.root / "config.yaml"),
         "http://www.new-adult-site.example/", "--client", "10.1.2.3"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert "[adult]" in check.stdout and "rules/lists/ut1/adult/domains:2" in check.stdout
    assert any("rules reloaded" in line for line in p.log), p.log[-5:]

    # 2. malicious (../ and a symbolic link) and truncated archives: refused, nothing changes
    before = sorted(
        (str(f.relative_to(rules)), f.read_bytes()) for f in rules.rglob("*") if f.is_file()
    )
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(
        tarball([
            ("blacklists/gambling/domains", gambling + b"evil-new.example\n"),
            ("blacklists/../../../tmp/escaped/domains", b"x.example\n"),
            ("blacklists/adult/urls", None, tarfile.SYMTYPE, "/etc/passwd"),
        ])
    )  # fmt: skip
    r = lists(p, "update", "--source", str(evil))
    assert r.returncode == 1 and "path traversal" in r.stderr and "nothing was changed" in r.stderr
    link = tmp_path / "link.tar.gz"
    link.write_bytes(
        tarball([
            ("blacklists/gambling/domains", gambling + b"evil-new.example\n"),
            ("blacklists/adult/urls", None, tarfile.SYMTYPE, "/etc/passwd"),
        ])
    )  # fmt: skip
    r = lists(p, "update", "--source", str(link))
    assert r.returncode == 1 and "symbolic link" in r.stderr, r.stderr
    truncated = tmp_path / "truncated.tar.gz"
    data = tarball([("blacklists/gambling/domains", gambling + b"truncated-new.example\n")])
    truncated.write_bytes(data[: len(data) * 2 // 3])
    r = lists(p, "update", "--source", str(truncated))
    assert r.returncode == 1 and "incomplete or corrupt" in r.stderr, r.stderr
    after = sorted(
        (str(f.relative_to(rules)), f.read_bytes())
        for f in rules.rglob("*")
        if f.is_file() and not f.name.endswith(".lock")
    )
    assert after == [b for b in before if not b[0].endswith(".lock")]
    assert not Path("/tmp/escaped").exists()
    time.sleep(2.5)  # a reload poll: nothing may have changed
    assert status(p, "http://evil-new.example/") == 200
    assert status(p, "http://truncated-new.example/") == 200
    assert status(p, "http://new-adult-site.example/") == 403  # the good update still enforced
    assert status(p, "http://www.bet365.com/") == 403

    # 3. stats name the update; rollback brings the shipped lists back, live
    r = lists(p, "stats")
    assert "UT1: updated" in r.stdout and "rules/lists/ut1/adult/domains" in r.stdout
    assert lists(p, "update", "--rollback").returncode == 0
    wait_until(lambda: status(p, "http://new-adult-site.example/") == 200, 30, "the rollback")
