"""``cipa-proxy lists update|import|stats`` on a small rules tree (no proxy: see e2e)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import textwrap
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import load_config
from proxy.engine import Engine
from proxy.lists_cli import add_include, convert
from proxy.model import Request
from proxy.rules import load_rules

CONFIG = """\
groups:
  - name: students
    policy: students
policies:
  students:
    block: [adult, gambling]
lists:
  cache_dir: cache
"""

OLD_GAMBLING = [f"old-casino{i}.example" for i in range(200)]


def tar_bytes(members: list[tuple], compress: bool = True) -> bytes:
    """members: (name, data) files, (name, None, type, linkname) for links and others."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for m in members:
            name, data = m[0], m[1]
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.type = m[2]
                info.linkname = m[3] if len(m) > 3 else ""
                tf.addfile(info)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def lines(*names: str) -> bytes:
    return ("\n".join(names) + "\n").encode()


GOOD = [
    ("blacklists/", None, tarfile.DIRTYPE),
    ("blacklists/adult/domains", lines("new-adult.example", "other-adult.example")),
    ("blacklists/adult/urls", lines("host.example/adult", "host2.example/x", "h3.example/y")),
    ("blacklists/gambling/domains", lines(*OLD_GAMBLING[:150], "new-casino.example")),
    ("blacklists/shopping/domains", lines("shop.example")),
    ("blacklists/porn", None, tarfile.SYMTYPE, "adult"),  # UT1's category aliases
    ("blacklists/LICENSE.pdf", b"%PDF-1.4 licence"),
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "config.yaml").write_text(CONFIG)
    rules = tmp_path / "rules"
    ut1 = rules / "lists" / "ut1"
    (ut1 / "adult").mkdir(parents=True)
    (ut1 / "gambling").mkdir()
    (ut1 / "adult" / "urls").write_bytes(lines("host.example/adult", "host2.example/x"))
    (ut1 / "gambling" / "domains").write_bytes(lines(*OLD_GAMBLING))
    (ut1 / "LICENSE.txt").write_text("CC BY-SA 4.0\n")
    (rules / "adult.yaml").write_text(
        textwrap.dedent("""\
        # adult
        category: adult
        include:
          - lists/ut1/adult/urls
        include_if_present:
          - lists/ut1/adult/domains
        """)
    )
    (rules / "gambling.yaml").write_text(
        "category: gambling\ndomains: [bet.example]\ninclude: [lists/ut1/gambling/domains]\n"
    )
    return tmp_path


def run(tree: Path, *args: str) -> int:
    return main(["lists", *args, "--config", str(tree / "config.yaml")])


def fingerprint(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def decide(tree: Path, host: str):
    engine = Engine.build(load_config(tree / "config.yaml"))
    return engine.decide(Request(host=host, client="10.0.0.1"))


def test_update_swaps_new_lists_in_and_keeps_the_old(tree: Path, tmp_path: Path, capsys) -> None:
    assert decide(tree, "new-adult.example").action == "allow"
    archive = tmp_path / "blacklists.tar.gz"
    archive.write_bytes(tar_bytes(GOOD))
    assert run(tree, "update", "--source", str(archive)) == 0
    err = capsys.readouterr().err
    assert "skipped symbolic links (UT1 category aliases): porn -> adult" in err
    assert "lists: verify archive" in err  # plain log lines when not on a terminal
    ut1 = tree / "rules" / "lists" / "ut1"
    assert (ut1 / "adult" / "domains").read_bytes() == GOOD[1][1]
    assert not (ut1 / "shopping").exists()  # no rule includes it
    assert (ut1 / "LICENSE.txt").read_text() == "CC BY-SA 4.0\n"  # kept from the old lists
    assert (ut1 / "LICENSE.pdf").exists() and (ut1 / ".update.json").exists()
    previous = tree / "rules" / "lists" / ".ut1.previous"
    assert (previous / "gambling" / "domains").read_bytes() == lines(*OLD_GAMBLING)
    assert not list((tree / "rules" / "lists").glob(".ut1.new-*"))
    d = decide(tree, "www.new-adult.example")
    assert (d.action, d.category, d.rule) == ("block", "adult", "rules/lists/ut1/adult/domains:1")
    assert decide(tree, "new-casino.example").rule == "rules/lists/ut1/gambling/domains:151"
    # the check before the swap compiled the index the proxy will load: a warm start
    assert load_rules(tree / "rules", tree / "cache").from_cache
    # rollback swaps the old lists back in
    assert run(tree, "update", "--rollback") == 0
    assert not (ut1 / "adult" / "domains").exists()
    assert decide(tree, "new-adult.example").action == "allow"


def test_update_through_a_symlinked_lists_directory(tree: Path, tmp_path: Path) -> None:
    """deploy/kubernetes links rules/lists to a shared volume: the check must still read the
    new lists, and the swap happen on that volume."""
    shared = tmp_path / "volume" / "lists"
    shared.parent.mkdir()
    (tree / "rules" / "lists").rename(shared)
    (tree / "rules" / "lists").symlink_to(shared)
    archive = tmp_path / "blacklists.tar.gz"
    archive.write_bytes(tar_bytes(GOOD))
    assert run(tree, "update", "--source", str(archive)) == 0
    assert (shared / "ut1" / "adult" / "domains").is_file()
    assert (shared / ".ut1.previous").is_dir()
    d = decide(tree, "new-adult.example")
    assert (d.action, d.category) == ("block", "adult")
    assert load_rules(tree / "rules", tree / "cache").from_cache


BAD = {
    "traversal": ([*GOOD, ("blacklists/../../evil/domains", lines("x.example"))], "path traversal"),
    "absolute": ([("/etc/cron.d/evil", b"* * * * * root sh\n"), *GOOD], "absolute path"),
    "symlink": (
        [("blacklists/gambling/domains", None, tarfile.SYMTYPE, "/etc/passwd"), *GOOD[1:]],
        "symbolic link",
    ),
    "symlink-dir": (
        [("blacklists/adult2", None, tarfile.SYMTYPE, "../../etc"), *GOOD],
        "symbolic link",
    ),
    "hardlink": (
        [*GOOD, ("blacklists/x/domains", None, tarfile.LNKTYPE, "etc/passwd")],
        "hard link",
    ),
    "device": ([*GOOD, ("blacklists/dev", None, tarfile.CHRTYPE)], "not a regular file"),
    "not-ut1": ([("something/else.txt", b"hello")], "not a UT1 archive"),
    "shrunk": (
        [("blacklists/gambling/domains", lines("only.example")), GOOD[1]],
        "shrank below",
    ),
    "garbage": (
        [("blacklists/adult/domains", lines(*[f"<html> {i}" for i in range(50)], "a.example"))],
        "mostly garbage",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_archives_are_refused_and_change_nothing(
    tree: Path, tmp_path: Path, capsys, case
) -> None:
    members, message = BAD[case]
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(tar_bytes(members))
    before = fingerprint(tree / "rules")
    assert run(tree, "update", "--source", str(archive)) == 1
    err = capsys.readouterr().err
    assert "refused" in err and message in err and "nothing was changed" in err, err
    assert fingerprint(tree / "rules") == before
    assert not list((tree / "rules" / "lists").glob(".ut1*")) or all(
        p.name == ".ut1.lock" for p in (tree / "rules" / "lists").glob(".ut1*")
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) // 2], "incomplete or corrupt"),
        (lambda b: b[:-3] + bytes([b[-3] ^ 0xFF]) + b[-2:], "incomplete or corrupt"),  # length
        (lambda b: b[:-6] + bytes([b[-6] ^ 0xFF]) + b[-5:], "incomplete or corrupt"),  # CRC
        (lambda b: b"", "not a complete tar file"),
    ],
)
def test_truncated_or_corrupt_archives_are_refused(tree, tmp_path, capsys, damage, message) -> None:
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(damage(tar_bytes(GOOD)))
    before = fingerprint(tree / "rules")
    assert run(tree, "update", "--source", str(archive)) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert fingerprint(tree / "rules") == before


def test_size_limits(tree: Path, tmp_path: Path, capsys) -> None:
    archive = tmp_path / "big.tar.gz"
    archive.write_bytes(tar_bytes([*GOOD, ("blacklists/gambling/urls", b"a.example/x\n" * 500)]))
    for setting, message in (
        ("lists.max_member_bytes=2000", "over lists.max_member_bytes"),
        ("lists.max_archive_bytes=100", "over lists.max_archive_bytes"),
        ("lists.max_total_bytes=5000", "max_total_bytes"),
    ):
        assert run(tree, "update", "--source", str(archive), "--set", setting) == 1, setting
        assert message in capsys.readouterr().err


def test_shrunk_lists_need_force(tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "small.tar.gz"
    archive.write_bytes(tar_bytes([("blacklists/gambling/domains", lines("only.example"))]))
    assert run(tree, "update", "--source", str(archive)) == 1
    assert run(tree, "update", "--source", str(archive), "--force") == 0
    assert decide(tree, "only.example").category == "gambling"
    assert decide(tree, "old-casino1.example").action == "allow"


def test_categories_option(tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes(GOOD))
    assert run(tree, "update", "--source", str(archive), "--categories", "adult") == 0
    ut1 = tree / "rules" / "lists" / "ut1"
    assert (ut1 / "adult" / "domains").exists()
    assert (ut1 / "gambling" / "domains").read_bytes() == lines(*OLD_GAMBLING)  # untouched


# ---------------------------------------------------------------------------- import


def test_convert_formats() -> None:
    hosts = [
        "# StevenBlack-style hosts file",
        "127.0.0.1 localhost",
        "0.0.0.0 ads.example.com tracker.example.net # comment",
        "0.0.0.0 ADS.example.com",
        "::1 ip6-localhost",
        "0.0.0.0 bad_host!",
        "justonefield",
    ]
    entries, rejected, dups = convert(hosts, "hosts")
    assert entries == ["ads.example.com", "tracker.example.net"]
    assert dups == 1 and [r[0] for r in rejected] == [6, 7]
    adblock = [
        "[Adblock Plus 2.0]",
        "! comment",
        "||ads.example.org^",
        "||cdn.example.org^$third-party",
        "@@||good.example^",
        "/banner/*",
        "||track.example^|",
    ]
    entries, rejected, _ = convert(adblock, "adblock")
    assert entries == ["ads.example.org", "track.example"]
    assert [why for _, _, why in rejected] == [
        "has options ($...)",
        "exception rule: add an allow entry instead",
        "not a ||domain^ rule",
    ]
    assert convert(["Example.COM/Path/", "x y/z"], "urls")[0] == ["example.com/path/"]
    assert convert(["*.a.example", ".b.example", "c.example."], "domains")[0] == [
        "a.example",
        "b.example",
        "c.example",
    ]


def test_add_include_keeps_comments(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(
        "# head\ncategory: x\ninclude:\n  - lists/a/domains  # why\n\n# later\ndomains: []\n"
    )
    assert add_include(f, "lists/b/domains")
    assert f.read_text() == (
        "# head\ncategory: x\ninclude:\n  - lists/a/domains  # why\n  - lists/b/domains\n"
        "\n# later\ndomains: []\n"
    )
    assert not add_include(f, "lists/b/domains")
    f.write_text("category: x\ninclude: [lists/a/domains]\n")
    add_include(f, "lists/b/domains")
    assert f.read_text() == "category: x\ninclude:\n  - lists/a/domains\n  - lists/b/domains\n"
    f.write_text("category: x\n")
    add_include(f, "lists/b/domains")
    assert f.read_text() == "category: x\n\ninclude:\n  - lists/b/domains\n"


def test_import_hosts_file_into_a_category(tree: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "stevenblack.hosts"
    src.write_text("0.0.0.0 ads.example.com\n0.0.0.0 bad_host!\n0.0.0.0 casino.ads.example.com\n")
    cfg = ["--config", str(tree / "config.yaml")]
    assert (
        main(["lists", "import", str(src), "--category", "gambling", "--format", "hosts", *cfg])
        == 0
    )
    out = capsys.readouterr().out
    assert "2 entries accepted, 1 lines rejected" in out
    assert "rejected stevenblack.hosts:2" in out
    listed = tree / "rules" / "lists" / "local" / "gambling" / "stevenblack.domains"
    assert listed.exists()
    assert (
        "lists/local/gambling/stevenblack.domains" in (tree / "rules" / "gambling.yaml").read_text()
    )
    d = decide(tree, "x.ads.example.com")
    assert (d.category, d.rule) == ("gambling", "rules/lists/local/gambling/stevenblack.domains:4")
    # a new category gets its own rule file
    ad = tmp_path / "easylist.txt"
    ad.write_text("||tracker.example^\n")
    assert main(["lists", "import", str(ad), "--category", "ads", "--format", "adblock", *cfg]) == 0
    assert "category: ads" in (tree / "rules" / "ads.yaml").read_text()


def test_stats(tree: Path, capsys) -> None:
    assert run(tree, "stats") == 0
    out = capsys.readouterr().out
    assert "index: " in out and "rules/lists/ut1/gambling/domains" in out
    assert "absent" in out  # lists/ut1/adult/domains, until `lists update`
    assert "no `lists update` yet" in out
