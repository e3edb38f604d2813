"""Follower: keeps this process's StatusStore a copy of the Redis hash, via the stream.

Sync: read the head (epoch, seq, last id; one key, written atomically with the hash
and the stream), copy the hash with HSCAN (never HGETALL: it blocks Redis ~0.7 s
per million entities), install it in the store, then XREAD BLOCK from the head's id.
Every entry must carry the same epoch and the next seq; anything else (entries
trimmed away while this copy lagged, a FLUSHALL, a failover to a replica that lacks
the entries this copy applied) means the copy can no longer be patched: resync.
After a reconnect, and every `check_interval` while following, the head and the
entry at this copy's position are checked the same way.

The copy only ever holds what Redis held (each value was written there before it
was read here), so a lagging copy answers "not yet", never a false "processed".
Waiters are released when an entry is applied, which is how a write on any
replica wakes the waiters on all of them. While Redis is unreachable the copy
keeps serving reads; `RedisStats.staleness` says how old it may be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.storage.redis import library
from service.storage.redis.stats import RedisStats
from service.store import Entry, StatusStore

log = logging.getLogger("process_status.redis")

_COUNT = 1000
_SCAN_COUNT = 1000


class Resync(Exception):
    """The stream no longer continues this copy: copy the hash again."""


class Follower:
    def __init__(
        self,
        connect: Callable[[], Redis],
        store: StatusStore,
        stats: RedisStats,
        *,
        where: str,
        block: float = 1.0,
        check_interval: float = 1.0,
        prepare: Callable[[Redis], object] | None = None,
    ) -> None:
        self._connect = connect
        self._store = store
        self._stats = stats
        self._where = where
        self._block_ms = max(1, round(block * 1000))
        self._check_interval = check_interval
        self._prepare = prepare
        self.epoch = ""
        self.seq = 0
        self.last_id = "0-0"
        self.failure: str | None = None
        self.failed_since: float | None = None
        self._synced = asyncio.Event()
        self._needs_sync = True
        self._waiting: list[tuple[str, int, asyncio.Future[None]]] = []

    # -- for writers -------------------------------------------------------------

    async def synced(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), within)
        return self._synced.is_set()

    async def reached(self, epoch: str, seq: int, within: float) -> bool:
        """Wait until this copy holds the stream position (epoch, seq); False after `within` s."""
        if self._covers(epoch, seq):
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((epoch, seq, future))
        try:
            await asyncio.wait_for(future, within)
            return True
        except TimeoutError:
            return False

    def _covers(self, epoch: str, seq: int) -> bool:
        return seq == 0 or (epoch == self.epoch and seq <= self.seq and not self._needs_sync)

    def _release(self) -> None:
        if not self._waiting:
            return
        still = []
        for epoch, seq, future in self._waiting:
            if future.done():
                continue
            if self._covers(epoch, seq):
                future.set_result(None)
            else:
                still.append((epoch, seq, future))
        self._waiting = still

    # -- the task ------------------------------------------------------------------

    async def run(self) -> None:
        backoff = 0.05
        while True:
            client = self._connect()
            try:
                if self._prepare is not None:
                    await self._prepare(client)  # type: ignore[misc]
                await self._check(client)
                if self._needs_sync:
                    await self._sync(client)
                backoff = 0.05
                await self._follow(client)
            except Resync as exc:
                log.warning("resync from Redis: %s", exc)
                self._needs_sync = True
            except (RedisError, OSError) as exc:
                self._lost(exc)
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
            finally:
                self._stats.following = False
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    def _lost(self, exc: BaseException) -> None:
        if self._stats.follower_connected or self.failure is None:
            log.error("lost Redis at %s; reads are served from the local copy: %s",
                      self._where, exc)
            self.failed_since = time.monotonic()
        self._stats.follower_connected = False
        self.failure = f"{type(exc).__name__}: {exc}"

    def _connected(self) -> None:
        if self.failure is not None:
            log.info("Redis at %s reachable again", self._where)
        self.failure = None
        self.failed_since = None
        self._stats.follower_connected = True

    async def _check(self, client: Redis) -> None:
        """Is this copy still a prefix of what Redis holds? Resync if not."""
        async with client.pipeline(transaction=False) as pipe:
            pipe.get(library.HEAD)
            pipe.xrange(library.LOG, self.last_id, self.last_id, count=1)
            head_raw, at_position = await pipe.execute()
        self._connected()
        if self._needs_sync or (self.seq == 0 and not self.epoch):
            return
        epoch, seq, _ = library.decode_head(head_raw)
        if epoch != self.epoch or seq < self.seq:
            raise Resync(f"Redis holds epoch {epoch or 'none'} seq {seq}; this copy is at "
                         f"epoch {self.epoch} seq {self.seq} (flushed, or failed over)")
        if self.seq and (not at_position or
                         library.decode_entry(at_position[0][1]).seq != self.seq):
            raise Resync(f"the stream entry {self.last_id} at this copy's position is gone "
                         "(trimmed, or failed over)")

    async def _sync(self, client: Redis) -> None:
        started = time.monotonic()
        raw_head: Any = await client.get(library.HEAD)
        head = library.decode_head(raw_head)
        found: dict[str, Entry] = {}
        cursor = 0
        page: Any
        while True:
            cursor, page = await client.hscan(library.ENTITIES, cursor, count=_SCAN_COUNT)
            for name, value in page.items():
                found[name.decode()] = library.decode_value(value)
            if cursor == 0:
                break
        self._install(found)
        self.epoch, self.seq, self.last_id = head
        self._needs_sync = False
        stats = self._stats
        stats.follower_resyncs += 1
        stats.current_since = time.monotonic()
        stats.synced = True
        self._synced.set()
        self._release()
        log.info("synced %d entities from Redis at %s in %.3f s (epoch %s seq %d)",
                 len(found), self._where, time.monotonic() - started, self.epoch or "-",
                 self.seq)

    def _install(self, found: dict[str, Entry]) -> None:
        """Make the store hold `found`, waking waiters of entities that moved up."""
        store = self._store
        if len(store) == 0:
            # The first sync: nothing to compare (waiters parked before it wait on).
            store.restore(found)
            store.finish_restore()
            return
        raised: dict[str, Entry] = {}
        for name, entry in found.items():
            old = store.get(name)
            if old is None or old[0] < entry[0]:
                raised[name] = entry
        base = found.copy()
        for name in raised:
            old = store.get(name)
            if old is None:
                del base[name]
            else:
                base[name] = old
        store.restore(base)
        store.finish_restore()
        by_time: defaultdict[float, dict[str, int]] = defaultdict(dict)
        for name, (timestamp, at) in raised.items():
            by_time[at][name] = timestamp
        with store.holding_notifications():
            for at, updates in by_time.items():
                store.advance(updates, at)

    async def _follow(self, client: Redis) -> None:
        stats = self._stats
        checked = time.monotonic()
        while True:
            started = time.monotonic()
            stats.following = True
            try:
                reply: Any = await client.xread({library.LOG: self.last_id}, count=_COUNT,
                                           block=self._block_ms)
            finally:
                stats.following = False
            entries = reply[0][1] if reply else []
            if entries:
                self.apply(entries)
            if len(entries) < _COUNT:
                stats.current_since = started
            if started - checked >= self._check_interval:
                await self._check(client)
                checked = started

    def apply(self, entries: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Apply stream entries in order (Resync when one does not continue this copy)."""
        store = self._store
        applied = 0
        try:
            with store.holding_notifications():
                for raw_id, fields in entries:
                    entry = library.decode_entry(fields)
                    if entry.seq != self.seq + 1 or (self.epoch and entry.epoch != self.epoch):
                        raise Resync(f"stream entry {raw_id.decode()} is epoch {entry.epoch} seq "
                                     f"{entry.seq}; this copy expected epoch {self.epoch} seq "
                                     f"{self.seq + 1} (trimmed while lagging, flushed, or "
                                     "failed over)")
                    _apply_ops(store, entry)
                    self.epoch, self.seq, self.last_id = entry.epoch, entry.seq, raw_id.decode()
                    applied += 1
                    self._stats.follower_lag = max(0.0, time.time() - entry.now)
        finally:
            self._stats.follower_entries += applied
            self._release()


def _apply_ops(store: StatusStore, entry: library.Entry) -> None:
    updates: dict[str, int] = {}
    for op in entry.ops:
        kind = op[0]
        if kind == "a":
            updates[op[1]] = int(op[2])
            continue
        if updates:
            store.advance(updates, entry.now)
            updates = {}
        if kind == "d":
            store.delete(op[1])
        else:
            store.reset()
    if updates:
        store.advance(updates, entry.now)
