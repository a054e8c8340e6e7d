"""The audit trail of the running proxy: nothing lost on SIGKILL, and an unwritable log stops traffic."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from .harness import BIN, Internet, Origin, ProxyProcess


def test_sigkill_mid_load_loses_no_answered_request(tmp_path: Path, origin: Origin) -> None:
    p = ProxyProcess.start(tmp_path / "proxy", {"audit.fsync_interval": 5.0})
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(i: int) -> None:
        urls = [f"http://localhost:{origin.http_port}/w{i}", "http://www.bet365.com/"]
        with httpx.Client(proxy=p.url, timeout=5) as c:
            n = 0
            while not stop.is_set():
                try:
                    r = c.get(urls[n % 2])
                except httpx.HTTPError:
                    return  # the proxy died under us: this request was not answered
                n += 1
                with lock:
                    answered.append(r.headers["x-cipa-request-id"])

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    while len(answered) < 150:
        time.sleep(0.01)
    p.proc.send_signal(signal.SIGKILL)  # no shutdown hook, no flush: only what was written survives
    p.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)

    records = p.audit_records()
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "a request was recorded twice"
    missing = set(answered) - set(ids)
    assert not missing, f"{len(missing)} answered requests have no audit record"
    assert len(records) >= len(answered)
    verify = subprocess.run(
        [str(BIN / "cipa-proxy"), "audit", "verify", "--dir", str(p.audit_dir)],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_unwritable_audit_log_blocks_requests_and_readyz_recovers(
    tmp_path: Path, internet: Internet
) -> None:
    p = ProxyProcess.start(
        tmp_path / "proxy",
        {"audit.max_bytes": 3000, "upstream": f"http://127.0.0.1:{internet.port}"},
    )
    ready = f"http://127.0.0.1:{p.metrics_port}/readyz"
    try:
        with httpx.Client(proxy=p.url, timeout=5) as c:
            assert c.get("http://www.example.com/").status_code == 200
            assert httpx.get(ready).status_code == 200
            # the audit directory becomes unusable: the next size rotation cannot open a file
            shutil.rmtree(p.audit_dir)
            p.audit_dir.write_text("not a directory")
            deadline = time.monotonic() + 10
            while httpx.get(ready).status_code == 200:
                assert time.monotonic() < deadline, "readyz never turned unready"
                c.get("http://www.example.com/fill-the-file")
            assert "audit log not writable" in httpx.get(ready).text
            r = c.get("http://www.example.com/now-blocked", headers={"Accept": "text/plain"})
            assert r.status_code == 503 and "Monitoring unavailable" in r.text
            # fixed: writing resumes and so does browsing
            p.audit_dir.unlink()
            p.audit_dir.mkdir()
            deadline = time.monotonic() + 10
            while c.get("http://www.example.com/again").status_code != 200:
                assert time.monotonic() < deadline, "never recovered"
                time.sleep(0.1)
            assert httpx.get(ready).status_code == 200
    finally:
        p.stop()
