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
write may have been applied, not a socket timeout per call queued before it. After a
failure the pool's connections are dropped, so the next call connects afresh (through
Sentinel: to the master it names now), and while no write comes a probe (an empty
call, plus WAIT) says when writes would succeed again, so `failure` clears itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from service.storage.backend import WriteFailed
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
        self._probe_interval = probe_interval
        self._pending: list[tuple[Mutation, asyncio.Future[Call]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._closing = False
        self.failure: str | None = None
        """Why the last call (or probe) failed; None once one succeeds."""

    async def submit(self, mutation: Mutation) -> Call:
        future: asyncio.Future[Call] = asyncio.get_running_loop().create_future()
        item = (mutation, future)
        self._pending.append(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._deadline)
        except TimeoutError:
            queued = any(pending is item for pending in self._pending)
            if queued:
                self._pending = [pending for pending in self._pending if pending is not item]
            margin = self._deadline - self._wait_ms / 1000
            raise WriteFailed(
                f"Redis at {self._where} did not answer within {self._deadline:g} s "
                f"(--redis-wait-timeout plus {margin:g} s): "
                + ("the write was not sent and was not applied" if queued else
                   "the write may or may not have been applied")
                + ". Retrying is safe (positions only move forward)") from None
        finally:
            # A client that hung up, or a deadline: nobody reads this answer any more (the
            # call, if it went out, still completes for the others in it).
            future.cancel()

    async def drain(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        self._closing = True  # a cancel can be lost in redis-py (see Follower.stop)
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober

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
                reply = await self._call([mutation for mutation, _ in batch])
            except WriteFailed as exc:
                self._stats.write_failures += 1
                if self.failure is None:
                    log.error("Redis write failed; %d writes answered 503: %s", len(batch), exc)
                self.failure = str(exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if self._prober is None or self._prober.done():
                    self._prober = asyncio.create_task(self._probe())
                continue
            self._succeeded()
            self._stats.call_duration.observe(time.perf_counter() - started)
            self._stats.call_batch.observe(len(batch))
            for (_, future), result in zip(batch, reply.results, strict=True):
                if not future.done():
                    future.set_result(Call(result, reply.epoch, reply.seq))

    def _succeeded(self) -> None:
        if self.failure is not None:
            log.info("Redis writes succeed again")
            self.failure = None

    async def _probe(self) -> None:
        """While writes fail and none come: an empty call (and WAIT) every interval, until
        one succeeds. A write in flight answers the same question, so skip a turn then."""
        while self.failure is not None and not self._closing:
            await asyncio.sleep(self._probe_interval)
            if self._pending or (self._flusher is not None and not self._flusher.done()):
                continue
            try:
                await self._call([])
            except WriteFailed as exc:
                self.failure = str(exc)
            else:
                self._succeeded()

    def _take(self) -> list[tuple[Mutation, asyncio.Future[Call]]]:
        pending = self._pending
        entities = 0
        for index, (mutation, _) in enumerate(pending):
            entities += len(mutation.updates) if isinstance(mutation, Advance) else 1
            if entities >= _MAX_CALL_ENTITIES:
                batch, self._pending = pending[:index + 1], pending[index + 1:]
                return batch
        self._pending = []
        return pending

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
