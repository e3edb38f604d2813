"""Helpers shared by the in-process tests: client types, reading state, problem checks,
polling, and the ledger that judges a recovered state."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

AppClient = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[AppClient]]
PROBLEM_PREFIX = "urn:process-status:problem:"


async def problem(response: ClientResponse, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 answer and return its body."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["status"] == status
    assert body["type"].startswith(PROBLEM_PREFIX)
    assert body["title"]
    assert len(body["detail"]) > 10
    return body


async def state(client: AppClient) -> dict[str, int]:
    """Every entity and its timestamp, read through the list API page by page."""
    found: dict[str, int] = {}
    after = ""
    while True:
        response = await client.get("/status", params={"limit": "10000", "after": after})
        assert response.status == 200
        body = await response.json()
        found.update({item["entity"]: item["timestamp"] for item in body["entities"]})
        if body["next"] is None:
            return found
        after = body["next"]


def until(condition: Callable[[], object], what: str, seconds: float = 15.0) -> None:
    """Poll `condition` (from a test's thread) until it holds; AssertionError naming `what`
    after `seconds`. Tests wait for what they can observe, never for a fixed time."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {seconds} s waiting for {what}")
        time.sleep(0.02)


async def eventually(condition: Callable[[], bool | Awaitable[bool]], what: str,
                     seconds: float = 10.0) -> None:
    """Poll `condition` (a function, or a coroutine function) on the event loop until it
    holds; TimeoutError after `seconds`."""
    deadline = time.monotonic() + seconds
    while not await _holds(condition):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {seconds} s waiting for {what}")
        await asyncio.sleep(0.002)


async def _holds(condition: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = condition()
    return await result if inspect.isawaitable(result) else bool(result)


@dataclass
class Ledger:
    """What writers sent and what the service acknowledged, to judge a recovered state."""

    sent: dict[str, int] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    next_value: int = 1
    acks: int = 0
    unexpected: list[str] = field(default_factory=list)

    def take(self, entity: str) -> int:
        """The next (ever increasing) value to send for `entity`."""
        value = self.next_value
        self.next_value += 1
        self.sent[entity] = max(self.sent.get(entity, 0), value)
        return value

    def ack(self, entity: str, value: int) -> None:
        self.acked[entity] = max(self.acked.get(entity, 0), value)
        self.acks += 1

    def never_above_sent(self, found: dict[str, int]) -> list[str]:
        return [f"{entity}={value} but at most {self.sent.get(entity)} was sent"
                for entity, value in found.items() if value > self.sent.get(entity, 0)]

    def lost(self, found: dict[str, int]) -> list[str]:
        return [f"{entity}: acknowledged {value}, recovered {found.get(entity)}"
                for entity, value in self.acked.items() if found.get(entity, 0) < value]
