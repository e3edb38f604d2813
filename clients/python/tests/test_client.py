"""The Python client and its gate middleware, against the real `process-status serve`."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from process_status_client import (
    PositionError,
    Processed,
    ProcessStatusClient,
    ProcessStatusError,
    ProcessStatusUnreachable,
    RecordResult,
    format_token,
    gate_middleware,
    parse_token,
)

from tests.servers import ServeProcess, free_port, serving, start_serve
from tests.support import AppClient, eventually

TS = 1422057007123000
PROBLEM = "urn:process-status:problem:"
WRITE_TOKEN = "client-test-write-token-0123456789"
MakeAppClient = Callable[..., Awaitable[AppClient]]
MakeServer = Callable[..., Awaitable[TestServer]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serving(tmp_path_factory.mktemp("client") / "data") as process:
        yield process


@pytest.fixture
async def api(server: ServeProcess) -> AsyncIterator[ProcessStatusClient]:
    async with ProcessStatusClient(server.url, retries=5, backoff=0.05) as client:
        yield client


async def requests_count(server: ServeProcess, method: str, route: str, status: int) -> float:
    """process_status_http_requests_total for one (method, route, status), from /metrics."""
    async with aiohttp.ClientSession() as session, session.get(server.metrics_url) as response:
        text = await response.text()
    labels = f'method="{method}",route="{route}",status="{status}"'
    match = re.search(r"^process_status_http_requests_total\{" + re.escape(labels)
                      + r"\} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# -- operator side -----------------------------------------------------------------


async def test_record_max_merges_and_processed_reads(api: ProcessStatusClient) -> None:
    assert await api.record("rec.posts", TS) == RecordResult(TS, True)
    assert await api.record("rec.posts", TS) == RecordResult(TS, False)
    assert await api.record("rec.posts", TS - 1) == RecordResult(TS, False)
    assert await api.processed("rec.posts", TS) is True
    assert await api.processed("rec.posts", TS - 5) is True
    assert await api.processed("rec.posts", TS + 1) is False
    assert await api.processed("rec.never-recorded", 1) is False
    assert await api.check("rec.posts", TS + 1) == Processed("rec.posts", TS + 1, False, TS)


async def test_rfc3339_timestamps_are_accepted_and_answered_as_ints(
    api: ProcessStatusClient,
) -> None:
    result = await api.record("rfc.posts", "2015-01-23T23:50:07.123Z")
    assert result == RecordResult(TS, True)
    assert isinstance(result.timestamp, int)
    # A "+" offset in the query string must arrive as "+", not as a space.
    assert await api.processed("rfc.posts", "2015-01-24T00:50:07.123+01:00") is True
    assert await api.processed("rfc.posts", "2015-01-24T00:50:07.124+01:00") is False
    assert await api.processed("rfc.posts", str(TS)) is True


async def test_record_many(api: ProcessStatusClient) -> None:
    await api.record("many.b", 50)
    results = await api.record_many({"many.a": 10, "many.b": 20, "many.c": "1970-01-01T00:00:01Z"})
    assert results == {
        "many.a": RecordResult(10, True),
        "many.b": RecordResult(50, False),
        "many.c": RecordResult(1_000_000, True),
    }
    assert await api.record_many({}) == {}


async def test_invalid_batch_entry_raises_problem_and_applies_nothing(
    server: ServeProcess, api: ProcessStatusClient,
) -> None:
    before = await requests_count(server, "POST", "/status", 400)
    with pytest.raises(ProcessStatusError) as caught:
        await api.record_many({"bad.ok": 1, "-bad": 2})
    error = caught.value
    assert (error.status, error.type, error.title) == (400, PROBLEM + "invalid-batch-entry",
                                                       "Bad Request")
    assert "nothing was applied" in error.detail
    assert error.extra == {"entity": "-bad"}
    assert await requests_count(server, "POST", "/status", 400) == before + 1
    assert await api.processed("bad.ok", 1) is False


async def test_4xx_is_raised_after_exactly_one_attempt(
    server: ServeProcess, api: ProcessStatusClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="process_status.client")
    before = await requests_count(server, "PUT", "/status/{entity}", 400)
    with pytest.raises(ProcessStatusError) as caught:
        await api.record("-not-an-entity", TS)
    assert caught.value.status == 400
    assert caught.value.type == PROBLEM + "invalid-entity"
    assert "invalid entity name" in caught.value.detail
    with pytest.raises(ProcessStatusError, match="invalid timestamp") as caught:
        await api.record("four.posts", "yesterday")
    assert caught.value.type == PROBLEM + "invalid-timestamp"
    assert await requests_count(server, "PUT", "/status/{entity}", 400) == before + 2
    assert not [r for r in caplog.records if r.getMessage().startswith("retry")]


async def test_auth_and_entity_limit_errors_are_not_retried(tmp_path: Path) -> None:
    env = {"PROCESS_STATUS_WRITE_TOKENS": WRITE_TOKEN}
    with serving(tmp_path / "data", "--max-entities", "1", env=env) as server:
        async with ProcessStatusClient(server.url, retries=5) as anonymous:
            with pytest.raises(ProcessStatusError) as caught:
                await anonymous.record("limit.a", 1)
            assert (caught.value.status, caught.value.type) == (401, PROBLEM + "unauthorized")
            assert await anonymous.processed("limit.a", 1) is False  # reads stay open
        async with ProcessStatusClient(server.url, token=WRITE_TOKEN, retries=5) as api:
            assert await api.record("limit.a", 1) == RecordResult(1, True)
            with pytest.raises(ProcessStatusError) as caught:
                await api.record("limit.b", 1)  # 507 cannot be fixed by retrying
            assert (caught.value.status, caught.value.type) == (507, PROBLEM +
                                                                "entity-limit-reached")
            assert caught.value.extra == {"limit": 1}
        assert await requests_count(server, "PUT", "/status/{entity}", 401) == 1
        assert await requests_count(server, "PUT", "/status/{entity}", 507) == 1


async def test_connection_refused_is_retried_until_the_server_is_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="process_status.client")
    port = free_port()
    process: ServeProcess | None = None
    async with ProcessStatusClient(f"http://127.0.0.1:{port}", retries=30, backoff=0.05,
                                   max_backoff=0.5) as api:
        attempt = asyncio.create_task(api.record("late.posts", TS))
        try:
            await asyncio.sleep(0.3)
            assert not attempt.done()
            # The later --bind wins over the helper's own: serve on the port the client knows.
            process = await asyncio.to_thread(start_serve, tmp_path / "data", "--bind",
                                              f"127.0.0.1:{port}", wait=False)
            assert await asyncio.wait_for(attempt, 20) == RecordResult(TS, True)
            assert await api.processed("late.posts", TS) is True
        finally:
            attempt.cancel()
            if process is not None:
                process.kill_all()
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retry")]
    assert retries
    assert all("Service Unreachable" in message for message in retries)


async def test_unreachable_after_bounded_attempts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="process_status.client")
    async with ProcessStatusClient(f"http://127.0.0.1:{free_port()}", retries=2,
                                   backoff=0.01) as api:
        with pytest.raises(ProcessStatusUnreachable) as caught:
            await api.record("gone.posts", 1)
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectionError)
    assert len([r for r in caplog.records if r.getMessage().startswith("retry")]) == 2


async def test_5xx_is_retried_with_backoff(aiohttp_server: MakeServer) -> None:
    # Stands in for a proxy or a service that cannot write durably for a moment.
    calls: list[float] = []

    async def flaky(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return web.Response(status=502, text="<html>bad gateway</html>")
        if len(calls) == 2:
            return web.json_response(
                {"type": PROBLEM + "write-not-durable", "title": "Service Unavailable",
                 "status": 503, "detail": "fsync failed"},
                status=503, content_type="application/problem+json")
        return web.json_response({"entity": request.match_info["entity"], "timestamp": 7,
                                  "advanced": True})

    app = web.Application()
    app.router.add_put("/status/{entity}", flaky)
    stub = await aiohttp_server(app)
    async with ProcessStatusClient(str(stub.make_url("/")), retries=2, backoff=0.01) as api:
        assert await api.record("flaky", 7) == RecordResult(7, True)
        assert len(calls) == 3
    calls.clear()
    async with ProcessStatusClient(str(stub.make_url("/")), retries=1, backoff=0.01) as api:
        with pytest.raises(ProcessStatusError) as caught:
            await api.record("flaky", 7)
    error = caught.value
    assert (error.status, error.type, error.title, error.detail) == (
        503, PROBLEM + "write-not-durable", "Service Unavailable", "fsync failed")
    assert len(calls) == 2


async def test_a_session_passed_in_is_left_open(server: ServeProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with ProcessStatusClient(server.url, session=session) as api:
            assert await api.processed("session.posts", 1) is False
        assert not session.closed


# -- application side --------------------------------------------------------------


async def waiters(server: ServeProcess) -> bool:
    async with aiohttp.ClientSession() as session, session.get(server.metrics_url) as response:
        text = await response.text()
    found = re.search(r"^process_status_waiters (\S+)$", text, re.MULTILINE)
    return found is not None and float(found.group(1)) >= 1


async def test_wait_processed_is_released_by_a_concurrent_record(
    api: ProcessStatusClient, server: ServeProcess,
) -> None:
    waiting = asyncio.create_task(api.wait_processed("wait.posts", TS, timeout=10))
    # Parked on the server (its waiters gauge says so), not merely sent: the record below
    # is what must release it.
    await eventually(lambda: waiters(server), "the wait to park")
    assert not waiting.done()
    started = time.monotonic()
    await api.record("wait.posts", TS + 1)
    assert await asyncio.wait_for(waiting, 5) is True
    assert time.monotonic() - started < 4.0  # released by the write, not the 5 s wait
    assert await api.wait_processed("wait.posts", TS, timeout=10) is True  # already there


async def test_wait_processed_returns_false_on_timeout(api: ProcessStatusClient) -> None:
    started = time.monotonic()
    assert await api.wait_processed("wait.never", TS, timeout=0.3) is False
    assert 0.3 <= time.monotonic() - started < 2.0
    assert await api.wait_processed("wait.never", TS, timeout=0) is False


async def test_wait_longer_than_the_server_max_wait_loops(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--max-wait", "0.2") as server:
        route = "/status/{entity}/processed"
        async with ProcessStatusClient(server.url, max_wait=0.2) as api:
            started = time.monotonic()
            assert await api.wait_processed("loop.posts", TS, timeout=0.7) is False
            assert time.monotonic() - started >= 0.7
            assert await requests_count(server, "GET", route, 200) >= 4

            waiting = asyncio.create_task(api.wait_processed("loop.posts", TS, timeout=10))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            await api.record("loop.posts", TS)
            assert await asyncio.wait_for(waiting, 5) is True
        async with ProcessStatusClient(server.url) as too_long:  # max_wait 30 > --max-wait
            with pytest.raises(ProcessStatusError) as caught:
                await too_long.wait_processed("loop.other", TS, timeout=1)
            assert caught.value.type == PROBLEM + "invalid-wait"


def test_tokens_are_re_exported() -> None:
    assert format_token("posts", TS) == f"posts/{TS}"
    assert parse_token(f'"posts/{TS}"') == ("posts", TS)
    assert parse_token("posts/2015-01-23T23:50:07.123Z") == ("posts", TS)
    with pytest.raises(PositionError):
        parse_token("posts")


# -- the gate middleware -----------------------------------------------------------


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="read model answer")


def _app(client: ProcessStatusClient, **options: Any) -> web.Application:
    app = web.Application(middlewares=[gate_middleware(client, **options)])
    app.router.add_get("/posts", _ok)
    return app


async def test_middleware_passes_processed_and_tokenless_requests(
    api: ProcessStatusClient, aiohttp_client: MakeAppClient,
) -> None:
    await api.record("mw.posts", TS)
    app = await aiohttp_client(_app(api))
    for headers in ({}, {"X-Event-Streamex-Entity-Timestamp": format_token("mw.posts", TS)},
                    {"X-Event-Streamex-Entity-Timestamp": f'"mw.posts/{TS - 1}", mw.posts/1'}):
        response = await app.get("/posts", headers=headers)
        assert response.status == 200, headers
        assert await response.text() == "read model answer"


async def test_middleware_answers_425_when_not_processed_in_time(
    api: ProcessStatusClient, aiohttp_client: MakeAppClient,
) -> None:
    await api.record("mw.late", TS)
    app = await aiohttp_client(_app(api, wait=0.1, retry_after=2))
    started = time.monotonic()
    response = await app.get("/posts", headers={
        "X-Event-Streamex-Entity-Timestamp": f"mw.late/{TS}, mw.late/{TS + 1}"})
    assert 0.1 <= time.monotonic() - started < 2.0
    assert response.status == 425
    assert response.headers["Retry-After"] == "2"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.content_type == "application/problem+json"
    body = await response.json(content_type="application/problem+json")
    assert body["type"] == PROBLEM + "not-processed-yet"
    assert (body["status"], body["title"]) == (425, "Too Early")
    assert (body["entity"], body["timestamp"], body["last_processed"]) == ("mw.late", TS + 1, TS)


async def test_middleware_lets_a_request_through_when_processed_during_the_wait(
    api: ProcessStatusClient, aiohttp_client: MakeAppClient, server: ServeProcess,
) -> None:
    app = await aiohttp_client(_app(api, wait=5.0))
    pending = asyncio.create_task(app.get("/posts", headers={
        "X-Event-Streamex-Entity-Timestamp": f"mw.during/{TS}"}))
    await eventually(lambda: waiters(server), "the middleware's check to park")
    assert not pending.done()
    started = time.monotonic()
    await api.record("mw.during", TS)
    response = await asyncio.wait_for(pending, 5)
    assert response.status == 200
    assert time.monotonic() - started < 4.0  # released by the write, not the 5 s wait


async def test_middleware_rejects_malformed_tokens_with_400(
    api: ProcessStatusClient, aiohttp_client: MakeAppClient,
) -> None:
    app = await aiohttp_client(_app(api, header="X-Read-After"))
    for value in ("posts", "-bad/1", "posts/soon"):
        response = await app.get("/posts", headers={"X-Read-After": value})
        assert response.status == 400, value
        body = await response.json(content_type="application/problem+json")
        assert body["type"] == PROBLEM + "invalid-token"
        assert "X-Read-After" in body["detail"]
    # The default header is not looked at when another one is configured.
    response = await app.get("/posts", headers={"X-Event-Streamex-Entity-Timestamp": "posts"})
    assert response.status == 200


async def test_middleware_fails_closed_or_open_when_the_service_is_down(
    aiohttp_client: MakeAppClient,
) -> None:
    token = {"X-Event-Streamex-Entity-Timestamp": f"down.posts/{TS}"}
    async with ProcessStatusClient(f"http://127.0.0.1:{free_port()}", backoff=0.01) as down:
        closed = await aiohttp_client(_app(down, wait=0.1))
        started = time.monotonic()
        response = await closed.get("/posts", headers=token)
        assert time.monotonic() - started < 2.0
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        body = await response.json(content_type="application/problem+json")
        assert body["type"] == PROBLEM + "status-unavailable"
        assert (await closed.get("/posts")).status == 200

        fail_open = await aiohttp_client(_app(down, wait=0.1, fail_open=True))
        assert (await fail_open.get("/posts", headers=token)).status == 200


async def test_middleware_can_answer_503_instead_of_425(
    api: ProcessStatusClient, aiohttp_client: MakeAppClient,
) -> None:
    app = await aiohttp_client(_app(api, wait=0, status=503))
    response = await app.get("/posts", headers={
        "X-Event-Streamex-Entity-Timestamp": f"mw.never/{TS}"})
    assert response.status == 503
    body = await response.json(content_type="application/problem+json")
    assert (body["title"], body["last_processed"]) == ("Service Unavailable", None)


# -- the middleware's cache of positive answers ----------------------------------

PROCESSED_ROUTE = "/status/{entity}/processed"


async def processed_calls(server: ServeProcess) -> float:
    return await requests_count(server, "GET", PROCESSED_ROUTE, 200)


async def test_middleware_does_not_call_the_service_without_a_token(
    server: ServeProcess, api: ProcessStatusClient, aiohttp_client: MakeAppClient,
) -> None:
    app = await aiohttp_client(_app(api))
    before = await processed_calls(server)
    for _ in range(3):
        assert (await app.get("/posts")).status == 200
    assert await processed_calls(server) == before


async def test_middleware_reuses_a_positive_answer(
    server: ServeProcess, api: ProcessStatusClient, aiohttp_client: MakeAppClient,
) -> None:
    await api.record("cache.posts", TS)
    app = await aiohttp_client(_app(api, cache_seconds=300))
    before = await processed_calls(server)
    # The same token, then an older one of the same entity: one call answers all.
    for ts in (TS, TS, TS - 1, 1):
        response = await app.get("/posts", headers={
            "X-Event-Streamex-Entity-Timestamp": f"cache.posts/{ts}"})
        assert response.status == 200, ts
    assert await processed_calls(server) == before + 1
    # A later timestamp is a new question.
    response = await app.get("/posts", headers={
        "X-Event-Streamex-Entity-Timestamp": f"cache.posts/{TS + 1}"})
    assert response.status == 425
    assert await processed_calls(server) == before + 2


async def test_middleware_never_reuses_a_not_yet_answer(
    api: ProcessStatusClient, aiohttp_client: MakeAppClient,
) -> None:
    app = await aiohttp_client(_app(api, wait=0, cache_seconds=300))
    token = {"X-Event-Streamex-Entity-Timestamp": f"cache.late/{TS}"}
    assert (await app.get("/posts", headers=token)).status == 425
    await api.record("cache.late", TS)
    assert (await app.get("/posts", headers=token)).status == 200


async def test_middleware_cache_is_bounded_and_can_be_off(
    server: ServeProcess, api: ProcessStatusClient, aiohttp_client: MakeAppClient,
) -> None:
    await api.record_many({"lru.a": TS, "lru.b": TS, "lru.c": TS})

    async def read(app: AppClient, entity: str) -> None:
        response = await app.get("/posts", headers={
            "X-Event-Streamex-Entity-Timestamp": f"{entity}/{TS}"})
        assert response.status == 200

    bounded = await aiohttp_client(_app(api, cache_seconds=300, cache_size=2))
    before = await processed_calls(server)
    for entity in ("lru.a", "lru.b", "lru.c", "lru.c", "lru.b"):  # c evicts a
        await read(bounded, entity)
    assert await processed_calls(server) == before + 3
    await read(bounded, "lru.a")  # asked again
    assert await processed_calls(server) == before + 4

    off = await aiohttp_client(_app(api, cache_seconds=0))
    before = await processed_calls(server)
    for _ in range(3):
        await read(off, "lru.a")
    assert await processed_calls(server) == before + 3


async def test_middleware_honours_the_cache_control_of_the_answer(
    aiohttp_server: MakeServer, aiohttp_client: MakeAppClient,
) -> None:
    # Stands in for a service whose processed answers carry Cache-Control.
    calls: list[str] = []

    async def processed(request: web.Request) -> web.Response:
        entity = request.match_info["entity"]
        calls.append(entity)
        control = {"keep": "max-age=300", "nostore": "no-store"}[entity.split(".")[0]]
        return web.json_response(
            {"entity": entity, "timestamp": TS, "processed": True, "last_processed": TS},
            headers={"Cache-Control": control})

    stub_app = web.Application()
    stub_app.router.add_get("/status/{entity}/processed", processed)
    stub = await aiohttp_server(stub_app)
    async with ProcessStatusClient(str(stub.make_url("/"))) as client:
        assert (await client.check("keep.posts", TS)).max_age == 300
        calls.clear()
        # The shorter of the two wins: the answer's no-store over 300, cache_seconds=0 over
        # the answer's max-age=300; with both allowing it, the second read is not asked.
        for options, entity in (({"cache_seconds": 0}, "keep.posts"),
                                ({"cache_seconds": 300}, "nostore.posts"),
                                ({"cache_seconds": 300}, "keep.comments")):
            app = await aiohttp_client(_app(client, **options))
            for _ in range(2):
                response = await app.get("/posts", headers={
                    "X-Event-Streamex-Entity-Timestamp": f"{entity}/{TS}"})
                assert response.status == 200
    assert calls == ["keep.posts", "keep.posts", "nostore.posts", "nostore.posts",
                     "keep.comments"]
