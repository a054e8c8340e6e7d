"""``cipa-proxy audit search|report|verify|export``: the audit trail for people.

The readers are principals, counsellors and E-rate auditors as much as IT
staff, so the defaults favour them: times shown in the district's time zone,
a report that is one self-contained HTML page (it can be e-mailed or printed;
it loads nothing from the network), CSV that is safe to open in a
spreadsheet. Every command streams the files (plain and gzipped alike) in
constant memory, and shows a progress bar only when stderr is a terminal so
that pipes and cron mail stay clean.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import html
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta, tzinfo
from itertools import islice
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from .audit import (
    audit_files,
    chain_dirs,
    load_pseudonym_key,
    pseudonym,
    pseudonym_key_path,
    scan,
    split_chains,
    verify,
)

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

#: CSV columns, in the order a reviewer reads them; constant so output can stream.
COLUMNS = (
    "ts", "id", "client", "user", "group", "method", "url", "host", "action", "category",
    "rule", "reason", "status", "bytes_in", "bytes_out", "ms", "ua", "sni", "tls",
    "safesearch", "override",
)  # fmt: skip
BY_CHOICES = ("category", "group", "host", "client", "user")


# ------------------------------------------------------------------ arguments


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``audit`` command and its subcommands to the top-level parser."""
    audit = subparsers.add_parser(
        "audit",
        help="search, report on, verify and export the audit trail",
        description="Review the audit trail: search, report (text or HTML), verify the hash chain, export.",
    )
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    p = sub.add_parser("search", help="find records (times shown in the district's time zone)")
    _dir_arg(p)
    _filter_args(p)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument(
        "--limit", type=_positive, default=None, metavar="N", help="stop after N records"
    )
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "report", help="totals and top blocked items; --html writes a page with charts"
    )
    _dir_arg(p)
    _filter_args(p)
    p.add_argument(
        "--by",
        choices=BY_CHOICES,
        default="category",
        help="group blocked requests by (default: category)",
    )
    p.add_argument(
        "--top", type=_positive, default=10, metavar="N", help="rows per table (default: 10)"
    )
    p.add_argument(
        "--html", default=None, metavar="FILE", help="also write a self-contained HTML report"
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("verify", help="check the hash chain; exit 1 and name the first broken line")
    _dir_arg(p)
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files or directories (default: the audit directory)",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("export", help="write matching records as CSV or JSON lines for others")
    _dir_arg(p)
    _filter_args(p)
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    p.add_argument(
        "-o", "--output", default=None, metavar="FILE", help="write here instead of stdout"
    )
    p.add_argument("--limit", type=_positive, default=None, metavar="N")
    p.set_defaults(func=cmd_export)


def _positive(text: str) -> int:
    n = int(text)
    if n <= 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return n


def _dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir",
        default=None,
        metavar="PATH",
        help="audit directory (default: audit.path from the config)",
    )


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since", default=None, metavar="T",
        help="from T: 2024-05-01, '2024-05-01 08:00', 2h, 7d, today, yesterday (local time)",
    )  # fmt: skip
    p.add_argument(
        "--until", default=None, metavar="T", help="up to T (a date alone includes that whole day)"
    )
    p.add_argument("--client", default=None, metavar="IP")
    p.add_argument("--user", default=None)
    p.add_argument("--group", default=None)
    p.add_argument("--host", default=None, help="host or domain (subdomains match too)")
    p.add_argument("--category", default=None)
    p.add_argument("--action", choices=("block", "allow"), default=None)


# ------------------------------------------------------------------ context


class _Context:
    """What every handler needs: the directory, the display time zone, the
    pseudonym key (to let staff search by a real address) and the district name."""

    def __init__(self, args: argparse.Namespace) -> None:
        from .config import load_config

        cfg = None
        if args.dir:
            self.dir = Path(args.dir)
            try:  # only for the time zone, the key and the name; --dir works without a config
                cfg = load_config(
                    getattr(args, "config", "config.yaml"), getattr(args, "overrides", ())
                )
            except Exception:
                cfg = None
        else:
            cfg = load_config(
                getattr(args, "config", "config.yaml"), getattr(args, "overrides", ())
            )
            self.dir = Path(cfg.audit.path)
        tz_name = cfg.audit.timezone if cfg else _header_tz(self.dir)
        zone = _zone(tz_name)
        self.tz: tzinfo = zone or datetime.now().astimezone().tzinfo or UTC
        self.tz_name = tz_name if zone else "local time"
        self.district = cfg.district.name if cfg and getattr(cfg, "district", None) else ""
        self.key: bytes | None = None
        if cfg and cfg.audit.pseudonymize:
            try:
                self.key = load_pseudonym_key(pseudonym_key_path(cfg.audit), create=False)
            except (OSError, ValueError):
                self.key = None

    def filters(self, args: argparse.Namespace) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("client", "user", "group", "host", "category", "action"):
            v = getattr(args, name, None)
            if v is None:
                continue
            if name in ("client", "user") and self.key and not v.startswith("ps-"):
                v = (v, pseudonym(self.key, v))  # records may hold either form
            out[name] = v
        return out

    def window(self, args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
        since = parse_when(args.since, self.tz) if args.since else None
        until = parse_when(args.until, self.tz, end=True) if args.until else None
        return since, until

    def local(self, ts: Any) -> str:
        """A record's UTC ts as 'YYYY-MM-DD HH:MM:SS' in the district's zone."""
        try:
            dt = datetime.fromisoformat(str(ts))
        except ValueError:
            return str(ts)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S")

    def day(self, ts: Any) -> date | None:
        try:
            dt = datetime.fromisoformat(str(ts))
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.astimezone(self.tz).date()


def _zone(name: str | None) -> tzinfo | None:
    try:
        return ZoneInfo(name) if name else None
    except (ValueError, KeyError, OSError):
        return None


def _header_tz(directory: Path) -> str | None:
    """The writer's time zone from the newest file's header record, for --dir without a config."""
    try:
        files = (
            [f for d in chain_dirs(directory) for f in audit_files([d])]
            if directory.is_dir()
            else []
        )
        for path in reversed(files):
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rb") as f:
                first = f.readline()
            if first:
                tz = json.loads(first).get("tz")
                return tz if isinstance(tz, str) else None
    except (OSError, ValueError, EOFError, AttributeError):
        return None
    return None


_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)(?:\s*ago)?$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(
    text: str, tz: tzinfo, *, end: bool = False, now: datetime | None = None
) -> datetime:
    """A point in time from what an admin types.

    Relative (``90m``, ``2h``, ``7d``, ``1w``: that long before now), ``now``,
    ``today``, ``yesterday``, a date (its local midnight; with ``end`` the
    midnight after, so ``--until 2024-05-01`` includes that day), or an ISO
    date-time (naive ones are local to the district, not UTC, because that is
    the clock the school day runs on).
    """
    t = text.strip().lower()
    now = now or datetime.now(UTC)
    if t == "now":
        return now
    if t in ("today", "yesterday"):
        d = now.astimezone(tz).date() - timedelta(days=1 if t == "yesterday" else 0)
        return _midnight(d + timedelta(days=1) if end else d, tz)
    m = _REL.match(t)
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    try:
        if len(t) == 10:
            d = date.fromisoformat(t)
            return _midnight(d + timedelta(days=1) if end else d, tz)
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: use 2024-05-01, '2024-05-01 08:30', 2h, 7d, today or yesterday"
        ) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=tz)


def _midnight(d: date, tz: tzinfo) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=tz)


class _Progress:
    """A one-line progress bar on stderr, only on a terminal, at most 10 updates/s."""

    def __init__(self, label: str, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.on = self.stream.isatty()
        self.label = label
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.on:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        frac = min(1.0, done / total) if total else 1.0
        bar = "#" * int(30 * frac)
        self.stream.write(
            f"\r{self.label} [{bar:<30}] {frac * 100:5.1f}%  {done / 1e6:,.0f}/{total / 1e6:,.0f} MB"
        )
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _records(
    ctx: _Context, args: argparse.Namespace, progress: _Progress
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    since, until = ctx.window(args)
    return scan([ctx.dir], since, until, progress=progress, **ctx.filters(args))


def _setup(args: argparse.Namespace, label: str) -> tuple[_Context, _Progress] | int:
    ctx = _Context(args)
    if not ctx.dir.is_dir():
        print(f"cipa-proxy audit: no audit directory at {ctx.dir}", file=sys.stderr)
        return EXIT_USAGE
    try:
        ctx.window(args)
    except ValueError as exc:
        print(f"cipa-proxy audit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return ctx, _Progress(label)


# ------------------------------------------------------------------ search / export


def _cell(v: Any) -> str:
    """A CSV cell that a spreadsheet will not execute: URLs and user agents come
    from students, and ``=HYPERLINK(...)`` in a cell is a formula (CSV injection)."""
    if v is None:
        return ""
    if isinstance(v, dict | list):
        v = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    s = str(v)
    if s and s[0] in "=+-@\t\r" and not isinstance(v, int | float):
        return "'" + s
    return s


def _write_csv(out: IO[str], records: Iterable[dict[str, Any]]) -> int:
    w = csv.writer(out)
    w.writerow(COLUMNS)
    n = 0
    for rec in records:
        w.writerow([_cell(rec.get(c)) for c in COLUMNS])
        n += 1
    return n


_TABLE = (
    ("time", 19),
    ("client", 15),
    ("user", 12),
    ("group", 10),
    ("action", 6),
    ("category", 14),
    ("status", 6),
)


def cmd_search(args: argparse.Namespace) -> int:
    """Matching records, oldest first; streams, so ``--limit`` is only a convenience."""
    setup = _setup(args, "searching")
    if isinstance(setup, int):
        return setup
    ctx, progress = setup
    out = sys.stdout
    n = 0
    try:
        it = islice((rec for _line, rec in _records(ctx, args, progress)), args.limit)
        if args.format == "csv":
            n = _write_csv(out, it)
        elif args.format == "json":
            out.write("[")
            for rec in it:
                out.write(",\n" if n else "\n")
                out.write(json.dumps(rec, ensure_ascii=False))
                n += 1
            out.write("\n]\n" if n else "]\n")
        else:
            out.write("  ".join(f"{name:<{w}}" for name, w in _TABLE) + "  url\n")
            for rec in it:
                vals = (ctx.local(rec.get("ts")), *(rec.get(k) for k, _ in _TABLE[1:]))
                row = "  ".join(f"{_show(v):<{w}}" for v, (_, w) in zip(vals, _TABLE, strict=True))
                out.write(f"{row}  {_show(rec.get('url') or rec.get('host'))}\n")
                n += 1
    finally:
        progress.close()
    if args.format == "table":
        print(f"{n} record(s); times in {ctx.tz_name}", file=sys.stderr)
    return EXIT_OK


def _show(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def cmd_export(args: argparse.Namespace) -> int:
    """Records for someone else (counsel, an auditor): CSV, or the original JSON lines."""
    setup = _setup(args, "exporting")
    if isinstance(setup, int):
        return setup
    ctx, progress = setup
    n = 0
    with contextlib.ExitStack() as stack:
        stack.callback(progress.close)
        out: IO[str] = sys.stdout
        if args.output:
            out = stack.enter_context(open(args.output, "w", encoding="utf-8", newline=""))
        pairs = islice(_records(ctx, args, progress), args.limit)
        if args.format == "jsonl":
            for line, _rec in pairs:
                out.write(line.decode("utf-8", "replace"))
                out.write("\n")
                n += 1
        else:
            n = _write_csv(out, (rec for _line, rec in pairs))
    if args.output:
        print(f"wrote {n} record(s) to {args.output}", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------ verify


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every chain link holds, 1 at the first break (named file:line and why)."""
    paths = [Path(p) for p in args.paths] if args.paths else [_Context(args).dir]
    chains = split_chains(paths)
    if len(chains) > 1:  # worker directories (run --workers N): each is its own chain
        return _verify_chains(paths, chains)
    try:
        files = audit_files(paths)
    except FileNotFoundError as exc:
        print(
            f"cipa-proxy audit verify: {exc.filename}: no such file or directory", file=sys.stderr
        )
        return EXIT_USAGE
    if not files:
        print(
            f"cipa-proxy audit verify: no audit files in {', '.join(map(str, paths))}",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    progress = _Progress("verifying")
    try:
        res = verify(files, progress=progress)
    finally:
        progress.close()
    if res.ok:
        print(res)
        for note in res.notes:
            print(f"  note: {note}")
        return EXIT_OK
    print(res)
    print(f"  ({res.lines} line(s) read in {res.files} file(s) before the break)")
    return EXIT_PROBLEMS


def _verify_chains(paths: list[Path], chains: list[list[Path]]) -> int:
    """Verify every chain on its own (one writer each): exit 1 if any is broken or empty."""
    bad = 0
    for chain in chains:
        label = ", ".join(str(p) for p in chain)
        try:
            files = audit_files(chain)
        except FileNotFoundError as exc:
            print(
                f"cipa-proxy audit verify: {exc.filename}: no such file or directory",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if not files:
            print(f"{label}: no audit files")
            bad += 1
            continue
        progress = _Progress(f"verifying {label}")
        try:
            res = verify(files, progress=progress)
        finally:
            progress.close()
        print(f"{label}: {res}")
        if res.ok:
            for note in res.notes:
                print(f"  note: {note}")
        else:
            bad += 1
            print(f"  ({res.lines} line(s) read in {res.files} file(s) before the break)")
    print(f"{len(chains) - bad} of {len(chains)} chain(s) intact")
    return EXIT_PROBLEMS if bad else EXIT_OK


# ------------------------------------------------------------------ report


class _Stats:
    """Streaming aggregates; memory grows with distinct keys (hosts, clients), not records."""

    def __init__(self, ctx: _Context, by: str) -> None:
        self.ctx = ctx
        self.by = by
        self.total = 0
        self.actions: Counter[str] = Counter()
        self.requests_by: Counter[str] = Counter()
        self.blocked_by: Counter[str] = Counter()
        self.blocked_hosts: Counter[str] = Counter()
        self.daily: defaultdict[date, Counter[str]] = defaultdict(Counter)
        self.first: str | None = None
        self.last: str | None = None

    def add(self, rec: dict[str, Any]) -> None:
        self.total += 1
        action = str(rec.get("action") or "unknown")
        self.actions[action] += 1
        key = _show(rec.get(self.by))
        self.requests_by[key] += 1
        ts = rec.get("ts")
        if isinstance(ts, str):
            if self.first is None or ts < self.first:
                self.first = ts
            if self.last is None or ts > self.last:
                self.last = ts
        if action == "block":
            self.blocked_by[key] += 1
            self.blocked_hosts[_show(rec.get("host"))] += 1
            day = self.ctx.day(ts)
            if day is not None:
                self.daily[day][_show(rec.get("category"))] += 1


def cmd_report(args: argparse.Namespace) -> int:
    """Totals and the top blocked items, as text; ``--html`` adds a page with charts."""
    setup = _setup(args, "reading")
    if isinstance(setup, int):
        return setup
    ctx, progress = setup
    stats = _Stats(ctx, args.by)
    try:
        for _line, rec in _records(ctx, args, progress):
            stats.add(rec)
    finally:
        progress.close()
    sys.stdout.write(_text_report(stats, args))
    if args.html:
        Path(args.html).write_text(_html_report(stats, args), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    return EXIT_OK


def _period(stats: _Stats, args: argparse.Namespace) -> str:
    lo = args.since or (stats.ctx.local(stats.first) if stats.first else "-")
    hi = args.until or (stats.ctx.local(stats.last) if stats.last else "-")
    return f"{lo} .. {hi} ({stats.ctx.tz_name})"


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


def _text_report(stats: _Stats, args: argparse.Namespace) -> str:
    t = stats.total
    blocked = stats.actions.get("block", 0)
    lines = [
        f"Audit report  {_period(stats, args)}",
        f"Requests  {t:>12,}",
        f"  allowed {stats.actions.get('allow', 0):>12,}  {_pct(stats.actions.get('allow', 0), t):>6}",
        f"  blocked {blocked:>12,}  {_pct(blocked, t):>6}",
    ]
    for action, n in sorted(stats.actions.items()):
        if action not in ("allow", "block"):
            lines.append(f"  {action:<7} {n:>12,}  {_pct(n, t):>6}")
    lines += [
        "",
        f"Top {args.top} blocked by {args.by}",
        f"{'blocked':>10}  {'share':>6}  {'requests':>10}  {args.by}",
    ]
    for key, n in stats.blocked_by.most_common(args.top):
        lines.append(f"{n:>10,}  {_pct(n, blocked):>6}  {stats.requests_by[key]:>10,}  {key}")
    if not stats.blocked_by:
        lines.append("  (no blocked requests)")
    return "\n".join(lines) + "\n"


_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
)
_OTHER = "#999999"


def _svg_daily(stats: _Stats) -> tuple[str, str]:
    """Stacked bars: blocks per category per local day (top categories + other). (svg, legend)"""
    if not stats.daily:
        return "<p>No blocked requests in this period.</p>", ""
    days = sorted(stats.daily)
    first, last = days[0], days[-1]
    span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    totals: Counter[str] = Counter()
    for c in stats.daily.values():
        totals.update(c)
    top = [k for k, _ in totals.most_common(len(_PALETTE))]
    if len(totals) > len(top):
        top = top[: len(_PALETTE) - 1]
    colour = {k: _PALETTE[i] for i, k in enumerate(top)}
    has_other = len(totals) > len(top)
    peak = max(sum(stats.daily[d].values()) for d in days)
    left, bottom, plot_h = 50, 40, 220
    bw = max(3.0, min(36.0, 900 / len(span)))
    width = int(left + bw * len(span) + 20)
    height = plot_h + bottom + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="Blocked requests per category per day">'
    ]
    for frac in (0, 0.5, 1):
        y = 10 + plot_h * (1 - frac)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{round(peak * frac):,}</text>'
        )
    step = max(1, len(span) // 12)
    for i, d in enumerate(span):
        x = left + i * bw
        y = 10 + plot_h
        segs = [(k, stats.daily[d].get(k, 0), colour[k]) for k in top]
        if has_other:
            segs.append(
                ("other", sum(n for k, n in stats.daily[d].items() if k not in colour), _OTHER)
            )
        for name, n, col in segs:
            if not n:
                continue
            h = plot_h * n / peak
            y -= h
            parts.append(
                f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(1.0, bw - 1):.1f}" height="{h:.1f}" fill="{col}">'
                f"<title>{d.isoformat()} {html.escape(name)}: {n:,}</title></rect>"
            )
        if i % step == 0:
            parts.append(
                f'<text x="{x + bw / 2:.1f}" y="{10 + plot_h + 16}" text-anchor="middle" font-size="10">'
                f"{d.strftime('%m-%d')}</text>"
            )
    parts.append("</svg>")
    legend = [(k, colour[k], totals[k]) for k in top]
    if has_other:
        legend.append(("other", _OTHER, sum(n for k, n in totals.items() if k not in colour)))
    leg = "".join(
        f'<span class="key"><i style="background:{c}"></i>{html.escape(k)} ({n:,})</span>'
        for k, c, n in legend
    )
    return "".join(parts), f'<p class="legend">{leg}</p>'


def _svg_hbars(items: list[tuple[str, int]], label: str) -> str:
    """Horizontal bars for a top-N list (hosts): long names fit on the left."""
    if not items:
        return "<p>None.</p>"
    peak = max(n for _, n in items)
    row, label_w, bar_w = 22, 300, 420
    height = row * len(items) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 80}" height="{height}" role="img" '
        f'aria-label="{html.escape(label)}">'
    ]
    for i, (name, n) in enumerate(items):
        y = 4 + i * row
        w = bar_w * n / peak
        short = name if len(name) <= 42 else name[:40] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" font-size="12">{html.escape(short)}'
            f"<title>{html.escape(name)}</title></text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{max(1.0, w):.1f}" height="{row - 6}" fill="#d62728"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" font-size="12">{n:,}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _html_table(header: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_report(stats: _Stats, args: argparse.Namespace) -> str:
    """One page, no scripts, no external resources: it can be e-mailed, archived, printed."""
    t = stats.total
    blocked = stats.actions.get("block", 0)
    title = "Internet filtering report" + (f": {stats.ctx.district}" if stats.ctx.district else "")
    daily_svg, legend = _svg_daily(stats)
    totals = _html_table(
        ("", "requests", "share"),
        [("All requests", f"{t:,}", "100%" if t else "-")]
        + [
            (a, f"{n:,}", _pct(n, t))
            for a, n in sorted(stats.actions.items(), key=lambda kv: -kv[1])
        ],
    )
    by_rows = [
        (k, f"{n:,}", _pct(n, blocked), f"{stats.requests_by[k]:,}")
        for k, n in stats.blocked_by.most_common(args.top)
    ]
    by_table = _html_table((args.by, "blocked", "share of blocks", "all requests"), by_rows)
    hosts = _svg_hbars(stats.blocked_hosts.most_common(args.top), "Most blocked hosts")
    generated = datetime.now(stats.ctx.tz).strftime("%Y-%m-%d %H:%M")
    filters = ", ".join(
        f"{k}={getattr(args, k)}"
        for k in ("client", "user", "group", "host", "category", "action")
        if getattr(args, k, None)
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1000px;color:#222;padding:0 1em}}
h1{{font-size:1.5em;margin-bottom:.2em}} h2{{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}}
.meta{{color:#555}} table{{border-collapse:collapse;margin:.5em 0}}
th,td{{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}} td:nth-child(n+2){{text-align:right}}
.legend .key{{margin-right:1.2em;white-space:nowrap}} .legend i{{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}}
svg{{max-width:100%;height:auto}} @media print{{body{{margin:0}}}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">Period: {html.escape(_period(stats, args))}{html.escape(" · Filter: " + filters) if filters else ""}<br>
Generated {html.escape(generated)} by cipa-proxy from the audit trail in {html.escape(str(stats.ctx.dir))}.</p>
<h2>Totals</h2>
{totals}
<h2>Blocked requests per category per day</h2>
{daily_svg}
{legend}
<h2>Most blocked hosts</h2>
{hosts}
<h2>Top {args.top} blocked by {html.escape(args.by)}</h2>
{by_table if by_rows else "<p>No blocked requests in this period.</p>"}
<p class="meta">Blocked requests are what the filter stopped; a blocked request is not by itself evidence of intent
(pages load many resources, and some blocks are automatic). Check individual records with
<code>cipa-proxy audit search</code> and the integrity of the trail with <code>cipa-proxy audit verify</code>.</p>
</body></html>
"""


__all__ = [
    "COLUMNS",
    "cmd_export",
    "cmd_report",
    "cmd_search",
    "cmd_verify",
    "parse_when",
    "register",
]
