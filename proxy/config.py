"""config.yaml: groups, policies, TLS, audit and metrics, as typed frozen objects.

Everything is validated at load: an unknown key, a wrong type, a bad CIDR or
a policy naming a category that does not exist is an error naming file, line
and key, and all problems are reported together, so an admin fixes a file in
one pass. Frozen objects mean a loaded config can be shared with the event
loop and swapped whole on reload.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from .identity import LdapSettings
from .schedule import Schedule, ScheduleError
from .schedule import parse as parse_schedule
from .yamlpos import FROM_COMMAND_LINE, InputError, Key, Located, Problem, dotted, load_yaml_file

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_CLIENTS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "::1/128",
    "fc00::/7",
)


LISTEN_MODES = ("explicit", "transparent", "both")


@dataclass(frozen=True)
class ListenConfig:
    host: str = "0.0.0.0"
    port: int = 3128  # the explicit proxy (browsers configured to use it)
    mode: str = "explicit"  # explicit | transparent | both
    transparent_port: int = 3129  # where the gateway's REDIRECT rules send TCP 80/443

    @property
    def explicit(self) -> bool:
        return self.mode in ("explicit", "both")

    @property
    def transparent(self) -> bool:
        return self.mode in ("transparent", "both")


@dataclass(frozen=True)
class GatewayConfig:
    """What ``cipa-proxy gateway rules`` needs to write the router's firewall rules."""

    interfaces: tuple[str, ...] = ()  # student-facing interfaces ("vlan*" / "vlan+" is a prefix)
    subnets: tuple[Network, ...] = ()  # student source networks (when not matched by interface)
    exempt: tuple[Network, ...] = ()  # never redirected, as source or destination (servers)
    dns: tuple[str, ...] = ()  # the district resolver: one IPv4 and/or one IPv6 address, or "local"
    source: str = ""  # "config.yaml:80", for messages


@dataclass(frozen=True)
class TLSConfig:
    inspect: str = "selective"  # none | selective | all
    confdir: Path = Path("ca")
    upstream_ca: Path | None = None
    connect_ports: tuple[int, ...] = (443,)
    never_inspect: tuple[str, ...] = ()  # categories passed through undecrypted
    inspect_domains: tuple[str, ...] = ()  # always decrypt these (and subdomains)
    verify_upstream: bool = True


@dataclass(frozen=True)
class AuditConfig:
    path: Path = Path("audit")
    fsync_interval: float = 1.0
    on_error: str = "block"  # block | allow
    retention_days: int = 400
    max_bytes: int = 1 << 30
    timezone: str = "UTC"
    log_allowed: bool = True
    pseudonymize: bool = False
    pseudonym_key_file: Path | None = None
    redact_query: bool = False
    log_search_terms: bool = False  # record q= of blocked searches (off: search terms are personal)


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = "0.0.0.0:9464"  # host:port; empty disables

    @property
    def host_port(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class SafeSearchConfig:
    addresses: tuple[
        tuple[str, str], ...
    ] = ()  # name -> "ip[:port]" pins for SafeSearch front ends
    cache_seconds: float = 60.0


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"  # text | json
    level: str = "info"


@dataclass(frozen=True)
class DistrictConfig:
    name: str = "School District"
    contact: str = "Contact your school's IT help desk."
    logo: Path | None = None  # image shown on the block and setup pages (inlined, <= 256 KiB)
    review_email: str = ""  # "request a review" mailto on the block page; empty: no link
    setup_host: str = "cipa-proxy.setup"  # the proxy serves the CA setup page here; empty: off


@dataclass(frozen=True)
class Downloads:
    block_extensions: tuple[str, ...] = ()
    block_mime: tuple[str, ...] = ()  # media types; "type/*" for a whole type (proxy/downloads.py)
    allow_sites: tuple[str, ...] = ()  # domains or host/path prefixes: no download rule there
    block_audio_video: bool = False  # audio/video downloads (not playback inside a page)
    source: str = ""  # "config.yaml:70", for block reasons


@dataclass(frozen=True)
class ContentConfig:
    """Page content scoring (proxy/content.py); each policy sets its ``content_threshold``."""

    max_bytes: int = 512 << 10  # larger (or compressed larger) bodies stream through unscanned
    max_decoded_bytes: int = 4 << 20  # at most this much decoded text is scored per page
    phrases_dir: Path = Path("rules/phrases")
    phrases: Any = field(default=None, compare=False, repr=False)  # the compiled PhraseSet


@dataclass(frozen=True)
class ScheduledChange:
    """While ``schedule`` is active, these categories move to allow/block and the default may change."""

    schedule: str
    allow: frozenset[str] = frozenset()
    block: frozenset[str] = frozenset()
    default: str | None = None


@dataclass(frozen=True)
class AuthConfig:
    backend: str = "none"  # none | htpasswd | ldap
    htpasswd: Path | None = None
    ldap: LdapSettings | None = None
    required_for: tuple[Network, ...] = ()  # client ranges that must sign in
    cache_seconds: float = 300.0
    realm: str = "School Internet"


UT1_SOURCE = "https://dsi.ut-capitole.fr/blacklists/download/blacklists.tar.gz"


@dataclass(frozen=True)
class ListsConfig:
    """``cipa-proxy lists update`` and the compiled index cache (proxy/index.py, lists_cli.py)."""

    source: str = UT1_SOURCE  # the UT1 blacklists tarball (a URL or a local file)
    cache_dir: Path | None = None  # compiled rule index cache; None: no cache
    max_archive_bytes: int = 512 << 20  # download / archive size limit
    max_member_bytes: int = 1 << 30  # one archive member, uncompressed (adult/domains: 125 MB)
    max_total_bytes: int = 4 << 30  # the whole archive, uncompressed
    min_keep_ratio: float = 0.5  # refuse an update that shrinks a list below this share (--force)


@dataclass(frozen=True)
class OverrideConfig:
    minutes: float = 60.0
    key_file: Path | None = None  # HMAC key for override tokens (created 0600 if missing)
    state_file: Path | None = None  # active grants, shared with `cipa-proxy overrides`


@dataclass(frozen=True)
class ImagesConfig:
    """The image classifier (proxy/images.py); each policy picks its ``images.mode``."""

    workers: int = 1  # classifier processes
    priority: str = "idle"  # idle: only CPU time nothing else wants (SCHED_IDLE) | normal
    queue: int = 32  # images waiting beyond those being classified; more are skipped (queue_full)
    cache_entries: int = 10_000  # verdicts kept by SHA-256
    min_bytes: int = 4096  # smaller images (icons, pixels) are not classified
    max_bytes: int = 5 << 20  # nor larger ones
    max_wait_ms: int = 250  # block mode: longest hold of an image for its verdict
    on_timeout: str = "pass"  # block mode, classifier busy or late: pass | block
    threshold: float = 0.8  # score at or above which an image is explicit
    learn_min_hits: int = 3  # different explicit images from one site ...
    learn_window: float = 3600.0  # ... within this many seconds: the site is learned


@dataclass(frozen=True)
class Policy:
    name: str
    allow: frozenset[str] = frozenset()
    block: frozenset[str] = frozenset()
    default: str = "allow"  # allow | block (walled garden)
    safesearch: str = "strict"  # strict | moderate | off
    ip_literals: str = "block"  # block | allow
    raw_tunnels: str = (
        "block"  # a CONNECT tunnel carrying neither TLS nor HTTP (SSH, VPNs): block | allow
    )
    downloads: Downloads = Downloads()
    override: bool = False
    source: str = ""  # "config.yaml:40", for explanations
    during: tuple[ScheduledChange, ...] = ()
    images_mode: str = "off"  # off | monitor | learn | block (proxy/images.py)
    content_threshold: int = 0  # page content score that blocks (proxy/content.py); 0: not scored


@dataclass(frozen=True)
class Group:
    name: str
    policy: str
    clients: tuple[Network, ...] = ()
    users: frozenset[str] = frozenset()
    source: str = ""
    catch_all: bool = False  # neither ``clients`` nor ``users`` given: matches everyone

    def matches(
        self,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
        user: str | None,
        member_of: frozenset[str] = frozenset(),
    ) -> bool:
        """A group that names neither clients nor users matches everyone; empty lists match no one.
        A signed-in user also matches the groups their directory membership maps to."""
        if self.catch_all or self.name in member_of:
            return True
        if user is not None and user.lower() in self.users:
            return True
        return ip is not None and any(
            ip in net for net in self.clients if net.version == ip.version
        )


@dataclass(frozen=True)
class Config:
    source: Path
    listen: ListenConfig = ListenConfig()
    clients: tuple[Network, ...] = ()
    groups: tuple[Group, ...] = ()
    policies: dict[str, Policy] = field(default_factory=dict)
    rules_dir: Path = Path("rules")
    upstream: str | None = None
    on_error: str = "block"
    tls: TLSConfig = TLSConfig()
    audit: AuditConfig = AuditConfig()
    metrics: MetricsConfig = MetricsConfig()
    district: DistrictConfig = DistrictConfig()
    log: LogConfig = LogConfig()
    safesearch: SafeSearchConfig = SafeSearchConfig()
    auth: AuthConfig = AuthConfig()
    trusted_proxies: tuple[Network, ...] = ()
    timezone: str = "UTC"
    schedules: tuple[Schedule, ...] = ()
    overrides: OverrideConfig = OverrideConfig()
    workers: int | str = 1  # proxy processes for `run` (proxy/workers.py); "auto" = one per core
    gateway: GatewayConfig = GatewayConfig()
    lists: ListsConfig = ListsConfig()
    images: ImagesConfig = ImagesConfig()
    content: ContentConfig = ContentConfig()
    class_exceptions: Path | None = (
        None  # teacher-granted class exceptions (cipa-proxy exceptions add)
    )

    def client_allowed(self, ip: str) -> bool:
        return in_networks(ip, self.clients)


def client_address(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address as groups and ranges see it: zone id dropped, IPv4-mapped IPv6 as IPv4
    (dual-stack listeners report IPv4 clients as ``::ffff:a.b.c.d``); None when not an address."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def in_networks(addr: str, nets: Iterable[Network]) -> bool:
    ip = client_address(addr)
    return ip is not None and any(ip in n for n in nets if n.version == ip.version)


# --------------------------------------------------------------------------- validation


class _Reader:
    """Pulls typed values out of the located data, collecting problems instead of stopping."""

    def __init__(self, loc: Located):
        self.loc = loc
        self.problems: list[Problem] = []

    def fail(self, path: Key, message: str) -> None:
        self.problems.append(self.loc.problem(path, message))

    def where(self, path: Key) -> str:
        line = self.loc.line(path)
        return f"{self.loc.file}:{line}" if line else self.loc.file

    def mapping(self, value: Any, path: Key, allowed: Iterable[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {_kind(value)}")
            return {}
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                self.fail((*path, key), f"unknown key (expected one of: {', '.join(allowed)})")
        return value

    def get(
        self, m: dict[str, Any], path: Key, key: str, conv: Callable[[Any, Key], Any], default: Any
    ) -> Any:
        if key not in m or m[key] is None and default is None:
            return default
        return conv(m[key], (*path, key))

    # converters: each returns the converted value or the default after recording a problem
    def str_(self, v: Any, path: Key) -> str:
        if isinstance(v, str):
            return v
        self.fail(path, f"expected a string, got {_kind(v)}")
        return ""

    def int_(self, v: Any, path: Key, lo: int = 0, hi: int = 1 << 62) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(path, f"expected an integer, got {_kind(v)}")
            return lo
        if not lo <= v <= hi:
            self.fail(path, f"{v} is out of range {lo}..{hi}")
        return v

    def port(self, v: Any, path: Key) -> int:
        return self.int_(v, path, 0, 65535)

    def float_(self, v: Any, path: Key) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            self.fail(path, f"expected a non-negative number, got {v!r}")
            return 0.0
        return float(v)

    def bool_(self, v: Any, path: Key) -> bool:
        if isinstance(v, bool):
            return v
        self.fail(path, f"expected true or false, got {v!r}")
        return False

    def choice(self, *choices: str) -> Callable[[Any, Key], str]:
        def conv(v: Any, path: Key) -> str:
            if v is False and "off" in choices:
                return "off"  # YAML 1.1 reads a bare `off` as false
            if isinstance(v, str) and v in choices:
                return v
            self.fail(path, f"expected one of {', '.join(choices)}, got {v!r}")
            return choices[0]

        return conv

    def path_(self, v: Any, path: Key) -> Path:
        s = self.str_(v, path)
        p = Path(s).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def list_(self, item: Callable[[Any, Key], Any]) -> Callable[[Any, Key], tuple]:
        def conv(v: Any, path: Key) -> tuple:
            if isinstance(v, str | int) and not isinstance(v, bool):
                v = [v]  # a single value where a list is expected is a common, harmless shorthand
            if not isinstance(v, list):
                self.fail(path, f"expected a list, got {_kind(v)}")
                return ()
            return tuple(item(x, (*path, i)) for i, x in enumerate(v))

        return conv

    def cidr(self, v: Any, path: Key) -> Network | None:
        try:
            return ipaddress.ip_network(str(v), strict=False)
        except ValueError:
            self.fail(path, f"not a valid CIDR or address: {v!r}")
            return None

    def name(self, v: Any, path: Key) -> str:
        s = self.str_(v, path)
        if s and not s.replace("_", "").replace("-", "").isalnum():
            self.fail(path, f"names may hold letters, digits, '-' and '_' only: {s!r}")
        return s


def _kind(v: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "nothing",
    }.get(type(v), type(v).__name__)


def _host_port_ok(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep) and port.isdigit() and 0 <= int(port) <= 65535 and bool(host)


def known_categories(rules_dir: Path) -> set[str]:
    """Category names are the stems of the rule files: cheap to list, no parsing needed."""
    return {p.stem for p in rules_dir.glob("*.yaml")} if rules_dir.is_dir() else set()


# Categories the engine itself produces (not from rule files) that policies may name.
BUILTIN_CATEGORIES = frozenset({"malformed", "ip_literal", "filter_error"})


def _parse(loc: Located, base: Path) -> Config:
    r = _Reader(loc)
    r.base = base  # type: ignore[attr-defined]
    top_keys = (
        "listen", "clients", "groups", "policies", "rules_dir", "upstream", "on_error",
        "tls", "audit", "metrics", "district", "log", "safesearch", "auth",
        "trusted_proxies", "timezone", "schedules", "overrides", "class_exceptions", "workers", "gateway",
        "images", "content", "lists",
    )  # fmt: skip
    top = r.mapping(loc.data, (), top_keys)
    P: Key = ()

    lm = r.mapping(top.get("listen"), ("listen",), ("host", "port", "mode", "transparent_port"))
    listen = ListenConfig(
        host=r.get(lm, ("listen",), "host", r.str_, "0.0.0.0"),
        port=r.get(lm, ("listen",), "port", r.port, 3128),
        mode=r.get(lm, ("listen",), "mode", r.choice(*LISTEN_MODES), "explicit"),
        transparent_port=r.get(lm, ("listen",), "transparent_port", r.port, 3129),
    )
    if listen.mode == "both" and listen.port == listen.transparent_port:
        r.fail(("listen", "transparent_port"), "must differ from listen.port (0 only for one)")
    gateway = _gateway(r, top.get("gateway"))
    clients = r.get(top, P, "clients", r.list_(r.cidr), None)
    if clients is None:
        clients = tuple(ipaddress.ip_network(c) for c in DEFAULT_CLIENTS)
    rules_dir = r.get(top, P, "rules_dir", r.path_, base / "rules")
    upstream = r.get(top, P, "upstream", r.str_, None) or None
    if upstream and not upstream.startswith(("http://", "https://")):
        r.fail(("upstream",), f"expected http://host:port, got {upstream!r}")
    on_error = r.get(top, P, "on_error", r.choice("block", "allow"), "block")
    workers = top.get("workers", 1)
    if workers != "auto" and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        r.fail(("workers",), f"expected a number of processes (1 or more) or auto, got {workers!r}")
        workers = 1

    tk = ("tls",)
    tm = r.mapping(
        top.get("tls"),
        tk,
        (
            "inspect",
            "confdir",
            "upstream_ca",
            "connect_ports",
            "never_inspect",
            "inspect_domains",
            "verify_upstream",
        ),
    )
    tls = TLSConfig(
        inspect=r.get(tm, tk, "inspect", r.choice("selective", "none", "all"), "selective"),
        confdir=r.get(tm, tk, "confdir", r.path_, base / "ca"),
        upstream_ca=r.get(tm, tk, "upstream_ca", r.path_, None),
        connect_ports=r.get(tm, tk, "connect_ports", r.list_(r.port), (443,)),
        never_inspect=r.get(tm, tk, "never_inspect", r.list_(r.name), ()),
        inspect_domains=tuple(
            d.lower().rstrip(".") for d in r.get(tm, tk, "inspect_domains", r.list_(r.str_), ())
        ),
        verify_upstream=r.get(tm, tk, "verify_upstream", r.bool_, True),
    )

    ak = ("audit",)
    am = r.mapping(top.get("audit"), ak, AuditConfig.__dataclass_fields__)
    audit = AuditConfig(
        path=r.get(am, ak, "path", r.path_, base / "audit"),
        fsync_interval=r.get(am, ak, "fsync_interval", r.float_, 1.0),
        on_error=r.get(am, ak, "on_error", r.choice("block", "allow"), "block"),
        retention_days=r.get(am, ak, "retention_days", r.int_, 400),
        max_bytes=r.get(am, ak, "max_bytes", r.int_, 1 << 30),
        timezone=r.get(am, ak, "timezone", r.str_, "UTC"),
        log_allowed=r.get(am, ak, "log_allowed", r.bool_, True),
        pseudonymize=r.get(am, ak, "pseudonymize", r.bool_, False),
        pseudonym_key_file=r.get(am, ak, "pseudonym_key_file", r.path_, None),
        redact_query=r.get(am, ak, "redact_query", r.bool_, False),
        log_search_terms=r.get(am, ak, "log_search_terms", r.bool_, False),
    )
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(audit.timezone)
    except Exception:
        r.fail((*ak, "timezone"), f"unknown time zone {audit.timezone!r}")

    mk = ("metrics",)
    mm = r.mapping(top.get("metrics"), mk, ("listen",))
    metrics = MetricsConfig(listen=r.get(mm, mk, "listen", r.str_, "0.0.0.0:9464"))
    if metrics.listen and not _host_port_ok(metrics.listen):
        r.fail((*mk, "listen"), f"expected host:port, got {metrics.listen!r}")

    dk = ("district",)
    dm = r.mapping(
        top.get("district"), dk, ("name", "contact", "logo", "review_email", "setup_host")
    )

    def _logo(v: Any, path: Key) -> Path | None:
        p = r.path_(v, path)
        if p.suffix.lower() not in (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp"):
            r.fail(path, f"{p.name}: expected a .png, .svg, .jpg, .gif or .webp image")
        elif not p.is_file():
            r.fail(path, f"no such file: {p}")
        elif p.stat().st_size > 256 * 1024:
            r.fail(path, f"{p.name} is larger than 256 KiB (it is inlined into every block page)")
        return p

    def _email(v: Any, path: Key) -> str:
        s = r.str_(v, path).strip()
        if s and not re.fullmatch(r"[^\s@?&#<>]+@[^\s@?&#<>]+", s):
            r.fail(path, f"expected an e-mail address, got {s!r}")
        return s

    def _setup_host(v: Any, path: Key) -> str:
        s = r.str_(v, path).strip().lower().rstrip(".")
        label = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
        if s and not re.fullmatch(rf"{label}(?:\.{label})+", s):
            r.fail(path, f"expected a host name with a dot (e.g. cipa-proxy.setup), got {s!r}")
        return s

    district = DistrictConfig(
        name=r.get(dm, dk, "name", r.str_, DistrictConfig.name),
        contact=r.get(dm, dk, "contact", r.str_, DistrictConfig.contact),
        logo=r.get(dm, dk, "logo", _logo, None),
        review_email=r.get(dm, dk, "review_email", _email, ""),
        setup_host=r.get(dm, dk, "setup_host", _setup_host, DistrictConfig.setup_host),
    )

    lk = ("log",)
    lg = r.mapping(top.get("log"), lk, ("format", "level"))
    log_cfg = LogConfig(
        format=r.get(lg, lk, "format", r.choice("text", "json"), "text"),
        level=r.get(lg, lk, "level", r.choice("debug", "info", "warning", "error"), "info"),
    )

    sk = ("safesearch",)
    sm = r.mapping(top.get("safesearch"), sk, ("addresses", "cache_seconds"))
    addrs = r.mapping(sm.get("addresses"), (*sk, "addresses"), sm.get("addresses") or {})
    safesearch = SafeSearchConfig(
        addresses=tuple(
            sorted((str(k).lower(), r.str_(v, (*sk, "addresses", k))) for k, v in addrs.items())
        ),
        cache_seconds=r.get(sm, sk, "cache_seconds", r.float_, 60.0),
    )

    categories = known_categories(rules_dir) | BUILTIN_CATEGORIES
    if not rules_dir.is_dir():
        r.fail(("rules_dir",), f"rules directory {rules_dir} does not exist")

    def category(v: Any, path: Key) -> str:
        s = r.name(v, path)
        if s and rules_dir.is_dir() and s not in categories:
            r.fail(path, f"unknown category {s!r} (no {s}.yaml in {rules_dir})")
        return s

    for i, c in enumerate(tls.never_inspect):
        category(c, (*tk, "never_inspect", i))

    timezone = r.get(top, P, "timezone", r.str_, "UTC")
    try:
        ZoneInfo(timezone)
    except Exception:
        r.fail(("timezone",), f"unknown time zone {timezone!r}")
    schedules: dict[str, Schedule] = {}
    sraw = r.mapping(top.get("schedules"), ("schedules",), top.get("schedules") or {})
    for sname, stext in sraw.items():
        try:
            schedules[sname] = parse_schedule(sname, r.str_(stext, ("schedules", sname)))
        except ScheduleError as exc:
            r.fail(("schedules", sname), str(exc))

    def scheduled(v: Any, path: Key) -> ScheduledChange | None:
        m = r.mapping(v, path, ("schedule", "allow", "block", "default"))
        sname = r.get(m, path, "schedule", r.str_, "")
        if sname not in schedules:
            r.fail(
                (*path, "schedule"),
                f"unknown schedule {sname!r} (defined: {', '.join(sorted(schedules)) or 'none'})",
            )
        default = r.get(m, path, "default", r.choice("allow", "block"), None)
        return ScheduledChange(
            sname,
            frozenset(r.get(m, path, "allow", r.list_(category), ())),
            frozenset(r.get(m, path, "block", r.list_(category), ())),
            default,
        )

    policies: dict[str, Policy] = {}
    pm = r.mapping(top.get("policies"), ("policies",), top.get("policies") or {})
    policy_keys = (
        "allow",
        "block",
        "default",
        "safesearch",
        "ip_literals",
        "raw_tunnels",
        "downloads",
        "override",
        "during",
        "content_threshold",
        "images",
    )
    for pname, pval in pm.items():
        pk: Key = ("policies", pname)
        r.name(pname, pk)
        p = r.mapping(pval, pk, policy_keys)
        allow = frozenset(r.get(p, pk, "allow", r.list_(category), ()))
        block = frozenset(r.get(p, pk, "block", r.list_(category), ()))
        for both in sorted(allow & block):
            r.fail((*pk, "block"), f"category {both!r} is in both allow and block")
        dk2: Key = (*pk, "downloads")
        dl = r.mapping(
            p.get("downloads"),
            dk2,
            ("block_extensions", "block_mime", "allow_sites", "block_audio_video"),
        )
        exts = r.get(dl, dk2, "block_extensions", r.list_(r.str_), ())
        mimes = tuple(m.lower() for m in r.get(dl, dk2, "block_mime", r.list_(r.str_), ()))
        for i, m in enumerate(mimes):
            if m.count("/") != 1 or not all(m.split("/")):
                r.fail((*dk2, "block_mime", i), f"expected type/subtype or type/*, got {m!r}")
        downloads = Downloads(
            tuple(e.lower().lstrip(".") for e in exts),
            mimes,
            tuple(
                s.lower().rstrip(".").removeprefix("https://").removeprefix("http://")
                for s in r.get(dl, dk2, "allow_sites", r.list_(r.str_), ())
            ),
            r.get(dl, dk2, "block_audio_video", r.bool_, False),
            r.where(dk2),
        )
        policies[pname] = Policy(
            name=pname,
            allow=allow,
            block=block,
            default=r.get(p, pk, "default", r.choice("allow", "block"), "allow"),
            safesearch=r.get(p, pk, "safesearch", r.choice("strict", "moderate", "off"), "strict"),
            ip_literals=r.get(p, pk, "ip_literals", r.choice("block", "allow"), "block"),
            raw_tunnels=r.get(p, pk, "raw_tunnels", r.choice("block", "allow"), "block"),
            downloads=downloads,
            override=r.get(p, pk, "override", r.bool_, False),
            content_threshold=r.get(p, pk, "content_threshold", r.int_, 0),
            source=r.where(pk),
            during=tuple(
                c for c in r.get(p, pk, "during", r.list_(scheduled), ()) if c is not None
            ),
            images_mode=_policy_images(r, p, pk, block),
        )
    if not policies:
        r.fail(("policies",), "at least one policy is required")

    content = _content(r, top.get("content"), rules_dir, categories)

    ak2 = ("auth",)
    am2 = r.mapping(
        top.get("auth"),
        ak2,
        ("backend", "htpasswd", "ldap", "required_for", "cache_seconds", "realm"),
    )
    backend = r.get(am2, ak2, "backend", r.choice("none", "htpasswd", "ldap"), "none")
    htpasswd = r.get(am2, ak2, "htpasswd", r.path_, None)
    lk2 = (*ak2, "ldap")
    lm = r.mapping(
        am2.get("ldap"), lk2, ("url", "user_dn", "base_dn", "user_filter", "groups", "timeout")
    )
    ldap = None
    if backend == "ldap" or am2.get("ldap"):
        gm = r.mapping(lm.get("groups"), (*lk2, "groups"), lm.get("groups") or {})
        ldap = LdapSettings(
            url=r.get(lm, lk2, "url", r.str_, ""),
            user_dn=r.get(lm, lk2, "user_dn", r.str_, ""),
            base_dn=r.get(lm, lk2, "base_dn", r.str_, ""),
            user_filter=r.get(lm, lk2, "user_filter", r.str_, LdapSettings.user_filter),
            groups=tuple(sorted((str(k), r.str_(v, (*lk2, "groups", k))) for k, v in gm.items())),
            timeout=r.get(lm, lk2, "timeout", r.float_, 5.0),
        )
        if not ldap.url.startswith(("ldap://", "ldaps://")):
            r.fail((*lk2, "url"), f"expected ldap://host[:port] or ldaps://..., got {ldap.url!r}")
        if "{user}" not in ldap.user_dn:
            r.fail(
                (*lk2, "user_dn"),
                "must contain {user}, e.g. uid={user},ou=people,dc=example,dc=org",
            )
    if backend == "htpasswd" and htpasswd is None:
        r.fail(ak2, "backend htpasswd needs auth.htpasswd (path to the file)")
    auth = AuthConfig(
        backend=backend,
        htpasswd=htpasswd,
        ldap=ldap,
        required_for=tuple(
            n for n in r.get(am2, ak2, "required_for", r.list_(r.cidr), ()) if n is not None
        ),
        cache_seconds=r.get(am2, ak2, "cache_seconds", r.float_, 300.0),
        realm=r.get(am2, ak2, "realm", r.str_, "School Internet"),
    )
    trusted = tuple(
        n for n in r.get(top, P, "trusted_proxies", r.list_(r.cidr), ()) if n is not None
    )
    ok2 = ("overrides",)
    om = r.mapping(top.get("overrides"), ok2, ("minutes", "key_file", "state_file"))
    overrides = OverrideConfig(
        minutes=r.get(om, ok2, "minutes", r.float_, 60.0),
        key_file=r.get(om, ok2, "key_file", r.path_, tls.confdir / "overrides.key"),
        state_file=r.get(om, ok2, "state_file", r.path_, tls.confdir / "overrides.json"),
    )

    groups: list[Group] = []
    seen: set[str] = set()
    graw = top.get("groups")
    if graw is not None and not isinstance(graw, list):
        r.fail(("groups",), f"expected a list of groups, got {_kind(graw)}")
        graw = []
    for i, gval in enumerate(graw or []):
        gk: Key = ("groups", i)
        g = r.mapping(gval, gk, ("name", "policy", "clients", "users"))
        name = r.get(g, gk, "name", r.name, "")
        if not name:
            r.fail(gk, "a group needs a name")
        elif name in seen:
            r.fail((*gk, "name"), f"duplicate group name {name!r}")
        seen.add(name)
        policy = r.get(g, gk, "policy", r.str_, "")
        if not policy:
            r.fail(gk, "a group needs a policy")
        elif policy not in policies:
            r.fail(
                (*gk, "policy"),
                f"unknown policy {policy!r} (defined: {', '.join(sorted(policies))})",
            )
        nets = tuple(n for n in r.get(g, gk, "clients", r.list_(r.cidr), ()) if n is not None)
        users = frozenset(u.lower() for u in r.get(g, gk, "users", r.list_(r.str_), ()))
        catch_all = isinstance(g, dict) and "clients" not in g and "users" not in g
        groups.append(Group(name, policy, nets, users, r.where(gk), catch_all))
    if not groups:
        r.fail(
            ("groups",),
            "at least one group is required (a group with no clients/users is the catch-all)",
        )

    images = _images(r, top.get("images"))

    if listen.transparent and upstream:
        r.fail(
            ("listen", "mode"),
            f"{listen.mode}: the transparent listener cannot chain to upstream {upstream} "
            "(it would bypass the parent proxy); use listen.mode: explicit",
        )
    if listen.transparent and workers != 1:
        r.fail(("listen", "mode"), f"{listen.mode}: not supported with workers: {workers} (use 1)")

    lk3 = ("lists",)
    lm3 = r.mapping(top.get("lists"), lk3, ListsConfig.__dataclass_fields__)

    def _optional_dir(v: Any, path: Key) -> Path | None:
        return r.path_(v, path) if v not in (None, "") else None

    lists_cfg = ListsConfig(
        source=r.get(lm3, lk3, "source", r.str_, UT1_SOURCE),
        cache_dir=r.get(lm3, lk3, "cache_dir", _optional_dir, base / "cache")
        if lm3.get("cache_dir", 0) is not None
        else None,
        max_archive_bytes=r.get(lm3, lk3, "max_archive_bytes", r.int_, 512 << 20),
        max_member_bytes=r.get(lm3, lk3, "max_member_bytes", r.int_, 1 << 30),
        max_total_bytes=r.get(lm3, lk3, "max_total_bytes", r.int_, 4 << 30),
        min_keep_ratio=r.get(lm3, lk3, "min_keep_ratio", r.float_, 0.5),
    )

    if r.problems:
        raise InputError(r.problems)
    return Config(
        source=Path(loc.file),
        listen=listen,
        clients=tuple(c for c in clients if c is not None),
        groups=tuple(groups),
        policies=policies,
        rules_dir=rules_dir,
        upstream=upstream,
        on_error=on_error,
        tls=tls,
        audit=audit,
        metrics=metrics,
        district=district,
        log=log_cfg,
        safesearch=safesearch,
        auth=auth,
        trusted_proxies=trusted,
        timezone=timezone,
        schedules=tuple(schedules.values()),
        overrides=overrides,
        workers=workers,
        gateway=gateway,
        lists=lists_cfg,
        content=content,
        images=images,
        class_exceptions=r.get(
            top, P, "class_exceptions", r.path_, tls.confdir / "exceptions.yaml"
        ),
    )


IMAGE_MODES = ("off", "monitor", "learn", "block")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)?")


def _policy_images(r: _Reader, p: dict[str, Any], pk: Key, block: frozenset[str]) -> str:
    """``policies.NAME.images.mode``; learning is pointless unless the policy blocks what it learns."""
    ik: Key = (*pk, "images")
    im = r.mapping(p.get("images"), ik, ("mode",))
    mode = r.get(im, ik, "mode", r.choice(*IMAGE_MODES), "off")
    if mode in ("learn", "block") and "learned_adult" not in block:
        r.fail(
            (*ik, "mode"),
            f"{mode}: add learned_adult to {'.'.join(map(str, pk))}.block "
            "(the sites it learns would not be blocked)",
        )
    return mode


def _images(r: _Reader, value: Any) -> ImagesConfig:
    """The ``images`` section: the classifier pool, what is classified, block and learn settings."""
    ik: Key = ("images",)
    im = r.mapping(value, ik, ImagesConfig.__dataclass_fields__)
    d = ImagesConfig()

    def int_in(lo: int, hi: int) -> Callable[[Any, Key], int]:
        return lambda v, path: r.int_(v, path, lo, hi)

    def score(v: Any, path: Key) -> float:
        f = r.float_(v, path)
        if not 0.0 < f <= 1.0:
            r.fail(path, f"expected a score above 0 and at most 1, got {v!r}")
        return f

    def duration(v: Any, path: Key) -> float:
        """Seconds, or a number with s/m/h/d: 3600, 90s, 30m, 1h, 2d."""
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            return float(v)
        m = _DURATION.fullmatch(str(v).strip()) if isinstance(v, str) else None
        if m is None or float(m.group(1)) <= 0:
            r.fail(path, f"expected a duration such as 3600, 30m or 1h, got {v!r}")
            return 3600.0
        return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]

    cfg = ImagesConfig(
        workers=r.get(im, ik, "workers", int_in(1, 64), d.workers),
        priority=r.get(im, ik, "priority", r.choice("idle", "normal"), d.priority),
        queue=r.get(im, ik, "queue", int_in(0, 100_000), d.queue),
        cache_entries=r.get(im, ik, "cache_entries", int_in(0, 10_000_000), d.cache_entries),
        min_bytes=r.get(im, ik, "min_bytes", int_in(0, 1 << 30), d.min_bytes),
        max_bytes=r.get(im, ik, "max_bytes", int_in(1, 64 << 20), d.max_bytes),
        max_wait_ms=r.get(im, ik, "max_wait_ms", int_in(0, 60_000), d.max_wait_ms),
        on_timeout=r.get(im, ik, "on_timeout", r.choice("pass", "block"), d.on_timeout),
        threshold=r.get(im, ik, "threshold", score, d.threshold),
        learn_min_hits=r.get(im, ik, "learn_min_hits", int_in(1, 1000), d.learn_min_hits),
        learn_window=r.get(im, ik, "learn_window", duration, d.learn_window),
    )
    if cfg.min_bytes > cfg.max_bytes:
        r.fail((*ik, "min_bytes"), f"{cfg.min_bytes} is larger than max_bytes ({cfg.max_bytes})")
    return cfg


def _content(r: _Reader, value: Any, rules_dir: Path, categories: set[str]) -> ContentConfig:
    """The ``content`` section, and the phrase lists compiled (their problems carry file:line)."""
    ck: Key = ("content",)
    cm = r.mapping(value, ck, ("max_bytes", "max_decoded_bytes", "phrases_dir"))
    cfg = ContentConfig(
        max_bytes=r.get(cm, ck, "max_bytes", lambda v, k: r.int_(v, k, 1024, 64 << 20), 512 << 10),
        max_decoded_bytes=r.get(
            cm, ck, "max_decoded_bytes", lambda v, k: r.int_(v, k, 1024, 256 << 20), 4 << 20
        ),
        phrases_dir=r.get(cm, ck, "phrases_dir", r.path_, rules_dir / "phrases"),
    )
    from .content import load_phrases  # pyahocorasick: only loaded with a config

    try:
        phrases = load_phrases(
            cfg.phrases_dir, categories if rules_dir.is_dir() else None, rules_dir.parent
        )
    except InputError as exc:
        r.problems.extend(exc.problems)
        phrases = None
    return ContentConfig(cfg.max_bytes, cfg.max_decoded_bytes, cfg.phrases_dir, phrases)


_IFNAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}[*+]?")


def _gateway(r: _Reader, value: Any) -> GatewayConfig:
    """The ``gateway`` section (only `cipa-proxy gateway rules` reads it; see proxy/gateway.py)."""
    gk: Key = ("gateway",)
    gm = r.mapping(value, gk, ("interfaces", "subnets", "exempt", "dns"))

    def ifname(v: Any, path: Key) -> str:
        s = r.str_(v, path)
        if s and not _IFNAME.fullmatch(s):
            r.fail(path, f"not an interface name (up to 15 of A-Za-z0-9_.:@-, then * ok): {s!r}")
        return s.replace("+", "*")

    def resolver(v: Any, path: Key) -> str:
        s = str(v)
        if s == "local":
            return s
        try:
            return str(ipaddress.ip_address(s))
        except ValueError:
            r.fail(path, f"expected an IP address of the district resolver or 'local', got {v!r}")
            return ""

    dns = tuple(d for d in r.get(gm, gk, "dns", r.list_(resolver), ()) if d)
    families = [ipaddress.ip_address(d).version for d in dns if d != "local"]
    if "local" in dns and len(dns) > 1:
        r.fail((*gk, "dns"), "'local' (this host) cannot be combined with addresses")
    elif len(families) != len(set(families)):
        r.fail((*gk, "dns"), "at most one IPv4 and one IPv6 address")
    nets = r.list_(r.cidr)
    return GatewayConfig(
        interfaces=r.get(gm, gk, "interfaces", r.list_(ifname), ()),
        subnets=tuple(n for n in r.get(gm, gk, "subnets", nets, ()) if n is not None),
        exempt=tuple(n for n in r.get(gm, gk, "exempt", nets, ()) if n is not None),
        dns=dns,
        source=_section_source(r, gk),
    )


def _section_source(r: _Reader, key: Key) -> str:
    line = r.loc.lines.get(key)
    if line == FROM_COMMAND_LINE:
        return "--set"
    return f"{r.loc.file}:{line}" if line else r.loc.file


def apply_overrides(loc: Located, overrides: Sequence[str]) -> None:
    """Apply ``dotted.key=value`` settings (values parsed as YAML scalars) onto the data.

    Their positions are recorded as ``--set`` so errors point at the command line.
    """
    if loc.data is None:
        loc.data = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError([Problem("--set", None, item, "expected dotted.key=value")])
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node = loc.data
        for depth, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                nxt = {}
                node[part] = nxt
            if not isinstance(nxt, dict):
                raise InputError(
                    [Problem("--set", None, ".".join(parts[: depth + 1]), "is not a mapping")]
                )
            node = nxt
        node[parts[-1]] = value
        loc.lines[tuple(parts)] = FROM_COMMAND_LINE


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load and validate a config file; raise InputError listing every problem."""
    path = Path(path)
    loc = load_yaml_file(path)
    apply_overrides(loc, overrides)
    return _parse(loc, path.resolve().parent)


__all__ = [
    "AuditConfig",
    "Config",
    "DistrictConfig",
    "GatewayConfig",
    "Group",
    "ImagesConfig",
    "InputError",
    "ListenConfig",
    "LogConfig",
    "MetricsConfig",
    "Policy",
    "TLSConfig",
    "dotted",
    "load_config",
]
