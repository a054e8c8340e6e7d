"""``cipa-proxy gateway rules``: the firewall rules a school gateway needs for transparent filtering.

The router that carries student traffic sends it through the proxy without any
device being configured:

- TCP 80 and 443 from the student interfaces/subnets is REDIRECTed to the
  proxy's transparent listener (``listen.transparent_port``); mitmproxy reads
  the original destination back with SO_ORIGINAL_DST, and the client address
  stays the student's own, so groups by CIDR and the audit trail just work;
- UDP 80/443 (QUIC, HTTP/3) is dropped so browsers fall back to TCP, which is
  filtered;
- DNS is forced to the district resolver (``gateway.dns``: TCP/UDP 53 to any
  other server is rewritten to it) and DNS over TLS/QUIC (853) is dropped;
- traffic to or from ``gateway.exempt`` (district servers) and to the gateway
  itself (the explicit proxy port, its own services) is left alone. The
  proxy's own connections start on this host (OUTPUT), never pass the
  PREROUTING/FORWARD hooks these rules use, and so are never redirected.

Both IPv4 and IPv6. The rules are printed for an administrator to review and
load; cipa-proxy never applies them. This module imports no mitmproxy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .config import Config, Network
from .yamlpos import InputError, Problem

FORMATS = ("nftables", "iptables", "ip6tables")
REDIRECT_PORTS = (80, 443)  # HTTP and HTTPS: sent to the transparent listener
QUIC_PORTS = (80, 443)  # UDP: HTTP/3 and gQUIC, dropped so browsers use TCP
DNS_PORT = 53
DOT_PORT = 853  # DNS over TLS (TCP) and DNS over QUIC (UDP)
TABLE = "cipa_proxy"  # nftables table (inet: IPv4 and IPv6)
CHAIN_PREFIX = "CIPA_"  # iptables chains


@dataclass(frozen=True)
class Plan:
    """The checked inputs of a ruleset."""

    port: int
    interfaces: tuple[str, ...]
    subnets: dict[int, tuple[Network, ...]]  # by IP version
    exempt: dict[int, tuple[Network, ...]]
    dns: dict[int, str]  # resolver address by IP version
    dns_local: bool
    source: str
    warnings: list[str] = field(default_factory=list)


def plan(cfg: Config) -> Plan:
    """Check that the config describes a gateway; raise InputError naming every problem."""
    gw, listen = cfg.gateway, cfg.listen
    where = gw.source or str(cfg.source)
    problems = []
    if not listen.transparent:
        problems.append(
            Problem(
                str(cfg.source), None, "listen.mode",
                f"is {listen.mode}: set listen.mode: transparent (or both) so that a listener "
                "receives the redirected connections",
            )
        )  # fmt: skip
    if not listen.transparent_port:
        problems.append(
            Problem(
                str(cfg.source), None, "listen.transparent_port",
                "0 (any free port) cannot be redirected to: choose a fixed port",
            )
        )  # fmt: skip
    if not gw.interfaces and not gw.subnets:
        problems.append(
            Problem(
                where, None, "gateway",
                "name the student side: gateway.interfaces and/or gateway.subnets",
            )
        )  # fmt: skip
    if problems:
        raise InputError(problems)

    def by_version(nets: tuple[Network, ...]) -> dict[int, tuple[Network, ...]]:
        return {v: tuple(n for n in nets if n.version == v) for v in (4, 6)}

    dns_local = "local" in gw.dns
    dns = {ipaddress.ip_address(a).version: a for a in gw.dns if a != "local"}
    warnings = []
    host = listen.host
    if host == "0.0.0.0":
        warnings.append(
            "listen.host is '0.0.0.0': the transparent listener takes IPv4 only, so redirected "
            "IPv6 connections are refused; set listen.host: '' (every address, IPv4 and IPv6)"
        )
    elif host == "::":
        warnings.append(
            "listen.host is '::': IPv6 only, so redirected IPv4 connections are refused; "
            "set listen.host: '' (every address, IPv4 and IPv6)"
        )
    elif host:
        warnings.append(
            f"listen.host is {host!r}: REDIRECT delivers connections to the address of the "
            "interface they arrive on, which must be one the listener accepts; "
            "set listen.host: '' (every address, IPv4 and IPv6)"
        )
    if not gw.dns:
        warnings.append(
            "gateway.dns is not set: DNS is not forced to the district resolver "
            "(only DNS over TLS/QUIC, port 853, is dropped)"
        )
    elif not dns_local and 6 not in dns:
        warnings.append(
            "gateway.dns has no IPv6 resolver: student DNS over IPv6 is dropped "
            "(clients fall back to IPv4)"
        )
    elif not dns_local and 4 not in dns:
        warnings.append(
            "gateway.dns has no IPv4 resolver: student DNS over IPv4 is dropped "
            "(clients fall back to IPv6)"
        )
    return Plan(
        port=listen.transparent_port,
        interfaces=gw.interfaces,
        subnets=by_version(gw.subnets),
        exempt=by_version(gw.exempt),
        dns=dns,
        dns_local=dns_local,
        source=where,
        warnings=warnings,
    )


def _header(p: Plan, cfg: Config, comment: str, load: list[str]) -> list[str]:
    students = [f"interface {i}" for i in p.interfaces] + [
        str(n) for v in (4, 6) for n in p.subnets[v]
    ]
    lines = [
        f"{comment} cipa-proxy gateway rules, generated from {cfg.source}.",
        f"{comment} Review them, then load them yourself; cipa-proxy never applies firewall rules.",
        *(f"{comment}   {step}" for step in load),
        f"{comment} Students: {', '.join(students)}",
        f"{comment} TCP {'/'.join(map(str, REDIRECT_PORTS))} -> this host's port {p.port} "
        "(cipa-proxy listen.mode: transparent or both; listen.transparent_port).",
        f"{comment} Needs routing on: sysctl -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
    ]
    for w in p.warnings:
        lines.append(f"{comment} WARNING: {w}")
    return lines


def _set(name: str, typ: str, nets: tuple[Network, ...]) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {typ}", "\t\tflags interval"]
    if nets:
        lines.append(f"\t\telements = {{ {', '.join(str(n) for n in nets)} }}")
    return [*lines, "\t}", ""]


def _ports(ports: tuple[int, ...]) -> str:
    return "{ " + ", ".join(map(str, ports)) + " }" if len(ports) > 1 else str(ports[0])


def nftables(cfg: Config) -> str:
    """One ``inet`` table (IPv4 and IPv6); loading it again replaces it atomically."""
    p = plan(cfg)
    out = _header(
        p,
        cfg,
        "#",
        [
            "nft -f cipa-gateway.nft    (load; replaces an earlier version of this table)",
            f"nft delete table inet {TABLE}    (remove)",
        ],
    )
    out += [
        "",
        f"table inet {TABLE}",  # create it if missing, so that the delete below always works
        f"delete table inet {TABLE}",
        "",
        f"table inet {TABLE} {{",
    ]
    out += _set("students_v4", "ipv4_addr", p.subnets[4])
    out += _set("students_v6", "ipv6_addr", p.subnets[6])
    out += _set("exempt_v4", "ipv4_addr", p.exempt[4])
    out += _set("exempt_v6", "ipv6_addr", p.exempt[6])

    def entry(chain: str, base: str) -> list[str]:
        lines = [f"\tchain {chain} {{", f"\t\t{base}"]
        if p.interfaces:
            names = ", ".join(f'"{i}"' for i in p.interfaces)
            lines.append(f"\t\tiifname {{ {names} }} jump student_{chain}")
        lines += [
            f"\t\tip saddr @students_v4 jump student_{chain}",
            f"\t\tip6 saddr @students_v6 jump student_{chain}",
            "\t}",
            "",
        ]
        return lines

    exempt = [
        "\t\tip saddr @exempt_v4 return",
        "\t\tip daddr @exempt_v4 return",
        "\t\tip6 saddr @exempt_v6 return",
        "\t\tip6 daddr @exempt_v6 return",
    ]
    out += entry("prerouting", "type nat hook prerouting priority dstnat; policy accept;")
    out += [
        "\tchain student_prerouting {",
        '\t\tfib daddr type local return comment "to this host: explicit proxy port, its own services"',
        *exempt,
    ]
    dns = "meta l4proto { tcp, udp } th dport 53"
    if p.dns_local:
        out.append(f'\t\t{dns} counter redirect to :53 comment "DNS: this host\'s resolver"')
    for v, family in ((4, "ip"), (6, "ip6")):
        addr = p.dns.get(v)
        if addr:
            target = addr if v == 4 else f"[{addr}]"
            out.append(
                f"\t\t{family} daddr != {addr} {dns} counter dnat {family} to {target}:{DNS_PORT}"
                ' comment "DNS: the district resolver"'
            )
    out += [
        f"\t\ttcp dport {_ports(REDIRECT_PORTS)} counter redirect to :{p.port}"
        ' comment "HTTP/HTTPS: cipa-proxy transparent listener"',
        "\t}",
        "",
    ]
    out += entry("forward", "type filter hook forward priority filter; policy accept;")
    out += ["\tchain student_forward {", *exempt]
    out.append(
        f"\t\tudp dport {_ports(QUIC_PORTS)} counter drop"
        ' comment "QUIC/HTTP3: browsers fall back to filtered TCP"'
    )
    out.append(
        f"\t\tmeta l4proto {{ tcp, udp }} th dport {DOT_PORT} counter drop"
        ' comment "DNS over TLS/QUIC"'
    )
    if p.dns and not p.dns_local:
        for v in (4, 6):
            if v not in p.dns:  # no resolver of this family: nothing to rewrite to, so no DNS
                out.append(
                    f"\t\tmeta nfproto ipv{v} meta l4proto {{ tcp, udp }} th dport {DNS_PORT}"
                    f' counter drop comment "DNS over IPv{v}: no district resolver"'
                )
    out += ["\t}", "}", ""]
    return "\n".join(out)


def iptables(cfg: Config, version: int = 4) -> str:
    """An ``iptables-restore --noflush`` file (``ip6tables-restore`` for ``version=6``).

    Only the CIPA_* chains are written (declaring them again on a reload flushes
    them); the jumps from PREROUTING and FORWARD are added on the first load.
    """
    p = plan(cfg)
    cmd = "iptables" if version == 4 else "ip6tables"
    pre, nat = f"{CHAIN_PREFIX}PREROUTING", f"{CHAIN_PREFIX}STUDENT_NAT"
    fwd, filt = f"{CHAIN_PREFIX}FORWARD", f"{CHAIN_PREFIX}STUDENT_FORWARD"
    out = _header(
        p,
        cfg,
        "#",
        [
            f"{cmd}-restore --noflush < cipa-gateway.v{version}    (first load; keeps other rules)",
            f"to reload, first: {cmd} -t nat -D PREROUTING -j {pre}; {cmd} -D FORWARD -j {fwd}",
            f"IPv{10 - version} needs its own file: cipa-proxy gateway rules --format "
            f"{'ip6tables' if version == 4 else 'iptables'}",
        ],
    )
    subnets, exempt = p.subnets[version], p.exempt[version]

    def entry(hook: str, chain: str, target: str) -> list[str]:
        lines = [f"-I {hook} 1 -j {chain}"]  # first: before any ACCEPT already in the chain
        for i in p.interfaces:
            lines.append(f"-A {chain} -i {i.replace('*', '+')} -j {target}")
        for n in subnets:
            lines.append(f"-A {chain} -s {n} -j {target}")
        return lines

    def exempting(chain: str) -> list[str]:
        return [f"-A {chain} -{d} {n} -j RETURN" for n in exempt for d in ("s", "d")]

    def comment(text: str) -> str:
        return f'-m comment --comment "{text}"'

    out += ["", "*nat", f":{pre} - [0:0]", f":{nat} - [0:0]", *entry("PREROUTING", pre, nat)]
    out.append(f"-A {nat} -m addrtype --dst-type LOCAL -j RETURN {comment('to this host')}")
    out += exempting(nat)
    addr = p.dns.get(version)
    for proto in ("udp", "tcp"):
        if p.dns_local:
            out.append(
                f"-A {nat} -p {proto} --dport {DNS_PORT} -j REDIRECT --to-ports {DNS_PORT} "
                + comment("DNS: this host's resolver")
            )
        elif addr:
            target = addr if version == 4 else f"[{addr}]"
            out.append(
                f"-A {nat} -p {proto} --dport {DNS_PORT} ! -d {addr} -j DNAT --to-destination "
                f"{target}:{DNS_PORT} {comment('DNS: the district resolver')}"
            )
    out += [
        f"-A {nat} -p tcp -m multiport --dports {','.join(map(str, REDIRECT_PORTS))} "
        f"-j REDIRECT --to-ports {p.port} {comment('HTTP/HTTPS: cipa-proxy transparent listener')}",
        "COMMIT",
        "",
        "*filter",
        f":{fwd} - [0:0]",
        f":{filt} - [0:0]",
        *entry("FORWARD", fwd, filt),
        *exempting(filt),
        f"-A {filt} -p udp -m multiport --dports {','.join(map(str, QUIC_PORTS))} -j DROP "
        + comment("QUIC/HTTP3: browsers fall back to filtered TCP"),
    ]
    for proto in ("tcp", "udp"):
        out.append(
            f"-A {filt} -p {proto} --dport {DOT_PORT} -j DROP {comment('DNS over TLS/QUIC')}"
        )
    if p.dns and not p.dns_local and not addr:
        for proto in ("udp", "tcp"):
            out.append(
                f"-A {filt} -p {proto} --dport {DNS_PORT} -j DROP "
                + comment(f"DNS over IPv{version}: no district resolver")
            )
    out += ["COMMIT", ""]
    return "\n".join(out)


def render(cfg: Config, fmt: str = "nftables") -> str:
    if fmt == "nftables":
        return nftables(cfg)
    if fmt in ("iptables", "ip6tables"):
        return iptables(cfg, 4 if fmt == "iptables" else 6)
    raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")


__all__ = ["FORMATS", "Plan", "iptables", "nftables", "plan", "render"]
