"""Backup, salvage and restore in-process (service/storage/backup.py).

Damaged data dirs are built byte by byte from the documented formats, so each test
states exactly what lies on disk; the concurrency test runs the real LocalBackend.
"""

from __future__ import annotations

import asyncio
import functools
import os
import stat
from pathlib import Path

import orjson
import pytest

from service.config import Durability
from service.storage import backup, framing, journal, snapshot
from service.storage.datadir import DataDirLock
from service.storage.files import OsFiles
from service.storage.local import LocalBackend, LocalOptions
from service.storage.recovery import RecoveryError, recover
from service.store import Advance, StatusStore
from tests.support import Ledger, eventually

MOMENT = 1_700_000_000.0


def record(lsn: int, updates: dict[str, int]) -> bytes:
    return framing.encode(orjson.dumps([lsn, MOMENT, "r", updates]))


def write_segment(data_dir: Path, seq: int, *frames: bytes) -> Path:
    path = data_dir / journal.segment_name(seq)
    path.write_bytes(b"".join(frames))
    return path


def write_snapshot(data_dir: Path, entries: dict[str, int], lsn: int, next_segment: int) -> None:
    rows = {name: (value, MOMENT) for name, value in entries.items()}
    snapshot.write(OsFiles(), str(data_dir), rows, sorted(rows), lsn, next_segment)


def values(path: Path) -> tuple[dict[str, int], int]:
    """A backup file's entities and lsn (decoding it fully)."""
    loaded = snapshot.decode(str(path), path.read_bytes())
    return {name: entry[0] for name, entry in loaded.entries.items()}, loaded.lsn


def contents(data_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(data_dir.iterdir())}


def corrupt_frame(path: Path, index: int) -> int:
    """Flip a payload byte of the index-th frame; returns that frame's offset."""
    data = path.read_bytes()
    frames, damage = framing.decode(data)
    assert damage is None
    offset = frames[index][0]
    at = offset + framing.HEADER.size + 1
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    return offset


@pytest.fixture
def damaged_dir(tmp_path: Path) -> tuple[Path, int]:
    """A snapshot (a=1, lsn 1), segment 1 with records 2..10 where record 6 is corrupt,
    and segment 2 with records 11..13; returns the dir and the damaged record's offset."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_snapshot(data_dir, {"a": 1}, lsn=1, next_segment=1)
    first = write_segment(data_dir, 1, *(record(lsn, {f"e{lsn}": lsn, "a": lsn})
                                         for lsn in range(2, 11)))
    write_segment(data_dir, 2, *(record(lsn, {f"e{lsn}": lsn}) for lsn in range(11, 14)))
    return data_dir, corrupt_frame(first, 4)  # the frame of lsn 6


def test_salvage_keeps_every_record_before_the_damage_and_names_the_loss(
    damaged_dir: tuple[Path, int], tmp_path: Path
) -> None:
    data_dir, offset = damaged_dir
    before = contents(data_dir)
    out = tmp_path / "salvaged.pss"

    written = backup.salvage(str(data_dir), str(out))

    found, lsn = values(out)
    assert found == {"a": 5, "e2": 2, "e3": 3, "e4": 4, "e5": 5}
    assert lsn == written.lsn == 5
    first, second = journal.segment_name(1), journal.segment_name(2)
    assert written.damage is not None
    assert f"journal {data_dir / first} is corrupt at byte offset {offset}" in written.damage
    size = (data_dir / first).stat().st_size
    assert written.lost[0] == (f"{first}: from byte offset {offset} to its end "
                               f"({size - offset} bytes), 4 intact records skipped")
    assert written.lost[1].startswith(f"{second}: the whole file (")
    assert written.lost[1].endswith(", 3 intact records skipped")
    assert written.lost[2] == "in total 7 intact records, and the damaged record itself"
    assert contents(data_dir) == before, "a salvage changes nothing in the data dir"


def test_salvage_of_a_missing_segment_keeps_what_comes_before_the_gap(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_segment(data_dir, 1, record(1, {"a": 1}), record(2, {"b": 2}))
    write_segment(data_dir, 3, record(5, {"c": 5}))
    out = tmp_path / "salvaged.pss"

    written = backup.salvage(str(data_dir), str(out))

    assert values(out) == ({"a": 1, "b": 2}, 2)
    assert written.lost[0] == f"{journal.segment_name(2)}: missing"
    assert written.lost[1].startswith(f"{journal.segment_name(3)}: the whole file")
    assert written.lost[2] == "in total 1 intact records, and whatever the missing segment held"


def test_salvage_refuses_a_damaged_snapshot_with_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_snapshot(data_dir, {"a": 1, "b": 2}, lsn=2, next_segment=1)
    corrupt_frame(data_dir / snapshot.FILENAME, 1)

    with pytest.raises(backup.BackupError, match=r"snapshot .* is corrupt at byte offset") as info:
        backup.salvage(str(data_dir), str(tmp_path / "out.pss"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.pss").exists()


def test_backup_refuses_damage_and_points_at_salvage(damaged_dir: tuple[Path, int],
                                                      tmp_path: Path) -> None:
    data_dir, offset = damaged_dir
    with pytest.raises(backup.BackupError, match=f"byte offset {offset}.*salvage"):
        backup.backup(str(data_dir), str(tmp_path / "out.pss"))


def test_recovery_in_salvage_mode_stops_where_plain_recovery_raises(
    damaged_dir: tuple[Path, int]
) -> None:
    data_dir, offset = damaged_dir
    with pytest.raises(RecoveryError, match=f"byte offset {offset}"):
        recover(OsFiles(), str(data_dir), StatusStore(100), repair=False)

    store = StatusStore(100)
    report = recover(OsFiles(), str(data_dir), store, repair=False, salvage=True)

    assert report.stopped is not None
    assert (report.stopped.segment, report.stopped.offset) == (1, offset)
    assert report.last_lsn == 5
    assert report.replayed == 4
    assert len(store) == 5


def test_a_healthy_salvage_loses_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_snapshot(data_dir, {"a": 1}, lsn=1, next_segment=1)
    write_segment(data_dir, 1, record(2, {"b": 2}))

    written = backup.salvage(str(data_dir), str(tmp_path / "out.pss"))

    assert written.damage is None
    assert written.lost == []
    assert values(tmp_path / "out.pss") == ({"a": 1, "b": 2}, 2)


def test_a_backup_is_a_private_snapshot_file_that_restores_to_the_same_state(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_snapshot(data_dir, {"a": 1, "b": 2}, lsn=2, next_segment=1)
    write_segment(data_dir, 1, record(3, {"a": 7}), record(4, {"c": 4}))
    out = tmp_path / "backup.pss"

    written = backup.backup(str(data_dir), str(out))

    assert (written.entities, written.lsn, written.snapshot_lsn, written.replayed) == (3, 4, 2, 2)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert values(out) == ({"a": 7, "b": 2, "c": 4}, 4)
    assert [name for name in os.listdir(tmp_path) if snapshot.TEMP_MARKER in name] == []

    target = tmp_path / "restored"
    restored = backup.restore(str(out), str(target), force=False)

    assert restored.moved_to is None
    assert (target / snapshot.FILENAME).read_bytes() == out.read_bytes()
    assert stat.S_IMODE((target / snapshot.FILENAME).stat().st_mode) == 0o600
    store = StatusStore(100)
    report = recover(OsFiles(), str(target), store, repair=False)
    assert report.last_lsn == 4
    assert {name: store.get(name) for name in "abc"} == {
        name: (value, MOMENT) for name, value in {"a": 7, "b": 2, "c": 4}.items()}


def test_restore_refuses_a_held_data_dir_and_a_non_empty_one(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    write_snapshot(source, {"a": 1}, lsn=1, next_segment=1)
    out = tmp_path / "backup.pss"
    backup.backup(str(source), str(out))
    target = tmp_path / "target"
    target.mkdir()
    write_segment(target, 1, record(1, {"old": 1}))
    before = contents(target)

    with pytest.raises(backup.BackupError, match=r"is not empty .*--force"):
        backup.restore(str(out), str(target), force=False)
    lock = DataDirLock(str(target))
    lock.acquire()
    try:
        with pytest.raises(backup.BackupError, match=f"in use by a running service "
                                                      f"\\(pid {os.getpid()}\\)"):
            backup.restore(str(out), str(target), force=True)
    finally:
        lock.release()
    assert {name: data for name, data in contents(target).items() if name != "LOCK"} == \
        {name: data for name, data in before.items() if name != "LOCK"}


def acked_at_least(ledger: Ledger, count: int) -> bool:
    return ledger.acks >= count


async def test_backups_while_the_backend_writes_and_snapshots_hold_every_acknowledged_write(
    tmp_path: Path,
) -> None:
    """Snapshots replace the file and delete segments under the backup's feet all along."""
    data_dir = tmp_path / "data"
    options = LocalOptions(data_dir=str(data_dir), durability=Durability.FSYNC,
                           snapshot_interval=3600, fsync_interval=1.0, journal_max_bytes=4096)
    local = LocalBackend(options, StatusStore(10**6))
    await local.start()
    ledger = Ledger()
    stop = asyncio.Event()

    async def write(worker: int) -> None:
        count = 0
        while not stop.is_set():
            entity = f"w{worker}-{count % 7}"
            value = ledger.take(entity)
            await local.submit(Advance({entity: value}))
            ledger.ack(entity, value)
            count += 1

    async def snapshot_often() -> None:
        while not stop.is_set():
            await local.snapshot()
            await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(write(worker)) for worker in range(4)]
    tasks.append(asyncio.create_task(snapshot_often()))
    try:
        for round_ in range(8):
            await eventually(functools.partial(acked_at_least, ledger, 50 * (round_ + 1)),
                             "50 more writes")
            acknowledged = Ledger(sent=ledger.sent, acked=dict(ledger.acked))
            out = tmp_path / f"backup-{round_}.pss"
            await asyncio.to_thread(backup.backup, str(data_dir), str(out))
            found, _ = values(out)
            assert acknowledged.lost(found) == []
            assert ledger.never_above_sent(found) == []
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await local.stop()


def test_a_snapshot_that_replaces_the_one_being_read_makes_the_backup_read_again(
    tmp_path: Path,
) -> None:
    """What the service does mid-backup: a new snapshot renamed in, covered segments deleted.

    Without the check the first read would pair the old snapshot with a journal that
    lost the segment it needs.
    """
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_snapshot(data_dir, {"a": 1}, lsn=1, next_segment=1)
    write_segment(data_dir, 1, record(2, {"b": 2}))
    write_segment(data_dir, 2, record(3, {"c": 3}))
    reads = 0

    def snapshot_and_drop_segment_1() -> None:
        nonlocal reads
        reads += 1
        if reads == 1:
            write_snapshot(data_dir, {"a": 1, "b": 2}, lsn=2, next_segment=2)
            (data_dir / journal.segment_name(1)).unlink()

    captured, attempts = backup.capture(str(data_dir), snapshot_and_drop_segment_1)

    assert attempts == 2
    assert sorted(captured.contents) == [journal.segment_name(2), snapshot.FILENAME]
    store = StatusStore(100)
    report = recover(captured, str(data_dir), store, repair=False)
    assert (report.snapshot_lsn, report.last_lsn, len(store)) == (2, 3, 3)


def test_a_backup_gives_up_after_a_bounded_number_of_replaced_snapshots(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    lsn = 0

    def replace_snapshot() -> None:
        nonlocal lsn
        lsn += 1
        write_snapshot(data_dir, {"a": lsn}, lsn=lsn, next_segment=1)

    with pytest.raises(backup.BackupError, match=f"{backup.ATTEMPTS} times in a row"):
        backup.capture(str(data_dir), replace_snapshot)


def test_a_damaged_backup_fails_verify_and_restore_naming_the_offset(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    write_snapshot(source, {"a": 1, "b": 2}, lsn=2, next_segment=1)
    out = tmp_path / "backup.pss"
    backup.backup(str(source), str(out))
    offset = corrupt_frame(out, 1)
    target = tmp_path / "target"

    with pytest.raises(backup.DamagedBackup) as info:
        backup.verify(str(out))
    assert str(info.value) == (f"backup {out} is corrupt at byte offset {offset}: checksum "
                               "mismatch: use another backup")
    with pytest.raises(backup.DamagedBackup):
        backup.restore(str(out), str(target), force=True)
    assert not target.exists()
