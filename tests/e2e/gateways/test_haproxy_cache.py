"""HAProxy's cache of the gate's 200 (deploy/gateways/haproxy/), on the real binary.

A positive answer is kept in a stick table for the gate's max-age and lets a
repeated token through without the Lua action, so without any request to /gate:
the tests count those with the service's own metrics. Only 200s are kept, only
for single-line token headers of at most 1 KiB, per read token, and an expired
entry is worth nothing: the gate is asked again, and while it is down the read
fails closed.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.support import eventually

from .conftest import OwnStack
from .specs import GATEWAYS, Gateway, Stack
from .test_gateways import (
    TOKEN_HEADER,
    Answer,
    call,
    gate_checks,
    http_gate_requests,
    new_entity,
    record,
)

READ_TOKEN_HEADER = "X-Process-Status-Token"
# The longest token header the config keeps answers for (haproxy.cfg, txn.gate_key).
LONGEST_CACHED_HEADER = 1024


@pytest.fixture(scope="module")
def gateway_spec() -> Gateway:
    """This module's tests are about the HAProxy config only."""
    spec = GATEWAYS["haproxy"]
    reason = spec.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    return spec


async def call_with(
    http: aiohttp.ClientSession, stack: Stack, headers: list[tuple[str, str]]
) -> Answer:
    """A GET through the gateway with exactly these header lines."""
    async with http.get(stack.url + "/orders/42", headers=CIMultiDict(headers)) as response:
        return Answer(response.status, CIMultiDict(response.headers), await response.read(), 0.0)


async def test_repeated_processed_token_makes_no_request_to_the_gate(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    entity = new_entity()
    await record(http, gateway.gate, entity, 5)
    before = await http_gate_requests(http, gateway)
    for method in ("GET", "POST", "GET", "PUT", "GET", "DELETE", "GET", "GET"):
        answer = await call(http, gateway, f"{entity}/5", method=method)
        assert answer.status == 200, answer
        assert answer.from_upstream, answer
    assert await http_gate_requests(http, gateway) - before == 1
    # An older position of the same entity is another key: asked once, then kept too.
    for _ in range(3):
        assert (await call(http, gateway, f"{entity}/4")).from_upstream
    assert await http_gate_requests(http, gateway) - before == 2


async def test_a_read_token_is_part_of_the_key(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    entity = new_entity()
    await record(http, gateway.gate, entity, 5)
    token = (TOKEN_HEADER, f"{entity}/5")
    before = await http_gate_requests(http, gateway)
    # Without, then with two different read tokens: three answers, each asked once.
    for headers in ([token], [token, (READ_TOKEN_HEADER, "a")], [token, (READ_TOKEN_HEADER, "b")]):
        for _ in range(2):
            answer = await call_with(http, gateway, headers)
            assert answer.status == 200, answer
            assert answer.from_upstream, answer
    assert await http_gate_requests(http, gateway) - before == 3


def two_lines(entity: str, last: int) -> list[tuple[str, str]]:
    return [(TOKEN_HEADER, f"{entity}/5"), (TOKEN_HEADER, f"{entity}/{last}")]


def over_1_kib(entity: str, last: int) -> list[tuple[str, str]]:
    repeated = [f"{entity}/5"] * (LONGEST_CACHED_HEADER // len(f"{entity}/5") + 1)
    return [(TOKEN_HEADER, ", ".join([*repeated, f"{entity}/{last}"]))]


@pytest.mark.parametrize("headers", [two_lines, over_1_kib])
async def test_tokens_the_table_cannot_key_are_asked_every_time(
    gateway: Stack, http: aiohttp.ClientSession,
    headers: Callable[[str, int], list[tuple[str, str]]],
) -> None:
    """req.fhdr sees the last line only, and the key is bounded: such reads are still
    gated, just never answered from the table."""
    entity = new_entity()
    await record(http, gateway.gate, entity, 5)
    processed = headers(entity, 4)
    if headers is over_1_kib:
        assert len(processed[0][1]) > LONGEST_CACHED_HEADER
    before = await http_gate_requests(http, gateway)
    for _ in range(3):
        answer = await call_with(http, gateway, processed)
        assert answer.status == 200, answer
        assert answer.from_upstream, answer
    assert await http_gate_requests(http, gateway) - before == 3
    assert (await call_with(http, gateway, headers(entity, 6))).status == 425


async def test_a_kept_line_does_not_vouch_for_the_lines_before_it(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    """req.fhdr would key a two-line request by its last line alone."""
    done, pending = new_entity(), new_entity()
    await record(http, gateway.gate, done, 5)
    await record(http, gateway.gate, pending, 5)
    for _ in range(2):
        assert (await call(http, gateway, f"{done}/5")).from_upstream
    answer = await call(http, gateway, f"{pending}/6", f"{done}/5")
    assert answer.status == 425, answer


async def test_a_200_the_gate_marks_no_store_is_not_kept(
    gateway_with_serve_args: OwnStack, http: aiohttp.ClientSession
) -> None:
    stack, _ = gateway_with_serve_args("--gate-cache-seconds", "0")
    entity = new_entity()
    await record(http, stack.gate, entity, 5)
    before = await gate_checks(http, stack)
    for _ in range(3):
        assert (await call(http, stack, f"{entity}/5")).from_upstream
    assert await gate_checks(http, stack) - before == 3


async def test_an_expired_answer_is_asked_again(
    gateway_with_serve_args: OwnStack, http: aiohttp.ClientSession
) -> None:
    stack, _ = gateway_with_serve_args("--gate-cache-seconds", "1")
    entity = new_entity()
    await record(http, stack.gate, entity, 5)
    before = await gate_checks(http, stack)
    assert (await call(http, stack, f"{entity}/5")).from_upstream
    assert await gate_checks(http, stack) - before == 1

    async def asked_again() -> bool:
        answer = await call(http, stack, f"{entity}/5")
        assert answer.status == 200, answer
        assert answer.from_upstream, answer
        return await gate_checks(http, stack) - before == 2

    await eventually(asked_again, "the gate asked again once the 1 s max-age has passed")


async def test_an_expired_answer_fails_closed_while_the_service_is_down(
    gateway_with_serve_args: OwnStack, http: aiohttp.ClientSession
) -> None:
    stack, service = gateway_with_serve_args("--gate-cache-seconds", "1")
    entity = new_entity()
    await record(http, stack.gate, entity, 5)
    assert (await call(http, stack, f"{entity}/5")).from_upstream
    service.stop()

    async def refused() -> bool:
        answer = await call(http, stack, f"{entity}/5")
        if answer.from_upstream:  # the entry is still fresh
            return False
        assert answer.status == 503, answer
        assert answer.headers.get("Retry-After") == "1", answer
        return True

    await eventually(refused, "the kept 200 to expire and the read to fail closed")
    # Token-less reads never depended on it.
    assert (await call(http, stack)).from_upstream


async def test_not_processed_yet_is_asked_every_time_until_processed(
    gateway: Stack, http: aiohttp.ClientSession
) -> None:
    entity = new_entity()
    await record(http, gateway.gate, entity, 1)
    before = await gate_checks(http, gateway)
    for asked in (1, 2, 3):
        answer = await call(http, gateway, f"{entity}/2")
        assert answer.status == 425, answer
        assert await gate_checks(http, gateway) - before == asked
    await record(http, gateway.gate, entity, 2)
    for _ in range(3):
        answer = await call(http, gateway, f"{entity}/2")
        assert answer.status == 200, answer
        assert answer.from_upstream, answer
    assert await gate_checks(http, gateway) - before == 4
