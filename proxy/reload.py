"""Which files a running proxy depends on, and whether any of them changed.

Polling stat() of a few dozen files every couple of seconds is cheap, needs no
inotify support in the container, and sees edits made through ConfigMap
symlink swaps as well as in-place saves.
"""

from __future__ import annotations

from pathlib import Path

from .config import Config

Snapshot = dict[str, tuple[int, int] | None]


def watched_paths(config_path: Path, config: Config, rule_files: list[str]) -> list[Path]:
    """config.yaml, every rule file, and every list they include (``rule_files`` as RuleSet.files names them)."""
    paths = {config_path.resolve()}
    rules_dir = config.rules_dir
    if rules_dir.is_dir():
        paths.update(p.resolve() for p in rules_dir.glob("*.yaml"))
    paths.update((rules_dir.parent / f).resolve() for f in rule_files)
    paths.add((rules_dir / "safesearch" / "hosts.tsv").resolve())
    if config.class_exceptions is not None:
        paths.add(config.class_exceptions.resolve())
    if config.content.phrases_dir.is_dir():  # weighted phrase lists (content scoring)
        paths.update(p.resolve() for p in config.content.phrases_dir.glob("*.yaml"))
    return sorted(paths)


def snapshot(paths: list[Path], rules_dir: Path | None = None) -> Snapshot:
    """(mtime_ns, size) per path, None for a missing file; new rule files count as changes."""
    snap: Snapshot = {}
    for p in paths:
        try:
            st = p.stat()
            snap[str(p)] = (st.st_mtime_ns, st.st_size)
        except OSError:
            snap[str(p)] = None
    if rules_dir is not None and rules_dir.is_dir():
        for p in rules_dir.glob("*.yaml"):
            key = str(p.resolve())
            if key not in snap:
                try:
                    st = p.stat()
                    snap[key] = (st.st_mtime_ns, st.st_size)
                except OSError:
                    pass
    return snap


# Settings the running process cannot change without a restart.
RESTART_KEYS = ("listen", "metrics", "upstream", "tls.confdir", "audit.path")


def restart_needed(old: Config, new: Config) -> list[str]:
    """The RESTART_KEYS whose values differ: reported to the admin, not half-applied."""
    changed = []
    pairs = {
        "listen": (old.listen, new.listen),
        "metrics": (old.metrics, new.metrics),
        "upstream": (old.upstream, new.upstream),
        "tls.confdir": (old.tls.confdir, new.tls.confdir),
        "audit.path": (old.audit.path, new.audit.path),
    }
    for key in RESTART_KEYS:
        a, b = pairs[key]
        if a != b:
            changed.append(key)
    return changed
