"""Waiters: requests parked until an entity reaches a timestamp.

Per entity a min-heap of (ts, seq, future). When the store reports that an
entity advanced to T, every waiter with ts <= T is released in that same
event-loop turn, and no other: the cost is O(released * log n), with no
polling. A waiter that times out or whose client hangs up leaves a dead entry
behind; dead entries are dropped when the heap is next popped, and the heap is
rebuilt when they outnumber the live ones, so abandoned waits cannot pile up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import defaultdict

_Item = tuple[int, int, "asyncio.Future[bool]"]
RELEASE_SLICE = 64


class WaitersFull(Exception):
    """As many requests wait as the limit allows (--max-waiters)."""


class Waiters:
    def __init__(self, limit: int = 2**31) -> None:
        self.limit = limit
        self._heaps: dict[str, list[_Item]] = {}
        self._dead: defaultdict[str, int] = defaultdict(int)
        self._seq = itertools.count()
        self.count = 0
        """Live waiters (for the process_status_waiters gauge)."""

    async def wait(self, entity: str, timestamp: int, within: float) -> bool:
        """True once `entity` reaches `timestamp`; False after `within` seconds or at shutdown.

        Raises WaitersFull, without waiting, when `limit` requests already wait.
        """
        if self.count >= self.limit:
            raise WaitersFull(f"{self.count} requests already wait, the limit (--max-waiters)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        heap = self._heaps.setdefault(entity, [])
        heapq.heappush(heap, (timestamp, next(self._seq), future))
        self.count += 1
        timer = loop.call_later(within, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            self.count -= 1
            released = future.done() and not future.cancelled() and future.result()
            if not released:
                future.cancel()  # no-op when already done
                self._bury(entity)

    def notify(self, entity: str, timestamp: int, _before: int | None = None) -> None:
        """The store's listener: `entity` now stands at `timestamp`.

        Releases at most RELEASE_SLICE waiters per event-loop turn and the rest in later
        turns: each released request writes its response when it resumes, and 18,000 of
        them resuming in one turn stalled the loop (and /healthz) for 2.5 s. A waiter
        whose timer fires before its slice comes re-checks the store, so it still
        answers "processed". The later turns release only waiters that were already
        parked at this notification (`_before`): one parked since (say after a DELETE)
        waits for a write of its own.
        """
        heap = self._heaps.get(entity)
        if heap is None:
            return
        before = next(self._seq) if _before is None else _before
        released = 0
        newer: list[_Item] = []
        while heap and heap[0][0] <= timestamp:
            if released == RELEASE_SLICE:
                asyncio.get_running_loop().call_soon(self.notify, entity, timestamp, before)
                break
            item = heapq.heappop(heap)
            if item[1] > before:
                newer.append(item)
                continue
            future = item[2]
            if future.done():
                self._dead[entity] -= 1
            else:
                future.set_result(True)
                released += 1
        for item in newer:
            heapq.heappush(heap, item)
        if not heap:
            del self._heaps[entity]
            self._dead.pop(entity, None)

    def release_all(self) -> None:
        """Answer every waiter "not yet" (at shutdown, so long-polls end promptly)."""
        for heap in self._heaps.values():
            for _, _, future in heap:
                if not future.done():
                    future.set_result(False)

    def _bury(self, entity: str) -> None:
        heap = self._heaps.get(entity)
        if heap is None:
            return
        self._dead[entity] += 1
        if self._dead[entity] * 2 > len(heap):
            live = [item for item in heap if not item[2].done()]
            if live:
                heapq.heapify(live)
                self._heaps[entity] = live
            else:
                del self._heaps[entity]
            self._dead.pop(entity, None)


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)

