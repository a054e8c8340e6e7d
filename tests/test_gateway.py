"""Gateway mode: the listen.mode / gateway config, the generated nftables and iptables rulesets
(checked by the real tools: ``nft -c``, ``iptables-restore --test``), and the mitmproxy modes.

The rules are also loaded and exercised for real in tests/e2e/test_transparent.py.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from test_config import problems

from proxy import cli, gateway
from proxy.config import load_config
from proxy.yamlpos import InputError

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """\
listen:
  host: ""
  port: 3128
  mode: both
  transparent_port: 3129
groups:
  - name: students
    policy: students
policies:
  students:
    block: [gambling]
gateway:
  interfaces: [eth1, vlan+]
  subnets: [10.20.0.0/16, "fd00:20::/64"]
  exempt: [10.0.0.10, "fd00::10"]
  dns: [10.0.0.53, "fd00::53"]
"""


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # errors name the file as the admin named it: "config.yaml"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "gambling.yaml").write_text(
        "category: gambling\ndomains: [bet.example]\n"
    )
    return tmp_path


def write(tree: Path, text: str = CONFIG) -> Path:
    (tree / "config.yaml").write_text(textwrap.dedent(text))
    return Path("config.yaml")


# ----------------------------------------------------------------------------- config


def test_gateway_section_and_listen_mode_load(tree: Path) -> None:
    cfg = load_config(write(tree))
    assert cfg.listen.mode == "both" and cfg.listen.explicit and cfg.listen.transparent
    assert cfg.listen.transparent_port == 3129
    gw = cfg.gateway
    assert gw.interfaces == ("eth1", "vlan*")  # iptables' "+" and nft's "*" are one spelling
    assert [str(n) for n in gw.subnets] == ["10.20.0.0/16", "fd00:20::/64"]
    assert [str(n) for n in gw.exempt] == ["10.0.0.10/32", "fd00::10/128"]
    assert gw.dns == ("10.0.0.53", "fd00::53")
    assert gw.source == "config.yaml:12"


def test_defaults_are_explicit_mode_and_no_gateway(tree: Path) -> None:
    cfg = load_config(write(tree, CONFIG.split("gateway:")[0].replace("  mode: both\n", "")))
    assert cfg.listen.mode == "explicit" and not cfg.listen.transparent
    assert cfg.gateway.interfaces == () and cfg.gateway.dns == ()


def test_shipped_config_still_loads_in_explicit_mode() -> None:
    cfg = load_config(ROOT / "config.yaml")
    assert cfg.listen.explicit


def test_bad_gateway_values_are_reported_with_file_and_line(tree: Path) -> None:
    bad = CONFIG.replace("mode: both", "mode: sideways").replace(
        "interfaces: [eth1, vlan+]", 'interfaces: [eth1, "bad name; drop"]'
    )
    bad = bad.replace("subnets: [10.20.0.0/16,", "subnets: [10.20.0.300/16,")
    bad = bad.replace('dns: [10.0.0.53, "fd00::53"]', "dns: [10.0.0.53, 10.0.0.54, resolver]")
    got = problems(write(tree, bad))
    assert any(p.startswith("config.yaml:4: listen.mode: expected one of explicit") for p in got)
    assert any(
        p.startswith("config.yaml:13: gateway.interfaces[1]: not an interface name") for p in got
    )
    assert any(p.startswith("config.yaml:14: gateway.subnets[0]: not a valid CIDR") for p in got)
    assert any(
        p.startswith("config.yaml:16: gateway.dns[2]: expected an IP address of the district")
        for p in got
    )
    assert "config.yaml:16: gateway.dns: at most one IPv4 and one IPv6 address" in got
    unknown = problems(write(tree, CONFIG + "  proxy: 10.0.0.1\n"))
    assert any(p.startswith("config.yaml:17: gateway.proxy: unknown key") for p in unknown)


def test_local_resolver_cannot_be_mixed_with_addresses(tree: Path) -> None:
    got = problems(
        write(tree, CONFIG.replace('dns: [10.0.0.53, "fd00::53"]', "dns: [local, 10.0.0.53]"))
    )
    assert got == [
        "config.yaml:16: gateway.dns: 'local' (this host) cannot be combined with addresses"
    ]
    cfg = load_config(write(tree, CONFIG.replace('dns: [10.0.0.53, "fd00::53"]', "dns: local")))
    assert cfg.gateway.dns == ("local",)


def test_transparent_listener_conflicts_are_config_errors(tree: Path) -> None:
    path = write(tree)
    assert problems(path, ["listen.transparent_port=3128"]) == [
        "--set: listen.transparent_port: must differ from listen.port (0 only for one)"
    ]
    got = problems(path, ["upstream=http://10.0.0.5:8080"])
    assert len(got) == 1 and "listen.mode: both: the transparent listener cannot chain" in got[0]
    assert load_config(path, ["upstream=http://10.0.0.5:8080", "listen.mode=explicit"]).upstream


# ----------------------------------------------------------------------------- mitmproxy modes


@pytest.mark.parametrize(
    ("mode", "upstream", "expected"),
    [
        ("explicit", None, ["regular"]),
        ("transparent", None, ["transparent@3129"]),
        ("both", None, ["regular", "transparent@3129"]),
        ("explicit", "http://10.0.0.5:8080", ["upstream:http://10.0.0.5:8080"]),
    ],
)
def test_listen_mode_becomes_mitmproxy_modes(
    tree: Path, mode: str, upstream: str | None, expected: list[str]
) -> None:
    from mitmproxy.proxy.mode_specs import ProxyMode

    from addons.master import mitm_options

    sets = [f"listen.mode={mode}"] + ([f"upstream={upstream}"] if upstream else [])
    opts = mitm_options(load_config(write(tree), sets))
    assert opts["mode"] == expected
    for spec in opts["mode"]:
        ProxyMode.parse(spec)  # mitmproxy accepts every spec we generate
    assert opts["listen_host"] == "" and opts["listen_port"] == 3128


# ----------------------------------------------------------------------------- the rulesets


def test_nftables_ruleset(tree: Path) -> None:
    text = gateway.nftables(load_config(write(tree)))
    assert "never applies" in text  # printed for review, not applied
    body = text.split("table inet cipa_proxy {", 1)[1]
    assert 'iifname { "eth1", "vlan*" } jump student_prerouting' in body
    assert "elements = { 10.20.0.0/16 }" in body and "elements = { fd00:20::/64 }" in body
    assert "elements = { 10.0.0.10/32 }" in body and "elements = { fd00::10/128 }" in body
    assert "fib daddr type local return" in body  # the explicit port and the gateway itself
    assert "tcp dport { 80, 443 } counter redirect to :3129" in body
    assert (
        "ip daddr != 10.0.0.53 meta l4proto { tcp, udp } th dport 53 counter dnat ip to 10.0.0.53:53"
        in body
    )
    assert (
        "ip6 daddr != fd00::53 meta l4proto { tcp, udp } th dport 53 counter dnat ip6 to [fd00::53]:53"
        in body
    )
    assert "udp dport { 80, 443 } counter drop" in body
    assert "meta l4proto { tcp, udp } th dport 853 counter drop" in body
    # exemptions come before anything is redirected or dropped, in both chains
    for chain in ("student_prerouting", "student_forward"):
        rules = body.split(f"chain {chain} {{", 1)[1].split("\n\t}", 1)[0]
        first_action = min(rules.find(w) for w in ("redirect", "drop") if w in rules)
        assert rules.find("ip daddr @exempt_v4 return") < first_action
        assert rules.find("ip6 saddr @exempt_v6 return") < first_action
    # loading twice replaces the table atomically instead of failing or duplicating
    assert text.index("table inet cipa_proxy\ndelete table inet cipa_proxy\n") < text.index("{")


def test_nftables_variants(tree: Path) -> None:
    subnets_only = CONFIG.replace("  interfaces: [eth1, vlan+]\n", "")
    text = gateway.nftables(load_config(write(tree, subnets_only), ["gateway.dns=local"]))
    assert "iifname" not in text
    assert 'meta l4proto { tcp, udp } th dport 53 counter redirect to :53 comment "DNS' in text
    assert "dnat" not in text
    text = gateway.nftables(load_config(write(tree), ["gateway.dns=[10.0.0.53]"]))
    assert "meta nfproto ipv6 meta l4proto { tcp, udp } th dport 53 counter drop" in text
    assert "WARNING: gateway.dns has no IPv6 resolver" in text
    text = gateway.nftables(load_config(write(tree), ["gateway.dns=[]", "gateway.exempt=[]"]))
    assert "th dport 53" not in text and "WARNING: gateway.dns is not set" in text
    assert "th dport 853 counter drop" in text  # DNS over TLS is dropped regardless
    assert "exempt_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t}" in text  # empty set


def test_iptables_rulesets(tree: Path) -> None:
    cfg = load_config(write(tree))
    v4, v6 = gateway.iptables(cfg, 4), gateway.iptables(cfg, 6)
    assert "-I PREROUTING 1 -j CIPA_PREROUTING" in v4 and "-I FORWARD 1 -j CIPA_FORWARD" in v4
    assert "-A CIPA_PREROUTING -i vlan+ -j CIPA_STUDENT_NAT" in v4
    assert "-A CIPA_PREROUTING -s 10.20.0.0/16 -j CIPA_STUDENT_NAT" in v4
    assert "fd00" not in v4.split("*nat", 1)[1]
    assert "-A CIPA_PREROUTING -s fd00:20::/64 -j CIPA_STUDENT_NAT" in v6
    assert "10.20.0.0" not in v6.split("*nat", 1)[1]
    for text in (v4, v6):
        assert "-m multiport --dports 80,443 -j REDIRECT --to-ports 3129" in text
        assert "-p udp -m multiport --dports 80,443 -j DROP" in text
        assert "-p tcp --dport 853 -j DROP" in text and "-p udp --dport 853 -j DROP" in text
        assert "-m addrtype --dst-type LOCAL -j RETURN" in text
    assert "! -d 10.0.0.53 -j DNAT --to-destination 10.0.0.53:53" in v4
    assert "! -d fd00::53 -j DNAT --to-destination [fd00::53]:53" in v6
    assert gateway.render(cfg, "ip6tables") == v6 and gateway.render(cfg, "iptables") == v4


def test_rules_need_a_transparent_listener_and_a_student_side(tree: Path) -> None:
    path = write(tree, CONFIG.split("gateway:")[0].replace("mode: both", "mode: explicit"))
    with pytest.raises(InputError) as info:
        gateway.render(load_config(path))
    got = [str(p) for p in info.value.problems]
    assert got == [
        "config.yaml: listen.mode: is explicit: set listen.mode: transparent (or both) so that a "
        "listener receives the redirected connections",
        "config.yaml: gateway: name the student side: gateway.interfaces and/or gateway.subnets",
    ]
    with pytest.raises(InputError, match="cannot be redirected to"):
        gateway.render(
            load_config(write(tree), ["listen.mode=transparent", "listen.transparent_port=0"])
        )


def test_listen_host_warnings(tree: Path) -> None:
    path = write(tree)
    assert gateway.plan(load_config(path)).warnings == []
    (w,) = gateway.plan(load_config(path, ["listen.host=0.0.0.0"])).warnings
    assert "IPv6 connections are refused" in w
    (w,) = gateway.plan(load_config(path, ["listen.host=127.0.0.1"])).warnings
    assert "REDIRECT delivers connections to the address of the interface" in w


def test_cli_prints_rules_and_exits_2_on_problems(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write(tree))
    assert cli.main(["gateway", "rules", "--config", path]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("# cipa-proxy gateway rules") and "table inet cipa_proxy {" in out
    assert err == ""
    assert cli.main(["gateway", "rules", "--config", path, "--format", "iptables"]) == 0
    assert "*nat" in capsys.readouterr().out
    assert cli.main(["gateway", "rules", "--config", path, "--set", "listen.mode=explicit"]) == 2
    assert "listen.mode: is explicit" in capsys.readouterr().err
    assert cli.main(["gateway", "rules", "--config", path, "--set", "listen.host=0.0.0.0"]) == 0
    assert "cipa-proxy: warning: listen.host is '0.0.0.0'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the real tools


def _in_fresh_netns(cmd: list[str], text: str) -> subprocess.CompletedProcess:
    """Run a checker in a new, empty network namespace: never near the host's own firewall."""
    for tool in ("nft", "iptables-restore", "ip6tables-restore", "unshare"):
        assert shutil.which(tool), f"{tool} is not installed (nftables, iptables; see .ci/run)"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(
            f"`unshare --net true` failed (network namespaces refused): {probe.stderr.strip()}"
        )
    return subprocess.run(["unshare", "--net", *cmd], input=text, capture_output=True, text=True)


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["gateway.dns=local"],
        ["gateway.dns=[10.0.0.53]", "gateway.exempt=[]"],
        ["gateway.interfaces=[]", "gateway.dns=[]"],
        ["gateway.subnets=[]", "listen.mode=transparent"],
    ],
)
def test_generated_rules_pass_the_real_checkers(tree: Path, sets: list[str]) -> None:
    cfg = load_config(write(tree), sets)
    nft = _in_fresh_netns(["nft", "-c", "-f", "-"], gateway.nftables(cfg))
    assert nft.returncode == 0, nft.stderr
    for fmt, tool in (("iptables", "iptables-restore"), ("ip6tables", "ip6tables-restore")):
        res = _in_fresh_netns([tool, "--test", "--noflush"], gateway.render(cfg, fmt))
        assert res.returncode == 0, f"{tool}: {res.stderr}"


def test_nftables_ruleset_loads_twice(tree: Path) -> None:
    """An admin reloads after a config change: the table is replaced, not duplicated."""
    rules = tree / "gateway.nft"
    rules.write_text(gateway.nftables(load_config(write(tree))))
    script = f"nft -f {rules} && nft -f {rules} && nft list ruleset"
    res = _in_fresh_netns(["sh", "-c", script], "")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("table inet cipa_proxy") == 1
    assert res.stdout.count("redirect to :3129") == 1
