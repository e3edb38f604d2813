"""Checksummed frames: the unit both snapshot and journal files are made of.

On disk a frame is::

    offset  size  field
    0       4     payload length N, unsigned little-endian, 1 <= N <= MAX_FRAME
    4       4     CRC-32 (zlib) of the payload, unsigned little-endian
    8       N     payload (one orjson document)

A file is frames back to back with nothing between them. A reader walks the
frames and stops at the first damaged one, telling a *torn tail* (the bytes run
out mid-frame, or only zeros follow, or the very last frame fails its checksum,
and no intact frame can be found anywhere after it: what a crash during an
append leaves) from *corruption* (a bad frame with intact data after it: the
disk or someone else damaged the file, and cutting there would drop records).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

HEADER = struct.Struct("<II")
MAX_FRAME = 256 * 1024 * 1024


def encode(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True, slots=True)
class Damage:
    offset: int
    reason: str
    torn: bool
    """True when the damage is a torn tail that recovery may truncate."""


Payload = memoryview
"""A zero-copy view into the buffer (orjson.loads and zlib take it as is)."""


def decode(buffer: bytes | memoryview) -> tuple[list[tuple[int, Payload]], Damage | None]:
    """All intact frames as (offset, payload), and the damage that stopped the walk."""
    frames: list[tuple[int, Payload]] = []
    for item in iter_frames(buffer):
        if isinstance(item, Damage):
            return frames, item
        frames.append(item)
    return frames, None


def iter_frames(buffer: bytes | memoryview) -> Iterator[tuple[int, Payload] | Damage]:
    view = memoryview(buffer)
    end = len(view)
    offset = 0
    while offset < end:
        if end - offset < HEADER.size:
            yield Damage(offset, f"{end - offset} stray bytes, shorter than a frame header", True)
            return
        length, crc = HEADER.unpack_from(view, offset)
        body_end = offset + HEADER.size + length
        if length == 0 or length > MAX_FRAME:
            torn = not any(view[offset:end]) or not _intact_frame_after(view, offset)
            yield Damage(offset, f"invalid frame length {length}", torn)
            return
        if body_end > end:
            # A crash mid-append, or a corrupted length field hiding the frames after it.
            torn = not _intact_frame_after(view, offset)
            yield Damage(offset, f"frame of {length} bytes runs past the end of the file", torn)
            return
        payload = view[offset + HEADER.size : body_end]
        if zlib.crc32(payload) != crc:
            yield Damage(offset, "checksum mismatch", body_end == end)
            return
        yield offset, payload
        offset = body_end


def _intact_frame_after(view: memoryview, start: int) -> bool:
    """Whether an intact frame (plausible length, matching checksum) starts after `start`.

    Only runs once a damaged frame is found, to tell a torn tail from a corrupted
    length field in front of good records.
    """
    return next_intact_frame(view, start) is not None


def next_intact_frame(buffer: bytes | memoryview, start: int) -> int | None:
    """The offset of the first intact frame that starts after `start`, None if none does.

    A scan byte by byte: lets a salvage count the intact records behind a damaged one.
    """
    view = memoryview(buffer)
    end = len(view)
    for position in range(start + 1, end - HEADER.size):
        length, crc = HEADER.unpack_from(view, position)
        body_end = position + HEADER.size + length
        if 0 < length <= MAX_FRAME and body_end <= end and \
                zlib.crc32(view[position + HEADER.size : body_end]) == crc:
            return position
    return None
