"""StatusStore: per-entity latest processed timestamp, merged forward-only.

Pure Python and synchronous: it knows nothing of HTTP, files or the event loop.
A storage backend decides *when* a mutation is applied (after its journal fsync, or at
once); the store only decides *what* applying it means.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple, overload

# (timestamp, updated_at): updated_at is wall-clock seconds since the epoch at the
# moment the stored timestamp last advanced. A tuple keeps a million entries
# cheap (one small object each).
Entry = tuple[int, float]

# Inserting names one by one into the sorted index costs a memmove each; past this
# many new names in one mutation a merge-sort of the whole index is cheaper.
_BULK_INSERT = 32


# Mutations and outcomes are NamedTuples rather than frozen dataclasses: one of each
# is created per write on the hot path, and a tuple is several times cheaper to make.


class Advance(NamedTuple):
    """Move entities forward to these timestamps (max-merge): entity -> ts, already validated."""

    updates: Mapping[str, int]


class Delete(NamedTuple):
    entity: str


class Reset(NamedTuple):
    pass


Mutation = Advance | Delete | Reset


class Outcome(NamedTuple):
    """What one entity looks like after an Advance: its stored ts and whether it moved."""

    timestamp: int
    advanced: bool


class CapacityError(Exception):
    """Applying the write would take the store past its entity limit."""

    @classmethod
    def refusing(cls, holder: str, held: int, limit: int, new: int) -> CapacityError:
        """The one wording for both backends: `holder` ("the store", "Redis") holds `held`."""
        return cls(f"{holder} holds {held} entities and the limit is {limit}; this write "
                   f"would add {new} more. Delete unused entities or raise --max-entities")


class StatusStore:
    def __init__(self, max_entities: int) -> None:
        self.max_entities = max_entities
        self._entries: dict[str, Entry] = {}
        self._names: list[str] = []
        self._reserved = 0
        self._restoring = False
        self._listeners: list[Callable[[str, int], None]] = []
        self._held: list[tuple[str, int]] | None = None
        self.version = 0
        """Counts applied mutations, so a snapshotter can tell whether anything changed."""
        self.advanced = 0
        self.stale = 0
        """Per-entity updates applied since start that moved an entity, or did not."""

    # -- reads -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, entity: str) -> Entry | None:
        return self._entries.get(entity)

    def processed(self, entity: str, timestamp: int) -> tuple[bool, int | None]:
        """EventStreamex's `processed?`: stored >= timestamp; unknown is not processed."""
        entry = self._entries.get(entity)
        if entry is None:
            return False, None
        return entry[0] >= timestamp, entry[0]

    def page(self, prefix: str, after: str, limit: int) -> tuple[list[tuple[str, Entry]], bool]:
        """Up to `limit` entries sorted by name, with `prefix`, strictly after `after`.

        The second value says whether more entries follow.
        """
        names = self._names
        start = max(bisect.bisect_left(names, prefix), bisect.bisect_right(names, after))
        found: list[tuple[str, Entry]] = []
        for index in range(start, len(names)):
            name = names[index]
            if not name.startswith(prefix):
                return found, False
            if len(found) == limit:
                return found, True
            found.append((name, self._entries[name]))
        return found, False

    def first(self, limit: int) -> list[tuple[str, Entry]]:
        """The first `limit` entries by name. Safe from another thread (a metrics render):
        it reads only a slice of the index and single dict lookups, each atomic."""
        names = self._names[:limit]
        entries = self._entries
        return [(name, entry) for name in names if (entry := entries.get(name)) is not None]

    def capture(self) -> tuple[dict[str, Entry], list[str]]:
        """A point-in-time copy for a snapshot: the entries and the sorted names.

        Shallow copies (entries are immutable tuples): about 20 ms for a million
        entities, on the event loop. Writing the snapshot in name order lets the
        next start rebuild the sorted index in linear time.
        """
        return self._entries.copy(), self._names.copy()

    # -- capacity --------------------------------------------------------------

    def reserve(self, names: Iterable[str]) -> int:
        """Reserve room for the new entities among `names` until the write is applied.

        Writes wait for their fsync before they are applied; counting the ones in
        flight keeps concurrent writes from overshooting `max_entities` together.
        Returns the count to pass to `release`. Raises CapacityError when full.
        """
        entries = self._entries
        new = 0
        for name in names:
            if name not in entries:
                new += 1
        if new and len(entries) + self._reserved + new > self.max_entities:
            raise CapacityError.refusing("the store", len(entries), self.max_entities, new)
        self._reserved += new
        return new

    def release(self, reserved: int) -> None:
        self._reserved -= reserved

    # -- writes ----------------------------------------------------------------

    def subscribe(self, listener: Callable[[str, int], None]) -> None:
        """Call `listener(entity, new_ts)` whenever an entity advances."""
        self._listeners.append(listener)

    @contextlib.contextmanager
    def holding_notifications(self) -> Iterator[None]:
        """Tell listeners about advances at the end of the block instead of during it.

        Still synchronous (the same event-loop turn), but it lets a group commit
        answer its writers before ten thousand released waiters queue up ahead of them.
        """
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            for entity, timestamp in held:
                for listener in self._listeners:
                    listener(entity, timestamp)

    @overload
    def apply(self, mutation: Advance, now: float) -> dict[str, Outcome]: ...

    @overload
    def apply(self, mutation: Delete | Reset, now: float) -> bool: ...

    def apply(self, mutation: Mutation, now: float) -> dict[str, Outcome] | bool:
        """Apply any mutation: what `advance`, `delete` or `reset` answers."""
        if isinstance(mutation, Advance):
            return self.advance(mutation.updates, now)
        if isinstance(mutation, Delete):
            return self.delete(mutation.entity)
        return self.reset()

    def advance(self, updates: Mapping[str, int], now: float) -> dict[str, Outcome]:
        """Max-merge `updates`; per entity, its stored timestamp after and whether it moved."""
        self.version += 1
        return self._record(updates, now)

    def delete(self, entity: str) -> bool:
        """Forget `entity`; whether it existed."""
        self.version += 1
        return self._delete(entity)

    def reset(self) -> bool:
        """Forget every entity; whether there was any."""
        self.version += 1
        existed = bool(self._entries)
        self._entries = {}
        self._names.clear()
        return existed

    def restore(self, entries: dict[str, Entry]) -> None:
        """Replace the whole state, and defer the sorted index until `finish_restore`.

        Journal replay then applies records without keeping the index up to date
        one insertion at a time (100k new names into a million-entry list would
        cost a memmove each).
        """
        self._entries = entries
        self._restoring = True

    def replay(self, updates: Mapping[str, int], now: float) -> None:
        """Apply a journal record during a restore: the max-merge of `advance`, without the
        per-entity outcomes and notifications nobody is waiting for yet."""
        assert self._restoring
        entries = self._entries
        for entity, timestamp in updates.items():
            entry = entries.get(entity)
            if entry is None or entry[0] < timestamp:
                entries[entity] = (timestamp, now)
        self.version += 1

    def finish_restore(self) -> None:
        # Near-sorted input (the snapshot is in name order; replayed names trail it):
        # timsort merges the runs in about linear time.
        self._names = sorted(self._entries)
        self._restoring = False

    def _record(self, updates: Mapping[str, int], now: float) -> dict[str, Outcome]:
        entries = self._entries
        outcomes: dict[str, Outcome] = {}
        created: list[str] = []
        for entity, timestamp in updates.items():
            entry = entries.get(entity)
            if entry is None:
                created.append(entity)
            elif entry[0] >= timestamp:
                outcomes[entity] = Outcome(entry[0], False)
                self.stale += 1
                continue
            entries[entity] = (timestamp, now)
            outcomes[entity] = Outcome(timestamp, True)
            self.advanced += 1
            if self._held is not None:
                self._held.append((entity, timestamp))
            else:
                for listener in self._listeners:
                    listener(entity, timestamp)
        if created and not self._restoring:
            self._index(created)
        return outcomes

    def _index(self, created: list[str]) -> None:
        names = self._names
        # Sorting costs ~7 ms at a million names, one insort ~6 us (a memmove).
        if len(created) > max(_BULK_INSERT, len(names) >> 10):
            names.extend(created)
            names.sort()
        else:
            for name in created:
                bisect.insort(names, name)

    def _delete(self, entity: str) -> bool:
        if self._entries.pop(entity, None) is None:
            return False
        if self._restoring:
            return True
        names = self._names
        del names[bisect.bisect_left(names, entity)]
        return True
