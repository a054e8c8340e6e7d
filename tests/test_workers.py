"""``run --workers N`` without processes: the count, the config key, the sockets,
and the audit commands over one chain per worker directory."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from proxy import audit, cli, workers
from proxy.config import AuditConfig, load_config
from proxy.yamlpos import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_count() -> None:
    assert workers.resolve_count(None) == 1
    assert workers.resolve_count(3) == 3
    assert workers.resolve_count("2") == 2
    assert workers.resolve_count("auto") == workers.cpu_count() >= 1
    with pytest.raises(ValueError):
        workers.resolve_count(0)


def test_config_workers_key() -> None:
    cfg = ROOT / "config.yaml"
    assert load_config(cfg).workers == 1
    assert load_config(cfg, ["workers=4"]).workers == 4
    assert load_config(cfg, ["workers=auto"]).workers == "auto"
    for bad in ("workers=0", "workers=many", "workers=true"):
        with pytest.raises(InputError) as exc:
            load_config(cfg, [bad])
        assert "workers" in str(exc.value.problems[0])


def test_run_parser_accepts_workers() -> None:
    args = cli.build_parser().parse_args(["run", "--workers", "auto"])
    assert args.workers == "auto"


def test_shared_listener_is_one_queue_for_every_holder() -> None:
    sock = workers.bind_listener("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        dup = socket.socket(fileno=os.dup(sock.fileno()))  # what a worker holds
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, addr = dup.accept()
            assert addr[0] == client.getsockname()[0]  # the peer is the real client
            conn.close()
        dup.close()
    finally:
        sock.close()


def test_reuse_port_reservation_does_not_accept() -> None:
    holder = workers.bind_listener("127.0.0.1", 0, reuse_port=True, listen=False)
    port = holder.getsockname()[1]
    worker = workers.bind_listener("127.0.0.1", port, reuse_port=True)
    try:
        for _ in range(5):  # all go to the listening member of the group
            with socket.create_connection(("127.0.0.1", port)):
                worker.accept()[0].close()
    finally:
        worker.close()
        holder.close()


def _write(directory: Path, clients: list[str], t0: float) -> None:
    clock = iter(t0 + i for i in range(100))
    log = audit.AuditLog(AuditConfig(path=directory, timezone="UTC"), clock=lambda: next(clock))
    for i, c in enumerate(clients):
        log.record({"ts": audit.iso_utc(t0 + 2 * i + 1), "client": c, "action": "allow"})
    log.close()


def test_worker_chains_are_found_merged_and_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "audit"
    _write(workers.worker_dir(base, 0), ["10.0.0.1", "10.0.0.3"], 1_790_000_000)
    _write(workers.worker_dir(base, 1), ["10.0.0.2", "10.0.0.4"], 1_790_000_001)
    assert audit.chain_dirs(base) == [base / "worker-0", base / "worker-1"]

    merged = [r["client"] for r in audit.iter_records([base])]
    assert merged == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]  # by ts across workers
    assert [r["client"] for r in audit.iter_records([base], client="10.0.0.4")] == ["10.0.0.4"]

    config = tmp_path / "config.yaml"
    config.write_text((ROOT / "config.yaml").read_text())
    (tmp_path / "rules").symlink_to(ROOT / "rules")
    argv = ["audit", "verify", "--config", str(config), "--set", f"audit.path={base}"]
    assert cli.main(argv) == 0
    assert "2 of 2 chain(s) intact" in capsys.readouterr().out

    # Tampering with one worker's file is found, and named, without hiding the other.
    f = next((base / "worker-1").glob("audit-*.jsonl"))
    lines = f.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["client"] = "10.9.9.9"
    lines[1] = json.dumps(rec, separators=(",", ":"))
    f.write_text("\n".join(lines) + "\n")
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "worker-0: OK" in out and "worker-1: BROKEN" in out and "1 of 2 chain(s)" in out
