"""The worker side of ``cipa-proxy run --workers N`` (the supervisor is ``proxy/workers.py``).

mitmproxy opens its listener itself: ``AsyncioServerInstance.listen`` calls
``asyncio.start_server(handler, host, port)`` and has neither a way to be
handed a socket nor a ``reuse_port`` flag. In a worker process, and only
there, :func:`install` replaces ``listen`` on the two server classes
cipa-proxy uses (regular, upstream and transparent mode) with one that

* waits until the first rule load has finished (so a worker that is starting
  or restarting never takes a connection it would have to refuse with
  "filter starting": in shared mode the other workers keep serving the
  queue meanwhile), then
* serves the socket the supervisor handed down (``CIPA_LISTEN_FD``, and
  ``CIPA_LISTEN_FD_TRANSPARENT`` for the gateway's transparent listener; shared
  mode), or binds its own with ``SO_REUSEPORT`` (``CIPA_REUSE_PORT=1``).

The patch is checked against mitmproxy's signature at install time, so a
mitmproxy upgrade that changes ``listen`` fails loudly at start instead of
silently listening elsewhere. Single-process ``cipa-proxy run`` never calls it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from mitmproxy.proxy import mode_servers

from proxy.workers import (
    BACKLOG,
    ENV_LISTEN_FD,
    ENV_LISTEN_FD_TRANSPARENT,
    ENV_REUSE_PORT,
    ENV_WORKER,
    ENV_WORKERS,
)

log = logging.getLogger("cipa.workers")

# The explicit proxy (regular or upstream mode) and the gateway's transparent listener.
_PATCHED = (
    mode_servers.RegularInstance,
    mode_servers.UpstreamInstance,
    mode_servers.TransparentInstance,
)


@dataclass(frozen=True)
class Worker:
    index: int
    count: int
    listen_fd: int | None  # shared mode: the supervisor's socket for the explicit proxy
    reuse_port: bool
    transparent_fd: int | None = None  # shared mode, gateway: the transparent listener's

    def install(self, rules_loaded: asyncio.Event) -> None:
        """Make mitmproxy's regular/upstream listener use the supervisor's socket (or
        SO_REUSEPORT), and only once ``rules_loaded`` is set."""
        original = mode_servers.AsyncioServerInstance.listen
        params = list(inspect.signature(original).parameters)
        if params != ["self", "host", "port"]:  # pragma: no cover - a mitmproxy upgrade
            raise RuntimeError(
                f"mitmproxy's AsyncioServerInstance.listen{params} changed: update addons/workers.py"
            )
        worker = self

        async def listen(self, host: str, port: int) -> list[asyncio.Server]:
            await rules_loaded.wait()
            if self.mode.transport_protocol != "tcp":  # pragma: no cover - not a mode we run
                return await original(self, host, port)
            fd = worker.transparent_fd if self.mode.type_name == "transparent" else worker.listen_fd
            if fd is not None:
                # A duplicate, so that stopping this server (mitmproxy closes it) leaves
                # the inherited descriptor, and every other worker's, untouched.
                sock = socket.socket(fileno=os.dup(fd))
                server = await asyncio.start_server(self.handle_stream, sock=sock, backlog=BACKLOG)
            elif worker.reuse_port:
                server = await asyncio.start_server(
                    self.handle_stream, host or None, port, reuse_port=True, backlog=BACKLOG
                )
            else:  # pragma: no cover - the supervisor always hands one of the two down
                return await original(self, host, port)
            return [server]

        for cls in _PATCHED:
            cls.listen = listen  # type: ignore[method-assign]

    async def watch_parent(self, shutdown: Callable[[], None], interval: float = 1.0) -> None:
        """Stop when the supervisor is gone (killed with SIGKILL, say): no orphan workers."""
        parent = os.getppid()
        while True:
            await asyncio.sleep(interval)
            if os.getppid() != parent:
                log.warning("supervisor (pid %d) is gone; worker %d stopping", parent, self.index)
                shutdown()
                return


def from_env() -> Worker | None:
    """The worker settings the supervisor put in the environment, or None outside a worker."""
    if ENV_WORKER not in os.environ:
        return None
    fd = os.environ.get(ENV_LISTEN_FD)
    tfd = os.environ.get(ENV_LISTEN_FD_TRANSPARENT)
    return Worker(
        index=int(os.environ[ENV_WORKER]),
        count=int(os.environ.get(ENV_WORKERS, "1")),
        listen_fd=int(fd) if fd else None,
        reuse_port=os.environ.get(ENV_REUSE_PORT) == "1",
        transparent_fd=int(tfd) if tfd else None,
    )


__all__ = ["Worker", "from_env"]
