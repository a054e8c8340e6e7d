"""Resolve SafeSearch addresses at connect time, with a short cache and admin overrides.

The SafeSearch front ends (forcesafesearch.google.com, strict.bing.com ...)
move between addresses, so they are resolved when a connection is routed and
cached for ``cache_seconds``; ``overrides`` pin a name to ``ip[:port]`` (an
internal mirror, or a loopback listener in tests).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping


class Resolver:
    def __init__(self, overrides: Mapping[str, str] | None = None, cache_seconds: float = 60.0):
        self.overrides = {k.lower(): v for k, v in (overrides or {}).items()}
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[str, float]] = {}

    async def resolve(self, name: str, port: int) -> tuple[str, int]:
        """(address, port) to connect to; raises OSError when the name cannot be resolved."""
        pinned = self.overrides.get(name.lower())
        if pinned is not None:
            host, sep, p = pinned.rpartition(":")
            if sep and p.isdigit() and not pinned.endswith("]"):
                return host.strip("[]"), int(p)
            return pinned.strip("[]"), port
        if name.replace(".", "").isdigit():
            return name, port
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and hit[1] > now:
            return hit[0], port
        infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"cannot resolve {name}")
        addr = infos[0][4][0]
        self._cache[name] = (addr, now + self.cache_seconds)
        return addr, port
