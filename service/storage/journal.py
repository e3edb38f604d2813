"""The write-ahead journal: numbered segment files of checksummed records.

Segments are `journal-<seq>.log` (seq: 10 zero-padded digits, consecutive). Each
is a run of frames (see `framing`), each payload one journal record (see `records`
for the record format). A write or fsync that fails leaves the segment in an unknown state (after
a failed fsync Linux may already have dropped the dirty pages, and a retried fsync
can falsely succeed), so the journal never touches that segment again: the next
write opens a fresh segment whose first frame is an `abandon` marker saying how
many bytes of the old one were durably synced. Replay reads no further than that,
so a write that was answered with an error never comes back after a restart.

Every method here blocks: callers run them on one dedicated I/O thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field

from service.storage import records
from service.storage.files import Files, WritableFile

_SEGMENT = re.compile(r"journal-(\d{10})\.log")


def segment_name(seq: int) -> str:
    return f"journal-{seq:010d}.log"


def segment_seq(name: str) -> int | None:
    """The sequence number of a segment's file name; None for any other file."""
    match = _SEGMENT.fullmatch(name)
    return int(match.group(1)) if match else None


def list_segments(files: Files, data_dir: str) -> list[int]:
    """Sequence numbers of the journal segments in `data_dir`, ascending."""
    return sorted(seq for name in files.listdir(data_dir)
                  if (seq := segment_seq(name)) is not None)


@dataclass
class Segment:
    seq: int
    size: int = 0
    max_lsn: int = 0


@dataclass
class Journal:
    files: Files
    data_dir: str
    next_seq: int
    retained: list[Segment] = field(default_factory=list)
    """Segments on disk that a snapshot does not yet cover, oldest first."""
    failed: bool = False
    _current: Segment | None = None
    _handle: WritableFile | None = None
    _synced_size: int = 0
    _abandoned: list[Segment] = field(default_factory=list)
    """Failed segments whose abandon markers are not yet durably written."""

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self.retained)

    def path(self, seq: int) -> str:
        return os.path.join(self.data_dir, segment_name(seq))

    def write(self, data: bytes, max_lsn: int) -> None:
        """Append encoded frames to the current segment (opening one if needed)."""
        if self._handle is None or self.failed:
            self._open_fresh()
        assert self._handle is not None
        assert self._current is not None
        try:
            self._handle.write(data)
        except BaseException:
            self._fail()
            raise
        self._current.size += len(data)
        self._current.max_lsn = max(self._current.max_lsn, max_lsn)

    def sync(self) -> None:
        # A failed segment is never synced again: Linux may report success for an
        # fsync after a failed one without having written anything.
        if self._handle is None or self._current is None or self.failed:
            return
        try:
            self._handle.sync()
        except BaseException:
            self._fail()
            raise
        self._synced_size = self._current.size
        self._abandoned.clear()  # any markers were written to this segment, now durable

    def rotate(self) -> None:
        """Sync and close the current segment; the next write starts a new one."""
        if self._handle is not None and not self.failed:
            self.sync()
            self._close()

    def drop_covered(self, lsn: int, next_segment: int) -> list[str]:
        """Delete closed segments whose every record is covered by a snapshot at `lsn`.

        Segments from `next_segment` (the first the snapshot does not cover) on are
        kept whatever they hold: recovery checks that one is there.
        """
        removed: list[str] = []
        while self.retained and self.retained[0] is not self._current:
            oldest = self.retained[0]
            if oldest.max_lsn > lsn or oldest in self._abandoned or oldest.seq >= next_segment:
                break
            self.files.remove(self.path(oldest.seq))
            self.retained.pop(0)
            removed.append(segment_name(oldest.seq))
        if removed:
            self.files.sync_dir(self.data_dir)
        return removed

    def close(self) -> None:
        """Sync and close; a failed journal first tries to make its abandon markers durable."""
        if self.failed and self._abandoned:
            try:
                self._open_fresh()
                self.sync()
            except OSError:
                pass  # recovery then replays at most the truncated failed segment
        if self._handle is not None and not self.failed:
            self.sync()
        self._close()

    def _close(self) -> None:
        handle, self._handle, self._current = self._handle, None, None
        if handle is not None:
            handle.close()

    def probe(self) -> None:
        """After a failure: open a fresh segment (with the abandon markers) and fsync it.

        Raises OSError while the disk still fails; on success writes may resume.
        """
        if self.failed or self._handle is None:
            self._open_fresh()
        self.sync()
        if self.failed:
            raise OSError("the journal segment could not be synced")

    def _fail(self) -> None:
        """After a failed write or fsync: never trust this segment past its synced size."""
        self.failed = True
        current = self._current
        if current is None:
            return
        current.size = self._synced_size
        if self._synced_size == 0 and self.retained and self.retained[-1] is current:
            # Nothing in it ever became durable: delete it and reuse its number, so a
            # long outage retried every second cannot pile up segment files.
            with contextlib.suppress(OSError):
                self._close()
            try:
                self.files.remove(self.path(current.seq))
            except OSError:
                pass
            else:
                self.retained.pop()
                self.next_seq = current.seq
                if current in self._abandoned:
                    self._abandoned.remove(current)
                return
        if current not in self._abandoned:
            self._abandoned.append(current)
        # Best effort: cut the unsynced tail off right away, so the rejected writes cannot
        # come back even if no abandon marker is ever written (say the process stops
        # before the disk recovers). Truncating frees space, so it works on a full disk.
        with contextlib.suppress(OSError):
            self.files.truncate(self.path(current.seq), self._synced_size)

    def _open_fresh(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):  # abandoned either way; the fd is gone
                self._close()
        handle = self.files.create(self.path(self.next_seq))
        segment = Segment(self.next_seq)
        self.next_seq += 1
        self.retained.append(segment)
        self._handle, self._current, self._synced_size = handle, segment, 0
        self.failed = False
        moment = time.time()
        markers = b"".join(records.encode_abandon(moment, records.Abandon(old.seq, old.size))
                           for old in self._abandoned)
        try:
            if markers:
                handle.write(markers)
                segment.size += len(markers)
            # Until the directory entry is durable, nothing in this segment is.
            self.files.sync_dir(self.data_dir)
        except BaseException:
            self._fail()
            raise
