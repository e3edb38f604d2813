"""The HTTP API in-process over a real socket: every endpoint and every error path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import AppClient, MakeClient, problem

TS = 1422057007123000
WRITE = "w" * 32
READ = "r" * 32



async def test_put_then_get_and_processed(client: AppClient) -> None:
    response = await client.put("/status/posts", json={"timestamp": TS})
    assert response.status == 200
    assert await response.json() == {"entity": "posts", "timestamp": TS, "advanced": True}
    assert response.headers["X-Event-Streamex-Entity-Timestamp"] == f"posts/{TS}"

    response = await client.get("/status/posts")
    body = await response.json()
    assert body["timestamp"] == TS
    assert body["updated_at"].endswith("Z")
    assert response.headers["X-Event-Streamex-Entity-Timestamp"] == f"posts/{TS}"

    for asked, expected in ((TS, True), (TS - 1, True), (TS + 1, False)):
        response = await client.get("/status/posts/processed", params={"ts": str(asked)})
        assert await response.json() == {"entity": "posts", "timestamp": asked,
                                         "processed": expected, "last_processed": TS}


async def test_stale_put_answers_200_with_the_stored_value(client: AppClient) -> None:
    await client.put("/status/posts", json={"timestamp": TS})
    response = await client.put("/status/posts", json={"timestamp": TS - 5})
    assert response.status == 200
    assert await response.json() == {"entity": "posts", "timestamp": TS, "advanced": False}
    assert response.headers["X-Event-Streamex-Entity-Timestamp"] == f"posts/{TS}"


async def test_timestamps_accept_digits_and_rfc3339(client: AppClient) -> None:
    response = await client.put("/status/posts", json={"timestamp": "2015-01-23T23:50:07.123Z"})
    assert (await response.json())["timestamp"] == TS
    response = await client.get("/status/posts/processed",
                                params={"ts": "2015-01-24T00:50:07.123+01:00"})
    assert (await response.json())["processed"] is True
    # An unencoded "+" in a query string arrives as a space; it still means the offset.
    response = await client.get("/status/posts/processed?ts=2015-01-24T00:50:07.123+01:00")
    assert (await response.json())["timestamp"] == TS


async def test_unknown_entity(client: AppClient) -> None:
    body = await problem(await client.get("/status/nobody"), 404)
    assert body["entity"] == "nobody"
    response = await client.get("/status/nobody/processed", params={"ts": "1"})
    assert await response.json() == {"entity": "nobody", "timestamp": 1, "processed": False,
                                     "last_processed": None}
    await problem(await client.delete("/status/nobody"), 404)


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"", "invalid-body"), (b"{", "invalid-json"), (b"[]", "invalid-body"),
     (b'{"timestamp": 1, "x": 2}', "invalid-body"), (b'{"ts": 1}', "invalid-body"),
     (b'{"timestamp": -1}', "invalid-timestamp"), (b'{"timestamp": 1.5}', "invalid-timestamp"),
     (b'{"timestamp": "yesterday"}', "invalid-timestamp")],
)
async def test_bad_put_bodies_are_400(client: AppClient, body: bytes, kind: str) -> None:
    response = await client.put("/status/posts", data=body)
    assert (await problem(response, 400))["type"].endswith(kind)
    await problem(await client.get("/status/posts"), 404)  # nothing was stored


@pytest.mark.parametrize("path", ["/status/.hidden", "/status/-x", "/status/" + "a" * 256,
                                  "/status/a%20b"])
async def test_bad_entity_names_are_400(client: AppClient, path: str) -> None:
    await problem(await client.put(path, json={"timestamp": 1}), 400)
    await problem(await client.get(path), 400)


async def test_processed_needs_a_valid_ts(client: AppClient) -> None:
    assert (await problem(await client.get("/status/posts/processed"), 400))["type"].endswith(
        "missing-timestamp")
    await problem(await client.get("/status/posts/processed", params={"ts": "soon"}), 400)


async def test_batch_is_all_or_nothing(client: AppClient) -> None:
    response = await client.post("/status", json={"posts": TS, "comments": "2015-01-23T23:50:07Z"})
    assert await response.json() == {"results": {
        "posts": {"timestamp": TS, "advanced": True},
        "comments": {"timestamp": 1422057007000000, "advanced": True}}}
    response = await client.post("/status", json={"posts": TS + 1, "bad name": 1})
    body = await problem(response, 400)
    assert body["entity"] == "bad name"
    assert "nothing was applied" in body["detail"]
    assert (await (await client.get("/status/posts")).json())["timestamp"] == TS
    await problem(await client.post("/status", json={}), 400)
    await problem(await client.post("/status", json=[1]), 400)


async def test_batch_over_max_batch_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_batch=3)
    body = await problem(await client.post("/status", json={f"e{i}": 1 for i in range(4)}), 413)
    assert "--max-batch" in body["detail"]
    assert (await client.post("/status", json={f"e{i}": 1 for i in range(3)})).status == 200


async def test_body_over_max_body_bytes_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_body_bytes=1024)
    body = await problem(await client.post("/status", json={"x" * 200: 1, "y" * 900: 2}), 413)
    assert "--max-body-bytes" in body["detail"]


async def test_chunked_body_over_max_body_bytes_is_413_too(make_client: MakeClient) -> None:
    client = await make_client(max_body_bytes=1024)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked encoding
        yield b'{"a": 1, "' + b"x" * 600
        yield b"y" * 600 + b'": 2}'

    body = await problem(await client.post("/status", data=chunks()), 413)
    assert "--max-body-bytes" in body["detail"]

    async def small() -> AsyncIterator[bytes]:
        yield b'{"a": 1}'

    assert (await client.post("/status", data=small())).status == 200


async def test_max_entities_is_507_and_changes_nothing(make_client: MakeClient) -> None:
    client = await make_client(max_entities=2)
    assert (await client.post("/status", json={"a": 1, "b": 1})).status == 200
    body = await problem(await client.post("/status", json={"a": 2, "c": 1}), 507)
    assert "--max-entities" in body["detail"]
    assert (await (await client.get("/status/a")).json())["timestamp"] == 1
    assert (await client.put("/status/a", json={"timestamp": 3})).status == 200  # no new entity


async def test_list_pages_through_sorted_entities(client: AppClient) -> None:
    await client.post("/status", json={f"orders.{i:02d}": i for i in range(5)} | {"posts": 1})
    response = await client.get("/status", params={"prefix": "orders.", "limit": "2"})
    body = await response.json()
    assert [e["entity"] for e in body["entities"]] == ["orders.00", "orders.01"]
    assert body["next"] == "orders.01"
    seen = [e["entity"] for e in body["entities"]]
    while body["next"] is not None:
        response = await client.get("/status", params={"prefix": "orders.", "limit": "2",
                                                       "after": body["next"]})
        body = await response.json()
        seen += [e["entity"] for e in body["entities"]]
    assert seen == [f"orders.{i:02d}" for i in range(5)]
    everything = await (await client.get("/status")).json()
    assert len(everything["entities"]) == 6
    assert everything["next"] is None
    assert set(everything["entities"][0]) == {"entity", "timestamp", "updated_at"}


@pytest.mark.parametrize("limit", ["0", "10001", "-1", "x", "1.5"])
async def test_list_limit_out_of_range_is_400(client: AppClient, limit: str) -> None:
    await problem(await client.get("/status", params={"limit": limit}), 400)


async def test_delete_and_reset(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client()
    await client.post("/status", json={"a": 1, "b": 1})
    assert (await client.delete("/status/a")).status == 204
    await problem(await client.get("/status/a"), 404)
    body = await problem(await client.delete("/status"), 403)
    assert "--allow-reset" in body["detail"]
    resettable = await make_client(allow_reset=True, data_dir=str(tmp_path / "other"))
    await resettable.post("/status", json={"a": 1})
    assert (await resettable.delete("/status")).status == 204
    assert (await (await resettable.get("/status")).json())["entities"] == []


async def test_router_errors_are_problems(client: AppClient) -> None:
    await problem(await client.get("/nothing/here"), 404)
    response = await client.patch("/status/posts")
    await problem(response, 405)
    assert "PUT" in response.headers["Allow"]


async def test_health_readiness_and_spec(client: AppClient) -> None:
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    assert await (await client.get("/readyz")).json() == {"status": "ready", "writable": True}
    assert await (await client.get("/readyz/writes")).json() == {"status": "writable"}
    response = await client.get("/openapi.yaml")
    assert response.status == 200
    assert b"openapi:" in await response.read()


async def test_write_tokens_guard_writes_only(make_client: MakeClient) -> None:
    client = await make_client(write_tokens=(WRITE,))
    response = await client.put("/status/posts", json={"timestamp": 1})
    body = await problem(response, 401)
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert "no token" in body["detail"]
    wrong = await client.put("/status/posts", json={"timestamp": 1},
                             headers={"Authorization": "Bearer " + "x" * 32})
    assert "not valid" in (await problem(wrong, 401))["detail"]
    ok = await client.put("/status/posts", json={"timestamp": 1},
                          headers={"Authorization": f"Bearer {WRITE}"})
    assert ok.status == 200
    assert (await client.get("/status/posts")).status == 200  # reads stay open
    await problem(await client.delete("/status/posts"), 401)


async def test_read_tokens_guard_reads_but_not_health(make_client: MakeClient) -> None:
    client = await make_client(write_tokens=(WRITE,), read_tokens=(READ,))
    write = {"Authorization": f"Bearer {WRITE}"}
    read = {"Authorization": f"Bearer {READ}"}
    await client.put("/status/posts", json={"timestamp": 1}, headers=write)
    await problem(await client.get("/status/posts"), 401)
    await problem(await client.get("/status"), 401)
    assert (await client.get("/status/posts", headers=read)).status == 200
    assert (await client.get("/status/posts", headers=write)).status == 200  # write implies read
    await problem(await client.put("/status/posts", json={"timestamp": 2}, headers=read), 401)
    for path in ("/healthz", "/readyz", "/openapi.yaml"):
        assert (await client.get(path)).status == 200


async def test_gate_reads_its_token_from_a_dedicated_header(make_client: MakeClient) -> None:
    client = await make_client(read_tokens=(READ,))
    # The client's own Authorization header belongs to the upstream app: not ours.
    response = await client.get("/gate", headers={"Authorization": f"Bearer {READ}"})
    assert "X-Process-Status-Token" in (await problem(response, 401))["detail"]
    assert (await client.get("/gate", headers={"X-Process-Status-Token": READ})).status == 200


async def test_a_repeated_entity_in_a_batch_counts_at_its_largest_timestamp(
    client: AppClient,
) -> None:
    response = await client.post("/status", data=b'{"dk": 10, "dk": 1, "other": 3}',
                                 headers={"Content-Type": "application/json"})
    assert response.status == 200
    assert (await response.json())["results"]["dk"] == {"timestamp": 10, "advanced": True}
    assert (await (await client.get("/status/dk")).json())["timestamp"] == 10


@pytest.mark.parametrize(("body", "says"), [
    (b'{"timestamp": 1.0}', "fraction or an exponent"),
    (b'{"timestamp": 1e15}', "fraction or an exponent"),
    (b'{"timestamp": 99999999999999999999999}', "out of range"),
])
async def test_timestamps_must_be_integer_literals(client: AppClient, body: bytes,
                                                   says: str) -> None:
    for method, path, payload in (("PUT", "/status/posts", body),
                                  ("POST", "/status", body.replace(b'"timestamp"', b'"posts"'))):
        found = await problem(await client.request(method, path, data=payload), 400)
        assert says in found["detail"], (method, found)
    assert (await client.get("/status/posts")).status == 404
