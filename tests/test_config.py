"""Config loading: every error names file, line and key, and all errors come at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.yamlpos import InputError

GOOD = """\
clients: [10.0.0.0/8, 127.0.0.0/8]
groups:
  - name: staff
    users: [alice]
    clients: [10.10.0.0/16]
    policy: staff
  - name: students
    policy: students
policies:
  students:
    block: [gambling]
    allow: [educational]
  staff:
    block: []
"""


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # errors name the file as the admin named it: "config.yaml"
    (tmp_path / "rules").mkdir()
    for cat in ("gambling", "educational"):
        (tmp_path / "rules" / f"{cat}.yaml").write_text(
            f"category: {cat}\ndomains: [{cat}.example]\n"
        )
    return tmp_path


def write(tree: Path, text: str) -> Path:
    (tree / "config.yaml").write_text(textwrap.dedent(text))
    return Path("config.yaml")


def problems(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(InputError) as info:
        load_config(path, overrides or [])
    return [str(p) for p in info.value.problems]


def test_good_config_loads_typed_and_frozen(tree: Path) -> None:
    cfg = load_config(write(tree, GOOD))
    assert [g.name for g in cfg.groups] == ["staff", "students"]
    assert cfg.policies["students"].block == frozenset({"gambling"})
    assert cfg.rules_dir == tree.resolve() / "rules"
    assert cfg.listen.port == 3128 and cfg.tls.inspect == "selective"
    assert cfg.client_allowed("10.1.2.3") and not cfg.client_allowed("8.8.8.8")
    assert cfg.client_allowed("::ffff:127.0.0.1")
    with pytest.raises(AttributeError):
        cfg.listen.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("policies:", "polices:\n  x: {}\npolicies:"), "config.yaml:9: polices: unknown key"),
        (
            ("block: [gambling]", "block: [gamble]"),
            "config.yaml:11: policies.students.block[0]: unknown category 'gamble'",
        ),
        (("10.0.0.0/8", "10.0.0.0/33"), "config.yaml:1: clients[0]: not a valid CIDR"),
        (
            ("    policy: students", "    policy: pupils"),
            "config.yaml:8: groups[1].policy: unknown policy 'pupils'",
        ),
        (
            ("- name: staff", "- name: students"),
            "config.yaml:7: groups[1].name: duplicate group name 'students'",
        ),
        (
            ("allow: [educational]", "allow: educational\n    default: maybe"),
            "config.yaml:13: policies.students.default: expected one of allow, block",
        ),
        (
            ("staff:\n    block: []", "staff:\n    block: []\n    override: yes please"),
            "config.yaml:15: policies.staff.override: expected true or false",
        ),
        (
            ("clients: [10", "listen: {port: http}\nclients: [10"),
            "config.yaml:1: listen.port: expected an integer",
        ),
    ],
)
def test_each_error_names_file_line_and_key(
    tree: Path, edit: tuple[str, str], expected: str
) -> None:
    path = write(tree, GOOD.replace(*edit, 1))
    found = problems(path)
    assert any(p.startswith(expected) for p in found), found


def test_all_problems_reported_together(tree: Path) -> None:
    text = GOOD.replace("block: [gambling]", "block: [nope]").replace("10.0.0.0/8", "banana")
    assert len(problems(write(tree, text))) == 2


def test_yaml_syntax_error_has_line(tree: Path) -> None:
    found = problems(write(tree, GOOD + "  bad: [unclosed\n"))
    assert found[0].startswith("config.yaml:") and "YAML syntax error" in found[0]


def test_duplicate_key_is_an_error(tree: Path) -> None:
    found = problems(write(tree, GOOD + "policies: {}\n"))
    assert found == ["config.yaml:15: policies: duplicate key"]


def test_set_overrides_and_their_errors(tree: Path) -> None:
    path = write(tree, GOOD)
    cfg = load_config(path, ["listen.port=0", "tls.inspect=none", "audit.path=/tmp/x"])
    assert cfg.listen.port == 0 and cfg.tls.inspect == "none" and str(cfg.audit.path) == "/tmp/x"
    found = problems(path, ["tls.inspect=sometimes"])
    assert found == ["--set: tls.inspect: expected one of selective, none, all, got 'sometimes'"]


def test_shipped_config_is_valid_and_puts_everyone_in_students() -> None:
    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "config.yaml")
    assert cfg.groups[-1].name == "students" and not cfg.groups[-1].clients
    assert cfg.policies["students"].block >= {
        "adult",
        "harmful_to_minors",
        "games",
        "gambling",
        "anonymizers",
    }
    assert cfg.policies["students"].safesearch == "strict"
