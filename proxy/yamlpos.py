"""YAML loading that remembers where every value came from.

Admins edit config and rules by hand; an error that says "line 14, key
policies.students.block" is fixed in seconds, one that says "bad value" is a
support call. PyYAML's composed node tree carries marks, so we build plain
Python data from it and keep a side table of paths to line numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Key = tuple[str | int, ...]
FROM_COMMAND_LINE = -1  # the "line" of a value given with --set


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, located for a person to fix."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class InputError(Exception):
    """A file (config or rules) that cannot be used as it is; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class Located:
    """Plain data plus the line of every key path in it (1-based)."""

    data: Any
    file: str
    lines: dict[Key, int] = field(default_factory=dict)

    def line(self, path: Key) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def problem(self, path: Key, message: str) -> Problem:
        line = self.line(path)
        if line == FROM_COMMAND_LINE:
            return Problem("--set", None, dotted(path), message)
        return Problem(self.file, line, dotted(path), message)


def dotted(path: Key) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _build(node: yaml.Node, path: Key, lines: dict[Key, int], file: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            key = (
                yaml.safe_load(yaml.serialize(knode))
                if knode.tag != "tag:yaml.org,2002:str"
                else knode.value
            )
            if not isinstance(key, str):
                key = str(key)
            if key in out:
                raise InputError(
                    [
                        Problem(
                            file, knode.start_mark.line + 1, dotted((*path, key)), "duplicate key"
                        )
                    ]
                )
            out[key] = _build(vnode, (*path, key), lines, file)
            lines[(*path, key)] = knode.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, (*path, i), lines, file) for i, v in enumerate(node.value)]
    # Scalars: let the safe constructor resolve the tag (int, bool, null, ...).
    return (
        yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" else node.value
    )


def load_yaml(text: str, file: str) -> Located:
    """Parse ``text``; syntax errors become an InputError naming file and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        msg = getattr(exc, "problem", None) or str(exc)
        raise InputError([Problem(file, line, "", f"YAML syntax error: {msg}")]) from None
    lines: dict[Key, int] = {}
    data = _build(node, (), lines, file) if node is not None else None
    return Located(data, file, lines)


def load_yaml_file(path: Path, display: str | None = None) -> Located:
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError([Problem(name, None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError([Problem(name, None, "", f"cannot read: {exc}")]) from None
    return load_yaml(text, name)
