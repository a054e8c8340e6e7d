"""The adult override flow through the running proxy: refused, granted, used, expired, revoked."""

from __future__ import annotations

import html
import re
import subprocess
import time
from pathlib import Path

import bcrypt
import httpx

from .harness import BIN, Internet, ProxyProcess

RULES = {
    "gambling": "category: gambling\ndescription: Gambling\ndomains: [bet.example]\n",
    "child_abuse": "category: child_abuse\ndescription: CSAM\noverride: never\ndomains: [abuse.example]\n",
}


def post_override(
    c: httpx.Client, host: str, user: str, password: str, reason: str = "research for a lesson"
) -> httpx.Response:
    return c.post(
        f"http://{host}/__cipa/override",
        data={"url": f"http://{host}/", "username": user, "password": password, "reason": reason},
    )


def test_override_refused_granted_used_expired_and_revoked(
    tmp_path: Path, internet: Internet
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / f"{name}.yaml").write_text(text)
    hashed = bcrypt.hashpw(b"pw-tess", bcrypt.gensalt(rounds=6)).decode()
    hashed_stu = bcrypt.hashpw(b"pw-stu", bcrypt.gensalt(rounds=6)).decode()
    (tmp_path / "users").write_text(f"tess:{hashed}\nstu:{hashed_stu}\n")
    p = ProxyProcess.start(
        tmp_path / "proxy",
        {
            "rules_dir": str(rules),
            "upstream": f"http://127.0.0.1:{internet.port}",
            "tls.upstream_ca": str(internet.ca),
            "auth": {"backend": "htpasswd", "htpasswd": str(tmp_path / "users")},
            "overrides": {"minutes": 0.05},  # 3 seconds
            "groups": [
                {"name": "teachers", "users": ["tess"], "policy": "teachers"},
                {"name": "students", "policy": "students"},
            ],
            "policies": {
                "students": {"block": ["gambling", "child_abuse"]},
                "teachers": {"block": ["gambling", "child_abuse"], "override": True},
            },
        },
    )
    cli = [str(BIN / "cipa-proxy"), "overrides", "list", "--config", str(p.root / "config.yaml")]
    try:
        with httpx.Client(proxy=p.url, timeout=10) as c:
            page = c.get("http://bet.example/", headers={"Accept": "text/html"})
            assert page.status_code == 403
            link = re.search(r'id="staff-override" href="([^"]+)"', page.text).group(1)
            assert link.startswith("/__cipa/override?url=http%3A%2F%2Fbet.example%2F")
            never = c.get("http://abuse.example/", headers={"Accept": "text/html"})
            assert "staff-override" not in never.text  # override: never: no link at all
            form = c.get(f"http://bet.example{html.unescape(link)}")
            assert (
                form.status_code == 200
                and 'name="password"' in form.text
                and "bet.example" in form.text
            )

            # a student cannot, a wrong password cannot, CSAM never
            assert post_override(c, "bet.example", "stu", "pw-stu").status_code == 403
            assert post_override(c, "bet.example", "tess", "wrong").status_code == 403
            r = post_override(c, "abuse.example", "tess", "pw-tess")
            assert r.status_code == 403 and "can never be overridden" in r.text
            assert c.get("http://bet.example/").status_code == 403

            # the teacher signs in with a reason: granted, then used (HTTP and HTTPS)
            r = post_override(c, "bet.example", "tess", "pw-tess")
            assert r.status_code == 303 and r.headers["location"] == "http://bet.example/"
            grant = r.headers["x-cipa-override"]
            used = c.get("http://www.bet.example/page")
            assert used.text == "internet GET www.bet.example /page\n"
            listed = subprocess.run(cli, capture_output=True, text=True).stdout
            assert grant in listed and "tess" in listed and "research for a lesson" in listed

            # expired: blocked again
            time.sleep(3.5)
            assert c.get("http://bet.example/").status_code == 403

            # granted again, revoked from the command line: blocked again within seconds
            grant2 = post_override(c, "bet.example", "tess", "pw-tess").headers["x-cipa-override"]
            assert c.get("http://bet.example/").status_code == 200
            revoke = [
                str(BIN / "cipa-proxy"),
                "overrides",
                "revoke",
                grant2,
                "--config",
                str(p.root / "config.yaml"),
            ]
            assert subprocess.run(revoke, capture_output=True).returncode == 0
            deadline = time.monotonic() + 5
            while c.get("http://bet.example/").status_code != 403:
                assert time.monotonic() < deadline, "revocation did not take effect"
                time.sleep(0.2)

        records = p.audit_records()
        events = [(r["event"], r.get("user")) for r in records if r.get("type") == "override"]
        assert events == [
            ("refused", "stu"),
            ("refused", "tess"),
            ("refused", "tess"),
            ("granted", "tess"),
            ("granted", "tess"),
        ]
        granted = [r for r in records if r.get("type") == "override" and r["event"] == "granted"][0]
        assert (granted["grant"], granted["domain"], granted["category"]) == (
            grant,
            "bet.example",
            "gambling",
        )
        assert granted["reason"] == "research for a lesson" and granted["until"]
        uses = [r for r in records if r.get("override") == grant]
        assert (
            uses
            and uses[0]["action"] == "allow"
            and uses[0]["url"] == "http://www.bet.example/page"
        )
        raw = "".join(path.read_text() for path in p.audit_dir.glob("*.jsonl"))
        assert "pw-tess" not in raw and "pw-stu" not in raw
    finally:
        p.stop()


def test_class_exception_added_by_a_teacher(tmp_path: Path, internet: Internet) -> None:
    p = ProxyProcess.start(
        tmp_path / "proxy",
        {
            "upstream": f"http://127.0.0.1:{internet.port}",
            "groups": [
                {"name": "teachers", "users": ["tess"], "policy": "staff"},
                {"name": "students", "policy": "students"},
            ],
        },
    )
    base = [str(BIN / "cipa-proxy"), "exceptions"]
    cfg = ["--config", str(p.root / "config.yaml")]
    try:
        with httpx.Client(proxy=p.url, timeout=10) as c:
            assert c.get("http://miniclip.com/").status_code == 403
            refused = subprocess.run([*base, "add", "miniclip.com", "--group", "students", "--by", "stu", *cfg],
                                     capture_output=True, text=True)  # fmt: skip
            assert refused.returncode == 1 and "override: true" in refused.stderr
            added = subprocess.run(
                [*base, "add", "miniclip.com", "--group", "students", "--by", "tess", "--reason", "game design unit", *cfg],
                capture_output=True, text=True,
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            deadline = (
                time.monotonic() + 10
            )  # poll interval 2 s + a full reload of the shipped lists
            while c.get("http://www.miniclip.com/").status_code != 200:
                assert time.monotonic() < deadline, "the exception was not applied by hot reload"
                time.sleep(0.2)
            subprocess.run(
                [*base, "remove", "miniclip.com", "--group", "students", *cfg], check=True
            )
            deadline = time.monotonic() + 10
            while c.get("http://miniclip.com/").status_code != 403:
                assert time.monotonic() < deadline, "the removal was not applied"
                time.sleep(0.2)
        records = p.audit_records()
        (applied,) = [r for r in records if r.get("type") == "exception"]
        assert (applied["domain"], applied["group"], applied["user"], applied["reason"]) == (
            "miniclip.com", "students", "tess", "game design unit",
        )  # fmt: skip
        lifted = [
            r for r in records if r.get("host") == "www.miniclip.com" and r["action"] == "allow"
        ]
        assert lifted and lifted[-1]["rule"].startswith("exceptions.yaml:")
    finally:
        p.stop()
