"""Snapshot files: the whole store at one journal position, written atomically.

A snapshot is a sequence of frames (see `framing`), each payload one orjson
document:

    frame 0      header  {"format": "process-status-snapshot", "version": 1,
                          "lsn": <last journal record covered>, "entities": <count>,
                          "segment": <first journal segment it does not cover, 0: none>,
                          "created_at": "<RFC 3339>"}
    frames 1..k  chunk   {"e": [names...], "t": [timestamps...], "u": [updated_at...]}
    frame k+1    trailer {"end": true, "entities": <count>}

Column-wise chunks keep both directions fast: each chunk is one short orjson call
(so a thread serialising it holds the GIL only briefly and the event loop keeps
running), and loading zips three lists straight into the dict.

The file is `snapshot.pss` in the data dir. It is written to a temp file in the
same directory, fsynced, renamed over the old one and the directory fsynced, so a
crash leaves either the old snapshot or the new one, plus at worst a temp file
that `remove_leftovers` deletes at the next start. Any damage in a snapshot is
fatal: unlike a journal tail, a snapshot is never legitimately half-written.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson

from service.storage import framing
from service.storage.files import Files
from service.store import Entry
from service.timefmt import rfc3339

FILENAME = "snapshot.pss"
FORMAT = "process-status-snapshot"
VERSION = 1
CHUNK = 20_000
TEMP_MARKER = ".tmp-"


class SnapshotError(Exception):
    """The snapshot file exists but cannot be trusted.

    `problem` says what is wrong with the file at `path` ("is corrupt at byte offset 12:
    checksum mismatch"), without the advice the full message adds for a data dir; `offset`
    is where, when known. A backup check words its own advice from them.
    """

    def __init__(self, path: str, problem: str, advice: str = "", *,
                 offset: int | None = None) -> None:
        super().__init__(f"snapshot {path} {problem}{advice}")
        self.path = path
        self.problem = problem
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Snapshot:
    entries: dict[str, Entry]
    lsn: int
    created_at: str
    next_segment: int
    """Journal records after `lsn` are in this segment and the ones after it (0: no journal)."""


def path_in(data_dir: str) -> str:
    return os.path.join(data_dir, FILENAME)


def encode_frames(
    entries: dict[str, Entry], names: list[str], lsn: int, next_segment: int = 0
) -> Iterator[bytes]:
    """Yield the file's frames one chunk at a time, in `names` order (call from a thread)."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "lsn": lsn,
        "segment": next_segment,
        "entities": len(entries),
        "created_at": rfc3339(time.time()),
    }
    yield framing.encode(orjson.dumps(header))
    for start in range(0, len(names), CHUNK):
        chunk = names[start : start + CHUNK]
        rows = [entries[name] for name in chunk]
        stamps = [row[0] for row in rows]
        updated = [row[1] for row in rows]
        yield framing.encode(orjson.dumps({"e": chunk, "t": stamps, "u": updated}))
    yield framing.encode(orjson.dumps({"end": True, "entities": len(entries)}))


def write(
    files: Files,
    data_dir: str,
    entries: dict[str, Entry],
    names: list[str],
    lsn: int,
    next_segment: int = 0,
) -> int:
    """Atomically replace the snapshot; returns its size in bytes. Blocking: run in a thread."""
    return write_file(files, path_in(data_dir), entries, names, lsn, next_segment)


def write_file(
    files: Files,
    target: str,
    entries: dict[str, Entry],
    names: list[str],
    lsn: int,
    next_segment: int = 0,
) -> int:
    """Atomically write a snapshot-format file at any `target` path (a backup, say)."""
    return write_atomically(files, target, encode_frames(entries, names, lsn, next_segment))


def write_atomically(files: Files, target: str, chunks: Iterable[bytes]) -> int:
    """Write `chunks` at `target` so a crash leaves the old file or the new one: a temp file
    in the same directory, fsync, rename over `target`, directory fsync. Returns the size."""
    temp = f"{target}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
    handle = files.create(temp)
    size = 0
    try:
        for chunk in chunks:
            handle.write(chunk)
            size += len(chunk)
        handle.sync()
    except BaseException:
        handle.close()
        files.remove(temp)
        raise
    handle.close()
    files.replace(temp, target)
    files.sync_dir(os.path.dirname(target) or ".")
    return size


def read(files: Files, data_dir: str) -> Snapshot | None:
    """Load the snapshot, None when there is none; SnapshotError names file and offset."""
    path = path_in(data_dir)
    try:
        raw = files.read(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotError(path, f"cannot be read: {exc}") from exc
    return decode(path, raw)


def decode(path: str, raw: bytes) -> Snapshot:
    frames, damage = framing.decode(raw)
    if damage is not None:
        raise SnapshotError(
            path, f"is corrupt at byte offset {damage.offset}: {damage.reason}",
            ". Restore it from a backup; without it the journal alone would start the "
            "service older than what it acknowledged", offset=damage.offset)
    if len(frames) < 2:
        raise SnapshotError(path, "is corrupt: it has no header or no trailer")
    try:
        header = orjson.loads(frames[0][1])
        trailer = orjson.loads(frames[-1][1])
        if header.get("format") != FORMAT:
            raise SnapshotError(path, "is not a process-status snapshot")
        if header.get("version") != VERSION:
            raise SnapshotError(
                path, f"has format version {header.get('version')}, this build reads version "
                f"{VERSION}", ": run the release that wrote it, or move the file away")
        entries: dict[str, Entry] = {}
        for offset, payload in frames[1:-1]:
            chunk = orjson.loads(payload)
            names, stamps, updated = chunk["e"], chunk["t"], chunk["u"]
            if not len(names) == len(stamps) == len(updated):
                raise SnapshotError(path, f"is corrupt at byte offset {offset}: uneven chunk "
                                    "columns", offset=offset)
            entries.update(zip(names, zip(stamps, updated, strict=True), strict=True))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(path, f"is corrupt: {exc}") from exc
    count = header.get("entities")
    if trailer.get("end") is not True or trailer.get("entities") != count or len(entries) != count:
        raise SnapshotError(path, f"is corrupt: header says {count} entities, found "
                            f"{len(entries)}")
    return Snapshot(entries, int(header["lsn"]), str(header["created_at"]),
                    int(header.get("segment", 0)))


def remove_leftovers(files: Files, data_dir: str) -> list[str]:
    """Delete temp files left by a crash during a snapshot; returns their names."""
    removed = [name for name in files.listdir(data_dir) if TEMP_MARKER in name]
    for name in removed:
        files.remove(os.path.join(data_dir, name))
    return removed
