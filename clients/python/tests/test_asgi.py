"""GateMiddleware (ASGI) under a real uvicorn, against the real `process-status serve`.

The same decisions as the aiohttp middleware (both are `Gatekeeper`'s): token-less and
processed requests reach the app; not processed in time: 425 with Retry-After and the
service's problem shape; released by a record during the wait; malformed: 400; the
service down: 503 (fail closed) or the app (fail open); lifespan events reach the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import uvicorn
from process_status_client import GateMiddleware, ProcessStatusClient
from process_status_client.asgi import Receive, Scope, Send

from tests.servers import ServeProcess, free_port, serving

TS = 1422057007123000
HEADER = "X-Event-Streamex-Entity-Timestamp"
PROBLEM = "urn:process-status:problem:"


class ReadModel:
    """A bare ASGI app: answers every request, and notes the lifespan events it saw."""

    def __init__(self) -> None:
        self.lifespan: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"read model answer"})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serving(tmp_path_factory.mktemp("asgi") / "data") as process:
        yield process


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ws="none", lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {HEADER: token} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        return answer.status, dict(answer.headers), await answer.read()


async def test_the_asgi_gate_decides_as_the_service_would(server: ServeProcess) -> None:
    read_model = ReadModel()
    async with ProcessStatusClient(server.url, backoff=0.05) as client:
        await client.record("asgi.posts", TS)
        app = GateMiddleware(read_model, client, wait=0.2, retry_after=2)
        async with running(app) as url:
            for token in (None, f"asgi.posts/{TS}", f'"asgi.posts/{TS - 1}", asgi.posts/1'):
                status, _, body = await get(f"{url}/posts/1", token)
                assert (status, body) == (200, b"read model answer"), token

            status, headers, body = await get(f"{url}/posts/1", f"asgi.posts/{TS + 1}")
            assert status == 425
            assert headers["Retry-After"] == "2"
            assert headers["Cache-Control"] == "no-store"
            assert headers["Content-Type"] == "application/problem+json"
            problem = json.loads(body)
            assert problem["type"] == PROBLEM + "not-processed-yet"
            assert (problem["title"], problem["entity"], problem["last_processed"]) == \
                ("Too Early", "asgi.posts", TS)

            status, _, body = await get(f"{url}/posts/1", "posts")
            assert status == 400
            assert PROBLEM.encode() + b"invalid-token" in body

            # Held, then released by the operator's record during the wait.
            slow = GateMiddleware(read_model, client, wait=5.0)
            async with running(slow) as slow_url:
                pending = asyncio.create_task(get(f"{slow_url}/posts/1", f"asgi.new/{TS}"))
                await asyncio.sleep(0.2)
                await client.record("asgi.new", TS)
                status, _, body = await asyncio.wait_for(pending, 5)
                assert (status, body) == (200, b"read model answer")
    assert read_model.lifespan[:1] == ["lifespan.startup"]
    assert read_model.lifespan[-1] == "lifespan.shutdown"


async def test_the_asgi_gate_fails_closed_or_open_when_the_service_is_down() -> None:
    token = f"down.posts/{TS}"
    async with ProcessStatusClient(f"http://127.0.0.1:{free_port()}", backoff=0.01) as down:
        async with running(GateMiddleware(ReadModel(), down, wait=0.1)) as url:
            status, headers, body = await get(f"{url}/posts/1", token)
            assert status == 503
            assert headers["Retry-After"] == "1"
            assert PROBLEM.encode() + b"status-unavailable" in body
            assert (await get(f"{url}/posts/1"))[0] == 200
        async with running(GateMiddleware(ReadModel(), down, wait=0.1, fail_open=True)) as url:
            assert (await get(f"{url}/posts/1", token))[0] == 200
