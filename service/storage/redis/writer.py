"""RedisWriter: coalesces concurrent writes into one FCALL (group commit, as the journal).

At most one call is in flight per process. Writes that arrive meanwhile queue up
and go out together in the next call (one Lua invocation, one stream entry), which
is what lifts a Redis-backed PUT from ~8k/s (one call each) to several times that.
With ``wait_replicas`` > 0 the same pipeline sends ``WAIT n timeout`` after the
FCALL, on the same connection, so the call counts only once that many replicas
have the write.

Results come from the function's reply (outcomes per entity, whether a delete
found its entity, an entity limit refusal); the local store is NOT touched here:
the follower applies the stream entry. A failed call (Redis unreachable, an error
reply, WAIT short) fails every write in it with WriteFailed; nothing is applied
locally by the writer. Max-merge makes the retry of any advance safe.

Each write is answered within `deadline` seconds (--redis-wait-timeout plus a fixed
margin): a stalled Redis (SIGSTOP, a long script) costs a 503 that says whether the
write may have been applied, not a socket timeout per call queued before it. One timer
serves every write: deadlines come in submission order, so it only needs to fire at
the oldest unanswered one (a `wait_for(shield(...))` per write cost ~4 us of CPU and
two extra loop turns per write, 5-9% of the worker's py-spy samples under wrk PUTs).
After a failure the pool's connections are dropped, so the next call connects afresh
(through Sentinel: to the master it names now), and while no write comes a probe (an
empty call, plus WAIT) says when writes would succeed again, so `failure` clears itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from service.storage.backend import WriteFailed
from service.storage.outage import Outage
from service.storage.redis import library
from service.storage.redis.stats import RedisStats
from service.store import Advance, Mutation

log = logging.getLogger("process_status.redis")

# Redis runs a function to completion, blocking every other client: cap one call.
_MAX_CALL_ENTITIES = 20_000


@dataclass(slots=True)
class Call:
    """The answer of one call for one write: its result and the stream position after it."""

    result: library.OpResult
    epoch: str
    seq: int


@dataclass(slots=True, eq=False)
class _Write:
    mutation: Mutation
    due: float
    """Loop time by which it is answered, whatever Redis does."""
    future: asyncio.Future[Call]
    sent: bool = False


class RedisWriter:
    def __init__(
        self,
        client: Redis,
        stats: RedisStats,
        *,
        where: str,
        max_entities: int,
        stream_maxlen: int,
        wait_replicas: int,
        wait_timeout: float,
        deadline: float,
        probe_interval: float = 1.0,
    ) -> None:
        self._client = client
        self._stats = stats
        self._where = where
        self._head = [str(max_entities), str(stream_maxlen)]
        self._wait_replicas = wait_replicas
        self._wait_ms = max(1, round(wait_timeout * 1000))
        self._deadline = deadline
        self._pending: list[_Write] = []
        self._unanswered: deque[_Write] = deque()
        """Every write not yet seen answered, oldest (soonest due) first."""
        self._timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._outage = Outage(log, "Redis writes", self._probe, interval=probe_interval,
                              busy=self._busy)

    @property
    def failure(self) -> str | None:
        """Why the last call (or probe) failed; None once one succeeds."""
        return self._outage.reason

    async def submit(self, mutation: Mutation) -> Call:
        loop = asyncio.get_running_loop()
        write = _Write(mutation, loop.time() + self._deadline, loop.create_future())
        self._pending.append(write)
        self._unanswered.append(write)
        if self._timer is None:
            self._timer = loop.call_at(write.due, self._expire)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # A client that hung up cancels only its own future: the call, if it went out,
        # still completes for the others in it.
        return await write.future

    def _expire(self) -> None:
        """Answer 503 every write past its deadline; wake again at the next one's."""
        self._timer = None
        loop = asyncio.get_running_loop()
        # libuv timers tick in milliseconds: a timer may fire just before its due time.
        now = loop.time() + 0.001
        unanswered = self._unanswered
        dropped: set[_Write] = set()
        while unanswered:
            write = unanswered[0]
            if write.future.done():
                unanswered.popleft()
                continue
            if write.due > now:
                self._timer = loop.call_at(write.due, self._expire)
                break
            unanswered.popleft()
            if not write.sent:
                dropped.add(write)
            margin = self._deadline - self._wait_ms / 1000
            write.future.set_exception(WriteFailed(
                f"Redis at {self._where} did not answer within {self._deadline:g} s "
                f"(--redis-wait-timeout plus {margin:g} s): "
                + ("the write was not sent and was not applied" if not write.sent else
                   "the write may or may not have been applied")
                + ". Retrying is safe (positions only move forward)"))
        if dropped:
            self._pending = [write for write in self._pending if write not in dropped]

    def _forget_answered(self) -> None:
        unanswered = self._unanswered
        while unanswered and unanswered[0].future.done():
            unanswered.popleft()
        if not unanswered and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def drain(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._outage.stop()

    async def load_library(self) -> None:
        """FUNCTION LOAD REPLACE, only when the version in Redis differs."""
        try:
            found = await self._client.fcall_ro(library.VERSION_FUNCTION, 0)
        except ResponseError:
            found = None
        if found != library.VERSION.encode():
            await self._client.function_load(library.SOURCE, replace=True)
            log.info("loaded Redis function library %s version %s (found %r)",
                     library.NAME, library.VERSION, found)

    async def _flush(self) -> None:
        while self._pending:
            batch = self._take()
            started = time.perf_counter()
            try:
                reply = await self._call([write.mutation for write in batch])
            except WriteFailed as exc:
                self._stats.write_failures += 1
                self._outage.failed(str(exc), "Redis write failed; %d writes answered 503: %s",
                                    len(batch), exc)
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(exc)
                self._forget_answered()
                continue
            self._outage.succeeded()
            self._stats.call_duration.observe(time.perf_counter() - started)
            self._stats.call_batch.observe(len(batch))
            for write, result in zip(batch, reply.results, strict=True):
                if not write.future.done():
                    write.future.set_result(Call(result, reply.epoch, reply.seq))
            self._forget_answered()

    def _busy(self) -> bool:
        # A write in flight answers the probe's question: skip a turn.
        return bool(self._pending) or (self._flusher is not None and not self._flusher.done())

    async def _probe(self) -> str | None:
        """While writes fail and none come: does an empty call (and WAIT) succeed?"""
        try:
            await self._call([])
        except WriteFailed as exc:
            return str(exc)
        return None

    def _take(self) -> list[_Write]:
        pending = self._pending
        entities = 0
        taken = len(pending)
        for index, write in enumerate(pending):
            mutation = write.mutation
            entities += len(mutation.updates) if isinstance(mutation, Advance) else 1
            if entities >= _MAX_CALL_ENTITIES:
                taken = index + 1
                break
        if taken == len(pending):
            batch, self._pending = pending, []
        else:
            batch, self._pending = pending[:taken], pending[taken:]
        for write in batch:
            write.sent = True
        return batch

    async def _call(self, mutations: list[Mutation]) -> library.Reply:
        args = [*self._head, *library.encode(mutations)]
        for attempt in (1, 2):
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.fcall(library.APPLY, len(library.KEYS), *library.KEYS, *args)
                    if self._wait_replicas:
                        pipe.wait(self._wait_replicas, self._wait_ms)
                    results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                await self.reconnect()
                raise WriteFailed(
                    f"Redis at {self._where} did not answer ({type(exc).__name__}: {exc}): "
                    "the write may or may not have been applied. Retrying is safe (positions "
                    "only move forward); writes resume on their own once Redis answers"
                ) from None
            reply = results[0]
            if isinstance(reply, ResponseError) and "function not found" in str(reply).lower() \
                    and attempt == 1:
                # A Redis restarted without persistence, or FUNCTION FLUSH: load it again.
                try:
                    await self.load_library()
                except (RedisError, OSError) as exc:
                    raise WriteFailed(f"cannot load the function library into Redis at "
                                      f"{self._where}: {exc}") from None
                continue
            if isinstance(reply, Exception):
                await self.reconnect()  # READONLY: a demoted master; ask Sentinel again
                raise WriteFailed(f"Redis at {self._where} refused the write: {reply}; "
                                  "the write was not applied") from None
            if self._wait_replicas:
                acked = results[1]
                if isinstance(acked, Exception) or int(acked) < self._wait_replicas:
                    await self.reconnect()
                    raise WriteFailed(
                        f"only {acked} of {self._wait_replicas} Redis replicas confirmed the "
                        f"write within {self._wait_ms} ms (--redis-wait-replicas, "
                        "--redis-wait-timeout): it is not acknowledged, and it may be applied "
                        "yet lost on a failover. Retrying is safe (positions only move "
                        "forward)")
            return library.decode_reply(mutations, reply)
        raise AssertionError("unreachable")

    async def reconnect(self) -> None:
        """Drop every connection: the next call connects afresh (through Sentinel, to
        whichever master it names now), instead of writing on to a deposed master."""
        with contextlib.suppress(RedisError, OSError):
            await self._client.connection_pool.disconnect()
