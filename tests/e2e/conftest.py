"""Session fixtures: one origin, one fake internet, and proxies configured per scenario."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import Internet, Origin, ProxyProcess


@pytest.fixture(scope="session")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    o = Origin.start(tmp_path_factory.mktemp("origin"))
    yield o
    o.stop()


@pytest.fixture(scope="session")
def internet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Internet]:
    i = Internet.start(tmp_path_factory.mktemp("internet"))
    yield i
    i.stop()


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[ProxyProcess]:
    """Direct mode, selective inspection, trusting the origin's CA; fault injected for fault.example."""
    p = ProxyProcess.start(
        tmp_path_factory.mktemp("proxy"),
        {"tls.upstream_ca": str(origin.ca), "tls.connect_ports": [443, origin.https_port]},
        env={"CIPA_INJECT_FAULT": "fault.example"},
    )
    yield p
    p.stop()


@pytest.fixture(scope="session")
def chained(tmp_path_factory: pytest.TempPathFactory, internet: Internet) -> Iterator[ProxyProcess]:
    """Upstream mode: every request goes through the fake internet (a parent proxy)."""
    p = ProxyProcess.start(
        tmp_path_factory.mktemp("chained"),
        {"upstream": f"http://127.0.0.1:{internet.port}", "tls.upstream_ca": str(internet.ca)},
    )
    yield p
    p.stop()


@pytest.fixture(scope="session")
def connect_only(
    tmp_path_factory: pytest.TempPathFactory, internet: Internet
) -> Iterator[ProxyProcess]:
    """tls.inspect: none — decisions on the CONNECT host and SNI only, nothing decrypted."""
    p = ProxyProcess.start(
        tmp_path_factory.mktemp("connect_only"),
        {
            "tls.inspect": "none",
            "upstream": f"http://127.0.0.1:{internet.port}",
            "tls.upstream_ca": str(internet.ca),
        },
    )
    yield p
    p.stop()
