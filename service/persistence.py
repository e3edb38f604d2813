"""Persistence: decides when a mutation is durable and applies it to the store then.

Three durability modes (see the README for what each can lose):

* ``fsync``: the mutation is appended to the journal and becomes visible, and is
  answered, only after its fsync. Group commit: writes that arrive while one
  fsync runs share the next one.
* ``batch``: applied and answered at once; the journal is written promptly and
  fsynced every ``fsync_interval`` seconds.
* ``snapshot``: applied at once; only the periodic snapshot persists it.

Journal I/O runs on one dedicated thread (so journal operations stay in order)
and snapshot writing on another (so a long snapshot never delays an fsync); the
event loop never blocks on the disk. The store is only touched on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from service import framing, recovery, snapshot
from service.files import Files
from service.journal import Journal
from service.metrics import Metrics
from service.store import Delete, Mutation, Outcome, Record, StatusStore

log = logging.getLogger("process_status.persistence")
T = TypeVar("T")


class Durability(enum.StrEnum):
    FSYNC = "fsync"
    BATCH = "batch"
    SNAPSHOT = "snapshot"


class WriteFailed(Exception):
    """The journal could not make the write durable; it was not applied."""


@dataclass(frozen=True, slots=True)
class Options:
    data_dir: str
    durability: Durability
    snapshot_interval: float
    fsync_interval: float
    journal_max_bytes: int


@dataclass(slots=True)
class _Pending:
    lsn: int
    mutation: Mutation
    moment: float
    frame: bytes
    future: asyncio.Future[dict[str, Outcome] | bool] | None
    reserved: int


class Persistence:
    def __init__(self, options: Options, store: StatusStore, files: Files, metrics: Metrics):
        self.options = options
        self.store = store
        self.files = files
        self.metrics = metrics
        self.restored = False
        mode = Durability(options.durability)
        self._journaled = mode is not Durability.SNAPSHOT
        self._durable = mode is Durability.FSYNC  # answer only after the fsync
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="process-status-io")
        # Snapshots get a thread of their own: a million-entity snapshot takes about half
        # a second, and journal fsyncs (so durable writes) must not queue behind it.
        self._snapshot_io = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="process-status-snapshot"
        )
        self._io_lock = asyncio.Lock()
        self._journal: Journal | None = None
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._next_lsn = 1
        self._applied_lsn = 0
        self._snapshot_version = -1
        self._snapshot_task: asyncio.Task[None] | None = None
        self._failure: str | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> recovery.Report:
        """Restore state from the data dir (raises RecoveryError) and start background work."""
        os.makedirs(self.options.data_dir, exist_ok=True)
        report = await self._run_io(
            recovery.recover, self.files, self.options.data_dir, self.store, warn=log.warning
        )
        self._applied_lsn = report.last_lsn
        self._next_lsn = report.last_lsn + 1
        # Replayed journal records are not in the snapshot yet: take one at the next
        # interval, so the next start has less to replay.
        self._snapshot_version = -1 if report.replayed else self.store.version
        if self._journaled:
            self._journal = Journal(
                self.files, self.options.data_dir, report.next_seq, list(report.retained)
            )
            self.metrics.journal_bytes.set(self._journal.size)
        if self._journaled and not self._durable:
            self._tasks.append(asyncio.create_task(self._sync_periodically()))
        self._tasks.append(asyncio.create_task(self._snapshot_periodically()))
        self.restored = True
        return report

    async def stop(self) -> None:
        """Flush what is pending, take a final snapshot if anything changed, close files."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        if self._snapshot_task is not None:
            with contextlib.suppress(Exception):
                await self._snapshot_task
        await self.snapshot()
        if self._journal is not None:
            async with self._io_lock:
                with contextlib.suppress(OSError):
                    await self._run_io(self._journal.close)
        self._io.shutdown(wait=True)
        self._snapshot_io.shutdown(wait=True)

    @property
    def healthy(self) -> str | None:
        """None when writes can be made durable, else why not."""
        if not self.restored:
            return "state is still being restored"
        if self._failure is not None:
            return self._failure
        if not os.access(self.options.data_dir, os.W_OK):
            return f"data dir {self.options.data_dir} is not writable"
        return None

    # -- writes ----------------------------------------------------------------

    async def submit(self, mutation: Mutation, reserved: int = 0) -> dict[str, Outcome] | bool:
        """Make `mutation` durable per the mode and apply it; raises WriteFailed.

        `reserved` entity slots (see StatusStore.reserve) are released once the write
        is applied or rejected, not when its client goes away.
        """
        moment = time.time()
        if not self._journaled:
            return self._apply(mutation, moment, reserved)
        if self._durable and self._failure is not None:
            self.store.release(reserved)
            raise self._rejection()  # until the probe finds the disk writable again
        lsn = self._next_lsn
        self._next_lsn += 1
        frame = framing.encode(orjson.dumps([lsn, moment, *_encode(mutation)]))
        if not self._durable:
            self._pending.append(_Pending(lsn, mutation, moment, frame, None, 0))
            self._kick()
            result = self._apply(mutation, moment, reserved)
            self._applied_lsn = lsn
            return result
        future: asyncio.Future[dict[str, Outcome] | bool] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending.append(_Pending(lsn, mutation, moment, frame, future, reserved))
        self._kick()
        # A client that hangs up cancels only this future: the flusher still applies the
        # write (it may already be on disk), it just has nobody to answer.
        return await future

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        assert self._journal is not None
        journal = self._journal
        durable = self._durable
        while self._pending:
            async with self._io_lock:
                batch, self._pending = self._pending, []
                if durable and self._failure is not None:
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
                    self.metrics.journal_fsync_duration.observe(time.perf_counter() - started)
                    self.metrics.journal_batch_size.observe(len(batch))
                    # Writers first, then the waiters their writes release: all in this
                    # same loop turn, the moment the batch becomes visible.
                    with self.store.holding_notifications():
                        for item in batch:
                            result = self._apply(item.mutation, item.moment, item.reserved)
                            if item.future is not None and not item.future.done():
                                item.future.set_result(result)
                    self._applied_lsn = batch[-1].lsn
                self.metrics.journal_bytes.set(journal.size)
            if journal.size > self.options.journal_max_bytes:
                self._start_snapshot()

    def _failed(self, exc: OSError, writes: int) -> None:
        """A journal write or fsync failed: stop trusting the journal until a probe passes."""
        self.metrics.journal_failures.inc()
        first = self._failure is None
        self._failure = f"journal write or fsync failed: {exc}"
        if self._durable:
            log.error("journal write failed; %d writes rejected; writes are answered 503 "
                      "until a fresh segment can be synced: %s", writes, exc)
        else:
            log.error("journal write or fsync failed; acknowledged writes since the last "
                      "good fsync are only in memory until the next snapshot: %s", exc)
        if first:
            self._tasks.append(asyncio.create_task(self._probe()))

    def _rejection(self) -> WriteFailed:
        return WriteFailed(
            f"the journal in {self.options.data_dir} cannot be written ({self._failure}); "
            "the write was not applied. Free disk space or fix the volume; writes resume "
            "on their own once the disk accepts them again"
        )

    def _reject(self, batch: list[_Pending]) -> None:
        failure = self._rejection()
        for item in batch:
            self.store.release(item.reserved)
            if item.future is not None and not item.future.done():
                item.future.set_exception(failure)

    async def _probe(self) -> None:
        """While the journal is failed: retry a fresh segment every second until it syncs."""
        assert self._journal is not None
        while self._failure is not None:
            await asyncio.sleep(min(1.0, self.options.fsync_interval))
            async with self._io_lock:
                try:
                    await self._run_io(self._journal.probe)
                except OSError as exc:
                    log.warning("journal still failing: %s", exc)
                    continue
                self._failure = None
            log.info("journal writable again; accepting writes")
            if not self._durable:
                # Acknowledged writes that missed the journal are only in memory.
                self._start_snapshot()

    async def _sync_periodically(self) -> None:
        assert self._journal is not None
        journal = self._journal
        while True:
            await asyncio.sleep(self.options.fsync_interval)
            if self._failure is not None:
                continue  # the probe owns the journal until it recovers
            async with self._io_lock:
                started = time.perf_counter()
                try:
                    await self._run_io(journal.sync)
                except OSError as exc:
                    self._failed(exc, 0)
                    continue
                self.metrics.journal_fsync_duration.observe(time.perf_counter() - started)

    def _apply(
        self, mutation: Mutation, moment: float, reserved: int = 0
    ) -> dict[str, Outcome] | bool:
        result = self.store.apply(mutation, moment)
        self.store.release(reserved)
        return result

    # -- snapshots -------------------------------------------------------------

    async def snapshot(self) -> bool:
        """Write a snapshot if the store changed since the last one; True if written."""
        if self.store.version == self._snapshot_version:
            return False
        started = time.perf_counter()
        async with self._io_lock:
            if self._journal is not None:
                try:
                    await self._run_io(self._journal.rotate)
                except OSError as exc:
                    log.error("journal rotation before snapshot failed: %s", exc)
            # Inside the lock no journal batch is in flight, so the copy holds exactly
            # the records up to _applied_lsn (plus, in batch mode, unwritten ones at or
            # below it, which replay skips).
            version, lsn = self.store.version, self._applied_lsn
            entries, names = self.store.capture()
            # Rotated just now: every record after `lsn` lands in this segment or later.
            next_segment = self._journal.next_seq if self._journal is not None else 0
        # While the snapshot thread serialises, the event loop and the fsync thread wait up
        # to a GIL switch interval (5 ms) each time they want the GIL back. A shorter one
        # for the snapshot's duration cut the loop's p99 lag from ~12 ms to ~3 ms and
        # doubled the durable writes that get through, for a ~20% slower snapshot.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            size = await asyncio.get_running_loop().run_in_executor(
                self._snapshot_io, snapshot.write, self.files, self.options.data_dir, entries,
                names, lsn, next_segment,
            )
        except OSError as exc:
            self.metrics.snapshot_failures.inc()
            log.error("snapshot failed, will retry: %s", exc)
            return False
        finally:
            sys.setswitchinterval(switch)
        self._snapshot_version = version
        elapsed = time.perf_counter() - started
        self.metrics.snapshot_duration.observe(elapsed)
        self.metrics.snapshot_last_success.set(time.time())
        log.info("snapshot written: %d entities, %d bytes, lsn %d, %.3f s",
                 len(entries), size, lsn, elapsed)
        if self._journal is not None:
            async with self._io_lock:
                try:
                    await self._run_io(self._journal.drop_covered, lsn, next_segment)
                except OSError as exc:
                    log.error("could not delete journal segments covered by the snapshot: %s", exc)
                self.metrics.journal_bytes.set(self._journal.size)
        return True

    def _start_snapshot(self) -> None:
        if self._snapshot_task is None or self._snapshot_task.done():
            self._snapshot_task = asyncio.create_task(self._snapshot_quietly())

    async def _snapshot_quietly(self) -> None:
        try:
            await self.snapshot()
        except Exception:
            self.metrics.snapshot_failures.inc()
            log.exception("snapshot failed")

    async def _snapshot_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.options.snapshot_interval)
            self._start_snapshot()
            assert self._snapshot_task is not None
            await asyncio.shield(self._snapshot_task)

    async def _run_io(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, lambda: function(*args, **kwargs))


def _write(journal: Journal, data: bytes, max_lsn: int, durable: bool) -> None:
    journal.write(data, max_lsn)
    if durable:
        journal.sync()


def _encode(mutation: Mutation) -> tuple[str, object]:
    if isinstance(mutation, Record):
        return "r", mutation.updates
    if isinstance(mutation, Delete):
        return "d", mutation.entity
    return "x", None
