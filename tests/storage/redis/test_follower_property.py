"""A replica's copy never runs ahead of Redis: a property test against a real redis-server.

Random interleavings of writes (batches, deletes, resets), follower steps of random
size (delays), stream trims, flushes and resyncs. After every step the replica's
copy must equal what Redis held after some earlier call (a prefix of the history),
never an earlier prefix than it held before, and so every timestamp it would call
"processed" was acknowledged. A flush makes Redis lose positions: the resync then
keeps the copy's (merged) and hands the ones Redis lacks to `on_loss`, which writes
them back as the backend does, so the copy again equals what Redis holds and never
forgets a position. The function's replies are checked against a Python model too,
with timestamps around 2^53 and up to 2^63-1 (Lua numbers are doubles).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis as AsyncRedis

from service.positions import MAX_TIMESTAMP
from service.storage.redis import library
from service.storage.redis.follower import Follower, Resync
from service.storage.redis.stats import RedisStats
from service.store import Advance, Delete, Mutation, Outcome, Reset, StatusStore
from tests.redis_servers import RedisServer

State = dict[str, int]
ENTITIES = ["a", "b", "c", "d", "e"]
TIMESTAMPS = st.one_of(
    st.integers(0, 20),
    st.integers(2**53 - 2, 2**53 + 2),
    st.integers(MAX_TIMESTAMP - 2, MAX_TIMESTAMP),
)
MUTATION = st.one_of(
    st.builds(Advance, st.dictionaries(st.sampled_from(ENTITIES), TIMESTAMPS, min_size=1)),
    st.builds(Delete, st.sampled_from(ENTITIES)),
    st.just(Reset()),
)
ACTION = st.one_of(
    st.tuples(st.just("write"), st.lists(MUTATION, min_size=1, max_size=4)),
    st.tuples(st.just("follow"), st.integers(1, 3)),
    st.tuples(st.just("trim"), st.integers(0, 3)),
    st.tuples(st.just("resync")),
    st.tuples(st.just("check")),
    st.tuples(st.just("flush")),
)


@pytest.fixture
def sync_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as client:
        yield client


def model_apply(state: State, mutation: Mutation) -> Any:
    if isinstance(mutation, Advance):
        outcomes = {}
        for entity, timestamp in mutation.updates.items():
            current = state.get(entity)
            if current is None or current < timestamp:
                state[entity] = timestamp
                outcomes[entity] = Outcome(timestamp, True)
            else:
                outcomes[entity] = Outcome(current, False)
        return outcomes
    if isinstance(mutation, Delete):
        return state.pop(mutation.entity, None) is not None
    existed = bool(state)
    state.clear()
    return existed


def copy_of(store: StatusStore) -> State:
    page, _ = store.page("", "", 1000)
    return {name: entry[0] for name, entry in page}


async def resync(follower: Follower, url: str) -> None:
    client = AsyncRedis.from_url(url)
    try:
        await follower._sync(client)
    finally:
        await client.aclose()


async def check(follower: Follower, url: str) -> None:
    client = AsyncRedis.from_url(url)
    try:
        await follower._check(client)
    finally:
        await client.aclose()


async def realign(follower: Follower, url: str, suspect: bool) -> bool:
    """What the follower's loop does after a break: compare histories, then copy again
    (keeping the copy's positions if Redis lost some). True if it kept them."""
    client = AsyncRedis.from_url(url)
    try:
        follower._suspect = suspect
        keep = False
        try:
            await follower._check(client)
        except Resync as exc:
            keep = bool(exc.lost)
        await follower._sync(client, keep_local=keep)
        return keep
    finally:
        await client.aclose()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(ACTION, max_size=30))
@example(actions=[("write", [Advance({"a": 1})]), ("write", [Advance({"b": 1})]),
                  ("trim", 1), ("follow", 3)])
@example(actions=[("write", [Advance({"a": 1})]), ("follow", 1), ("flush",),
                  ("write", [Advance({"b": 1})]), ("follow", 1)])
@example(actions=[("write", [Advance({"a": 1, "b": 2})]), ("follow", 1), ("flush",),
                  ("write", [Advance({"a": 0})]), ("check",), ("resync",), ("follow", 2)])
@example(actions=[("write", [Advance({"a": 5})]), ("follow", 1), ("flush",),
                  ("write", [Advance({"c": 1})]), ("follow", 1), ("resync",)])
def test_a_replica_never_answers_ahead_of_redis(
    redis_server: RedisServer, sync_client: redis.Redis, actions: list[tuple[Any, ...]]
) -> None:
    sync_client.flushall()
    sync_client.function_load(library.SOURCE, replace=True)
    store = StatusStore(max_entities=len(ENTITIES))
    lost: list[dict[str, int]] = []
    follower = Follower(lambda: AsyncRedis.from_url(redis_server.url), store, RedisStats(),
                        where="test", on_loss=lost.append)
    follower._needs_sync = False  # an empty copy of an empty Redis
    state: State = {}
    history: list[State] = [{}]
    position = 0
    broken = False

    def write(mutations: list[Mutation]) -> None:
        raw = sync_client.fcall(library.APPLY, 3, *library.KEYS, str(len(ENTITIES)), "1000",
                                *library.encode(mutations))
        reply = library.decode_reply(mutations, raw)
        for mutation, result in zip(mutations, reply.results, strict=True):
            if isinstance(result, library.Full):
                assert isinstance(mutation, Advance)
                new = [e for e in mutation.updates if e not in state]
                assert len(state) + len(new) > len(ENTITIES)
                continue
            assert result == model_apply(state, mutation), (mutation, result)
        history.append(dict(state))

    for action in actions:
        kind = action[0]
        if kind == "write":
            write(action[1])
        elif kind == "follow" and not broken:
            found: Any = sync_client.xread({library.LOG: follower.last_id}, count=action[1])
            try:
                follower.apply(found[0][1] if found else [])
            except Resync:
                broken = True
        elif kind == "trim":
            sync_client.xtrim(library.LOG, maxlen=action[1], approximate=False)
        elif kind == "flush":
            sync_client.flushall()
            state.clear()
            history.append({})
        elif kind == "check" and not broken:
            try:
                asyncio.run(check(follower, redis_server.url))
            except Resync:
                broken = True
        elif kind == "resync":
            kept = asyncio.run(realign(follower, redis_server.url, suspect=broken))
            broken = False
            if kept:
                held = copy_of(store)
                # Nothing the copy held is forgotten: every entity of the merged copy is at
                # least what Redis holds, and what Redis lacked went to on_loss.
                assert all(held.get(e, -1) >= t for e, t in state.items()), (held, state)
                for positions in lost:
                    write([Advance(positions)])  # the backend's write-back
                lost.clear()
            assert not lost
            assert copy_of(store) == state
        copy = copy_of(store)
        matches = [index for index in range(position, len(history)) if history[index] == copy]
        assert matches, f"the copy {copy} is no state Redis held since #{position}: {history}"
        position = matches[0]
        for entity, timestamp in copy.items():
            assert timestamp <= max(h.get(entity, -1) for h in history), (entity, copy)
    # Whatever happened, a resync and then following catch up with Redis exactly.
    asyncio.run(resync(follower, redis_server.url))
    assert copy_of(store) == state
