"""Long-poll waits: released by the write that satisfies them, and only by it."""

from __future__ import annotations

import asyncio
import time

from service.waiters import RELEASE_SLICE, Waiters
from service.web.app import waiters_key
from tests.support import AppClient, MakeClient, eventually, problem


async def test_write_releases_exactly_the_waiters_it_satisfies() -> None:
    waiters = Waiters()
    low = asyncio.create_task(waiters.wait("posts", 10, 5))
    high = asyncio.create_task(waiters.wait("posts", 20, 5))
    other = asyncio.create_task(waiters.wait("comments", 1, 5))
    await asyncio.sleep(0)
    assert waiters.count == 3
    waiters.notify("posts", 15)
    await asyncio.sleep(0)
    assert low.done()
    assert low.result() is True
    assert not high.done()
    assert not other.done()
    waiters.notify("posts", 20)
    assert await high is True
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
    assert waiters.count == 0


async def test_timeout_answers_false_and_frees_the_waiter() -> None:
    waiters = Waiters()
    started = time.monotonic()
    assert await waiters.wait("posts", 10, 0.05) is False
    assert 0.04 <= time.monotonic() - started < 1
    assert waiters.count == 0


async def test_abandoned_waiters_do_not_pile_up() -> None:
    waiters = Waiters()
    tasks = [asyncio.create_task(waiters.wait("posts", 10, 30)) for _ in range(1000)]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert waiters.count == 0
    assert waiters._heaps == {}  # rebuilt away once the dead outnumbered the living


async def test_long_poll_is_released_by_a_put(client: AppClient) -> None:
    await client.put("/status/posts", json={"timestamp": 1})
    started = time.monotonic()
    poll = asyncio.create_task(
        client.get("/status/posts/processed", params={"ts": "5", "wait": "10"}))
    for _ in range(200):  # until the request is parked
        await asyncio.sleep(0.01)
        if client.app[waiters_key].count == 1:
            break
    assert not poll.done()
    assert client.app[waiters_key].count == 1
    await client.put("/status/posts", json={"timestamp": 3})  # not enough
    await asyncio.sleep(0.05)
    assert not poll.done()
    await client.put("/status/posts", json={"timestamp": 5})
    response = await poll
    assert await response.json() == {"entity": "posts", "timestamp": 5, "processed": True,
                                     "last_processed": 5}
    assert time.monotonic() - started < 5


async def test_long_poll_times_out_with_processed_false(client: AppClient) -> None:
    started = asyncio.get_running_loop().time()
    response = await client.get("/status/posts/processed", params={"ts": "5", "wait": "0.1"})
    assert (await response.json())["processed"] is False
    assert asyncio.get_running_loop().time() - started >= 0.09  # it did wait
    assert client.app[waiters_key].count == 0


async def test_wait_above_max_wait_is_400(make_client: MakeClient) -> None:
    client = await make_client(max_wait=2)
    for wait in ("3", "-1", "soon", "nan"):
        response = await client.get("/status/posts/processed", params={"ts": "5", "wait": wait})
        assert response.status == 400
        assert "--max-wait" in (await response.json(content_type=None))["detail"]


async def test_disconnecting_client_frees_its_waiter(client: AppClient) -> None:
    poll = asyncio.create_task(
        client.get("/status/posts/processed", params={"ts": "5", "wait": "20"}))
    for _ in range(50):
        await asyncio.sleep(0.02)
        if client.app[waiters_key].count == 1:
            break
    assert client.app[waiters_key].count == 1
    poll.cancel()  # closes the connection: the server cancels the handler
    await asyncio.gather(poll, return_exceptions=True)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if client.app[waiters_key].count == 0:
            break
    assert client.app[waiters_key].count == 0


async def test_thousands_of_waiters_released_by_one_batch(client: AppClient) -> None:
    waiters = client.app[waiters_key]
    tasks = [asyncio.create_task(waiters.wait(f"e{i % 50}", 7, 10)) for i in range(5000)]
    await asyncio.sleep(0)
    await client.post("/status", json={f"e{i}": 7 for i in range(50)})
    assert all(await asyncio.gather(*tasks))
    assert waiters.count == 0


async def test_a_big_release_is_spread_over_loop_turns() -> None:
    waiters = Waiters()
    count = RELEASE_SLICE * 3 + 5
    parked = [asyncio.create_task(waiters.wait("posts", index, 30)) for index in range(count)]
    await asyncio.sleep(0)
    assert waiters.count == count
    waiters.notify("posts", count)
    # Only one slice is released in this turn: the loop can serve others in between.
    assert sum(task.done() for task in parked) == 0
    await asyncio.sleep(0)
    assert sum(task.done() for task in parked) == RELEASE_SLICE
    results = await asyncio.wait_for(asyncio.gather(*parked), 5)
    assert all(results)
    assert waiters.count == 0


async def test_past_max_waiters_long_polls_get_503_and_the_gate_does_not_wait(
    make_client: MakeClient,
) -> None:
    client = await make_client(max_waiters=2, gate_wait=5.0)
    await client.put("/status/posts", json={"timestamp": 1})
    parked = [asyncio.create_task(client.get("/status/posts/processed",
                                             params={"ts": "5", "wait": "5"}))
              for _ in range(2)]
    waiters = client.app[waiters_key]
    await eventually(lambda: waiters.count == 2, "two parked long-polls")
    refused = await client.get("/status/posts/processed", params={"ts": "5", "wait": "5"})
    body = await problem(refused, 503)
    assert body["type"].endswith("too-many-waiters")
    assert refused.headers["Retry-After"] == "1"
    started = time.monotonic()
    gate = await client.get("/gate", headers={"X-Event-Streamex-Entity-Timestamp": "posts/5"})
    assert gate.status == 425
    assert time.monotonic() - started < 4  # answered without its 5 s wait
    await client.put("/status/posts", json={"timestamp": 5})
    for task in parked:
        assert (await (await task).json())["processed"] is True


async def test_a_sliced_release_leaves_waiters_parked_after_it_alone() -> None:
    waiters = Waiters()
    early = [asyncio.create_task(waiters.wait("posts", 5, 30)) for _ in range(RELEASE_SLICE * 2)]
    await asyncio.sleep(0)
    waiters.notify("posts", 10)
    # Parked after the notification (as after a DELETE reset the entity): not satisfied by it.
    late = asyncio.create_task(waiters.wait("posts", 5, 30))
    assert all(await asyncio.wait_for(asyncio.gather(*early), 5))
    await asyncio.sleep(0.01)
    assert not late.done()
    waiters.notify("posts", 5)
    assert await asyncio.wait_for(late, 5) is True
