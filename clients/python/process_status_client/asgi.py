"""GateMiddleware: the gate for ASGI apps (Starlette, FastAPI, any ASGI 3 app).

    app = GateMiddleware(app, ProcessStatusClient("http://127.0.0.1:8080"))
    # Starlette / FastAPI:  app.add_middleware(GateMiddleware, client=client)

An HTTP request carrying the token header is held until its writes are processed
(at most `wait` seconds), then reaches the app, or is answered 425 Too Early with
Retry-After (problem+json); the rules are `Gatekeeper`'s, the same as the aiohttp
`gate_middleware`. Requests without the header, and websocket and lifespan events,
go straight to the app. The client's aiohttp session lives on the ASGI server's
event loop: create the client there (in a lifespan handler) or lazily.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from process_status_client.client import ProcessStatusClient
from process_status_client.gatekeeper import Denial, Gatekeeper
from process_status_client.wire import POSITION_HEADER, PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class GateMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        client: ProcessStatusClient,
        header: str = POSITION_HEADER,
        wait: float = 0.1,
        retry_after: int = 1,
        *,
        status: int = 425,
        fail_open: bool = False,
        cache_seconds: float = 5.0,
        cache_size: int = 1024,
    ) -> None:
        self.app = app
        self._name = header.lower().encode("latin-1")
        self.keeper = Gatekeeper(client, header, wait, retry_after, status=status,
                                 fail_open=fail_open, cache_seconds=cache_seconds,
                                 cache_size=cache_size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            lines = [value.decode("latin-1") for name, value in scope.get("headers", ())
                     if name.lower() == self._name]
            if lines:
                denial = await self.keeper.check(lines)
                if denial is not None:
                    await _answer(send, denial)
                    return
        await self.app(scope, receive, send)


async def _answer(send: Send, denial: Denial) -> None:
    body = json.dumps({"type": PROBLEM_TYPE_PREFIX + denial.kind,
                       "title": denial.title or HTTPStatus(denial.status).phrase,
                       "status": denial.status, "detail": denial.detail,
                       **denial.extra}).encode()
    headers = [(b"content-type", PROBLEM_CONTENT_TYPE.encode()),
               (b"content-length", str(len(body)).encode()),
               *((name.lower().encode("latin-1"), value.encode("latin-1"))
                 for name, value in denial.headers.items())]
    await send({"type": "http.response.start", "status": denial.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
