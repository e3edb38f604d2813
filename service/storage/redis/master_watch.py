"""MasterWatch: asks Sentinel, every second, which server is the master.

redis-py asks Sentinel only when it opens a connection, and a connection to a master
that was deposed while it could not hear the Sentinels (a network partition) keeps
working: measured, a replica kept writing to the old master for ~10 s after the
partition healed, and with --redis-wait-replicas 0 everything it acknowledged in the
window was lost. When Sentinel names another master than it named before, the
backend drops its connections, the next ones go to the new master, and the follower
compares histories there (and writes back what the new master lacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from service.storage.redis.connection import Target
from service.storage.redis.stats import RedisStats

log = logging.getLogger("process_status.redis")


class MasterWatch:
    def __init__(
        self,
        target: Target,
        stats: RedisStats,
        on_switch: Callable[[], Awaitable[None]],
        interval: float = 1.0,
    ) -> None:
        self._target = target
        self._stats = stats
        self._on_switch = on_switch
        self._interval = interval
        self.master: tuple[str, int] | None = None
        self.failure: str | None = None

    async def run(self) -> None:
        sentinel = self._target.sentinel()
        try:
            await self._watch(sentinel)
        finally:
            for client in sentinel.sentinels:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    async def _watch(self, sentinel: Sentinel) -> None:
        name = self._target.master
        while True:
            try:
                address = await sentinel.discover_master(name)
            except (RedisError, OSError) as exc:
                if self.failure is None:
                    log.warning("no Sentinel names the master of %r (%s): writes go on to %s "
                                "while it answers", name, exc, self.master or "none yet")
                self.failure = f"{type(exc).__name__}: {exc}"
            else:
                self.failure = None
                found = (str(address[0]), int(address[1]))
                if self.master is not None and found != self.master:
                    log.warning("Sentinel names %s:%d the master of %r (was %s:%d): "
                                "reconnecting", *found, name, *self.master)
                    self._stats.sentinel_switches += 1
                    self.master = found
                    await self._on_switch()
                self.master = found
            await asyncio.sleep(self._interval)
