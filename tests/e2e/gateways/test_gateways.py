"""The gate in front of each real gateway, on the configs in deploy/gateways/.

Through the gateway: a processed token reaches the read model; an unprocessed
one gets 425 with Retry-After; one processed during the gate's wait reaches
the read model; a malformed one gets 400; with process-status down the
gateway gives its documented answer (see deploy/gateways/README.md).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from multidict import CIMultiDict

from .specs import GATE_WAIT, UPSTREAM_BODY, UPSTREAM_FAIL_PATH, Stack

TOKEN_HEADER = "X-Event-Streamex-Entity-Timestamp"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    seconds: float

    def problem(self) -> dict[str, object]:
        assert self.headers.get("Content-Type", "").startswith("application/problem+json"), self
        document = json.loads(self.body)
        assert isinstance(document, dict), self
        return document

    @property
    def from_upstream(self) -> bool:
        return self.body.startswith(UPSTREAM_BODY)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


def new_entity() -> str:
    return f"gw-{uuid.uuid4().hex[:12]}"


async def record(http: aiohttp.ClientSession, gate: str, entity: str, ts: int) -> None:
    """PUT /status/{entity} on process-status, as an operator does."""
    async with http.put(f"http://{gate}/status/{entity}", json={"timestamp": ts}) as response:
        assert response.status == 200, await response.text()


async def call(
    http: aiohttp.ClientSession,
    stack: Stack,
    *tokens: str,
    method: str = "GET",
    path: str = "/orders/42?view=full",
) -> Answer:
    """One request through the gateway, each token on its own header line."""
    headers: CIMultiDict[str] = CIMultiDict((TOKEN_HEADER, token) for token in tokens)
    data = b'{"ignored": true}' if method in {"POST", "PUT"} else None
    started = time.monotonic()
    async with http.request(method, stack.url + path, headers=headers, data=data) as response:
        body = await response.read()
        return Answer(
            response.status, CIMultiDict(response.headers), body, time.monotonic() - started
        )


async def test_request_without_token_reaches_upstream(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    answer = await call(http, gateway)
    assert answer.status == 200, answer
    assert answer.body == UPSTREAM_BODY + b" GET /orders/42?view=full"


async def test_processed_token_reaches_upstream(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    posts, users = new_entity(), new_entity()
    await record(http, gateway.gate, posts, 1422057007123000)
    await record(http, gateway.gate, users, 7)
    # Quoted as in the EventStreamex docs; several tokens in one header.
    answer = await call(http, gateway, f'"{posts}/1422057007123000", {users}/5')
    assert answer.status == 200, answer
    assert answer.from_upstream, answer
    answer = await call(http, gateway, f"{posts}/1422057007122999", method="POST")
    assert (answer.status, answer.body) == (200, UPSTREAM_BODY + b" POST /orders/42?view=full")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_unprocessed_token_gets_425_with_retry_after(
    gateway: Stack, http: aiohttp.ClientSession, method: str
) -> None:
    entity = new_entity()
    await record(http, gateway.gate, entity, 10)
    answer = await call(http, gateway, f"{entity}/11", method=method)
    assert answer.status == 425, answer
    assert answer.headers.get("Retry-After") == "1", answer
    assert answer.headers.get("Cache-Control") == "no-store", answer
    assert not answer.from_upstream
    assert answer.seconds >= GATE_WAIT * 0.8, "the gate answered without waiting"
    problem = answer.problem()
    assert problem["status"] == 425
    if gateway.spec.passes_gate_body:
        assert (problem["entity"], problem["timestamp"], problem["last_processed"]) == (
            entity,
            11,
            10,
        )


async def test_token_processed_during_the_wait_reaches_upstream(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    entity = new_entity()
    await record(http, gateway.gate, entity, 1)
    request = asyncio.create_task(call(http, gateway, f"{entity}/2"))
    await asyncio.sleep(GATE_WAIT / 3)
    assert not request.done(), "the gateway answered before the gate's wait"
    write_sent = time.monotonic()
    await record(http, gateway.gate, entity, 2)
    answer = await request
    assert answer.status == 200, answer
    assert answer.from_upstream, answer
    assert time.monotonic() >= write_sent


async def test_tokens_on_several_header_lines_are_all_checked(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    done, pending = new_entity(), new_entity()
    await record(http, gateway.gate, done, 5)
    await record(http, gateway.gate, pending, 5)
    answer = await call(http, gateway, f"{done}/5", f"{pending}/6")
    assert answer.status == 425, answer
    answer = await call(http, gateway, f"{done}/5", f"{pending}/5")
    assert answer.status == 200, answer
    assert answer.from_upstream, answer


@pytest.mark.parametrize("token", ["no-slash", "posts/soon", 'posts/1, "users/'])
async def test_malformed_token_gets_400(
    gateway: Stack, http: aiohttp.ClientSession, token: str
) -> None:
    answer = await call(http, gateway, token)
    assert answer.status == 400, answer
    assert not answer.from_upstream
    assert answer.problem()["status"] == 400


async def test_upstream_errors_pass_through_unchanged(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    answer = await call(http, gateway, path=UPSTREAM_FAIL_PATH)
    assert answer.status == 500, answer
    assert answer.body == UPSTREAM_BODY + f" GET {UPSTREAM_FAIL_PATH}".encode()


async def test_service_down_gets_documented_answer(
    gateway_without_service: Stack, http: aiohttp.ClientSession
) -> None:
    stack = gateway_without_service
    for tokens in ((), (f"{new_entity()}/1",)):
        answer = await call(http, stack, *tokens)
        assert answer.status == stack.spec.down_status, answer
        assert not answer.from_upstream, answer
        assert ("Retry-After" in answer.headers) == stack.spec.down_retry_after, answer
        assert answer.seconds < 5, "the gateway took too long to give up on the gate"


async def test_gate_status_503_is_passed_on(
    gateway_gate_503: Stack, http: aiohttp.ClientSession
) -> None:
    """`serve --gate-status 503` (for clients that cannot handle 425) reaches the client."""
    stack = gateway_gate_503
    entity = new_entity()
    await record(http, stack.gate, entity, 1)
    answer = await call(http, stack, f"{entity}/2")
    assert answer.status == 503, answer
    assert answer.headers.get("Retry-After") == "1", answer
    assert not answer.from_upstream, answer
    assert answer.problem()["status"] == 503
