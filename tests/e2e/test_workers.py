"""``cipa-proxy run --workers 2``: one address, two proxy processes, nothing lost.

One proxy (a supervisor and two workers, chained to the fake internet) serves
two client addresses, 127.0.0.1 (students: gambling blocked) and 127.0.0.2
(staff: allowed), over many new connections at once. Then:

- every answer is the one its client's group gets (the workers see the real
  client address), and both workers served some of them;
- every request has exactly one audit record, in the worker's own directory,
  and ``audit verify`` checks both chains; ``audit search`` merges them;
- the front's /metrics counts every request once, summed over the workers;
- a worker killed with SIGKILL under load is restarted and counted, every
  request started after the kill is answered, and SIGHUP reaches every worker;
- SIGTERM stops the workers and the supervisor cleanly.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .harness import BIN, Internet, ProxyProcess

STUDENT, STAFF = "127.0.0.1", "127.0.0.2"
URL = "http://www.bet365.com/"  # gambling: blocked for students, allowed for staff


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[ProxyProcess]:
    p = ProxyProcess.start(
        tmp_path_factory.mktemp("workers"),
        {
            "workers": 2,
            "upstream": f"http://127.0.0.1:{internet.port}",
            "tls.upstream_ca": str(internet.ca),
            "groups": [
                {"name": "staff", "clients": [f"{STAFF}/32"], "policy": "staff"},
                {"name": "students", "policy": "students"},
            ],
        },
    )
    yield p
    p.stop()


def fetch(port: int, client: str) -> int:
    """One request on a new connection from ``client``; the status, or 0 if the connection failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20, source_address=(client, 0))
    try:
        conn.request("GET", URL, headers={"Host": "www.bet365.com", "Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):  # refused, reset, or cut off mid-answer
        return 0
    finally:
        conn.close()


def burst(port: int, n: int) -> list[tuple[str, int]]:
    """``n`` requests from each client address, 16 connections at a time."""
    clients = [STUDENT, STAFF] * n
    with ThreadPoolExecutor(16) as pool:
        return list(zip(clients, pool.map(lambda c: fetch(port, c), clients), strict=True))


def worker_records(p: ProxyProcess) -> dict[str, list[str]]:
    """Audit lines (headers excluded) per worker directory."""
    out = {}
    for d in sorted(p.audit_dir.glob("worker-*")):
        lines = []
        for f in d.glob("audit-*.jsonl"):
            lines += [x for x in f.read_text().splitlines() if '"type":"header"' not in x]
        out[d.name] = lines
    return out


def metric(p: ProxyProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{p.metrics_port}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            total += float(m.group(2))
    return total


def worker_pids(p: ProxyProcess) -> list[int]:
    pids = []
    for task in os.listdir(f"/proc/{p.proc.pid}/task"):
        pids += [
            int(x) for x in Path(f"/proc/{p.proc.pid}/task/{task}/children").read_text().split()
        ]
    return sorted(pids)


def wait_for(cond, what: str, limit: float = 60) -> None:
    """Poll until ``cond()`` holds (a bound against hanging, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def audit_cli(p: ProxyProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cipa-proxy"), "audit", *args, "--config", str(p.root / "config.yaml")],
        capture_output=True, text=True, cwd=p.root,
    )  # fmt: skip


def test_two_workers_share_the_load_and_keep_client_addresses(workers: ProxyProcess) -> None:
    p = workers
    assert len(worker_pids(p)) == 2
    sent: list[tuple[str, int]] = []
    for _ in range(20):  # until both workers have served (the kernel decides who accepts)
        sent += burst(p.port, 50)
        per = worker_records(p)
        if len(per) == 2 and all(per.values()):
            break
    assert {s for c, s in sent if c == STUDENT} == {403}, "students: gambling blocked"
    assert {s for c, s in sent if c == STAFF} == {200}, "staff: gambling allowed"

    per = worker_records(p)
    assert sorted(per) == ["worker-0", "worker-1"] and all(per.values()), {
        k: len(v) for k, v in per.items()
    }
    wait_for(lambda: sum(map(len, worker_records(p).values())) == len(sent), "all audit records")
    records = [r for lines in worker_records(p).values() for r in lines]
    assert (
        sum(f'"client":"{STAFF}"' in r and '"group":"staff"' in r for r in records)
        == len(sent) // 2
    )
    assert (
        sum(f'"client":"{STUDENT}"' in r and '"group":"students"' in r for r in records)
        == len(sent) // 2
    )

    n = len(sent) // 2
    wait_for(
        lambda: (
            metric(p, "cipa_requests_total", group="students", action="block") == n
            and metric(p, "cipa_requests_total", group="staff", action="allow") == n
        ),
        "metrics summed over both workers",
    )
    assert metric(p, "cipa_workers") == 2
    assert metric(p, "cipa_workers_running") == 2
    assert metric(p, "cipa_filter_operative") == 1
    assert httpx.get(f"http://127.0.0.1:{p.metrics_port}/readyz", timeout=10).status_code == 200

    verify = audit_cli(p, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "2 of 2 chain(s) intact" in verify.stdout
    search = audit_cli(p, "search", "--client", STAFF, "--format", "json")
    assert search.returncode == 0, search.stderr
    assert search.stdout.count('"group": "staff"') == n  # both workers' records, merged


def test_killed_worker_is_restarted_and_service_continues(workers: ProxyProcess) -> None:
    p = workers
    victim, survivor = worker_pids(p)
    restarts = metric(p, "cipa_worker_restarts_total")
    results: list[tuple[float, int]] = []  # (start time, status)
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            results.append((started, fetch(p.port, STAFF)))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(results) >= 50, "load before the kill")
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: any(t > killed_at for t, _ in results) and len(results) >= 300, "load after")
    wait_for(
        lambda: any(re.search(rf"\(pid {victim}\) died \(killed by SIGKILL\)", x) for x in p.log),
        "the supervisor to notice",
    )
    wait_for(lambda: len(worker_pids(p)) == 2, "the worker to be restarted")
    stop.set()
    for t in threads:
        t.join(30)

    after = [s for t, s in results if t > killed_at]
    assert after and set(after) == {200}, "every request started after the kill was answered"
    before = [s for t, s in results if t <= killed_at]
    assert before.count(0) <= len(threads)  # at most those in flight on the killed worker
    assert survivor in worker_pids(p) and victim not in worker_pids(p)
    assert metric(p, "cipa_worker_restarts_total") == restarts + 1
    wait_for(lambda: metric(p, "cipa_workers_running") == 2, "running gauge back to 2")

    # The new worker serves too (it starts accepting once its rules are loaded).
    new = next(pid for pid in worker_pids(p) if pid != survivor)
    listening = re.compile(rf"worker (\d+) \(pid {new}\): listening")
    wait_for(lambda: any(listening.search(x) for x in p.log), "the new worker to listen")
    slot = next(m.group(1) for x in p.log if (m := listening.search(x)))
    before_new = len(worker_records(p)[f"worker-{slot}"])
    for _ in range(20):
        assert {s for _, s in burst(p.port, 20)} == {403, 200}
        if len(worker_records(p)[f"worker-{slot}"]) > before_new:
            break
    assert len(worker_records(p)[f"worker-{slot}"]) > before_new

    # SIGHUP to the supervisor reloads the rules in every worker.
    reloaded = sum("rules reloaded" in x for x in p.log)
    p.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: sum("rules reloaded" in x for x in p.log) >= reloaded + 2, "both reloads")

    verify = audit_cli(p, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sigterm_stops_everything(
    tmp_path_factory: pytest.TempPathFactory, internet: Internet
) -> None:
    p = ProxyProcess.start(
        tmp_path_factory.mktemp("workers-stop"),
        {"workers": 2, "upstream": f"http://127.0.0.1:{internet.port}"},
    )
    pids = worker_pids(p)
    assert len(pids) == 2
    assert p.stop() == 0
    wait_for(lambda: "cipa-proxy stopped\n" in p.log, "the supervisor's last line")
    stopped = [x for x in p.log if re.match(r"cipa-proxy worker \d \(pid \d+\): stopped$", x)]
    assert len(stopped) == 2  # each worker stopped cleanly before the supervisor
    assert p.log.index("cipa-proxy stopped\n") > max(p.log.index(x) for x in stopped)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
