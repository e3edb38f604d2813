"""Recovery from the snapshot and journal on disk: what is repaired, what is refused.

Data dirs are built byte by byte from the formats documented in `framing`,
`journal` and `snapshot`, so each test states exactly what lies on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import aiohttp
import orjson
import pytest

from service.storage import framing, journal, snapshot
from service.storage.files import OsFiles
from service.storage.local import LocalBackend
from service.storage.recovery import RecoveryError, Report, recover
from service.store import StatusStore
from service.web.app import backend_key
from tests.servers import start_serve
from tests.support import MakeClient, state

MOMENT = 1_700_000_000.0


def record(lsn: int, updates: dict[str, int]) -> bytes:
    return framing.encode(orjson.dumps([lsn, MOMENT, "r", updates]))


def delete(lsn: int, entity: str) -> bytes:
    return framing.encode(orjson.dumps([lsn, MOMENT, "d", entity]))


def segment(data_dir: Path, seq: int, *frames: bytes) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / journal.segment_name(seq)
    path.write_bytes(b"".join(frames))
    return path


def write_snapshot(
    data_dir: Path, entries: dict[str, int], lsn: int, next_segment: int = 0
) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = {name: (value, MOMENT) for name, value in entries.items()}
    snapshot.write(OsFiles(), str(data_dir), rows, sorted(rows), lsn, next_segment)
    return data_dir / snapshot.FILENAME


def load(data_dir: Path, *, repair: bool = True) -> tuple[dict[str, int], Report, list[str]]:
    store = StatusStore(max_entities=10**7)
    warnings: list[str] = []
    report = recover(OsFiles(), str(data_dir), store, repair=repair, warn=warnings.append)
    found, _ = store.page("", "", 10**7)
    return {name: entry[0] for name, entry in found}, report, warnings


def contents(data_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(data_dir.iterdir())}




def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]


# -- torn tails ---------------------------------------------------------------------

LAST = record(3, {"c": 3})
TORN_TAILS = {
    "header-cut": LAST[:5],
    "body-cut": LAST[:-3],
    "last-record-bad-checksum": flip(LAST, len(LAST) - 2),
    "zero-filled": b"\0" * 4096,
}


@pytest.mark.parametrize("tail", list(TORN_TAILS))
def test_torn_tail_of_the_last_segment_is_cut_off_with_a_warning(
    tmp_path: Path, tail: str
) -> None:
    data_dir = tmp_path / "data"
    segment(data_dir, 1, record(1, {"a": 1}))
    intact = record(2, {"b": 2})
    path = segment(data_dir, 2, intact, TORN_TAILS[tail])

    found, report, warnings = load(data_dir)

    assert found == {"a": 1, "b": 2}
    assert len(warnings) == 1
    assert str(path) in warnings[0]
    assert f"byte offset {len(intact)}" in warnings[0]
    assert report.truncated == [f"{path.name}@{len(intact)}"]
    assert path.read_bytes() == intact


async def test_service_starts_after_a_torn_tail_and_keeps_working(
    tmp_path: Path, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    path = segment(data_dir, 1, record(1, {"a": 1}), record(2, {"b": 2}), LAST[:-3])
    caplog.set_level(logging.WARNING, logger="process_status")

    client = await make_client()
    assert (await client.get("/readyz")).status == 200
    assert await state(client) == {"a": 1, "b": 2}
    torn = [r for r in caplog.records if r.levelno == logging.WARNING and str(path) in r.message]
    assert torn, [r.message for r in caplog.records]
    assert (await client.put("/status/c", json={"timestamp": 5})).status == 200
    await client.close()

    # The cut was made on disk: the old segment is no longer the last one, so a torn
    # record left in it would now be refused as corruption.
    restarted = await make_client()
    assert await state(restarted) == {"a": 1, "b": 2, "c": 5}


# -- corruption -----------------------------------------------------------------------

FIRST, SECOND, THIRD = record(1, {"a": 1}), record(2, {"b": 2}), record(3, {"c": 3})
CORRUPT_JOURNALS: dict[str, tuple[list[bytes], list[bytes], int]] = {
    # name: (segment 1 frames, segment 2 frames, offset of the damage in the damaged one)
    "checksum-in-the-middle": ([FIRST, flip(SECOND, 9), THIRD], [], len(FIRST)),
    "length-in-the-middle": ([FIRST, b"\xff\xff\xff\x7f" + SECOND[4:], THIRD], [], len(FIRST)),
    "zeros-in-the-middle": ([FIRST, b"\0" * len(SECOND), THIRD], [], len(FIRST)),
    "torn-tail-of-an-earlier-segment": ([FIRST, SECOND[:-2]], [THIRD], len(FIRST)),
    "bad-last-record-of-an-earlier-segment": ([FIRST, flip(SECOND, 10)], [THIRD], len(FIRST)),
}


@pytest.mark.parametrize("damage", list(CORRUPT_JOURNALS))
def test_journal_corruption_refuses_recovery_naming_file_and_offset(
    tmp_path: Path, damage: str
) -> None:
    data_dir = tmp_path / "data"
    first, second, offset = CORRUPT_JOURNALS[damage]
    damaged = segment(data_dir, 1, *first)
    if second:
        segment(data_dir, 2, *second)
    before = contents(data_dir)

    with pytest.raises(RecoveryError) as caught:
        load(data_dir)

    assert str(damaged) in str(caught.value)
    assert f"byte offset {offset}" in str(caught.value)
    # ...and in fields, for tools that act on it (salvage, backup) without parsing text.
    assert (caught.value.path, caught.value.segment, caught.value.offset) == \
        (str(damaged), 1, offset)
    assert contents(data_dir) == before, "a refused recovery must not change the files"


def _big_snapshot(data_dir: Path) -> tuple[Path, bytes, list[int]]:
    """A snapshot of several chunks; returns its path, bytes and frame offsets."""
    entries = {f"entity-{index:06d}": index + 1 for index in range(snapshot.CHUNK * 2 + 5)}
    path = write_snapshot(data_dir, entries, lsn=7)
    raw = path.read_bytes()
    frames, damage = framing.decode(raw)
    assert damage is None
    return path, raw, [offset for offset, _ in frames]


@pytest.mark.parametrize("damage", ["checksum", "cut-mid-frame", "stray-bytes", "zeros"])
def test_damaged_snapshot_refuses_recovery_naming_file_and_offset(
    tmp_path: Path, damage: str
) -> None:
    data_dir = tmp_path / "data"
    path, raw, offsets = _big_snapshot(data_dir)
    segment(data_dir, 1, record(8, {"late": 8}))
    if damage == "checksum":
        offset = offsets[2]
        path.write_bytes(flip(raw, offset + framing.HEADER.size + 100))
    elif damage == "cut-mid-frame":
        offset = offsets[-1]
        path.write_bytes(raw[:-3])
    elif damage == "stray-bytes":
        offset = len(raw)
        path.write_bytes(raw + b"\x01\x02")
    else:  # a crash of the file system, not of us: snapshots are never half-written
        offset = offsets[1]
        path.write_bytes(raw[:offset] + b"\0" * (len(raw) - offset))

    with pytest.raises(RecoveryError) as caught:
        load(data_dir)

    assert str(path) in str(caught.value)
    assert f"byte offset {offset}" in str(caught.value)
    assert (caught.value.path, caught.value.segment, caught.value.offset) == \
        (str(path), None, offset)


def test_snapshot_missing_its_trailer_or_of_another_version_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path, raw, offsets = _big_snapshot(data_dir)
    path.write_bytes(raw[: offsets[-1]])  # cut exactly at a frame boundary
    with pytest.raises(RecoveryError, match="snapshot") as caught:
        load(data_dir)
    assert str(path) in str(caught.value)

    header = {"format": snapshot.FORMAT, "version": snapshot.VERSION + 1, "lsn": 0,
              "entities": 0, "created_at": "2026-01-01T00:00:00Z"}
    trailer = {"end": True, "entities": 0}
    path.write_bytes(framing.encode(orjson.dumps(header)) + framing.encode(orjson.dumps(trailer)))
    with pytest.raises(RecoveryError, match="version") as caught:
        load(data_dir)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("damaged", ["snapshot", "journal"])
def test_serve_exits_non_zero_naming_the_damage(tmp_path: Path, damaged: str) -> None:
    data_dir = tmp_path / "data"
    if damaged == "snapshot":
        path, raw, offsets = _big_snapshot(data_dir)
        offset = offsets[1]
        path.write_bytes(flip(raw, offset + framing.HEADER.size + 3))
    else:
        path = segment(data_dir, 1, FIRST, flip(SECOND, 9), THIRD)
        offset = len(FIRST)
    before = path.read_bytes()

    server = start_serve(data_dir, wait=False)
    try:
        code = server.process.wait(30)
    finally:
        server.kill_all()
    assert code != 0
    log = server.log()
    assert str(path) in log
    assert f"byte offset {offset}" in log
    assert path.read_bytes() == before


# -- leftovers of a crash during a snapshot --------------------------------------------

async def test_leftover_snapshot_temp_files_are_removed_at_start(
    tmp_path: Path, make_client: MakeClient
) -> None:
    data_dir = tmp_path / "data"
    write_snapshot(data_dir, {"a": 1}, lsn=0)
    leftovers = [data_dir / f"{snapshot.FILENAME}{snapshot.TEMP_MARKER}{pid}-0badc0de"
                 for pid in (123, 456)]
    leftovers[0].write_bytes(b"half a snapshot")
    leftovers[1].write_bytes(b"")

    client = await make_client()

    assert await state(client) == {"a": 1}
    assert not any(path.exists() for path in leftovers)


def test_segments_covered_by_the_snapshot_are_skipped_and_removed(tmp_path: Path) -> None:
    """A crash between writing a snapshot and deleting the journal it covers."""
    data_dir = tmp_path / "data"
    # The snapshot disagrees with the covered records on purpose: replaying them would
    # delete "a".
    write_snapshot(data_dir, {"a": 7}, lsn=2)
    covered = segment(data_dir, 1, record(1, {"a": 1}), delete(2, "a"))
    newer = segment(data_dir, 2, record(3, {"b": 3}))

    found, report, warnings = load(data_dir)

    assert found == {"a": 7, "b": 3}
    assert report.replayed == 1
    assert warnings == []
    assert not covered.exists()
    assert newer.exists()
    assert covered.name in report.removed


def test_partly_covered_segment_replays_only_newer_records(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_snapshot(data_dir, {"a": 7, "b": 2}, lsn=2)
    path = segment(data_dir, 1, delete(1, "a"), record(2, {"b": 2}), record(3, {"c": 3}))

    found, report, _ = load(data_dir)

    assert found == {"a": 7, "b": 2, "c": 3}
    assert report.replayed == 1
    assert path.exists()


async def test_service_starts_after_a_crash_between_snapshot_and_cleanup(
    tmp_path: Path, make_client: MakeClient
) -> None:
    data_dir = tmp_path / "data"
    write_snapshot(data_dir, {"a": 7}, lsn=2)
    segment(data_dir, 1, record(1, {"a": 1}), delete(2, "a"))
    segment(data_dir, 2, record(3, {"b": 3}))

    client = await make_client()
    assert await state(client) == {"a": 7, "b": 3}
    assert (await client.put("/status/c", json={"timestamp": 4})).status == 200
    await client.close()
    restarted = await make_client()
    assert await state(restarted) == {"a": 7, "b": 3, "c": 4}


def test_missing_middle_segment_refuses_recovery(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    segment(data_dir, 1, FIRST)
    segment(data_dir, 3, THIRD)

    with pytest.raises(RecoveryError) as caught:
        load(data_dir)

    assert journal.segment_name(2) in str(caught.value)
    assert str(data_dir) in str(caught.value)
    assert (caught.value.segment, caught.value.offset) == (2, 0)


# -- the journal stays bounded -----------------------------------------------------------

def journal_files(data_dir: Path) -> dict[str, int]:
    """Sizes of the journal segments; a running service may delete one while we look."""
    sizes: dict[str, int] = {}
    for path in data_dir.glob("journal-*.log"):
        with contextlib.suppress(FileNotFoundError):
            sizes[path.name] = path.stat().st_size
    return sizes


async def test_a_snapshot_deletes_the_segments_it_covers(
    tmp_path: Path, make_client: MakeClient
) -> None:
    data_dir = tmp_path / "data"
    client = await make_client()
    for index in range(3):
        assert (await client.put(f"/status/e{index}", json={"timestamp": 1})).status == 200
    assert list(journal_files(data_dir)) == [journal.segment_name(1)]

    backend = client.app[backend_key]
    assert isinstance(backend, LocalBackend)
    assert await backend.snapshot()

    assert journal_files(data_dir) == {}
    assert (data_dir / snapshot.FILENAME).exists()
    assert (await client.put("/status/e9", json={"timestamp": 1})).status == 200
    assert list(journal_files(data_dir)) == [journal.segment_name(2)]
    found, _, _ = load(data_dir, repair=False)
    assert found == {f"e{index}": 1 for index in (0, 1, 2, 9)}


async def test_journal_never_grows_past_a_small_journal_max_bytes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    limit = 2048
    server = await asyncio.to_thread(start_serve, data_dir, "--journal-max-bytes", str(limit),
                                     "--snapshot-interval", "3600")
    largest = 0
    sent: dict[str, int] = {}
    try:
        async with aiohttp.ClientSession() as session:

            async def put(entity: str, value: int) -> None:
                async with session.put(f"{server.url}/status/{entity}",
                                       json={"timestamp": value}) as response:
                    assert response.status == 200, await response.text()
                sent[entity] = max(sent.get(entity, 0), value)

            for round_ in range(100):
                await asyncio.gather(*(put(f"e{index}", round_ * 8 + index) for index in range(8)))
                largest = max(largest, sum(journal_files(data_dir).values()))
        written = 800 * len(record(999, {"e0": 999}))
        assert written > 10 * limit
        # A snapshot starts as soon as the journal passes the limit; writes that land
        # while it runs may add a little more before the covered segments go.
        assert largest <= 3 * limit, largest
        names = journal_files(data_dir)
        assert len(names) <= 2, names
    finally:
        await asyncio.to_thread(server.kill_all)
    found, _, _ = load(data_dir, repair=False)
    assert found == sent


def test_a_lost_snapshot_with_the_journal_left_behind_refuses_to_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # Segments 1-2 were deleted once a snapshot covered them; then the snapshot went.
    segment(data_dir, 3, record(8, {"b": 7}))
    with pytest.raises(RecoveryError, match=r"journal-0000000001\.log is missing"):
        load(data_dir)


def test_a_missing_segment_after_the_snapshot_refuses_to_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_snapshot(data_dir, {"a": 5}, lsn=5, next_segment=3)
    segment(data_dir, 4, record(7, {"a": 9}))  # segment 3, with lsn 6, is gone
    with pytest.raises(RecoveryError, match=r"journal-0000000003\.log is missing"):
        load(data_dir)


def test_the_segment_after_the_snapshot_is_kept_even_when_empty(tmp_path: Path) -> None:
    """Regression: recovery deleted an empty segment the snapshot named as next, and the
    start after that refused with "segment is missing" (found by the crash harness)."""
    data_dir = tmp_path / "data"
    write_snapshot(data_dir, {"a": 5}, lsn=5, next_segment=3)
    segment(data_dir, 3)  # opened, then the process was killed before any write
    found, report, _ = load(data_dir)
    assert found == {"a": 5}
    assert (data_dir / journal.segment_name(3)).exists()
    assert report.next_seq == 4
    segment(data_dir, 4, record(6, {"a": 6}))  # what the restarted service wrote
    found, _, _ = load(data_dir)
    assert found == {"a": 6}
