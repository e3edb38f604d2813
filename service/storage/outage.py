"""Outage: why a backend's writes fail right now, and the probe that ends it.

Both write paths (the journal, the Redis writer) fail the same way: a write fails,
every later write is answered 503 with the reason, health says not writable, and a
background probe retries every interval while no write comes, so the state clears
on its own once the disk or Redis accepts writes again, not only at the next write.
The start and the end of an outage are logged once each, not once per failed write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

Probe = Callable[[], Awaitable[str | None]]
"""One attempt: None once writes would succeed again, else why they still fail."""


class Outage:
    def __init__(
        self,
        log: logging.Logger,
        what: str,
        probe: Probe,
        *,
        interval: float,
        busy: Callable[[], bool] = lambda: False,
        recovered: Callable[[], None] = lambda: None,
    ) -> None:
        """`what` names the path in the log ("journal writes"); `busy` says a real write
        is in flight, which answers the probe's question, so a turn is skipped;
        `recovered` runs when the outage ends."""
        self._log = log
        self._what = what
        self._probe = probe
        self._interval = interval
        self._busy = busy
        self._recovered = recovered
        self._prober: asyncio.Task[None] | None = None
        self._stopped = False
        self.reason: str | None = None
        """Why writes fail; None while they succeed."""

    def failed(self, reason: str, message: str, *args: object) -> None:
        """A write failed: log `message % args` if this starts an outage, probe until it ends."""
        if self.reason is None:
            self._log.error(message, *args)
        self.reason = reason
        if not self._stopped and (self._prober is None or self._prober.done()):
            self._prober = asyncio.create_task(self._probe_until_recovered())

    def succeeded(self) -> None:
        if self.reason is not None:
            self.reason = None
            self._log.info("%s succeed again", self._what)
            self._recovered()

    async def stop(self) -> None:
        # A flag as well as the cancel: a cancel can be lost inside redis-py (see
        # Follower.stop), and the loop must not go on probing a closed client.
        self._stopped = True
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober

    async def _probe_until_recovered(self) -> None:
        while self.reason is not None and not self._stopped:
            await asyncio.sleep(self._interval)
            if self._busy() or self.reason is None:
                continue
            try:
                still = await self._probe()
            except Exception:
                # A bug, but probing must go on: without it writes would stay refused
                # until a restart.
                self._log.exception("%s: the probe failed unexpectedly; retrying", self._what)
                continue
            if still is None:
                self.succeeded()
            elif still != self.reason:
                self.reason = still
                self._log.warning("%s still fail: %s", self._what, still)
