"""gate_middleware: the gate, inside a Python (aiohttp) gateway or app.

The decision is `Gatekeeper`'s (process_status_client.gatekeeper), shared with the
ASGI middleware (process_status_client.asgi); this wraps it for aiohttp.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from process_status_client.client import ProcessStatusClient
from process_status_client.gatekeeper import Gatekeeper
from process_status_client.wire import POSITION_HEADER, PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX

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
    keeper = Gatekeeper(client, header, wait, retry_after, status=status, fail_open=fail_open,
                        cache_seconds=cache_seconds, cache_size=cache_size)

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        lines = request.headers.getall(header, ())
        if lines:
            denial = await keeper.check(lines)
            if denial is not None:
                return problem_response(denial.status, denial.kind, denial.detail,
                                        title=denial.title, headers=denial.headers,
                                        **denial.extra)
        return await handler(request)

    return gate


def problem_response(status: int, kind: str, detail: str, *, title: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    """An RFC 9457 answer shaped as the service shapes its own."""
    body = {"type": PROBLEM_TYPE_PREFIX + kind, "title": title or HTTPStatus(status).phrase,
            "status": status, "detail": detail, **extra}
    return web.Response(body=json.dumps(body).encode(), status=status, headers=headers,
                        content_type=PROBLEM_CONTENT_TYPE)
