"""The ``learned_adult`` category: sites the image classifier learned, and staff review of them.

Two files in ``rules_dir``:

- ``learned_adult.yaml``: an ordinary category file (``domains:``), which the
  proxy's hot reload applies within seconds of a change, like any rule file.
  Each learned domain carries a comment with its status and evidence summary.
  Domains staff add by hand are kept on every rewrite.
- ``learned_adult.state.json``: the review state the YAML cannot hold: for each
  domain ``pending`` / ``approved`` / ``rejected``, when it was learned, the
  evidence (image SHA-256, score, URL without query), who reviewed it and when.
  A rejected domain leaves the YAML and is never learned again.

Writers (every proxy process, ``cipa-proxy learned``) take an exclusive
``flock`` on ``.learned_adult.lock`` and replace both files atomically
(write to a temporary file, then ``rename``), so a reload never reads half a
file and two writers never lose each other's changes.

This module imports no mitmproxy; ``register`` adds the CLI commands.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

CATEGORY = "learned_adult"
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
STATUSES = (PENDING, APPROVED, REJECTED)

HEADER = """\
# learned_adult: sites that served explicit images, learned by cipa-proxy's image classifier
# (config.yaml: images, and a policy with images.mode: learn or block). The proxy writes this
# file; every change is applied by hot reload within seconds, like any rule file.
#
# Review with:   cipa-proxy learned list
#                cipa-proxy learned approve DOMAIN   (keep it blocked; marks it reviewed)
#                cipa-proxy learned reject DOMAIN    (remove it; never learned again)
# The evidence (image SHA-256 and score, never the image) is in learned_adult.state.json and in
# the audit trail (records with "type": "learned"). Domains added here by hand are kept.
"""
DESCRIPTION = "Sites that served explicit images (learned by the image classifier; staff review: cipa-proxy learned)"


@dataclass
class Entry:
    domain: str
    status: str = PENDING
    learned_at: str = ""  # ISO 8601 UTC
    hits: int = 0
    max_score: float = 0.0
    evidence: list[dict] = field(default_factory=list)
    reviewed_by: str | None = None
    reviewed_at: str | None = None
    note: str = ""


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class LearnedStore:
    def __init__(self, rules_dir: Path):
        self.rules_dir = Path(rules_dir)
        self.yaml_path = self.rules_dir / f"{CATEGORY}.yaml"
        self.state_path = self.rules_dir / f"{CATEGORY}.state.json"
        self.lock_path = self.rules_dir / f".{CATEGORY}.lock"

    # ------------------------------------------------------------------ reading

    def entries(self) -> dict[str, Entry]:
        """Every domain with review state (pending, approved, rejected)."""
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        out = {}
        for d, e in (raw.get("domains") or {}).items():
            known = {k: v for k, v in e.items() if k in Entry.__dataclass_fields__}
            out[d] = Entry(**{**known, "domain": d})
        return out

    def file_domains(self) -> list[str]:
        """The domains the YAML file blocks now (learned and hand-added)."""
        try:
            data = yaml.safe_load(self.yaml_path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            return []
        return [str(d).strip().lower() for d in (data.get("domains") or []) if str(d).strip()]

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _replace(self, path: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(OSError):
                os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _save(self, entries: dict[str, Entry], manual: list[str]) -> None:
        state = {
            "version": 1,
            "category": CATEGORY,
            "domains": {
                d: {k: v for k, v in asdict(e).items() if k != "domain"}
                for d, e in sorted(entries.items())
            },
        }
        self._replace(self.state_path, json.dumps(state, indent=2, ensure_ascii=False) + "\n")
        self._replace(self.yaml_path, render(entries, manual))

    def _manual(self, entries: dict[str, Entry]) -> list[str]:
        """Domains in the YAML that learning did not put there (staff added them by hand)."""
        return [d for d in self.file_domains() if d not in entries]

    def learn(self, domain: str, evidence: list[dict], now: float | None = None) -> bool:
        """Add a learned domain (pending review). False if it is already listed or was rejected."""
        now = time.time() if now is None else now
        with self._locked():
            entries = self.entries()
            manual = self._manual(entries)
            if domain in entries or domain in manual:
                return False
            scores = [float(e.get("image_score", 0.0)) for e in evidence]
            entries[domain] = Entry(
                domain, PENDING, _iso(now), len(evidence), max(scores, default=0.0), evidence
            )
            self._save(entries, manual)
            return True

    def review(
        self, domain: str, status: str, by: str, note: str = "", now: float | None = None
    ) -> Entry:
        """Approve (keep blocking) or reject (unblock, never learn again) a domain.

        Rejecting a domain that was never learned is allowed: it will never be learned.
        """
        if status not in (APPROVED, REJECTED):
            raise ValueError(f"status must be {APPROVED} or {REJECTED}")
        now = time.time() if now is None else now
        with self._locked():
            entries = self.entries()
            manual = self._manual(entries)
            e = entries.get(domain)
            if e is None:
                if status == APPROVED and domain not in manual:
                    raise KeyError(domain)
                e = entries[domain] = Entry(domain, status, note="added by review")
                manual = [d for d in manual if d != domain]
            e.status, e.reviewed_by, e.reviewed_at = status, by, _iso(now)
            if note:
                e.note = note
            self._save(entries, manual)
            return e

    def blocked(self) -> list[str]:
        """Domains the category file lists (pending + approved + hand-added)."""
        return self.file_domains()


def render(entries: dict[str, Entry], manual: list[str]) -> str:
    """The category file: learned (pending/approved) domains with a comment each, then hand-added ones."""
    lines = [HEADER, f"category: {CATEGORY}", f"description: {json.dumps(DESCRIPTION)}"]
    listed = [e for e in sorted(entries.values(), key=lambda e: e.domain) if e.status != REJECTED]
    if not listed and not manual:
        lines.append("domains: []")
    else:
        lines.append("domains:")
        for e in listed:
            what = f"{e.status} since {e.learned_at}" if e.learned_at else e.status
            lines.append(
                f"  - {json.dumps(e.domain)}  # {what}, {e.hits} images, max score {e.max_score:.3f}"
            )
        for d in manual:
            lines.append(f"  - {json.dumps(d)}")
    return "\n".join(lines) + "\n"


def empty_file() -> str:
    return render({}, [])


# ---------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``learned list|approve|reject`` (``--config`` / ``--set`` are added by cli.py)."""
    p = subparsers.add_parser(
        "learned",
        help="sites learned from explicit images: list, approve, reject",
        description="Review the learned_adult category the image classifier writes (images.mode: learn).",
    )
    sub = p.add_subparsers(dest="learned_command", required=True, metavar="COMMAND")
    q = sub.add_parser("list", help="learned domains (--all: rejected ones too)")
    q.add_argument("--all", action="store_true", help="include rejected domains")
    q.add_argument("--format", choices=("text", "json"), default="text")
    q.set_defaults(func=cmd_learned)
    for name, what in (
        ("approve", "keep DOMAIN blocked and mark it reviewed"),
        ("reject", "unblock DOMAIN now and never learn it again"),
    ):
        q = sub.add_parser(name, help=what)
        q.add_argument("domain")
        q.add_argument("--by", default=None, help="who reviewed it (default: the login name)")
        q.add_argument("--note", default="", help="why (kept in the state file)")
        q.set_defaults(func=cmd_learned)


def _who() -> str:
    return os.environ.get("SUDO_USER") or getpass.getuser()


def cmd_learned(args: argparse.Namespace) -> int:
    from .canonical import Malformed
    from .cli import EXIT_OK, EXIT_PROBLEMS, load
    from .lists import parse_domain

    cfg = load(args)
    store = LearnedStore(cfg.rules_dir)
    if args.learned_command == "list":
        entries = store.entries()
        rows = [e for e in entries.values() if args.all or e.status != REJECTED]
        manual = [d for d in store.file_domains() if d not in entries]
        rows.sort(key=lambda e: (e.learned_at or "", e.domain))
        if args.format == "json":
            out: list[dict[str, Any]] = [asdict(e) for e in rows]
            out += [{"domain": d, "status": "manual"} for d in manual]
            print(json.dumps(out, indent=2, ensure_ascii=False))
            return EXIT_OK
        if not rows and not manual:
            print("no learned domains")
        for e in rows:
            reviewed = f" by {e.reviewed_by} {e.reviewed_at}" if e.reviewed_by else ""
            print(
                f"{e.domain:32} {e.status + reviewed:40} learned {e.learned_at or '-':20} "
                f"{e.hits} images, max score {e.max_score:.3f}"
            )
            for ev in e.evidence:
                print(
                    f"    {ev.get('image_sha256', '')}  {ev.get('image_score', 0):.3f}  {ev.get('url', '')}"
                )
        for d in manual:
            print(f"{d:32} manual (added to {store.yaml_path.name} by hand)")
        return EXIT_OK
    try:
        domain = parse_domain(args.domain.strip())
    except Malformed as exc:
        print(f"cipa-proxy: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    status = APPROVED if args.learned_command == "approve" else REJECTED
    try:
        e = store.review(domain, status, args.by or _who(), args.note)
    except KeyError:
        print(f"cipa-proxy: {domain} is not in {store.yaml_path}", file=sys.stderr)
        return EXIT_PROBLEMS
    if status == REJECTED:
        print(
            f"rejected {domain}: unblocked within seconds (hot reload); it will not be learned again"
        )
    else:
        print(f"approved {domain} (by {e.reviewed_by}): stays blocked")
    return EXIT_OK


__all__ = ["CATEGORY", "Entry", "LearnedStore", "empty_file", "register", "render"]
