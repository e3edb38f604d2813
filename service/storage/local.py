"""LocalBackend: the embedded default, a journal and snapshots in one data dir.

Three durability modes (docs/durability.md says what each can lose):

* ``fsync``: a mutation becomes visible, and is answered, only after its journal
  fsync (group commit: see `writer`).
* ``batch``: applied and answered at once; the journal is fsynced every
  ``fsync_interval`` seconds.
* ``snapshot``: applied at once; only the periodic snapshot persists it.

One process owns a data dir (a lock enforces it). Start restores the store from
the snapshot and journal (`recovery`); stop writes a final snapshot.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import overload

from service.config import Durability
from service.storage import recovery
from service.storage.backend import StartFailed
from service.storage.datadir import DataDirLock, DataDirLocked
from service.storage.files import Files, OsFiles
from service.storage.journal import Journal
from service.storage.snapshotter import Snapshotter
from service.storage.stats import StorageStats
from service.storage.writer import JournalWriter
from service.store import Advance, Delete, Mutation, Outcome, Reset, StatusStore

log = logging.getLogger("process_status.storage")


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalOptions:
    data_dir: str
    durability: Durability
    snapshot_interval: float
    fsync_interval: float
    journal_max_bytes: int
    service_pid: int | None = None
    """The pid that stops this service, named to whoever finds the data dir locked."""


class LocalBackend:
    def __init__(self, options: LocalOptions, store: StatusStore, files: Files | None = None):
        self.options = options
        self.store = store
        self.files: Files = files or OsFiles()
        self.stats = StorageStats()
        self.writer: JournalWriter | None = None
        """None with --durability snapshot (no journal)."""
        self._snapshotter: Snapshotter | None = None
        self._lock = DataDirLock(options.data_dir, options.service_pid)

    async def start(self) -> str:
        options = self.options
        try:
            self._lock.acquire()
            os.makedirs(options.data_dir, exist_ok=True)
            report = await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(recovery.recover, self.files, options.data_dir,
                                        self.store, warn=log.warning))
        except (DataDirLocked, recovery.RecoveryError, OSError) as exc:
            self._lock.release()
            raise StartFailed(str(exc)) from exc
        if options.durability is not Durability.SNAPSHOT:
            journal = Journal(self.files, options.data_dir, report.next_seq,
                              list(report.retained))
            self.writer = JournalWriter(
                journal, self.store, self.stats,
                durable=options.durability is Durability.FSYNC,
                fsync_interval=options.fsync_interval, max_bytes=options.journal_max_bytes,
                last_lsn=report.last_lsn, snapshot_needed=self._snapshot_needed,
            )
            self.writer.start()
        # Replayed journal records are not in the snapshot yet: take one at the next
        # interval, so the next start has less to replay.
        self._snapshotter = Snapshotter(
            self.store, self.files, options.data_dir, self.stats,
            interval=options.snapshot_interval, writer=self.writer,
            recovered_lsn=report.last_lsn, up_to_date=not report.replayed,
        )
        self._snapshotter.start()
        return (f"state restored: {len(self.store)} entities (snapshot "
                f"{report.snapshot_entities}, {report.replayed} journal records replayed)")

    async def stop(self) -> None:
        """Finish the batch in flight, take a final snapshot if anything changed, close."""
        snapshotter, writer = self._snapshotter, self.writer
        if snapshotter is None:
            return  # never started
        await snapshotter.pause()
        if writer is not None:
            await writer.drain()
        await snapshotter.stop()
        if writer is not None:
            await writer.close()
        self._lock.release()

    @property
    def readiness(self) -> str | None:
        return "state is still being restored" if self._snapshotter is None else None

    @property
    def write_health(self) -> str | None:
        if self._snapshotter is None:
            return "state is still being restored"
        if self.writer is not None and self.writer.failure is not None:
            return self.writer.failure
        if not os.access(self.options.data_dir, os.W_OK):
            return f"data dir {self.options.data_dir} is not writable"
        return None

    @property
    def degraded(self) -> str | None:
        return None  # the journal never starts older than what it acknowledged

    @overload
    async def submit(self, mutation: Advance, reserved: int = 0) -> dict[str, Outcome]: ...

    @overload
    async def submit(self, mutation: Delete | Reset, reserved: int = 0) -> bool: ...

    async def submit(self, mutation: Mutation, reserved: int = 0) -> dict[str, Outcome] | bool:
        if self.writer is not None:
            return await self.writer.submit(mutation, reserved)
        result = self.store.apply(mutation, time.time())
        self.store.release(reserved)
        return result

    async def snapshot(self) -> bool:
        """Write a snapshot now if the store changed; True if written."""
        assert self._snapshotter is not None, "start() first"
        return await self._snapshotter.snapshot()

    def _snapshot_needed(self) -> None:
        if self._snapshotter is not None:
            self._snapshotter.request()
