"""Real headless Chromium (Debian's ``chromium``), driven by Playwright, through a running cipa-proxy.

Nothing here touches the network. Every web site is the fake internet
(``e2e.harness.Internet``, a mitmdump that answers every request itself)
behind the proxy, Chromium runs with the flags that switch off its own
background traffic, and ``--host-resolver-rules`` makes any name lookup fail,
so a request that escaped the proxy would fail instead of leaving the machine.
Playwright drives the system Chromium (``executable_path``); it never
downloads a browser.

The district CA is trusted the way a real device trusts it: certutil puts it
in the NSS database of the browser's ``$HOME`` (``~/.pki/nssdb``), which
Chromium on Linux reads. Screenshots go to ``$CIPA_ARTIFACTS`` or to a
``screenshots`` folder in pytest's temporary directory (printed at the end).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from e2e.harness import Internet, ProxyProcess

CHROMIUM = Path(os.environ.get("CIPA_CHROMIUM", "/usr/bin/chromium"))
REVIEW_EMAIL = "filter-review@example.org"
DISTRICT = "Example Unified School District"

# Keep Chromium off the network (see the module docstring); Playwright adds --headless.
CHROMIUM_ARGS = [
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-gpu",
    "--no-sandbox",
    "--disable-domain-reliability",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]

PHONE = {"width": 390, "height": 844}
CHROMEBOOK = {"width": 1366, "height": 768}

_artifacts: list[Path] = []


def _why_no_browser() -> str | None:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium not installed at {CHROMIUM} (CI installs Debian's chromium: .ci/run)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install -e '.[test]')"
    return None


def spki_hash(cert_pem: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)), as --ignore-certificate-errors-spki-list wants it."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def make_home(home: Path, trusted: list[Path]) -> list[str]:
    """A fresh $HOME whose NSS database trusts ``trusted`` CAs; extra Chromium flags if certutil is
    missing (then the CAs' keys are accepted with --ignore-certificate-errors-spki-list instead)."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    certutil = shutil.which("certutil")
    if certutil is None:
        if not trusted:
            return []
        return ["--ignore-certificate-errors-spki-list=" + ",".join(spki_hash(c) for c in trusted)]
    subprocess.run(
        [certutil, "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True
    )
    for i, ca in enumerate(trusted):
        subprocess.run(
            [
                certutil,
                "-A",
                "-d",
                f"sql:{nssdb}",
                "-t",
                "C,,",
                "-n",
                f"test-ca-{i}",
                "-i",
                str(ca),
            ],
            check=True,
            capture_output=True,
        )
    return []


class Browsers:
    """Launches Chromium on demand, one per trust setting, for the whole session."""

    def __init__(self, playwright, proxy: ProxyProcess, homes: Path, trusted: list[Path]):
        self.pw = playwright
        self.proxy = proxy
        self.homes = homes
        self.trusted = trusted
        self._browsers: dict[bool, object] = {}

    def get(self, trusting: bool = True):
        if trusting not in self._browsers:
            home = self.homes / ("trusting" if trusting else "untrusting")
            extra = make_home(home, self.trusted if trusting else [])
            self._browsers[trusting] = self.pw.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                chromium_sandbox=False,
                args=CHROMIUM_ARGS + extra,
                env={**os.environ, "HOME": str(home)},
                proxy={"server": self.proxy.url},
            )
        return self._browsers[trusting]

    def close(self) -> None:
        for b in self._browsers.values():
            b.close()


@pytest.fixture(scope="session")
def browser_ready() -> None:
    why = _why_no_browser()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="session")
def fake_internet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Internet]:
    i = Internet.start(tmp_path_factory.mktemp("browser-internet"))
    yield i
    i.stop()


@pytest.fixture(scope="session")
def logo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("logo") / "logo.svg"
    path.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 40 40" width="40" height="40">'
        '<rect width="40" height="40" rx="8" fill="#1e3a5f"/>'
        '<path d="M8 28 L20 10 L32 28 Z" fill="#f59e0b"/></svg>'
    )
    return path


STAFF_USER, STAFF_PASSWORD = "tess", "correct horse battery"


@pytest.fixture(scope="session")
def site_proxy(
    tmp_path_factory: pytest.TempPathFactory, fake_internet: Internet, logo_file: Path
) -> Iterator[ProxyProcess]:
    """cipa-proxy in selective mode, chained to the fake internet, with a review address, a logo,
    and optional sign-in (htpasswd) so a staff member can use the override page."""
    import bcrypt

    root = tmp_path_factory.mktemp("browser-proxy")
    users = root / "users.htpasswd"
    users.write_text(
        f"{STAFF_USER}:{bcrypt.hashpw(STAFF_PASSWORD.encode(), bcrypt.gensalt(rounds=6)).decode()}\n"
    )
    p = ProxyProcess.start(
        root / "proxy",
        {
            "upstream": f"http://127.0.0.1:{fake_internet.port}",
            "tls.upstream_ca": str(fake_internet.ca),
            "district.name": DISTRICT,
            "district.review_email": REVIEW_EMAIL,
            "district.logo": str(logo_file),
            "auth": {"backend": "htpasswd", "htpasswd": str(users)},
            "groups": [
                {"name": "staff", "users": [STAFF_USER], "policy": "staff"},
                {"name": "students", "policy": "students"},
            ],
        },
    )
    yield p
    p.stop()


@pytest.fixture(scope="session")
def browsers(
    browser_ready: None,
    tmp_path_factory: pytest.TempPathFactory,
    site_proxy: ProxyProcess,
    fake_internet: Internet,
) -> Iterator[Browsers]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = Browsers(
            pw, site_proxy, tmp_path_factory.mktemp("homes"), [site_proxy.ca, fake_internet.ca]
        )
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = Path(os.environ.get("CIPA_ARTIFACTS") or tmp_path_factory.getbasetemp() / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def screenshot(artifacts: Path):
    """screenshot(page, name): a full-page PNG in the artifacts folder; returns its path."""

    def take(page, name: str) -> Path:
        path = artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        _artifacts.append(path)
        return path

    return take


@pytest.fixture
def new_page(browsers: Browsers):
    """new_page(locale=..., trusting=..., **context options): a page in a fresh browser context."""
    contexts = []

    def make(locale: str = "en-US", trusting: bool = True, **kw):
        kw.setdefault("viewport", CHROMEBOOK)
        ctx = browsers.get(trusting).new_context(locale=locale, **kw)
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for c in contexts:
        c.close()


def audit_record(proxy: ProxyProcess, rid: str, wait: float = 5.0) -> dict:
    deadline = time.monotonic() + wait
    while True:
        found = [r for r in proxy.audit_records() if r.get("id") == rid]
        if found:
            assert len(found) == 1, found
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no audit record with id {rid}")
        time.sleep(0.05)


def pytest_terminal_summary(terminalreporter) -> None:
    if _artifacts:
        terminalreporter.write_line(f"browser screenshots: {_artifacts[0].parent}")
