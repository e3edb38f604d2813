"""Backups: one snapshot-format file holding a data dir's whole state, and its way back.

A backup IS a snapshot file (see `snapshot`: same frames, header, version and
checksums), written outside the data dir. How `backup` stays consistent while
`serve` runs, without taking the data-dir lock or making the service wait:

1. open `snapshot.pss` and keep it open (a snapshot is only ever replaced by an
   atomic rename, so the open file is one whole snapshot, and its inode cannot be
   reused while it is open), read it, then list and read every journal segment;
2. check that `snapshot.pss` is still the file opened in step 1. The service
   deletes journal segments only after a newer snapshot replaced the old one, so
   if none did, every segment the snapshot needs was read. Otherwise (or when a
   segment vanished between listing and reading) start again, up to `ATTEMPTS`
   times;
3. run recovery (the same code `serve` starts with, read-only) on the bytes read,
   into a fresh store, and write that store as one snapshot (temp file, fsync,
   rename, directory fsync, mode 0600).

The result is a state the service held: the snapshot plus a prefix of the journal
in LSN order (an append in progress at the end of the live segment is a torn tail,
cut off as at a start after a crash). With `--durability fsync` every write
acknowledged before the backup started is in it; with `snapshot` durability
(no journal) it holds the last snapshot.

`salvage` is a backup of a data dir `serve` refuses to start from: recovery in
salvage mode stops at the first damage, and the report names what was skipped.
`restore` verifies a backup and installs it as the snapshot of an empty data dir.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.storage import framing, journal, records, snapshot
from service.storage.datadir import LOCK_FILE, DataDirLock, DataDirLocked
from service.storage.files import OsFiles, WritableFile
from service.storage.recovery import RecoveryError, Stop, recover
from service.store import StatusStore

ATTEMPTS = 10
"""Reads that a concurrent snapshot can spoil before the backup gives up."""
REPLACED_PREFIX = "replaced-"
NEXT_SEGMENT = 1
"""The journal after a restored backup starts at segment 1 (it has none of its own)."""


class BackupError(Exception):
    """The operation failed; the message is one line saying why and what to do."""


class UsageError(BackupError):
    """A flag or argument is wrong; the message names the fix."""


class DamagedBackup(BackupError):
    """The backup file fails its checks (checksums, header, counts)."""


@dataclass
class Written:
    out: str
    entities: int
    lsn: int
    size: int
    snapshot_lsn: int
    replayed: int
    attempts: int
    damage: str | None = None
    """Salvage: the damage it stopped at (None: it read everything)."""
    lost: list[str] = field(default_factory=list)
    """Salvage: what was skipped, one line per file, the last one a total."""


@dataclass
class Restored:
    target: str
    entities: int
    lsn: int
    created_at: str
    moved_to: str | None


# -- reading a data dir consistently -------------------------------------------------


class Captured:
    """A read-only `Files` over bytes read from a data dir, so recovery runs on them as is."""

    def __init__(self, data_dir: str, contents: dict[str, bytes]) -> None:
        self.data_dir = data_dir
        self.contents = contents
        """file name -> bytes"""

    def read(self, path: str) -> bytes:
        name = os.path.basename(path)
        if os.path.join(self.data_dir, name) != path or name not in self.contents:
            raise FileNotFoundError(path)
        return self.contents[name]

    def listdir(self, directory: str) -> list[str]:
        return list(self.contents)

    def create(self, path: str) -> WritableFile:
        raise PermissionError(f"a backup reads only, it never writes {path}")

    def truncate(self, path: str, size: int) -> None:
        raise PermissionError(f"a backup reads only, it never truncates {path}")

    def replace(self, source: str, target: str) -> None:
        raise PermissionError(f"a backup reads only, it never renames {source}")

    def remove(self, path: str) -> None:
        raise PermissionError(f"a backup reads only, it never removes {path}")

    def sync_dir(self, directory: str) -> None:
        raise PermissionError(f"a backup reads only, it never syncs {directory}")


def capture(
    data_dir: str, before_check: Callable[[], None] = lambda: None
) -> tuple[Captured, int]:
    """The snapshot and journal of `data_dir` as of one moment; and the attempts it took.

    `before_check` runs after each read, before the check that the snapshot is still
    the one read (tests use it to replace the snapshot at the worst moment).
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            contents = _capture_once(data_dir, before_check)
        except OSError as exc:
            raise BackupError(f"cannot read data dir {data_dir}: {exc}") from exc
        if contents is not None:
            return Captured(data_dir, contents), attempt
    raise BackupError(
        f"a new snapshot replaced the one being read in {data_dir} {ATTEMPTS} times in a row; "
        "run the backup again (or raise --snapshot-interval)"
    )


def _capture_once(data_dir: str, before_check: Callable[[], None]) -> dict[str, bytes] | None:
    """None when a snapshot replaced the one read, or a segment vanished: read again."""
    path = snapshot.path_in(data_dir)
    contents: dict[str, bytes] = {}
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(open(path, "rb"))  # open until the identity check
        except FileNotFoundError:
            opened = None
        else:
            opened = _identity(os.fstat(handle.fileno()))
            contents[snapshot.FILENAME] = handle.read()
        for seq in journal.list_segments(OsFiles(), data_dir):
            name = journal.segment_name(seq)
            try:
                with open(os.path.join(data_dir, name), "rb") as segment:
                    contents[name] = segment.read()
            except FileNotFoundError:
                return None  # deleted after a newer snapshot, or a failed empty segment
        before_check()
        try:
            now = _identity(os.stat(path))
        except FileNotFoundError:
            now = None
        if now != opened:
            return None
    return contents


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


# -- backup and salvage ---------------------------------------------------------------


def backup(data_dir: str, out: str) -> Written:
    """Write a consistent backup of `data_dir` (a running service's too) to `out`."""
    return _write_backup(data_dir, out, salvage=False)


def salvage(data_dir: str, out: str) -> Written:
    """Write everything recoverable before the first damage in `data_dir` to `out`."""
    return _write_backup(data_dir, out, salvage=True)


def _write_backup(data_dir: str, out: str, *, salvage: bool) -> Written:
    _check_paths(data_dir, out)
    captured, attempts = capture(data_dir)
    store = StatusStore(max_entities=2**63)
    try:
        report = recover(captured, data_dir, store, repair=False, salvage=salvage)
    except RecoveryError as exc:
        hint = ("restore the snapshot from a backup" if salvage
                else "`process-status salvage` keeps what is readable")
        raise BackupError(f"{exc} ({hint})") from exc
    entries, names = store.capture()
    try:
        size = snapshot.write_file(OsFiles(), out, entries, names, report.last_lsn, NEXT_SEGMENT)
    except OSError as exc:
        raise BackupError(f"cannot write {out}: {exc}") from exc
    written = Written(out, len(entries), report.last_lsn, size, report.snapshot_lsn,
                      report.replayed, attempts)
    if report.stopped is not None:
        written.damage = report.stopped.reason
        written.lost = _losses(captured, report.stopped)
    return written


def _check_paths(data_dir: str, out: str) -> None:
    if not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {data_dir} is not a directory: name the service's data dir")
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a directory: name a file, e.g. "
                         f"{os.path.join(out, 'process-status.backup')}")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UsageError(f"--out: directory {parent} does not exist: create it first")
    data = os.path.realpath(data_dir)
    if os.path.commonpath([data, os.path.realpath(parent)]) == data:
        raise UsageError(f"--out {out} is inside --data-dir {data_dir}: write the backup "
                         "somewhere else (a backup never changes the data dir)")


def _losses(captured: Captured, stopped: Stop) -> list[str]:
    """One line per journal file the salvage skipped (all or part of), then a total."""
    lines: list[str] = []
    total = 0
    segments = {seq: data for name, data in captured.contents.items()
                if (seq := journal.segment_seq(name)) is not None}
    if stopped.segment not in segments:
        lines.append(f"{journal.segment_name(stopped.segment)}: missing")
    for seq in sorted(seq for seq in segments if seq >= stopped.segment):
        data = segments[seq]
        start = stopped.offset if seq == stopped.segment else 0
        count = _intact_records(data, start)
        total += count
        where = (f"from byte offset {start} to its end ({len(data) - start} bytes)" if start
                 else f"the whole file ({len(data)} bytes)")
        lines.append(f"{journal.segment_name(seq)}: {where}, {count} intact records skipped")
    what = ("whatever the missing segment held" if stopped.segment not in segments
            else "the damaged record itself")
    lines.append(f"in total {total} intact records, and {what}")
    return lines


def _intact_records(data: bytes, start: int) -> int:
    """Journal records whose frames are intact from `start` on, skipping damaged stretches."""
    count = 0
    position: int | None = start
    while position is not None:
        frames, damage = framing.decode(memoryview(data)[position:])
        for _, payload in frames:
            try:
                if isinstance(records.decode(payload).body, records.Abandon):
                    continue
            except records.RecordError:
                pass  # intact frame, unreadable record: lost all the same
            count += 1
        if damage is None:
            break
        position = framing.next_intact_frame(data, position + damage.offset)
    return count


# -- verify and restore ---------------------------------------------------------------


def verify(path: str) -> tuple[snapshot.Snapshot, int]:
    """Decode the backup file fully; its contents and size. DamagedBackup if damaged."""
    loaded, raw = _read_verified(path)
    return loaded, len(raw)


def _read_verified(path: str) -> tuple[snapshot.Snapshot, bytes]:
    try:
        raw = OsFiles().read(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file: name a file written by "
                         "`process-status backup`") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory: name a backup file (for a data dir use "
                         "--data-dir)") from None
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc}") from exc
    try:
        return snapshot.decode(path, raw), raw
    except snapshot.SnapshotError as exc:
        # The snapshot's advice is about a data dir; for a backup, only what is wrong.
        raise DamagedBackup(f"backup {exc.path} {exc.problem}: use another backup") from exc


def restore(source: str, data_dir: str, *, force: bool) -> Restored:
    """Install the backup `source` as the only state of `data_dir`.

    Refuses while a service holds the data dir, and refuses a data dir with contents
    unless `force`, which moves them into `replaced-<UTC time>/` inside it.
    Raises DamagedBackup for a damaged backup.
    """
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {data_dir} is not a directory: name the data dir to fill")
    loaded, raw = _read_verified(source)  # the bytes installed are the bytes verified
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except DataDirLocked:
        holder = _holder(lock.path)
        raise BackupError(
            f"data dir {data_dir} is in use by a running service (pid {holder}): stop it "
            f"first (kill -TERM {holder}, or your service manager's stop), then restore"
        ) from None
    except OSError as exc:
        raise BackupError(f"cannot use data dir {data_dir}: {exc}") from exc
    try:
        moved_to = _clear(data_dir, force)
        target = snapshot.path_in(data_dir)
        _install(target, raw)
    except OSError as exc:
        raise BackupError(f"restore into {data_dir} failed: {exc}") from exc
    finally:
        lock.release()
    return Restored(target, len(loaded.entries), loaded.lsn, loaded.created_at, moved_to)


def _holder(lock_path: str) -> str:
    try:
        with open(lock_path, "rb") as handle:
            return handle.read(32).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _clear(data_dir: str, force: bool) -> str | None:
    present = sorted(name for name in os.listdir(data_dir)
                     if name != LOCK_FILE and not name.startswith(REPLACED_PREFIX))
    if not present:
        return None
    if not force:
        shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
        raise BackupError(
            f"data dir {data_dir} is not empty ({shown}): restore into an empty dir, or pass "
            f"--force to move its contents aside into {REPLACED_PREFIX}<time>/ inside it"
        )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = os.path.join(data_dir, f"{REPLACED_PREFIX}{stamp}")
    suffix = 1
    while os.path.exists(aside):
        suffix += 1
        aside = os.path.join(data_dir, f"{REPLACED_PREFIX}{stamp}-{suffix}")
    os.mkdir(aside, 0o700)
    for name in present:
        os.rename(os.path.join(data_dir, name), os.path.join(aside, name))
    files = OsFiles()
    files.sync_dir(aside)
    files.sync_dir(data_dir)
    return aside


def _install(target: str, raw: bytes) -> None:
    """Write `raw` at `target` atomically (mode 0600, as every file the service writes)."""
    snapshot.write_atomically(OsFiles(), target, [raw])
