"""Gatekeeper: the gate's decision inside a Python app, for any framework.

A request carrying `entity/ts` tokens in the token header is held until every
token is processed, for at most `wait` seconds in all; then it goes on, or is
answered 425 Too Early (or `status` 503; problem+json, Retry-After). A malformed
token gets 400. When the service cannot answer, the request gets 503 with
Retry-After (fail closed), or goes on if `fail_open` is set.

Positive answers are kept for a while (`ProcessedCache`): a processed position
stays processed, so a repeated token, or an older one for the same entity, is
let through without asking. An answer is kept for the shorter of `cache_seconds`
and the max-age of its `Cache-Control` (the service's `--gate-cache-seconds`,
default 5 s; no-store: not at all), so either side can shorten it and
`cache_seconds=0` turns it off, say when you rely on a DELETE or reset being
seen at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from process_status_client.cache import ProcessedCache
from process_status_client.client import ProcessStatusClient, ProcessStatusError
from process_status_client.positions import PositionError, parse_token_header
from process_status_client.wire import INVALID_TOKEN, NOT_PROCESSED_YET, STATUS_UNAVAILABLE

log = logging.getLogger("process_status.client")


@dataclass(frozen=True, slots=True)
class Denial:
    """The problem+json answer to send instead of running the handler."""

    status: int
    kind: str
    detail: str
    headers: dict[str, str]
    title: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Gatekeeper:
    def __init__(
        self,
        client: ProcessStatusClient,
        header: str,
        wait: float,
        retry_after: int,
        *,
        status: int = 425,
        fail_open: bool = False,
        cache_seconds: float = 5.0,
        cache_size: int = 1024,
    ) -> None:
        if wait < 0 or retry_after < 0 or cache_seconds < 0:
            raise ValueError("wait, retry_after and cache_seconds must not be negative")
        if status not in (425, 503):
            raise ValueError("status must be 425 or 503")
        self.client = client
        self.header = header
        self.wait = wait
        self.status = status
        self.fail_open = fail_open
        self.cache_seconds = cache_seconds
        self.after = str(retry_after)
        self._no_store = {"Retry-After": self.after, "Cache-Control": "no-store"}
        self._cache = ProcessedCache(cache_size)

    async def check(self, lines: Iterable[str]) -> Denial | None:
        """None: let the request through. `lines`: the token header's values."""
        try:
            tokens = parse_token_header(list(lines))
        except PositionError as exc:
            return Denial(400, INVALID_TOKEN, f"{self.header}: {exc}",
                          {"Cache-Control": "no-store"})
        deadline = time.monotonic() + self.wait
        for entity, timestamp in tokens:
            if self._cache.covers(entity, timestamp):
                continue
            try:
                result = await self.client.check_until(entity, timestamp,
                                                       deadline - time.monotonic())
            except ProcessStatusError as exc:
                log.warning("gate: cannot check %s/%s: %s", entity, timestamp, exc)
                if self.fail_open:
                    return None
                return Denial(
                    503, STATUS_UNAVAILABLE,
                    f"cannot tell whether {entity} has processed {timestamp}: the "
                    f"process-status service did not answer; retry after {self.after} s",
                    self._no_store, extra={"entity": entity, "timestamp": timestamp})
            if not result.processed:
                last = result.last_processed
                seen = "nothing yet" if last is None else f"up to {last}"
                return Denial(
                    self.status, NOT_PROCESSED_YET,
                    f"{entity} has processed {seen}, not yet {timestamp}; retry after "
                    f"{self.after} s", self._no_store,
                    title="Too Early" if self.status == 425 else None,
                    extra={"entity": entity, "timestamp": timestamp, "last_processed": last})
            seconds = (self.cache_seconds if result.max_age is None
                       else min(self.cache_seconds, result.max_age))
            last = timestamp if result.last_processed is None else result.last_processed
            self._cache.remember(entity, last, seconds)
        return None
