"""The forward-auth gate, in-process: exactly 200, or 425/503 with Retry-After."""

from __future__ import annotations

import asyncio

import pytest

from service.web.app import waiters_key
from tests.support import AppClient, MakeClient

HEADER = "X-Event-Streamex-Entity-Timestamp"


async def test_no_token_passes(client: AppClient) -> None:
    response = await client.get("/gate")
    assert response.status == 200
    assert await response.read() == b""


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_and_any_tail_path(client: AppClient, method: str) -> None:
    await client.put("/status/posts", json={"timestamp": 10})
    response = await client.request(method, "/gate/api/posts/1?x=y", headers={HEADER: "posts/10"})
    assert response.status == 200
    response = await client.request(method, "/gate/api/posts/1", headers={HEADER: "posts/11"})
    assert response.status == 425


async def test_not_processed_is_425_with_retry_after(make_client: MakeClient) -> None:
    client = await make_client(gate_wait=0.05, retry_after=3)
    await client.put("/status/posts", json={"timestamp": 10})
    response = await client.get("/gate", headers={HEADER: '"posts/2015-01-23T23:50:07Z"'})
    assert response.status == 425
    assert response.headers["Retry-After"] == "3"
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json(content_type="application/problem+json")
    assert body["entity"] == "posts"
    assert body["timestamp"] == 1422057007000000
    assert body["last_processed"] == 10
    unknown = await client.get("/gate", headers={HEADER: "comments/1"})
    assert (await unknown.json(content_type=None))["last_processed"] is None


async def test_all_tokens_must_be_processed(client: AppClient) -> None:
    await client.post("/status", json={"posts": 10, "comments": 5})
    ok = await client.get("/gate", headers={HEADER: "posts/10, comments/5"})
    assert ok.status == 200
    response = await client.get("/gate", headers=[(HEADER, "posts/10"), (HEADER, "comments/6")])
    assert response.status == 425
    assert (await response.json(content_type=None))["entity"] == "comments"


async def test_token_processed_during_the_wait_passes(make_client: MakeClient) -> None:
    client = await make_client(gate_wait=2.0)
    gate = asyncio.create_task(client.get("/gate", headers={HEADER: "posts/10"}))
    for _ in range(200):  # until the gate is really parked on the entity
        await asyncio.sleep(0.01)
        if client.app[waiters_key].count == 1:
            break
    assert client.app[waiters_key].count == 1
    assert not gate.done()
    await client.put("/status/posts", json={"timestamp": 10})
    assert (await gate).status == 200


async def test_malformed_token_is_400(client: AppClient) -> None:
    response = await client.get("/gate", headers={HEADER: "posts"})
    assert response.status == 400
    body = await response.json(content_type="application/problem+json")
    assert HEADER in body["detail"]


async def test_gate_status_503_for_clients_without_425(make_client: MakeClient) -> None:
    client = await make_client(gate_status=503, gate_wait=0)
    response = await client.get("/gate", headers={HEADER: "posts/1"})
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"


async def test_custom_token_header(make_client: MakeClient) -> None:
    client = await make_client(token_header="X-Read-After", gate_wait=0)
    assert (await client.get("/gate", headers={"X-Read-After": "posts/1"})).status == 425
    assert (await client.get("/gate", headers={HEADER: "posts/1"})).status == 200


async def test_gate_never_needs_a_write_token(make_client: MakeClient) -> None:
    # Envoy forwards the client's own method; no gateway holds a write token.
    client = await make_client(write_tokens=("w" * 32,))
    await client.put("/status/posts", json={"timestamp": 10},
                     headers={"Authorization": "Bearer " + "w" * 32})
    for method in ("POST", "PUT", "DELETE"):
        response = await client.request(method, "/gate/api/posts",
                                        headers={HEADER: "posts/10"})
        assert response.status == 200, method


async def test_gate_waits_the_configured_time_before_425(make_client: MakeClient) -> None:
    client = await make_client(gate_wait=0.2)
    started = asyncio.get_running_loop().time()
    response = await client.get("/gate", headers={HEADER: "posts/1"})
    assert response.status == 425
    assert asyncio.get_running_loop().time() - started >= 0.19


async def test_processed_answer_is_cacheable_for_gate_cache_seconds(
    make_client: MakeClient,
) -> None:
    client = await make_client(gate_cache_seconds=7)
    await client.put("/status/posts", json={"timestamp": 10})
    response = await client.get("/gate", headers={HEADER: "posts/10"})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "max-age=7"
    # A cache that keys on the URL alone must still tell tokens apart.
    assert response.headers["Vary"] == f"{HEADER}, X-Process-Status-Token"
    late = await client.get("/gate", headers={HEADER: "posts/11"})
    assert late.headers["Cache-Control"] == "no-store"  # a 425 changes: never stored
    malformed = await client.get("/gate", headers={HEADER: "posts"})
    assert malformed.headers["Cache-Control"] == "no-store"


async def test_default_processed_answer_is_cacheable_for_a_few_seconds(
    client: AppClient,
) -> None:
    response = await client.get("/gate")
    assert response.headers["Cache-Control"] == "max-age=5"


async def test_gate_cache_seconds_0_forbids_storing_the_200(make_client: MakeClient) -> None:
    client = await make_client(gate_cache_seconds=0)
    await client.put("/status/posts", json={"timestamp": 10})
    response = await client.get("/gate", headers={HEADER: "posts/10"})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert "Vary" not in response.headers
