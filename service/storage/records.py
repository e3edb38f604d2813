"""Journal records: the payload of each frame in a journal segment, encoded and decoded here.

Each frame (see `framing`) of a `journal-<seq>.log` segment carries one orjson array:

    [lsn, time, "r", {"entity": ts, ...}]   advance entities (PUT or batch POST)
    [lsn, time, "d", "entity"]              delete one entity
    [lsn, time, "x", null]                  reset (delete everything)
    [0,   time, "abandon", {"segment": seq, "valid_bytes": n}]

`lsn` (log sequence number) increases by one per record across segments; `time`
is the wall-clock second the write was accepted (it becomes `updated_at` on
replay). Abandon markers (lsn 0) only ever lead a segment: each says that an
earlier segment failed and is valid up to `valid_bytes` (see `journal`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from service.storage import framing
from service.store import Advance, Delete, Mutation, Reset


class Abandon(NamedTuple):
    segment: int
    valid_bytes: int


class JournalRecord(NamedTuple):
    lsn: int
    moment: float
    body: Mutation | Abandon


class RecordError(ValueError):
    """A frame's payload is not a journal record this version can read."""


def encode(lsn: int, moment: float, mutation: Mutation) -> bytes:
    """One framed record, ready to append to a segment."""
    if isinstance(mutation, Advance):
        payload = [lsn, moment, "r", mutation.updates]
    elif isinstance(mutation, Delete):
        payload = [lsn, moment, "d", mutation.entity]
    else:
        payload = [lsn, moment, "x", None]
    return framing.encode(orjson.dumps(payload))


def encode_abandon(moment: float, marker: Abandon) -> bytes:
    """One framed abandon marker."""
    return framing.encode(orjson.dumps(
        [0, moment, "abandon", {"segment": marker.segment, "valid_bytes": marker.valid_bytes}]
    ))


def decode(payload: bytes | memoryview) -> JournalRecord:
    """Parse one frame's payload; RecordError if it is not a record."""
    try:
        lsn, moment, op, data = orjson.loads(payload)
        return JournalRecord(int(lsn), float(moment), _body(op, data))
    except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
        raise RecordError(f"unreadable record ({exc})") from exc


def _body(op: str, data: Any) -> Mutation | Abandon:
    if op == "r":
        if not isinstance(data, dict):
            raise TypeError("record data is not an object")
        # Written by us and checksummed: no need to re-validate each entry.
        return Advance(data)
    if op == "d":
        return Delete(str(data))
    if op == "x":
        return Reset()
    if op == "abandon":
        return Abandon(int(data["segment"]), int(data["valid_bytes"]))
    raise ValueError(f"unknown record type {op!r}")
