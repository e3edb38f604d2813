"""The Backend seam: every change to the store goes through one of these.

A backend restores the store at start, makes each mutation durable by its own
rules and only then applies it to the store (so the store, and every reader of
it, never sees a write that could still be lost), and says whether it can take
writes. The web layer knows nothing else about storage.
"""

from __future__ import annotations

from typing import Protocol, overload

from service.store import Advance, Delete, Outcome, Reset


class WriteFailed(Exception):
    """The write could not be made durable; it was not applied. Safe to retry."""


class StartFailed(Exception):
    """The backend cannot start; the message says why and what to do, in one line."""


class Backend(Protocol):
    async def start(self) -> str:
        """Restore the store and start background work; a one-line summary for the log.

        Raises StartFailed.
        """
        ...

    async def stop(self) -> None:
        """Finish pending writes and release everything; the store stays readable."""
        ...

    @overload
    async def submit(self, mutation: Advance, reserved: int = 0) -> dict[str, Outcome]: ...

    @overload
    async def submit(self, mutation: Delete | Reset, reserved: int = 0) -> bool: ...

    async def submit(
        self, mutation: Advance | Delete | Reset, reserved: int = 0
    ) -> dict[str, Outcome] | bool:
        """Make `mutation` durable, apply it, and return the store's answer.

        `reserved` entity slots (see StatusStore.reserve) are released once the
        write is applied or rejected. Raises WriteFailed; for an Advance, a backend
        that counts entities itself (Redis) may raise store.CapacityError.
        """
        ...

    @property
    def readiness(self) -> str | None:
        """None once the store can serve reads (restored, or first synced), else why not."""
        ...

    @property
    def write_health(self) -> str | None:
        """None while writes can be made durable, else why not."""
        ...

    @property
    def degraded(self) -> str | None:
        """None, or what an operator should know while reads and writes still work
        (Redis lost positions that this copy is writing back)."""
        ...
