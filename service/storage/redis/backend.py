"""RedisBackend: many replicas and workers on one Redis, each with a full local copy.

Writes go to Redis through the coalescing `RedisWriter` (versioned Functions: max-merge,
delete, reset, the entity limit, all atomic); this process's StatusStore is changed
only by the `Follower`, which applies the stream every call appends to. So reads,
`processed?`, the gate and long-polls never leave the process, a write on one
replica wakes waiters on all, and no copy ever runs ahead of Redis.

A write is answered once Redis (and WAIT, with --redis-wait-replicas) acknowledged
it and, for read-your-writes on this replica, once the follower here has applied
it (waiting at most `apply_timeout`; past that the answer goes out anyway: the
write is in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import overload

from redis.asyncio import Redis

from service.storage.redis.connection import Target
from service.storage.redis.follower import Follower
from service.storage.redis.library import Full
from service.storage.redis.stats import RedisStats
from service.storage.redis.writer import RedisWriter
from service.store import Advance, CapacityError, Delete, Mutation, Outcome, Reset, StatusStore

log = logging.getLogger("process_status.redis")


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisOptions:
    target: Target = field(repr=False)
    wait_replicas: int = 0
    wait_timeout: float = 0.1
    stream_maxlen: int = 100_000
    start_timeout: float = 10.0
    """How long start() waits for the first sync before it returns (not ready yet)."""
    apply_timeout: float = 1.0
    block: float = 1.0


class RedisBackend:
    def __init__(self, options: RedisOptions, store: StatusStore) -> None:
        self.options = options
        self.store = store
        self.stats = RedisStats()
        self.where = options.target.redacted
        self._writer_client: Redis | None = None
        self.writer: RedisWriter | None = None
        self.follower: Follower | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        options = self.options
        self._writer_client = options.target.client(
            socket_timeout=options.wait_timeout + 5.0, max_connections=4)
        self.writer = RedisWriter(
            self._writer_client, self.stats, where=self.where,
            max_entities=self.store.max_entities, stream_maxlen=options.stream_maxlen,
            wait_replicas=options.wait_replicas, wait_timeout=options.wait_timeout)
        writer = self.writer

        async def prepare(client: Redis) -> None:
            # Every (re)connection: a fresh or failed-over Redis may lack the library.
            await writer.load_library()

        self.follower = Follower(
            lambda: options.target.client(socket_timeout=options.block + 5.0,
                                          max_connections=2),
            self.store, self.stats, where=self.where, block=options.block, prepare=prepare)
        self._task = asyncio.create_task(self.follower.run())
        started = time.monotonic()
        if await self.follower.synced(options.start_timeout):
            return (f"following Redis at {self.where}: {len(self.store)} entities synced in "
                    f"{time.monotonic() - started:.2f} s")
        return (f"Redis at {self.where} not synced after {options.start_timeout:g} s "
                f"({self.follower.failure or 'still copying'}); not ready until it is")

    async def stop(self) -> None:
        if self.writer is not None:
            await self.writer.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer_client is not None:
            await self._writer_client.aclose()

    @property
    def readiness(self) -> str | None:
        follower = self.follower
        if follower is None or not self.stats.synced:
            reason = follower.failure if follower is not None else None
            return (f"not yet synced with Redis at {self.where}"
                    + (f": {reason}" if reason else " (copying its entities)"))
        return None

    @property
    def write_health(self) -> str | None:
        not_synced = self.readiness
        if not_synced is not None:
            return not_synced
        assert self.follower is not None
        if self.follower.failure is not None:
            stale = self.stats.staleness()
            return (f"Redis at {self.where} is unreachable ({self.follower.failure}): writes are "
                    f"refused with 503; reads are served from this replica's copy, which may "
                    f"be up to {stale:.1f} s stale")
        # A failed write (WAIT short, say) is not counted here: nothing would clear it
        # while no writes come. Writes answer 503 with the reason themselves.
        return None

    @overload
    async def submit(self, mutation: Advance, reserved: int = 0) -> dict[str, Outcome]: ...

    @overload
    async def submit(self, mutation: Delete | Reset, reserved: int = 0) -> bool: ...

    async def submit(self, mutation: Mutation, reserved: int = 0) -> dict[str, Outcome] | bool:
        """Raises WriteFailed, and CapacityError when Redis holds too many entities."""
        assert self.writer is not None, "start() first"
        assert self.follower is not None
        try:
            call = await self.writer.submit(mutation)
        finally:
            self.store.release(reserved)
        if isinstance(call.result, Full):
            raise CapacityError(
                f"Redis holds {call.result.held} entities and the limit is "
                f"{self.store.max_entities}; this write would add {call.result.new} more. "
                "Delete unused entities or raise --max-entities")
        await self.follower.reached(call.epoch, call.seq, self.options.apply_timeout)
        result = call.result
        if isinstance(result, dict):
            # The follower applies (and counts) only the advances; count the stale ones
            # this replica's writers sent, as the local backend does.
            self.store.stale += sum(1 for outcome in result.values() if not outcome.advanced)
        return result
