"""Class exceptions: a teacher opens one site for a student group until the end of the day.

Written by ``cipa-proxy exceptions add`` into a small YAML file that the proxy
hot-reloads; every exception names who added it, why and until when, and the
proxy writes an audit record when it starts applying one (and marks each
request it lets through). Expired entries are ignored and pruned on the
next write.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from .canonical import Malformed, canonical_host
from .yamlpos import InputError, Problem


@dataclass(frozen=True, slots=True)
class ClassException:
    domain: str
    group: str
    until: float  # Unix time
    by: str
    reason: str = ""
    added: float = 0.0
    line: int = 0  # where it sits in the file, for explanations

    def key(self) -> tuple[str, str, float, str]:
        return (self.domain, self.group, self.until, self.by)


def end_of_day(now: float, tz: ZoneInfo) -> float:
    day = datetime.datetime.fromtimestamp(now, tz).date()
    return datetime.datetime.combine(day, datetime.time(23, 59, 59), tz).timestamp()


def load(path: Path) -> list[ClassException]:
    """All entries (expired ones included); a broken file is an InputError with its line."""
    if not path.is_file():
        return []
    try:
        nodes = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(
            [Problem(str(path), mark.line + 1 if mark else None, "", f"YAML syntax error: {exc}")]
        ) from None
    if nodes is None:
        return []
    out, problems = [], []
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for i, (item, node) in enumerate(zip(data or [], getattr(nodes, "value", []), strict=False)):
        line = node.start_mark.line + 1
        try:
            out.append(
                ClassException(
                    domain=canonical_host(str(item["domain"])),
                    group=str(item["group"]),
                    until=float(item["until"]),
                    by=str(item["by"]),
                    reason=str(item.get("reason", "")),
                    added=float(item.get("added", 0)),
                    line=line,
                )
            )
        except (KeyError, TypeError, ValueError, Malformed) as exc:
            problems.append(Problem(str(path), line, f"[{i}]", f"bad exception entry: {exc}"))
    if problems:
        raise InputError(problems)
    return out


def save(path: Path, entries: list[ClassException]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rows = [{k: v for k, v in asdict(e).items() if k != "line"} for e in entries]
    text = (
        "# Class exceptions, written by `cipa-proxy exceptions add`; the proxy reloads this file.\n"
    )
    text += yaml.safe_dump(rows, sort_keys=False)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def matching(
    entries: list[ClassException], group: str, host: str, now: float
) -> ClassException | None:
    """The active exception for this group covering ``host`` (the domain or a subdomain)."""
    for e in entries:
        if (
            e.group == group
            and e.until > now
            and (host == e.domain or host.endswith("." + e.domain))
        ):
            return e
    return None
