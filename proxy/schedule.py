"""Named time bands (``school_hours: Mon-Fri 07:30-15:30``), evaluated in the district's time zone.

A band is a set of weekdays and a [start, end) time of day; ``22:00-06:00``
wraps past midnight (the night belongs to the day it started). Several bands
may be joined with ``,``: ``Mon-Thu 07:30-15:30, Fri 07:30-12:00``.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_BAND = re.compile(
    r"^\s*(?P<days>[A-Za-z]{3}(?:\s*-\s*[A-Za-z]{3})?(?:\s*\+\s*[A-Za-z]{3}(?:\s*-\s*[A-Za-z]{3})?)*)"
    r"\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)


class ScheduleError(ValueError):
    pass


def _minutes(text: str) -> int:
    h, m = (int(x) for x in text.split(":"))
    if not (0 <= h <= 24 and 0 <= m < 60) or h * 60 + m > 24 * 60:
        raise ScheduleError(f"bad time {text!r}")
    return h * 60 + m


def _days(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.lower().replace(" ", "").split("+"):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ScheduleError(f"bad day in {text!r} (use Mon Tue Wed Thu Fri Sat Sun)")
        a, b = DAYS.index(first), DAYS.index(last or first)
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Band:
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int

    def contains(self, weekday: int, minute: int) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # wraps midnight: the evening part on a listed day, the morning part on the day after
        return (weekday in self.days and minute >= self.start) or (
            (weekday - 1) % 7 in self.days and minute < self.end
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    bands: tuple[Band, ...]

    def active(self, when: datetime.datetime) -> bool:
        minute = when.hour * 60 + when.minute
        return any(b.contains(when.weekday(), minute) for b in self.bands)


def parse(name: str, text: str) -> Schedule:
    """``"Mon-Fri 07:30-15:30, Sat 09:00-12:00"`` -> Schedule; raises ScheduleError with the reason."""
    bands = []
    for piece in text.split(","):
        m = _BAND.match(piece)
        if not m:
            raise ScheduleError(
                f"cannot read {piece.strip()!r} (expected e.g. 'Mon-Fri 07:30-15:30')"
            )
        start, end = _minutes(m.group("start")), _minutes(m.group("end"))
        if start == end:
            raise ScheduleError(f"empty time band {piece.strip()!r}")
        bands.append(Band(_days(m.group("days")), start, end))
    return Schedule(name, tuple(bands))


def active_names(schedules: tuple[Schedule, ...], now: float, tz: ZoneInfo) -> frozenset[str]:
    when = datetime.datetime.fromtimestamp(now, tz)
    return frozenset(s.name for s in schedules if s.active(when))
