"""Follower: keeps this process's StatusStore a copy of the Redis hash, via the stream.

Sync: read the head (epoch, seq, last id; one key, written atomically with the hash
and the stream), copy the hash with HSCAN (never HGETALL: it blocks Redis ~0.7 s
per million entities), install it in the store, then XREAD BLOCK from the head's id.
Every entry must carry the same epoch and the next seq. After a reconnect, every
`check_interval` while following, and whenever an entry does not continue this copy,
Redis's history is compared with the copy's position (`_verdict`):

* it continues the copy: follow on;
* it continues it, but the entries after the copy's position were trimmed away while
  the copy lagged: copy the hash again, exactly (deletes in the gap included);
* it does not contain the copy's position (a FLUSHALL, a Redis restarted without
  persistence, a failover to a replica that lacked the last writes, a deposed master
  that took writes): Redis **lost** acknowledged positions. The new copy is then the
  max-merge of this copy and Redis's hash, so nothing acknowledged is forgotten here,
  and `on_loss` gets the positions Redis lacks, for the backend to write them back
  (max-merge makes that safe from any number of replicas at once).

The copy only holds positions Redis acknowledged (each value was written there
before it was read or applied here), so a lagging copy answers "not yet", never a
false "processed". Waiters are released when an entry is applied, which is how a
write on any replica wakes the waiters on all of them. While Redis is unreachable
the copy keeps serving reads; `RedisStats.staleness` says how old it may be.
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
    """The stream no longer continues this copy: copy the hash again.

    `lost`: Redis's history does not contain this copy's position (keep the copy's
    positions, merged); None: not known yet (compare the histories first).
    """

    def __init__(self, reason: str, lost: bool | None) -> None:
        super().__init__(reason)
        self.lost = lost


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
        on_loss: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self._connect = connect
        self._store = store
        self._stats = stats
        self._where = where
        self._block_ms = max(1, round(block * 1000))
        self._check_interval = check_interval
        self._prepare = prepare
        self._on_loss = on_loss
        self._client: Redis | None = None
        self._stopping = False
        self.epoch = ""
        self.seq = 0
        self.last_id = "0-0"
        self.failure: str | None = None
        self.failed_since: float | None = None
        self._synced = asyncio.Event()
        self._needs_sync = True
        self._keep_local = False
        """The next sync merges this copy into Redis's (Redis lost positions)."""
        self._suspect = False
        """An entry did not continue this copy: the next check must explain why."""
        self._waiting: list[tuple[str, int, int, asyncio.Future[bool]]] = []
        self.history = 0
        """Counts the times Redis's history stopped containing this copy's: a stream
        position (epoch, seq) taken before then names an entry of another history."""

    # -- for writers -------------------------------------------------------------

    async def synced(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), within)
        return self._synced.is_set()

    async def reached(self, epoch: str, seq: int, history: int, within: float) -> bool:
        """Wait until this copy holds the stream position (epoch, seq) that a write got
        while `history` was current; False after `within` s, or once the history
        changed (the position may then name another write's entry)."""
        if history != self.history:
            return False
        if self._covers(epoch, seq):
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((epoch, seq, history, future))
        # A timer handle, not wait_for: this runs for every write, and wait_for's extra
        # future and loop turns cost more than the wait usually lasts.
        timer = loop.call_later(within, _not_reached, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _covers(self, epoch: str, seq: int) -> bool:
        return seq == 0 or (epoch == self.epoch and seq <= self.seq and not self._needs_sync)

    def _release(self) -> None:
        if not self._waiting:
            return
        still = []
        for epoch, seq, history, future in self._waiting:
            if future.done():
                continue
            if history != self.history:
                future.set_result(False)
            elif self._covers(epoch, seq):
                future.set_result(True)
            else:
                still.append((epoch, seq, history, future))
        self._waiting = still

    # -- the task ------------------------------------------------------------------

    def stop(self) -> None:
        """Leave `run` at its next turn. Cancelling alone is not enough: on Python 3.11 a
        cancel that lands as redis-py's read timeout fires is swallowed (asyncio.timeout
        turns it into a TimeoutError, which redis-py answers as an empty blocking read),
        and the loop read on until gunicorn killed the worker 40 s later."""
        self._stopping = True

    async def run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            client = self._client = self._connect()
            try:
                if self._prepare is not None:
                    await self._prepare(client)  # type: ignore[misc]
                await self._check(client)
                if self._needs_sync:
                    await self._sync(client, keep_local=self._keep_local)
                backoff = 0.05
                await self._follow(client)
            except Resync as exc:
                if exc.lost is None:
                    log.warning("the Redis stream does not continue this copy (%s); comparing "
                                "histories", exc)
                    self._suspect = True
                    continue
                log.warning("resync from Redis: %s", exc)
                self._needs_sync = True
                self._keep_local = exc.lost
            except (RedisError, OSError) as exc:
                self._lost(exc)
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
            finally:
                self._client = None
                self._stats.following = False
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    async def reconnect(self) -> None:
        """Drop the connection (say, Sentinel named another master): the next one
        re-resolves the address, and compares histories before following."""
        client = self._client
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.connection_pool.disconnect()

    def _lost(self, exc: BaseException) -> None:
        if self._stats.follower_connected or self.failure is None:
            if self._stats.synced:
                log.error("lost Redis at %s; reads are served from the local copy: %s",
                          self._where, exc)
            else:
                log.error("cannot reach Redis at %s and there is no local copy yet: reads, "
                          "processed? and the gate answer 503 until the first sync: %s",
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
        """Does Redis's history still contain this copy's position? Raise Resync if not."""
        async with client.pipeline(transaction=False) as pipe:
            pipe.get(library.HEAD)
            pipe.xrange(library.LOG, self.last_id, self.last_id, count=1)
            pipe.xrange(library.LOG, "-", "+", count=1)
            head_raw, at_position, oldest = await pipe.execute()
        self._connected()
        suspect, self._suspect = self._suspect, False
        if self._needs_sync:
            return
        if not self.epoch:
            # Nothing of an epoch to lose; entries that skip ahead were trimmed unread.
            if suspect:
                raise Resync("trimmed: the stream's first entries were gone before this copy "
                             "read them", lost=False)
            return
        head = library.decode_head(head_raw)
        resync = self._verdict(head, at_position[0][1] if at_position else None,
                               oldest[0][1] if oldest else None)
        if resync is None and suspect:
            resync = Resync("the stream's entries after this copy's position do not continue "
                            "it", lost=True)
        if resync is not None:
            raise resync

    def _verdict(self, head: tuple[str, int, str], at_position: dict[bytes, bytes] | None,
                 oldest: dict[bytes, bytes] | None) -> Resync | None:
        """Why Redis's history no longer continues this copy; None while it does."""
        epoch, seq, last_id = head
        mine = f"this copy is at epoch {self.epoch} seq {self.seq}"
        if epoch != self.epoch:
            return Resync(f"Redis holds epoch {epoch or 'none'} seq {seq}; {mine}: Redis lost "
                          "its data (FLUSHALL, or restarted without persistence)", lost=True)
        if seq < self.seq:
            return Resync(f"Redis holds seq {seq}; {mine}: Redis lost its last writes (a "
                          "failover to a replica that lacked them)", lost=True)
        if at_position is not None:
            if library.decode_entry(at_position).seq == self.seq:
                return None
            return Resync(f"the stream entry {self.last_id} is not this copy's; {mine}: "
                          "another history (a failover, or a deposed master that took writes)",
                          lost=True)
        if seq == self.seq:
            if last_id == self.last_id:
                return None  # the stream was trimmed to nothing, and nothing followed
            return Resync(f"Redis's entry seq {seq} is {last_id}, not {self.last_id}; {mine}",
                          lost=True)
        if oldest is not None and library.decode_entry(oldest).seq <= self.seq:
            return Resync(f"the stream reaches back past this copy's position without its "
                          f"entry {self.last_id}; {mine}: another history", lost=True)
        return Resync(f"the stream no longer holds the entries after seq {self.seq} (Redis is "
                      f"at seq {seq}; trimmed while this copy lagged): copying the hash again",
                      lost=False)

    async def _sync(self, client: Redis, keep_local: bool = False) -> None:
        """Copy the hash; `keep_local`: Redis lost positions, keep the copy's (merged)."""
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
        ahead: dict[str, int] = {}
        if keep_local:
            mine, _ = self._store.capture()
            for name, entry in mine.items():
                theirs = found.get(name)
                if theirs is None or theirs[0] < entry[0]:
                    ahead[name] = entry[0]
                    found[name] = entry
            self._stats.data_losses += 1
            self.history += 1
            log.error("Redis at %s holds %d positions older than this replica's copy, or "
                      "none; the copy keeps them and they are written back to Redis",
                      self._where, len(ahead))
        self._install(found)
        self.epoch, self.seq, self.last_id = head
        self._needs_sync = False
        self._keep_local = False
        if ahead and self._on_loss is not None:
            self._on_loss(ahead)
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
        while not self._stopping:
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
                # Let the requests just released answer before the next XREAD goes out:
                # redis-py spends ~0.1 ms of CPU sending it, on every wake-up's path.
                await asyncio.sleep(0)
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
                                     f"{self.seq + 1}", lost=None)
                    _apply_ops(store, entry)
                    self.epoch, self.seq, self.last_id = entry.epoch, entry.seq, raw_id.decode()
                    applied += 1
                    self._stats.follower_lag = max(0.0, time.time() - entry.now)
        finally:
            self._stats.follower_entries += applied
            self._release()


def _not_reached(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


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
