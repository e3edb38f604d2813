"""JournalWriter: appends mutations to the journal with group commit, applies them when due.

* durable (``--durability fsync``): a mutation is applied to the store, and its
  writer answered, only after the fsync of the batch it went out in. Writes that
  arrive while one fsync runs share the next one.
* not durable (``batch``): applied and answered at once; the journal is written
  promptly and fsynced every ``fsync_interval`` seconds.

Journal I/O runs on one dedicated thread, so journal operations stay in order and
the event loop never blocks on the disk. The store is only touched on the loop.
A failed write or fsync rejects its batch (503, nothing applied) and makes every
later write fail fast until a background probe syncs a fresh segment again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from service.storage import records
from service.storage.backend import WriteFailed
from service.storage.journal import Journal
from service.storage.stats import StorageStats
from service.store import Mutation, Outcome, StatusStore

log = logging.getLogger("process_status.journal")
T = TypeVar("T")
Result = dict[str, Outcome] | bool


@dataclass(slots=True)
class _Pending:
    lsn: int
    mutation: Mutation
    moment: float
    frame: bytes
    future: asyncio.Future[Result] | None
    reserved: int


class JournalWriter:
    def __init__(
        self,
        journal: Journal,
        store: StatusStore,
        stats: StorageStats,
        *,
        durable: bool,
        fsync_interval: float,
        max_bytes: int,
        last_lsn: int,
        snapshot_needed: Callable[[], None],
    ) -> None:
        self._journal = journal
        self._store = store
        self._stats = stats
        self._durable = durable
        self._fsync_interval = fsync_interval
        self._max_bytes = max_bytes
        self._snapshot_needed = snapshot_needed
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="process-status-io")
        self._lock = asyncio.Lock()
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._next_lsn = last_lsn + 1
        self.applied_lsn = last_lsn
        self.failure: str | None = None
        """Why writes are refused (a journal fault), None while they are accepted."""
        stats.journal_bytes = journal.size

    @property
    def queued(self) -> int:
        """Writes waiting for the next batch (not yet handed to the I/O thread)."""
        return len(self._pending)

    def start(self) -> None:
        if not self._durable:
            self._tasks.append(asyncio.create_task(self._sync_periodically()))

    async def drain(self) -> None:
        """Stop background work and let the batch in flight finish."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher

    async def close(self) -> None:
        async with self._lock:
            with contextlib.suppress(OSError):
                await self._run_io(self._journal.close)
        self._io.shutdown(wait=True)

    # -- writes ----------------------------------------------------------------

    async def submit(self, mutation: Mutation, reserved: int) -> Result:
        """Journal `mutation` and apply it (after its fsync when durable); WriteFailed."""
        if self._durable and self.failure is not None:
            self._store.release(reserved)
            raise self._rejection()  # until the probe finds the disk writable again
        moment = time.time()
        lsn = self._next_lsn
        self._next_lsn += 1
        frame = records.encode(lsn, moment, mutation)
        if not self._durable:
            self._pending.append(_Pending(lsn, mutation, moment, frame, None, 0))
            self._kick()
            result = self._apply(mutation, moment, reserved)
            self.applied_lsn = lsn
            return result
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(lsn, mutation, moment, frame, future, reserved))
        self._kick()
        # A client that hangs up cancels only this future: the flusher still applies the
        # write (it may already be on disk), it just has nobody to answer.
        return await future

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        journal = self._journal
        durable = self._durable
        stats = self._stats
        while self._pending:
            async with self._lock:
                batch, self._pending = self._pending, []
                if durable and self.failure is not None:
                    self._reject(batch)
                    continue
                data = b"".join(item.frame for item in batch)
                started = time.perf_counter()
                try:
                    await self._run_io(_write, journal, data, batch[-1].lsn, durable)
                except OSError as exc:
                    self._failed(exc, len(batch))
                    self._reject(batch)
                    continue
                if durable:
                    stats.journal_fsync.observe(time.perf_counter() - started)
                    stats.journal_batch.observe(len(batch))
                    # Writers first, then the waiters their writes release: all in this
                    # same loop turn, the moment the batch becomes visible.
                    with self._store.holding_notifications():
                        for item in batch:
                            result = self._apply(item.mutation, item.moment, item.reserved)
                            if item.future is not None and not item.future.done():
                                item.future.set_result(result)
                    self.applied_lsn = batch[-1].lsn
                stats.journal_bytes = journal.size
            if journal.size > self._max_bytes:
                self._snapshot_needed()

    def _apply(self, mutation: Mutation, moment: float, reserved: int) -> Result:
        result = self._store.apply(mutation, moment)
        self._store.release(reserved)
        return result

    def _failed(self, exc: OSError, writes: int) -> None:
        """A journal write or fsync failed: stop trusting the journal until a probe passes."""
        self._stats.journal_failures += 1
        first = self.failure is None
        self.failure = f"journal write or fsync failed: {exc}"
        if self._durable:
            log.error("journal write failed; %d writes rejected; writes are answered 503 "
                      "until a fresh segment can be synced: %s", writes, exc)
        else:
            log.error("journal write or fsync failed; acknowledged writes since the last "
                      "good fsync are only in memory until the next snapshot: %s", exc)
        if first:
            self._tasks = [task for task in self._tasks if not task.done()]
            self._tasks.append(asyncio.create_task(self._probe()))

    def _rejection(self) -> WriteFailed:
        return WriteFailed(
            f"the journal in {self._journal.data_dir} cannot be written ({self.failure}); "
            "the write was not applied. Free disk space or fix the volume; writes resume "
            "on their own once the disk accepts them again"
        )

    def _reject(self, batch: list[_Pending]) -> None:
        failure = self._rejection()
        for item in batch:
            self._store.release(item.reserved)
            if item.future is not None and not item.future.done():
                item.future.set_exception(failure)

    async def _probe(self) -> None:
        """While the journal is failed: retry a fresh segment every second until it syncs."""
        while self.failure is not None:
            await asyncio.sleep(min(1.0, self._fsync_interval))
            async with self._lock:
                try:
                    await self._run_io(self._journal.probe)
                except OSError as exc:
                    log.warning("journal still failing: %s", exc)
                    continue
                except Exception:
                    # Anything else is a bug, but the probe must go on: without it writes
                    # would stay refused until a restart.
                    log.exception("journal probe failed unexpectedly; retrying")
                    continue
                self.failure = None
            log.info("journal writable again; accepting writes")
            if not self._durable:
                # Acknowledged writes that missed the journal are only in memory.
                self._snapshot_needed()

    async def _sync_periodically(self) -> None:
        journal = self._journal
        while True:
            await asyncio.sleep(self._fsync_interval)
            if self.failure is not None:
                continue  # the probe owns the journal until it recovers
            async with self._lock:
                started = time.perf_counter()
                try:
                    await self._run_io(journal.sync)
                except OSError as exc:
                    self._failed(exc, 0)
                    continue
                self._stats.journal_fsync.observe(time.perf_counter() - started)

    # -- for snapshots ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def rotated(self) -> AsyncIterator[tuple[int, int]]:
        """Hold the journal still on a fresh segment; yields (applied lsn, that segment).

        Inside, no batch is in flight, so the store holds exactly the records up to
        the applied lsn (plus, in batch mode, unwritten ones at or below it, which
        replay skips), and every later record lands in that segment or after it.
        """
        async with self._lock:
            try:
                await self._run_io(self._journal.rotate)
            except OSError as exc:
                log.error("journal rotation before snapshot failed: %s", exc)
            yield self.applied_lsn, self._journal.next_seq

    async def drop_covered(self, lsn: int, next_segment: int) -> None:
        """Delete the segments a snapshot at `lsn` made redundant."""
        async with self._lock:
            try:
                await self._run_io(self._journal.drop_covered, lsn, next_segment)
            except OSError as exc:
                log.error("could not delete journal segments covered by the snapshot: %s", exc)
            self._stats.journal_bytes = self._journal.size

    async def _run_io(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)


def _write(journal: Journal, data: bytes, max_lsn: int, durable: bool) -> None:
    journal.write(data, max_lsn)
    if durable:
        journal.sync()
