"""Event-loop lag: how late a timer fires, as seen by everything else on the loop.

Every request, write and waiter shares one event loop; anything that holds it
(a large copy, a GC pass, a slow callback) delays them all. A timer that asks to
wake every 100 ms and records how late it woke measures exactly that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

INTERVAL = 0.1


async def watch(observe: Callable[[float], None], interval: float = INTERVAL) -> None:
    """Observe the lag of each wake-up until cancelled."""
    while True:
        expected = time.monotonic() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, time.monotonic() - expected))
