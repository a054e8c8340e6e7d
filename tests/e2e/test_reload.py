"""Hot reload against the running proxy: edits apply live, broken edits never unfilter."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from .harness import BIN, Internet, ProxyProcess
from .test_proxy import metric

GAMBLING = """\
category: gambling
description: Gambling
domains:
  - bet.example
  - aaaa.example
"""


def wait_until(predicate, timeout: float = 5.0, what: str = "") -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def status(p: ProxyProcess, url: str) -> int:
    return httpx.get(url, proxy=p.url, timeout=5).status_code


@pytest.fixture
def live(tmp_path: Path, internet: Internet):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "gambling.yaml").write_text(GAMBLING)
    p = ProxyProcess.start(
        tmp_path / "proxy",
        {
            "rules_dir": str(rules),
            "groups": [{"name": "students", "policy": "students"}],
            "policies": {"students": {"block": ["gambling"]}},
            "upstream": f"http://127.0.0.1:{internet.port}",
        },
    )
    failures: list[str] = []
    stop = threading.Event()

    def keep_browsing() -> None:  # a student who never stops clicking during the reloads
        with httpx.Client(proxy=p.url, timeout=5) as c:
            while not stop.is_set():
                try:
                    r = c.get("http://busy.example/")
                    if r.status_code != 200:
                        failures.append(f"status {r.status_code}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                time.sleep(0.02)

    t = threading.Thread(target=keep_browsing, daemon=True)
    t.start()
    yield p, rules / "gambling.yaml", failures
    stop.set()
    t.join(5)
    p.stop()


def test_edit_broken_edit_fix_and_sighup(live) -> None:
    p, rule_file, failures = live
    assert status(p, "http://bet.example/") == 403
    assert status(p, "http://newbad.example/") == 200

    # 1. add a domain: blocked within 5 s
    rule_file.write_text(GAMBLING + "  - newbad.example\n")
    wait_until(
        lambda: status(p, "http://newbad.example/") == 403, 5, "the new domain to be blocked"
    )
    successes = metric(p, "cipa_rules_reloads_total", result="success")

    # 2. a broken edit: the old rules keep serving, the failure is counted and lint names the line
    failures_before = metric(p, "cipa_rules_reloads_total", result="failure")
    rule_file.write_text(GAMBLING + "  - newbad.example\n  - [unclosed\n")
    wait_until(
        lambda: metric(p, "cipa_rules_reloads_total", result="failure") == failures_before + 1,
        5,
        "a failed reload",
    )
    assert metric(p, "cipa_rules_reload_error") == 1
    assert status(p, "http://bet.example/") == 403 and status(p, "http://newbad.example/") == 403
    lint = subprocess.run(
        [str(BIN / "cipa-proxy"), "lint", "--config", str(p.root / "config.yaml")],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 1 and "rules/gambling.yaml:8" in lint.stdout, lint.stdout
    assert any("rules/gambling.yaml:8" in line for line in p.log), p.log[-5:]

    # 3. fix it: recovery
    rule_file.write_text(GAMBLING)
    wait_until(lambda: metric(p, "cipa_rules_reload_error") == 0, 5, "recovery")
    assert metric(p, "cipa_rules_reloads_total", result="success") == successes + 1
    assert status(p, "http://newbad.example/") == 200

    # 4. SIGHUP reloads even when polling cannot see the change (same size, old mtime)
    st = rule_file.stat()
    rule_file.write_text(GAMBLING.replace("aaaa.example", "bbbb.example"))
    os.utime(rule_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    time.sleep(2.5)
    assert status(p, "http://bbbb.example/") == 200  # the poller saw nothing
    p.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: status(p, "http://bbbb.example/") == 403, 5, "SIGHUP reload")

    assert failures == [], failures[:5]
