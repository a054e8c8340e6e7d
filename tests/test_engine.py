"""Engine decisions: precedence at every specificity, groups, explanations, never raising."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.canonical import canonical_url
from proxy.config import load_config
from proxy.engine import Engine
from proxy.model import Request
from proxy.rules import load_rules
from proxy.yamlpos import InputError

CONFIG = """\
groups:
  - name: elementary
    clients: [10.1.0.0/16]
    policy: walled
  - name: staff
    users: [alice]
    policy: staff
  - name: students
    policy: students
policies:
  students:
    block: [gambling, games]
    allow: [educational]
    ip_literals: block
  staff:
    block: [gambling]
    ip_literals: allow
  walled:
    allow: [educational]
    default: block
"""

RULES = {
    "gambling": """\
        category: gambling
        description: Gambling
        domains:
          - bet.example
          - deep.allowed.example
        urls:
          - portal.example/casino
        patterns:
          - '(^|[.-])casino[.-]'
        include: [lists/gambling/domains]
    """,
    "educational": """\
        category: educational
        description: Education
        domains:
          - edu
          - allowed.example
          - bet.example
        urls:
          - bet.example/responsible-gambling/
        patterns:
          - '^casino-history[.]'
    """,
    "games": """\
        category: games
        domains: [play.example]
    """,
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    root = tmp_path_factory.mktemp("tree")
    (root / "config.yaml").write_text(CONFIG)
    rules = root / "rules"
    (rules / "lists" / "gambling").mkdir(parents=True)
    for name, text in RULES.items():
        (rules / f"{name}.yaml").write_text(textwrap.dedent(text))
    (rules / "lists" / "gambling" / "domains").write_bytes(
        b"\xef\xbb\xbf# UT1-style list\r\nlisted.example\r\n\r\nthis is garbage\r\nLISTED2.Example.\r\nlisted.example\r\n"
    )
    return Engine.build(load_config(root / "config.yaml"))


def decide(engine: Engine, url: str, client: str = "192.168.1.5", user: str | None = None, **kw):
    u = canonical_url(url)  # as `cipa-proxy check` does
    return engine.decide(
        Request(
            host=u.host, path=u.path, scheme=u.scheme, port=u.port, client=client, user=user, **kw
        )
    )


@pytest.mark.parametrize(
    ("url", "action", "category", "rule"),
    [
        # domain + subdomains; an allow on the same domain wins the tie
        ("http://bet.example/", "allow", "educational", "rules/educational.yaml:6"),
        ("http://www.bet.example/x", "allow", "educational", "rules/educational.yaml:6"),
        # a longer suffix beats a shorter one, whichever way round
        ("http://deep.allowed.example/", "block", "gambling", "rules/gambling.yaml:5"),
        ("http://x.deep.allowed.example/", "block", "gambling", "rules/gambling.yaml:5"),
        ("http://other.allowed.example/", "allow", "educational", "rules/educational.yaml:5"),
        # URL prefix beats any domain, at a path boundary only
        ("http://portal.example/casino", "block", "gambling", "rules/gambling.yaml:7"),
        ("http://portal.example/casino/poker?x=1", "block", "gambling", "rules/gambling.yaml:7"),
        ("http://portal.example/casinos", "allow", None, None),
        (
            "http://bet.example/responsible-gambling/help",
            "allow",
            "educational",
            "rules/educational.yaml:8",
        ),
        # patterns: below domains, allow wins a tie between patterns
        ("http://casino-royale.test/", "block", "gambling", "rules/gambling.yaml:9"),
        ("http://casino-history.org/", "allow", "educational", "rules/educational.yaml:10"),
        ("http://www.casino-royale.edu/", "allow", "educational", "rules/educational.yaml:4"),
        # included plain-text lists, with their own file:line
        ("http://listed.example/", "block", "gambling", "rules/lists/gambling/domains:2"),
        ("http://a.listed2.example/", "block", "gambling", "rules/lists/gambling/domains:5"),
        # canonical forms
        (
            "http://BET.EXAMPLE./responsible-gambling/",
            "allow",
            "educational",
            "rules/educational.yaml:8",
        ),
        ("http://portal.example//casino", "block", "gambling", "rules/gambling.yaml:7"),
        ("http://portal.example/a/../%63asino", "block", "gambling", "rules/gambling.yaml:7"),
        ("http://user:pw@play.example:80/", "block", "games", "rules/games.yaml:2"),
        # IP literals follow the policy, in any spelling
        ("http://0x7f.1/", "block", "ip_literal", None),
        ("http://[::1]/", "block", "ip_literal", None),
        # nothing matched: the policy default
        ("http://news.example/", "allow", None, None),
    ],
)
def test_precedence_for_students(
    engine: Engine, url: str, action: str, category: str | None, rule: str | None
) -> None:
    d = decide(engine, url)
    assert (d.action, d.category, d.group) == (action, category, "students"), d
    if rule:
        assert d.rule == rule
    assert d.reason


def test_groups_first_match_wins_by_cidr_then_user(engine: Engine) -> None:
    assert decide(engine, "http://play.example/", client="10.1.2.3").group == "elementary"
    assert (
        decide(engine, "http://play.example/", client="10.1.2.3", user="alice").group
        == "elementary"
    )
    assert decide(engine, "http://play.example/", client="10.9.2.3", user="Alice").group == "staff"
    assert decide(engine, "http://play.example/", client="::ffff:10.1.0.1").group == "elementary"
    assert decide(engine, "http://play.example/", client="not an ip").group == "students"


def test_policy_ignores_categories_it_does_not_name(engine: Engine) -> None:
    # staff do not block games; ip literals allowed
    assert decide(engine, "http://play.example/", user="alice").action == "allow"
    assert decide(engine, "http://10.0.0.1/", user="alice").action == "allow"
    assert decide(engine, "http://bet.example/poker", user="alice").category == "gambling"


def test_walled_garden_allows_only_its_allow_list(engine: Engine) -> None:
    d = decide(engine, "http://news.example/", client="10.1.0.9")
    assert (d.action, d.category, d.reason) == (
        "block",
        None,
        "this site is not on the approved list",
    )
    assert decide(engine, "http://www.mit.edu/", client="10.1.0.9").action == "allow"


def test_sni_and_host_header_fronting(engine: Engine) -> None:
    # allowed host, blocked SNI: the stricter verdict wins
    d = decide(engine, "https://news.example/", sni="play.example")
    assert (d.action, d.category) == ("block", "games")
    # two allowed names of different sites: domain fronting
    d = decide(engine, "https://news.example/", host_header="other.test")
    assert (d.action, d.category) == ("block", "sni_mismatch")
    # same registered domain is fine
    assert decide(engine, "https://news.example/", sni="www.news.example").action == "allow"


def test_malformed_input_blocks_without_raising(engine: Engine) -> None:
    for host in ("exa mple.com", "a..b", "", "bad<host>", "[::zz]", "1.2.3.4.5.6"):
        d = engine.decide(Request(host=host, client="192.168.1.1"))
        assert (d.action, d.category) == ("block", "malformed"), host


def test_internal_error_fails_closed(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(engine, "_classify", boom)
    d = decide(engine, "http://news.example/")
    assert (d.action, d.category) == ("block", "filter_error")


def test_list_garbage_is_reported_not_fatal(engine: Engine) -> None:
    garbage = [str(g) for g in engine.rules.garbage]
    assert garbage == [
        "rules/lists/gambling/domains:4: ignored 'this is garbage': not a host name: 'this is garbage'"
    ]


def test_bad_rules_are_fatal_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text(
        "category: x\npatterns:\n  - '(a+)+\\1'\ninclude: [lists/missing/domains]\nextra: 1\n"
    )
    (tmp_path / "y.yaml").write_text("category: z\n")
    with pytest.raises(InputError) as info:
        load_rules(tmp_path)
    found = [str(p) for p in info.value.problems]
    assert any(p.startswith(f"{tmp_path.name}/x.yaml:5: extra: unknown key") for p in found), found
    assert any(
        p.startswith(f"{tmp_path.name}/x.yaml:3: patterns[0]: bad regular expression")
        for p in found
    ), found
    assert any(
        p.startswith(f"{tmp_path.name}/x.yaml:4: include[0]: included list") for p in found
    ), found
    assert any(
        p.startswith(f"{tmp_path.name}/y.yaml:1: category: category 'z' must match") for p in found
    ), found


@settings(max_examples=300, deadline=None)
@given(
    host=st.text(),
    path=st.text(),
    client=st.text(max_size=20),
    sni=st.none() | st.text(max_size=30),
)
def test_decide_never_raises(
    engine: Engine, host: str, path: str, client: str, sni: str | None
) -> None:
    d = engine.decide(Request(host=host, path=path, client=client, sni=sni))
    assert d.action in ("allow", "block") and d.category != "filter_error"
