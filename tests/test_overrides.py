"""Override grants: signed, scoped, expiring, revocable, tamper-evident."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.overrides import OverrideStore, load_key


def store(tmp_path: Path, now: list[float]) -> OverrideStore:
    return OverrideStore(
        load_key(tmp_path / "k"), tmp_path / "grants.json", clock=lambda: now[0], recheck=0
    )


def test_scope_expiry_and_revocation(tmp_path: Path) -> None:
    now = [1000.0]
    s = store(tmp_path, now)
    g = s.grant("tess", "10.0.0.5", "example.org", "games", "lesson", minutes=1)
    assert s.find("tess", "10.9.9.9", "example.org") == g  # a signed-in user: by user, anywhere
    assert s.find(None, "10.0.0.5", "example.org") == g  # not signed in: by address
    assert s.find("other", "10.0.0.5", "example.org") is None
    assert s.find("tess", "10.0.0.5", "other.org") is None
    now[0] += 61
    assert s.find("tess", "10.0.0.5", "example.org") is None
    now[0] = 1000.0
    assert s.revoke(g.id) is not None and s.find("tess", "", "example.org") is None
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600


def test_a_tampered_grant_is_void(tmp_path: Path) -> None:
    now = [1000.0]
    s = store(tmp_path, now)
    s.grant("tess", "10.0.0.5", "example.org", "games", "lesson", minutes=1)
    data = json.loads((tmp_path / "grants.json").read_text())
    data[0]["expires_at"] += 86400  # someone extends it by hand
    (tmp_path / "grants.json").write_text(json.dumps(data))
    now[0] += 120
    fresh = store(tmp_path, now)
    assert fresh.find("tess", "", "example.org") is None
    assert [state for _, state in fresh.list()] == ["BAD SIGNATURE"]
    (tmp_path / "grants.json").write_text("{not json")
    assert (
        store(tmp_path, now).find("tess", "", "example.org") is None
    )  # garbled file: nothing honoured
