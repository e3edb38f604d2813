"""ProcessedCache: what the gate middleware already knows is processed, for a while.

A processed position never goes back (only a DELETE or a reset on the service
can undo it), so "entity has processed up to T" stays true and answers every
later question about a timestamp <= T without asking again. Each entry lives
for the seconds the answer allowed (its max-age), and the least recently used
entity is dropped once `size` entities are held, so memory stays bounded
however many entities pass through. Negative answers are never kept: they
change as soon as the operator catches up.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class ProcessedCache:
    """Per entity: the highest timestamp known processed and until when to trust it."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 0:
            raise ValueError("size must not be negative")
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def covers(self, entity: str, timestamp: int) -> bool:
        """Is `entity` known, still freshly, to have processed `timestamp`?"""
        entry = self._entries.get(entity)
        if entry is None:
            return False
        processed, expires = entry
        if self._clock() >= expires:
            del self._entries[entity]
            return False
        self._entries.move_to_end(entity)
        return timestamp <= processed

    def remember(self, entity: str, processed: int, seconds: float) -> None:
        """`entity` has processed up to `processed`, true for the next `seconds`.

        The newest answer replaces an older one even when it is lower: only a
        DELETE or a reset lowers a position, and then the newer answer is right.
        """
        if seconds <= 0 or self.size == 0:
            return
        self._entries[entity] = (processed, self._clock() + seconds)
        self._entries.move_to_end(entity)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
