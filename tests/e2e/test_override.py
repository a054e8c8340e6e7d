"""The adult override flow through the running proxy: refused, granted, used, expired, revoked."""

from __future__ import annotations

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
            assert c.get("http://bet.example/").status_code == 403
            form = c.get("http://bet.example/__cipa/override?url=http://bet.example/")
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
