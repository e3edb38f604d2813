"""Recovery: rebuild the store from the snapshot plus the journal written after it.

Used by `serve` before it opens its port and by `inspect` offline. The rules:
the snapshot must be intact; journal records newer than the snapshot are
replayed in LSN order; a torn record at the very end of the last segment (a
crash mid-append) is cut off with a warning; any other damage stops recovery
with the file and byte offset, because starting older than acknowledged would
make gateways wait forever for work that was already done.

`salvage=True` (for `process-status salvage`) stops at the first damage instead:
the store then holds everything before it, and `Report.stopped` says where.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from service.storage import framing, journal, records, snapshot
from service.storage.files import Files
from service.store import Advance, Delete, StatusStore


class RecoveryError(Exception):
    """The data dir cannot be restored without losing acknowledged writes.

    `segment` and `offset` say where the first damage is (a journal segment's sequence
    number and a byte offset in it; offset 0 for a missing segment; segment None for the
    snapshot, `path` naming the file).
    """

    def __init__(self, message: str, *, path: str | None = None, segment: int | None = None,
                 offset: int = 0) -> None:
        super().__init__(message)
        self.path = path
        self.segment = segment
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Stop:
    """Where a salvage stopped: the first damage, and nothing from it on was replayed."""

    reason: str
    segment: int
    """The journal segment (seq) holding the damage, or the missing one."""
    offset: int
    """Byte offset of the damage in that segment (0 when it is missing)."""


@dataclass
class Report:
    snapshot_entities: int = 0
    snapshot_lsn: int = 0
    snapshot_created_at: str | None = None
    segments: list[tuple[str, int, int]] = field(default_factory=list)
    """(file name, bytes, records) per journal segment."""
    replayed: int = 0
    last_lsn: int = 0
    truncated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    retained: list[journal.Segment] = field(default_factory=list)
    next_seq: int = 1
    stopped: Stop | None = None
    """Salvage only: the damage recovery stopped at (None: it read everything)."""


def recover(
    files: Files,
    data_dir: str,
    store: StatusStore,
    *,
    repair: bool = True,
    warn: Callable[[str], None] = lambda message: None,
    salvage: bool = False,
) -> Report:
    """Load `data_dir` into `store`. With repair=False nothing on disk is changed.

    With salvage=True journal damage ends the replay instead of raising (see `Stop`);
    a damaged snapshot still raises: without it there is no base to replay onto.
    """
    assert not (salvage and repair), "a salvage reads only"
    # A million new entries would trigger dozens of cyclic-GC passes over a growing heap
    # (none of it can form cycles); pausing the collector takes ~15% off a restore.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _recover(files, data_dir, store, repair, warn, salvage)
    finally:
        if was_enabled:
            gc.enable()
        # The restored state lives as long as the process: keep it out of later full
        # collections too.
        gc.freeze()


def _recover(
    files: Files,
    data_dir: str,
    store: StatusStore,
    repair: bool,
    warn: Callable[[str], None],
    salvage: bool = False,
) -> Report:
    report = Report()
    if repair:
        report.removed += snapshot.remove_leftovers(files, data_dir)
    try:
        loaded = snapshot.read(files, data_dir)
    except snapshot.SnapshotError as exc:
        # Not even a salvage goes on: without the snapshot there is no base to replay onto.
        raise RecoveryError(str(exc), path=exc.path, offset=exc.offset or 0) from exc
    store.restore(loaded.entries if loaded is not None else {})
    first_needed = 1  # the oldest segment the state on disk cannot do without
    if loaded is not None:
        report.snapshot_entities = len(loaded.entries)
        report.snapshot_lsn = report.last_lsn = loaded.lsn
        report.snapshot_created_at = loaded.created_at
        first_needed = loaded.next_segment
    try:
        _check_nothing_missing(files, data_dir, loaded is not None, first_needed)
        _replay(files, data_dir, store, report, repair, warn, first_needed)
    except RecoveryError as exc:
        # A salvage keeps everything replayed before the first damage, and says where.
        if not salvage:
            raise
        segment = first_needed if exc.segment is None else exc.segment
        report.stopped = Stop(str(exc), segment, exc.offset)
    report.next_seq = max(report.next_seq, first_needed)
    store.finish_restore()
    return report


def _check_nothing_missing(
    files: Files, data_dir: str, has_snapshot: bool, first_needed: int
) -> None:
    """Refuse when journal segments that no snapshot covers have disappeared.

    Segments are only deleted once a snapshot covers them, so without a snapshot the
    journal must start at segment 1, and after one it must continue at the segment
    the snapshot names. Otherwise records are gone (a deleted snapshot, say) and
    starting would serve older timestamps than were acknowledged.
    """
    if not first_needed:
        return  # a snapshot written without a journal (--durability snapshot)
    later = [seq for seq in journal.list_segments(files, data_dir) if seq >= first_needed]
    if later and later[0] != first_needed:
        where = "the snapshot" if has_snapshot else "a snapshot (there is none)"
        raise RecoveryError(
            f"journal segment {journal.segment_name(first_needed)} is missing in {data_dir}, "
            f"but {journal.segment_name(later[0])} exists: the records between {where} and "
            "it are gone. Restore the missing files from a backup", segment=first_needed)


def _replay(
    files: Files,
    data_dir: str,
    store: StatusStore,
    report: Report,
    repair: bool,
    warn: Callable[[str], None],
    first_needed: int,
) -> None:
    """Replay the journal onto `store`. RecoveryError at the first damage, after replaying
    every record before it (what a salvage keeps)."""
    seqs = journal.list_segments(files, data_dir)
    report.next_seq = (seqs[-1] + 1) if seqs else 1
    raw = {seq: files.read(os.path.join(data_dir, journal.segment_name(seq))) for seq in seqs}
    valid_bytes = _abandon_markers(raw)
    for index, seq in enumerate(seqs):
        if index and seq != seqs[index - 1] + 1:
            missing = seqs[index - 1] + 1
            raise RecoveryError(
                f"journal segment {journal.segment_name(missing)} is missing in {data_dir}: "
                "records after it cannot be trusted", segment=missing)
        name = journal.segment_name(seq)
        path = os.path.join(data_dir, name)
        data = raw[seq][: valid_bytes.get(seq, len(raw[seq]))]
        frames, damage = framing.decode(data)
        corrupt: RecoveryError | None = None  # raised once the frames before it are replayed
        if damage is not None:
            last = index == len(seqs) - 1
            if not (damage.torn and last and seq not in valid_bytes):
                corrupt = RecoveryError(
                    f"journal {path} is corrupt at byte offset {damage.offset}: {damage.reason}. "
                    "Records after it would be lost; restore the file from a backup",
                    path=path, segment=seq, offset=damage.offset)
            else:
                warn(f"journal {path}: cut off a torn record at byte offset {damage.offset} "
                     f"({damage.reason}), left by a crash during a write")
                if repair:
                    files.truncate(path, damage.offset)
                report.truncated.append(f"{name}@{damage.offset}")
        segment = journal.Segment(seq, size=damage.offset if damage else len(data))
        report.segments.append((name, len(raw[seq]), len(frames)))
        report.retained.append(segment)
        for offset, payload in frames:
            lsn, moment, mutation = _parse(path, seq, offset, payload)
            if lsn <= report.last_lsn and lsn > report.snapshot_lsn:
                raise RecoveryError(
                    f"journal {path} is corrupt at byte offset {offset}: record {lsn} is "
                    f"out of order (after {report.last_lsn})", path=path, segment=seq,
                    offset=offset)
            segment.max_lsn = max(segment.max_lsn, lsn)
            if isinstance(mutation, records.Abandon) or lsn <= report.snapshot_lsn:
                continue
            if isinstance(mutation, Advance):
                store.replay(mutation.updates, moment)
            elif isinstance(mutation, Delete):
                store.delete(mutation.entity)
            else:
                store.reset()
            report.last_lsn = lsn
            report.replayed += 1
        if corrupt is not None:
            raise corrupt
    if repair:
        _drop_covered(files, data_dir, report, first_needed)


def _drop_covered(files: Files, data_dir: str, report: Report, first_needed: int) -> None:
    """Delete the oldest segments the snapshot fully covers (left by a crash between a
    snapshot and the deletion of what it covers).

    Only a prefix: deleting a later segment could delete the abandon marker for an
    earlier, kept one. And never the segment the snapshot says comes next, even when
    it holds nothing newer (say it is empty): the next start checks it is there.
    """
    while report.retained and report.retained[0].max_lsn <= report.snapshot_lsn and \
            (not first_needed or report.retained[0].seq < first_needed):
        name = journal.segment_name(report.retained.pop(0).seq)
        files.remove(os.path.join(data_dir, name))
        report.removed.append(name)


def _abandon_markers(raw: dict[int, bytes]) -> dict[int, int]:
    """segment seq -> bytes that were durably synced before a write to it failed."""
    valid: dict[int, int] = {}
    for data in raw.values():
        for item in framing.iter_frames(data):
            if isinstance(item, framing.Damage):
                break
            try:
                record = records.decode(item[1])
            except records.RecordError:
                break  # _replay reports it with its offset
            if not isinstance(record.body, records.Abandon):
                break  # markers only ever lead a segment
            valid[record.body.segment] = record.body.valid_bytes
    return valid


def _parse(path: str, seq: int, offset: int, payload: memoryview) -> records.JournalRecord:
    try:
        return records.decode(payload)
    except records.RecordError as exc:
        raise RecoveryError(f"journal {path} is corrupt at byte offset {offset}: {exc}",
                            path=path, segment=seq, offset=offset) from exc
