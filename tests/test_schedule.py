"""Schedules: time bands in the district's zone, and policies that change with them."""

from __future__ import annotations

import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from proxy.config import load_config
from proxy.engine import Engine
from proxy.model import Request
from proxy.rules import load_rules
from proxy.schedule import ScheduleError, parse
from proxy.yamlpos import InputError

NY = ZoneInfo("America/New_York")


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=NY)


def test_bands() -> None:
    s = parse("school", "Mon-Fri 07:30-15:30, Sat 09:00-12:00")
    assert s.active(at("2026-11-30 07:30"))  # Monday
    assert not s.active(at("2026-11-30 15:30"))  # end is exclusive
    assert s.active(at("2026-12-05 10:00")) and not s.active(
        at("2026-12-06 10:00")
    )  # Sat yes, Sun no
    night = parse("night", "Fri 22:00-06:00")
    assert night.active(at("2026-12-04 23:00")) and night.active(at("2026-12-05 05:59"))
    assert not night.active(at("2026-12-04 05:00"))
    weekend = parse("weekend", "Sat-Sun 00:00-24:00")
    assert weekend.active(at("2026-12-06 23:59"))


@pytest.mark.parametrize(
    "bad", ["Mon-Fri", "Mo-Fr 07:00-08:00", "Mon 25:00-26:00", "Mon 08:00-08:00"]
)
def test_bad_bands_are_refused(bad: str) -> None:
    with pytest.raises(ScheduleError):
        parse("x", bad)


CONFIG = """\
timezone: America/New_York
schedules:
  school_hours: Mon-Fri 07:30-15:30
groups:
  - name: staff
    policy: staff
policies:
  staff:
    block: [games]
    during:
      - schedule: school_hours
        block: [video]
      - schedule: after_school
        allow: [games]
"""


def tree(tmp_path: Path, config: str) -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    for cat in ("games", "video"):
        (tmp_path / "rules" / f"{cat}.yaml").write_text(
            f"category: {cat}\ndomains: [{cat}.example]\n"
        )
    (tmp_path / "config.yaml").write_text(config)
    return tmp_path / "config.yaml"


def test_unknown_schedule_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_config(tree(tmp_path, CONFIG))
    assert [str(p) for p in info.value.problems][0].endswith(
        "policies.staff.during[1].schedule: unknown schedule 'after_school' (defined: school_hours)"
    )


def test_policy_switches_with_the_schedule(tmp_path: Path) -> None:
    cfg = load_config(
        tree(
            tmp_path,
            CONFIG.replace(
                "  school_hours: Mon-Fri 07:30-15:30",
                "  school_hours: Mon-Fri 07:30-15:30\n  after_school: Mon-Fri 15:30-22:00",
            ),
        )
    )
    now = [at("2026-11-30 10:00").timestamp()]  # Monday morning
    engine = Engine(cfg, load_rules(cfg.rules_dir), clock=lambda: now[0])

    def action(host: str) -> str:
        return engine.decide(Request(host=host, client="10.0.0.1")).action

    assert (action("games.example"), action("video.example")) == ("block", "block")
    now[0] = at("2026-11-30 16:00").timestamp()  # after school: games open, video back to default
    assert (action("games.example"), action("video.example")) == ("allow", "allow")
    now[0] = at("2026-11-30 23:00").timestamp()  # night: the base policy
    assert (action("games.example"), action("video.example")) == ("block", "allow")
