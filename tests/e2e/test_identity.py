"""Who is asking, through the running proxy: client ranges, htpasswd and LDAP sign-in."""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest

from .harness import Internet, ProxyProcess

PASSWORD = "c0rrect:horse battery"  # a colon inside: only the first one separates user and password


def client(p: ProxyProcess, auth: tuple[str, str] | None = None) -> httpx.Client:
    return httpx.Client(proxy=httpx.Proxy(p.url, auth=auth) if auth else p.url, timeout=10)


def get_from(p: ProxyProcess, source: str, url: str) -> tuple[int, str]:
    """GET through the proxy from a given loopback source address (127.0.0.2 is another machine)."""
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", url, headers={"Host": url.split("/")[2]})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def upstream(internet: Internet) -> dict:
    return {"upstream": f"http://127.0.0.1:{internet.port}", "tls.upstream_ca": str(internet.ca)}


def test_two_client_ranges_get_different_answers(tmp_path: Path, internet: Internet) -> None:
    p = ProxyProcess.start(
        tmp_path / "proxy",
        {
            **upstream(internet),
            "groups": [
                {"name": "staff", "clients": ["127.0.0.2/32"], "policy": "staff"},
                {"name": "students", "policy": "students"},
            ],
        },
    )
    try:
        assert get_from(p, "127.0.0.1", "http://miniclip.com/")[0] == 403
        assert get_from(p, "127.0.0.2", "http://miniclip.com/") == (
            200,
            "internet GET miniclip.com /\n",
        )
        groups = {
            r["client"]: r["group"] for r in p.audit_records() if r.get("host") == "miniclip.com"
        }
        assert groups == {"127.0.0.1": "students", "127.0.0.2": "staff"}
    finally:
        p.stop()


def test_htpasswd_sign_in_maps_users_to_groups(tmp_path: Path, internet: Internet) -> None:
    htpasswd = tmp_path / "users.htpasswd"
    hashed = (
        bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=6))
        .decode()
        .replace("$2b$", "$2y$", 1)
    )
    htpasswd.write_text(f"alice:{hashed}\nbob:{hashed}\n")
    p = ProxyProcess.start(
        tmp_path / "proxy",
        {
            **upstream(internet),
            "auth": {
                "backend": "htpasswd",
                "htpasswd": str(htpasswd),
                "required_for": ["127.0.0.0/8"],
            },
            "groups": [
                {"name": "staff", "users": ["alice"], "policy": "staff"},
                {"name": "students", "policy": "students"},
            ],
        },
    )
    try:
        with client(p) as anonymous:
            r = anonymous.get("http://miniclip.com/")
            assert r.status_code == 407 and "Basic" in r.headers["proxy-authenticate"]
            with pytest.raises(httpx.ProxyError, match="407"):
                anonymous.get("https://miniclip.com/")
        with client(p, auth=("alice", "wrong password")) as wrong:
            assert wrong.get("http://miniclip.com/").status_code == 407
        with client(p, auth=("alice", PASSWORD)) as alice, client(p, auth=("bob", PASSWORD)) as bob:
            assert alice.get("http://miniclip.com/").status_code == 200
            assert bob.get("http://miniclip.com/").status_code == 403
            # the credentials never travel upstream
            assert "proxy-authorization" not in alice.get("http://www.example.com/").text.lower()
        records = p.audit_records()
        assert {
            (r["user"], r["group"])
            for r in records
            if r.get("host") == "miniclip.com" and r["user"]
        } == {
            ("alice", "staff"),
            ("bob", "students"),
        }
        assert sum(1 for r in records if r["category"] == "auth_required") == 3
        raw = "".join(path.read_text() for path in p.audit_dir.glob("*.jsonl"))
        assert PASSWORD not in raw and "wrong password" not in raw and "Basic " not in raw
    finally:
        p.stop()


# ----------------------------------------------------------------------------- LDAP

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SUFFIX = "dc=district,dc=test"


@pytest.fixture(scope="module")
def ldap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not Path(SLAPD).exists():
        pytest.skip("slapd is not installed (Debian package slapd; .ci/run installs it)")
    root = tmp_path_factory.mktemp("ldap")
    (root / "db").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = root / "slapd.conf"
    conf.write_text(
        f"""include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {root}/slapd.pid
database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "cn=admin,{SUFFIX}"
rootpw adminpw
directory {root}/db
overlay memberof
"""
    )
    proc = subprocess.Popen(
        [SLAPD, "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/", "-d", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    import ldap3

    deadline = time.monotonic() + 15
    while True:
        try:
            conn = ldap3.Connection(
                ldap3.Server(f"ldap://127.0.0.1:{port}"),
                f"cn=admin,{SUFFIX}",
                "adminpw",
                auto_bind=True,
            )
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"slapd did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    conn.add(SUFFIX, ["dcObject", "organization"], {"o": "District", "dc": "district"})
    for ou in ("people", "groups"):
        conn.add(f"ou={ou},{SUFFIX}", ["organizationalUnit"], {"ou": ou})
    for uid in ("tina", "sam"):
        conn.add(
            f"uid={uid},ou=people,{SUFFIX}",
            ["inetOrgPerson"],
            {"cn": uid, "sn": uid, "uid": uid, "userPassword": f"{uid}-secret"},
        )
    conn.add(
        f"cn=teachers,ou=groups,{SUFFIX}",
        ["groupOfNames"],
        {"cn": "teachers", "member": [f"uid=tina,ou=people,{SUFFIX}"]},
    )
    conn.unbind()
    yield port
    proc.terminate()
    proc.wait(10)


def test_ldap_sign_in_with_directory_groups(
    tmp_path: Path, internet: Internet, ldap_server: int
) -> None:
    p = ProxyProcess.start(
        tmp_path / "proxy",
        {
            **upstream(internet),
            "auth": {
                "backend": "ldap",
                "required_for": ["127.0.0.0/8"],
                "ldap": {
                    "url": f"ldap://127.0.0.1:{ldap_server}",
                    "user_dn": f"uid={{user}},ou=people,{SUFFIX}",
                    "base_dn": f"ou=people,{SUFFIX}",
                    "groups": {f"cn=teachers,ou=groups,{SUFFIX}": "staff"},
                },
            },
            "groups": [
                {"name": "staff", "clients": [], "policy": "staff"},
                {"name": "students", "policy": "students"},
            ],
        },
    )
    try:
        with (
            client(p, auth=("tina", "tina-secret")) as tina,
            client(p, auth=("sam", "sam-secret")) as sam,
        ):
            for _ in range(3):  # the cache answers after the first bind
                assert tina.get("http://miniclip.com/").status_code == 200
            assert sam.get("http://miniclip.com/").status_code == 403
        with client(p, auth=("tina", "not-her-password")) as wrong:
            assert wrong.get("http://miniclip.com/").status_code == 407
        with client(
            p, auth=("tina", "")
        ) as empty:  # an empty password must not become an anonymous bind
            assert empty.get("http://miniclip.com/").status_code == 407
        got = {
            (r["user"], r["group"])
            for r in p.audit_records()
            if r.get("host") == "miniclip.com" and r["user"]
        }
        assert got == {("tina", "staff"), ("sam", "students")}
    finally:
        p.stop()
