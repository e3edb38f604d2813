"""gate_middleware: the gate, inside a Python (aiohttp) gateway or app.

A request carrying `entity/ts` tokens in the token header is held until every
token is processed, for at most `wait` seconds in all; then it reaches the
handler, or is answered 425 Too Early (problem+json, Retry-After). Requests
without the header pass straight through without a call to the service; a
malformed token gets 400. When the service cannot answer, the request gets 503
with Retry-After (fail closed), or passes through if `fail_open` is set.

Positive answers are kept for a while (`ProcessedCache`): a processed position
stays processed, so a repeated token, or an older one for the same entity, is
let through without asking. An answer is kept for the shorter of `cache_seconds`
and the max-age of its `Cache-Control` (the service's `--gate-cache-seconds`,
default 5 s; no-store: not at all), so either side can shorten it and
`cache_seconds=0` turns it off, say when you rely on a DELETE or reset being
seen at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from process_status_client.cache import ProcessedCache
from process_status_client.client import ProcessStatusClient, ProcessStatusError
from process_status_client.positions import PositionError, parse_token_header
from process_status_client.wire import (
    INVALID_TOKEN,
    NOT_PROCESSED_YET,
    POSITION_HEADER,
    PROBLEM_CONTENT_TYPE,
    PROBLEM_TYPE_PREFIX,
    STATUS_UNAVAILABLE,
)

log = logging.getLogger("process_status.client")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def gate_middleware(
    client: ProcessStatusClient,
    header: str = POSITION_HEADER,
    wait: float = 0.1,
    retry_after: int = 1,
    *,
    status: int = 425,
    fail_open: bool = False,
    cache_seconds: float = 5.0,
    cache_size: int = 1024,
) -> Middleware:
    """An aiohttp middleware that holds requests back until their writes are processed.

    `status` may be 503 for clients that cannot handle 425. Errors from the
    service are bounded by `wait` too: retries stop at the deadline. Positive
    answers are reused for `cache_seconds` (or less, when the answer's own
    Cache-Control says so) for up to `cache_size` entities, least
    recently used dropped first; either at 0 turns the cache off.
    """
    if wait < 0 or retry_after < 0 or cache_seconds < 0:
        raise ValueError("wait, retry_after and cache_seconds must not be negative")
    if status not in (425, 503):
        raise ValueError("status must be 425 or 503")
    after = str(retry_after)
    no_store = {"Retry-After": after, "Cache-Control": "no-store"}
    cache = ProcessedCache(cache_size)

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        lines = request.headers.getall(header, ())
        if not lines:
            return await handler(request)
        try:
            tokens = parse_token_header(lines)
        except PositionError as exc:
            return problem_response(400, INVALID_TOKEN, f"{header}: {exc}",
                                    headers={"Cache-Control": "no-store"})
        deadline = time.monotonic() + wait
        for entity, timestamp in tokens:
            if cache.covers(entity, timestamp):
                continue
            try:
                result = await client.check_until(entity, timestamp,
                                                  deadline - time.monotonic())
            except ProcessStatusError as exc:
                log.warning("gate: cannot check %s/%s: %s", entity, timestamp, exc)
                if fail_open:
                    break
                return problem_response(
                    503, STATUS_UNAVAILABLE,
                    f"cannot tell whether {entity} has processed {timestamp}: the "
                    f"process-status service did not answer; retry after {after} s",
                    headers=no_store, entity=entity, timestamp=timestamp)
            if not result.processed:
                last = result.last_processed
                seen = "nothing yet" if last is None else f"up to {last}"
                return problem_response(
                    status, NOT_PROCESSED_YET,
                    f"{entity} has processed {seen}, not yet {timestamp}; retry after {after} s",
                    title="Too Early" if status == 425 else None, headers=no_store,
                    entity=entity, timestamp=timestamp, last_processed=last)
            seconds = (cache_seconds if result.max_age is None
                       else min(cache_seconds, result.max_age))
            last = timestamp if result.last_processed is None else result.last_processed
            cache.remember(entity, last, seconds)
        return await handler(request)

    return gate


def problem_response(status: int, kind: str, detail: str, *, title: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    """An RFC 9457 answer shaped as the service shapes its own."""
    body = {"type": PROBLEM_TYPE_PREFIX + kind, "title": title or HTTPStatus(status).phrase,
            "status": status, "detail": detail, **extra}
    return web.Response(body=json.dumps(body).encode(), status=status, headers=headers,
                        content_type=PROBLEM_CONTENT_TYPE)
