"""RedisBackend: many replicas and workers on one Redis, each with a full local copy.

Writes go to Redis through the coalescing `RedisWriter` (versioned Functions: max-merge,
delete, reset, the entity limit, all atomic); this process's StatusStore is changed
by the `Follower`, which applies the stream every call appends to. So reads,
`processed?`, the gate and long-polls never leave the process, a write on one
replica wakes waiters on all, and no copy holds a position Redis did not acknowledge.

A write is answered 2xx only once Redis (and WAIT, with --redis-wait-replicas)
acknowledged it **and this replica reads it**: the follower normally applies it
within milliseconds; when it lags (a stalled stream read, a resync), the positions
the function's reply says Redis stored are applied here directly after
`apply_timeout` (max-merge: safe, and a no-op when the follower gets there). A delete
or reset the follower has not applied in that time is answered 503 (it is in Redis;
this replica will apply it). Before the first sync there is no copy to answer from:
writes and every answer that would say "unknown" or "not yet" get 503 instead.

When Redis is found to have lost positions this copy holds (see follower), they are
written back (`_write_back`), and `degraded` says so until they are.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import overload

from redis.asyncio import Redis

from service.storage.backend import WriteFailed
from service.storage.redis.connection import Target
from service.storage.redis.follower import Follower
from service.storage.redis.library import Full
from service.storage.redis.master_watch import MasterWatch
from service.storage.redis.stats import RedisStats
from service.storage.redis.writer import RedisWriter
from service.store import Advance, CapacityError, Delete, Mutation, Outcome, Reset, StatusStore

log = logging.getLogger("process_status.redis")


# What a write may wait for Redis beyond WAIT before it is answered 503 (documented).
WRITE_MARGIN = 2.0
_REPAIR_CHUNK = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisOptions:
    """The flags' values come from Settings (their one default); the rest are internal."""

    target: Target = field(repr=False)
    wait_replicas: int
    wait_timeout: float
    stream_maxlen: int
    start_timeout: float = 10.0
    """How long start() waits for the first sync before it returns (not ready yet)."""
    apply_timeout: float = 0.5
    """How long a write waits for the follower to apply it before applying it here."""
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
        self._tasks: list[asyncio.Task[None]] = []
        self._repair: dict[str, int] = {}
        self._repairer: asyncio.Task[None] | None = None

    async def start(self) -> str:
        options = self.options
        deadline = options.wait_timeout + WRITE_MARGIN
        self._writer_client = options.target.client(socket_timeout=deadline, max_connections=4)
        self.writer = RedisWriter(
            self._writer_client, self.stats, where=self.where,
            max_entities=self.store.max_entities, stream_maxlen=options.stream_maxlen,
            wait_replicas=options.wait_replicas, wait_timeout=options.wait_timeout,
            deadline=deadline)
        writer = self.writer

        async def prepare(client: Redis) -> None:
            # Every (re)connection: a fresh or failed-over Redis may lack the library.
            await writer.load_library()

        self.follower = Follower(
            lambda: options.target.client(socket_timeout=options.block + 5.0,
                                          max_connections=2),
            self.store, self.stats, where=self.where, block=options.block, prepare=prepare,
            on_loss=self._lost)
        self._tasks.append(asyncio.create_task(self.follower.run()))
        if options.target.sentinels:
            watch = MasterWatch(options.target, self.stats, self._master_switched)
            self._tasks.append(asyncio.create_task(watch.run()))
        started = time.monotonic()
        # Wait for the first copy while it makes progress; an unreachable Redis is not
        # waited for: the worker then serves at once, answering 503 until the copy exists.
        while time.monotonic() - started < options.start_timeout:
            if await self.follower.synced(0.05):
                return (f"following Redis at {self.where}: {len(self.store)} entities synced "
                        f"in {time.monotonic() - started:.2f} s")
            if self.follower.failure is not None:
                break
        why = self.follower.failure or "still copying"
        return f"Redis at {self.where} not synced yet ({why}); reads and writes answer 503 " \
            "until it is"

    async def stop(self) -> None:
        if self.writer is not None:
            await self.writer.drain()
        if self.follower is not None:
            self.follower.stop()
        tasks = {*self._tasks, *([self._repairer] if self._repairer else [])}
        # Cancel until they are gone: one cancel can be lost in redis-py (see Follower.stop).
        for _ in range(10):
            tasks = {task for task in tasks if not task.done()}
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=0.5)
        else:
            log.error("background Redis tasks did not stop: %s", tasks)
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
        assert self.writer is not None
        if self.follower.failure is not None:
            stale = self.stats.staleness()
            return (f"Redis at {self.where} is unreachable ({self.follower.failure}): writes are "
                    f"refused with 503; reads are served from this replica's copy, which may "
                    f"be up to {stale:.1f} s stale")
        if self.writer.failure is not None:
            # Cleared by the next write that succeeds, or by the writer's probe.
            return f"writes to Redis fail: {self.writer.failure}"
        return None

    @property
    def degraded(self) -> str | None:
        pending = self.stats.repair_pending
        if not pending:
            return None
        return (f"Redis at {self.where} lost {pending} positions this replica had "
                "acknowledged (flushed, restarted empty, or failed over without them); they "
                "are served from this replica's copy and being written back")

    @overload
    async def submit(self, mutation: Advance, reserved: int = 0) -> dict[str, Outcome]: ...

    @overload
    async def submit(self, mutation: Delete | Reset, reserved: int = 0) -> bool: ...

    async def submit(self, mutation: Mutation, reserved: int = 0) -> dict[str, Outcome] | bool:
        """Raises WriteFailed, and CapacityError when Redis holds too many entities."""
        assert self.writer is not None, "start() first"
        assert self.follower is not None
        try:
            not_synced = self.readiness
            if not_synced is not None:
                raise WriteFailed(f"this replica could not read the write back yet "
                                  f"({not_synced}): it was not sent. Retry in a moment")
            history = self.follower.history
            call = await self.writer.submit(mutation)
        finally:
            self.store.release(reserved)
        result = call.result
        if isinstance(result, Full):
            raise CapacityError.refusing("Redis", result.held, self.store.max_entities,
                                         result.new)
        follower = self.follower
        if not await follower.reached(call.epoch, call.seq, history, self.options.apply_timeout):
            if not isinstance(result, dict):
                raise WriteFailed(
                    f"the {type(mutation).__name__.lower()} is done in Redis, but this "
                    f"replica's copy has not applied it within {self.options.apply_timeout:g} s "
                    "(its stream read lags, or Redis failed over); retrying is safe")
            # What Redis stored, max-merged here: the 2xx below means this replica reads it.
            stored = {name: outcome.timestamp for name, outcome in result.items()}
            self.store.advance(stored, time.time())
            if follower.history != history:
                # It went to a master whose history this copy has since left (a failover,
                # a deposed master): write it to the current one too.
                self._lost(stored)
        if isinstance(result, dict):
            # The follower applies (and counts) only the advances; count the stale ones
            # this replica's writers sent, as the local backend does.
            self.store.stale += sum(1 for outcome in result.values() if not outcome.advanced)
        return result

    # -- Redis lost positions: write this copy's back ----------------------------------

    def _lost(self, ahead: dict[str, int]) -> None:
        for name, timestamp in ahead.items():
            if self._repair.get(name, -1) < timestamp:
                self._repair[name] = timestamp
        self.stats.repair_pending = len(self._repair)
        if self._repairer is None or self._repairer.done():
            self._repairer = asyncio.create_task(self._write_back())

    async def _write_back(self) -> None:
        assert self.writer is not None
        backoff = 0.1
        written = 0
        while self._repair:
            chunk = dict(itertools.islice(self._repair.items(), _REPAIR_CHUNK))
            try:
                call = await self.writer.submit(Advance(chunk))
            except WriteFailed as exc:
                log.warning("cannot write %d lost positions back into Redis yet: %s",
                            len(self._repair), exc)
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            if isinstance(call.result, Full):
                log.error("cannot write %d lost positions back into Redis: it holds %d "
                          "entities, the limit is %d (--max-entities); retrying in 5 s",
                          len(self._repair), call.result.held, self.store.max_entities)
                await asyncio.sleep(5.0)
                continue
            backoff = 0.1
            for name, timestamp in chunk.items():
                if self._repair.get(name) == timestamp:
                    del self._repair[name]
            written += len(chunk)
            self.stats.repair_pending = len(self._repair)
        log.warning("wrote %d positions Redis had lost back into Redis at %s", written,
                    self.where)

    async def _master_switched(self) -> None:
        assert self.writer is not None
        assert self.follower is not None
        await self.writer.reconnect()
        await self.follower.reconnect()
