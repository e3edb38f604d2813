"""The gate in front of each real gateway, on the configs in deploy/gateways/.

Through the gateway: a request without a token reaches the read model without
asking process-status; a processed token reaches the read model; an
unprocessed one gets 425 with Retry-After; one processed during the gate's wait
reaches the read model; a malformed one gets 400; a repeated processed token is
answered from the gateway's cache where the gateway can cache; with
process-status stopped, token-less reads still work and token reads get the
documented answer (see docs/gateways.md).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass

import aiohttp
import pytest
from multidict import CIMultiDict

from .processes import Service
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


def new_entity() -> str:
    return f"gw-{uuid.uuid4().hex[:12]}"


async def record(http: aiohttp.ClientSession, gate: str, entity: str, ts: int) -> None:
    """PUT /status/{entity} on process-status, as an operator does."""
    async with http.put(f"http://{gate}/status/{entity}", json={"timestamp": ts}) as response:
        assert response.status == 200, await response.text()


async def gate_checks(http: aiohttp.ClientSession, stack: Stack) -> float:
    """How many token checks the gate has made: process_status_checks_total{source="gate"}."""
    async with http.get(f"http://{stack.metrics}/metrics") as response:
        text = await response.text()
    pattern = r'^process_status_checks_total\{result="\w+",source="gate"\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


async def http_gate_requests(http: aiohttp.ClientSession, stack: Stack) -> float:
    """Requests the service answered on /gate or /gate/{tail}, whatever the answer."""
    async with http.get(f"http://{stack.metrics}/metrics") as response:
        text = await response.text()
    pattern = r'^process_status_http_requests_total\{[^}]*route="/gate[^"]*"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


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


async def test_request_without_token_reaches_upstream_without_asking_the_gate(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    before = await http_gate_requests(http, gateway)
    answer = await call(http, gateway)
    assert answer.status == 200, answer
    assert answer.body == UPSTREAM_BODY + b" GET /orders/42?view=full"
    answer = await call(http, gateway, method="POST")
    assert answer.body == UPSTREAM_BODY + b" POST /orders/42?view=full"
    assert await http_gate_requests(http, gateway) == before


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
    # The first line alone is processed (and cached, by a gateway that can)...
    for _ in range(gateway.spec.asks_before_caching or 1):
        assert (await call(http, gateway, f"{done}/5")).status == 200
    # ...which must not let a request with a second, unprocessed line through.
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
    entity = new_entity()
    await record(http, gateway.gate, entity, 1)
    for tokens in ((), (f"{entity}/1",)):  # ungated and gated reads alike
        answer = await call(http, gateway, *tokens, path=UPSTREAM_FAIL_PATH)
        assert answer.status == 500, answer
        assert answer.body == UPSTREAM_BODY + f" GET {UPSTREAM_FAIL_PATH}".encode()


async def test_repeated_processed_token_is_answered_from_the_gateway_cache(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    entity = new_entity()
    await record(http, gateway.gate, entity, 5)
    before = await gate_checks(http, gateway)
    for method in ("GET", "GET", "POST", "GET"):
        answer = await call(http, gateway, f"{entity}/5", method=method)
        assert answer.status == 200, answer
        assert answer.from_upstream, answer
    # A caching gateway stops asking (nginx stores a token on its second use);
    # the others ask for every request (README).
    asked = await gate_checks(http, gateway) - before
    assert asked == (gateway.spec.asks_before_caching or 4), gateway.spec.name


async def test_a_not_yet_answer_is_never_cached(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    entity = new_entity()
    await record(http, gateway.gate, entity, 1)
    assert (await call(http, gateway, f"{entity}/2")).status == 425
    await record(http, gateway.gate, entity, 2)
    answer = await call(http, gateway, f"{entity}/2")
    assert answer.status == 200, answer
    assert answer.from_upstream, answer


async def test_service_stopped_token_less_reads_go_on_and_token_reads_get_documented_answer(
    gateway_and_own_service: tuple[Stack, Service], http: aiohttp.ClientSession
) -> None:
    stack, service = gateway_and_own_service
    seen = new_entity()
    await record(http, stack.gate, seen, 1)
    for _ in range(stack.spec.asks_before_caching or 1):  # asked (and cached, if it can)
        assert (await call(http, stack, f"{seen}/1")).from_upstream
    service.stop()

    for method in ("GET", "POST"):
        answer = await call(http, stack, method=method)
        assert answer.status == 200, answer
        assert answer.from_upstream, answer

    answer = await call(http, stack, f"{new_entity()}/1")
    assert answer.status == stack.spec.down_status, answer
    assert answer.from_upstream == stack.spec.fails_open, answer
    assert ("Retry-After" in answer.headers) == stack.spec.down_retry_after, answer
    assert answer.seconds < 5, "the gateway took too long to give up on the gate"

    # A token the gateway has cached as processed still passes while it is fresh.
    answer = await call(http, stack, f"{seen}/1")
    passes = stack.spec.asks_before_caching is not None or stack.spec.fails_open
    assert answer.from_upstream == passes, answer


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
