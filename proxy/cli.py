"""The ``cipa-proxy`` command line.

Every command takes ``--config PATH`` (default ``./config.yaml``) and any
number of ``--set dotted.key=value`` overrides. Config errors exit 2 with
every problem listed as ``file:line: key: message``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .config import Config, load_config
from .yamlpos import InputError

EXIT_OK, EXIT_PROBLEMS, EXIT_CONFIG = 0, 1, 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default="config.yaml", help="path to config.yaml (default: ./config.yaml)"
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set listen.port=8080 (repeatable)",
    )  # fmt: skip


def load(args: argparse.Namespace) -> Config:
    """Load the config named by the common options; raises InputError."""
    return load_config(args.config, args.overrides)


# ---------------------------------------------------------------------------- check


def _urls(args: argparse.Namespace) -> Iterable[str]:
    yield from args.urls
    if args.file:
        fh = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        with fh:
            for line in fh:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line


def cmd_check(args: argparse.Namespace) -> int:
    from .canonical import Malformed, canonical_url
    from .engine import Engine
    from .model import BLOCK, Decision, Request

    engine = Engine.build(load(args))
    for raw in _urls(args):
        try:
            u = canonical_url(raw)
            d = engine.decide(
                Request(
                    host=u.host,
                    path=u.path,
                    scheme=u.scheme,
                    port=u.port,
                    client=args.client,
                    user=args.user,
                )
            )
        except Malformed as exc:
            g = engine.group_for(args.client, args.user)
            d = Decision(
                BLOCK, "malformed", g.name, g.policy, "engine", f"malformed URL: {exc}", raw
            )
        if args.format == "json":
            print(
                json.dumps(
                    {
                        "url": raw,
                        "action": d.action,
                        "category": d.category,
                        "group": d.group,
                        "policy": d.policy,
                        "rule": d.rule,
                        "reason": d.reason,
                    },
                )  # fmt: skip
            )
        else:
            print(
                f"{d.action.upper():5}  {raw}  [{d.category or '-'}] group={d.group} rule={d.rule}  {d.reason}"
            )
    return EXIT_OK


# ---------------------------------------------------------------------------- lint


def cmd_lint(args: argparse.Namespace) -> int:
    from .rules import load_rules

    cfg = load(args)
    try:
        rules = load_rules(cfg.rules_dir, cfg.lists.cache_dir)  # the cached index when current
    except InputError as exc:
        for p in exc.problems:
            print(f"error: {p}")
        print(f"{len(exc.problems)} error(s)")
        return EXIT_PROBLEMS
    for g in rules.garbage:
        print(f"warning: {g}")
    print(f"{'category':24} {'domains':>9} {'urls':>7} {'patterns':>8}  file")
    for info in rules.categories.values():
        print(f"{info.name:24} {info.domains:9d} {info.urls:7d} {info.patterns:8d}  {info.file}")
    used = {c for p in cfg.policies.values() for c in p.allow | p.block}
    if any(p.safesearch == "strict" for p in cfg.policies.values()):
        used.add("nosafesearch")  # blocked implicitly by strict SafeSearch
    unused = set(rules.categories) - used
    if unused:
        print(f"note: categories no policy uses: {', '.join(sorted(unused))}")
    print(
        f"ok: {len(rules.categories)} categories, {len(rules.domains)} domains, "
        f"{sum(len(v) for v in rules.urls.values())} urls, {len(rules.patterns)} patterns, "
        f"{len(rules.garbage)} ignored list line(s); loaded in {rules.load_seconds:.2f}s"
    )
    return EXIT_OK


# ---------------------------------------------------------------------------- run / ca


def cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.listen_host is not None:
        overrides.append(f"listen.host={args.listen_host}")
    if args.listen_port is not None:
        overrides.append(f"listen.port={args.listen_port}")
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    args.overrides = overrides
    cfg = load(args)
    from . import workers

    count = workers.resolve_count(cfg.workers)
    if count > 1 and not workers.is_worker():  # a supervisor of `count` processes like this one
        return workers.supervise(cfg, Path(args.config), overrides, count)
    from addons.master import run  # the only place the CLI touches mitmproxy

    return run(cfg, config_path=Path(args.config), overrides=overrides)


def cmd_ca(args: argparse.Namespace) -> int:
    from . import ca

    cfg = load(args)
    if args.ca_command == "init":
        path = ca.init(cfg.tls.confdir, force=args.force)
        print(f"district CA ready: {path}")
        return EXIT_OK
    sys.stdout.buffer.write(ca.export(cfg.tls.confdir, args.format))
    return EXIT_OK


def cmd_gateway(args: argparse.Namespace) -> int:
    from . import gateway

    cfg = load(args)
    text = gateway.render(cfg, args.format)  # raises InputError: exit 2 with file:line problems
    for w in gateway.plan(cfg).warnings:
        print(f"cipa-proxy: warning: {w}", file=sys.stderr)
    sys.stdout.write(text)
    return EXIT_OK


# ---------------------------------------------------------------------------- overrides


def cmd_overrides(args: argparse.Namespace) -> int:
    from .overrides import OverrideStore, load_key

    cfg = load(args).overrides
    store = OverrideStore(load_key(cfg.key_file), cfg.state_file)
    if args.overrides_command == "revoke":
        g = store.revoke(args.id)
        if g is None:
            print(f"no active override with id {args.id}", file=sys.stderr)
            return EXIT_PROBLEMS
        print(f"revoked {g.id}: {g.user} on {g.domain} (takes effect within seconds)")
        return EXIT_OK
    rows = store.list(include_expired=args.all)
    if not rows:
        print("no overrides" if args.all else "no active overrides")
    for g, state in rows:
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(g.expires_at))
        print(
            f"{g.id}  {state:13} {g.user:16} {g.client:15} {g.domain:30} {g.category:18} until {until}  {g.reason}"
        )
    return EXIT_OK


# ---------------------------------------------------------------------------- class exceptions


def cmd_exceptions(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from . import exceptions as ex
    from .canonical import Malformed, canonical_host

    cfg = load(args)
    path = cfg.class_exceptions
    if path is None:
        print("class_exceptions is not configured", file=sys.stderr)
        return EXIT_CONFIG
    now = time.time()
    entries = [e for e in ex.load(path) if e.until > now]  # expired ones are pruned on every write
    if args.exceptions_command == "list":
        for e in entries:
            until = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.until))
            print(f"{e.domain:30} group={e.group:12} by={e.by:12} until {until}  {e.reason}")
        if not entries:
            print("no active class exceptions")
        return EXIT_OK
    try:
        domain = canonical_host(args.domain)
    except Malformed as exc:
        print(f"cipa-proxy: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    groups = {g.name: g for g in cfg.groups}
    if args.group not in groups:
        print(
            f"cipa-proxy: unknown group {args.group!r} (defined: {', '.join(groups)})",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    if args.exceptions_command == "remove":
        kept = [e for e in entries if not (e.domain == domain and e.group == args.group)]
        ex.save(path, kept)
        print(f"removed {len(entries) - len(kept)} exception(s) for {domain} ({args.group})")
        return EXIT_OK
    granter = next((g for g in cfg.groups if args.by.lower() in g.users), None)
    if granter is None or not cfg.policies[granter.policy].override:
        print(
            f"cipa-proxy: {args.by!r} is not in a group whose policy allows exceptions (override: true)",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    tz = ZoneInfo(cfg.timezone)
    until = ex.end_of_day(now, tz)
    if args.until:
        hh, _, mm = args.until.partition(":")
        day = time.localtime(now)
        import datetime

        until = datetime.datetime(
            day.tm_year, day.tm_mon, day.tm_mday, int(hh), int(mm or 0), tzinfo=tz
        ).timestamp()
    entries.append(ex.ClassException(domain, args.group, until, args.by, args.reason or "", now))
    ex.save(path, entries)
    print(
        f"{domain} open for {args.group} until {time.strftime('%H:%M', time.localtime(until))} (by {args.by})"
    )
    return EXIT_OK


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cipa-proxy", description="Filtering forward proxy for school networks."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the filtering proxy")
    _common(p)
    p.add_argument("--listen-host", default=None)
    p.add_argument("--listen-port", type=int, default=None)
    p.add_argument(
        "--workers", default=None, metavar="N|auto",
        help="proxy processes sharing the listener (default: workers in config.yaml, else 1; auto = one per core)",
    )  # fmt: skip
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="show the decision for URLs, with the rule that made it")
    _common(p)
    p.add_argument("urls", nargs="*", metavar="URL")
    p.add_argument("--client", default="127.0.0.1", help="client IP address (selects the group)")
    p.add_argument("--user", default=None, help="authenticated user name (selects the group)")
    p.add_argument(
        "--file", default=None, help="read URLs from a file, one per line ('-' for stdin)"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "lint", help="validate config and rules; report every problem with file:line"
    )
    _common(p)
    p.set_defaults(func=cmd_lint)

    p = sub.add_parser("ca", help="the district CA used to show block pages on HTTPS")
    ca_sub = p.add_subparsers(dest="ca_command", required=True)
    q = ca_sub.add_parser("init", help="create the CA in tls.confdir (no-op if it exists)")
    _common(q)
    q.add_argument("--force", action="store_true", help="replace an existing CA")
    q.set_defaults(func=cmd_ca)
    q = ca_sub.add_parser("export", help="print the CA certificate for MDM/GPO deployment")
    _common(q)
    q.add_argument("--format", choices=("pem", "der"), default="pem")
    q.set_defaults(func=cmd_ca)

    p = sub.add_parser("gateway", help="transparent filtering on the school gateway")
    gw_sub = p.add_subparsers(dest="gateway_command", required=True)
    q = gw_sub.add_parser(
        "rules", help="print the firewall rules that send student traffic through the proxy"
    )
    _common(q)
    q.add_argument(
        "--format", choices=("nftables", "iptables", "ip6tables"), default="nftables",
        help="nftables (IPv4+IPv6, nft -f), iptables / ip6tables (iptables-restore --noflush)",
    )  # fmt: skip
    q.set_defaults(func=cmd_gateway)

    p = sub.add_parser("overrides", help="adult overrides (bona fide research): list and revoke")
    ov_sub = p.add_subparsers(dest="overrides_command", required=True)
    q = ov_sub.add_parser("list", help="active overrides (--all: also expired and revoked)")
    _common(q)
    q.add_argument("--all", action="store_true")
    q.set_defaults(func=cmd_overrides)
    q = ov_sub.add_parser("revoke", help="end an override now")
    _common(q)
    q.add_argument("id")
    q.set_defaults(func=cmd_overrides)

    p = sub.add_parser(
        "exceptions", help="class exceptions: a teacher opens a site for a group for the day"
    )
    ex_sub = p.add_subparsers(dest="exceptions_command", required=True)
    q = ex_sub.add_parser(
        "add", help="allow DOMAIN for GROUP until the end of the day (or --until HH:MM)"
    )
    _common(q)
    q.add_argument("domain")
    q.add_argument("--group", required=True)
    q.add_argument(
        "--by",
        required=True,
        help="the teacher's user name (their group's policy needs override: true)",
    )
    q.add_argument("--reason", default="")
    q.add_argument("--until", default=None, metavar="HH:MM")
    q.set_defaults(func=cmd_exceptions)
    q = ex_sub.add_parser("remove", help="remove the exceptions for DOMAIN and GROUP")
    _common(q)
    q.add_argument("domain")
    q.add_argument("--group", required=True)
    q.set_defaults(func=cmd_exceptions)
    q = ex_sub.add_parser("list", help="active class exceptions")
    _common(q)
    q.set_defaults(func=cmd_exceptions)

    try:
        from . import audit_cli
    except ImportError:  # pragma: no cover - the audit commands ship with the package
        audit_cli = None
    if audit_cli is not None:
        before = set(sub.choices)
        audit_cli.register(sub)
        for name in set(sub.choices) - before:
            _add_common_recursively(sub.choices[name])

    from . import lists_cli  # lists update|import|stats

    lists_cli.register(sub)
    _add_common_recursively(sub.choices["lists"])

    from . import learned  # learned list|approve|reject (the image classifier's category)

    learned.register(sub)
    _add_common_recursively(sub.choices["learned"])
    return parser


def _add_common_recursively(p: argparse.ArgumentParser) -> None:
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        if not any("--config" in a.option_strings for a in p._actions):
            _common(p)
        return
    for child in subs[0].choices.values():
        _add_common_recursively(child)


def _optimized_reexec(argv: Sequence[str] | None) -> None:
    """Run the proxy under ``python -O``.

    mitmproxy wraps every layer's event handler in a debug-only type check
    (``proxy/utils.py expect``) and type-checks every HTTP message it builds
    (``http.py MessageData.__post_init__``), both under ``if __debug__``. Those
    checks are for mitmproxy's own development; -O drops them and saves about a
    tenth of the CPU per request (bench/RESULTS.md). ``CIPA_DEBUG_CHECKS=1``
    keeps them (and any asserts) for debugging.
    """
    if argv is not None or sys.flags.optimize or os.environ.get("CIPA_DEBUG_CHECKS") == "1":
        return
    if sys.argv[1:2] != ["run"]:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-O", "-m", "proxy", *sys.argv[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    _optimized_reexec(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print("cipa-proxy: configuration problem(s):", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
