from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.store import CapacityError, Outcome, StatusStore

NAMES = st.sampled_from(["posts", "comments", "likes", "users", "a", "b"])
UPDATES = st.lists(st.tuples(NAMES, st.integers(0, 2**63 - 1)), max_size=60)


def apply_all(updates: list[tuple[str, int]]) -> dict[str, int]:
    store = StatusStore(max_entities=100)
    for name, timestamp in updates:
        store.advance({name: timestamp}, 1.0)
    return {name: entry[0] for name, entry in store.page("", "", 100)[0]}


@given(UPDATES, st.randoms())
def test_result_is_independent_of_order(updates: list[tuple[str, int]], rnd: random.Random) -> None:
    shuffled = list(updates)
    rnd.shuffle(shuffled)
    assert apply_all(shuffled) == apply_all(updates)


@given(UPDATES)
def test_duplicates_change_nothing(updates: list[tuple[str, int]]) -> None:
    assert apply_all(updates + updates) == apply_all(updates)


@given(UPDATES)
def test_each_entity_holds_the_maximum_sent(updates: list[tuple[str, int]]) -> None:
    expected: dict[str, int] = {}
    for name, timestamp in updates:
        expected[name] = max(expected.get(name, 0), timestamp)
    assert apply_all(updates) == expected


@given(UPDATES, UPDATES)
def test_merging_batches_is_associative(first: list[tuple[str, int]],
                                        second: list[tuple[str, int]]) -> None:
    one = StatusStore(100)
    for batch in (first, second):
        merged: dict[str, int] = {}
        for name, timestamp in batch:
            merged[name] = max(merged.get(name, 0), timestamp)
        if merged:
            one.advance(merged, 1.0)
    assert {n: e[0] for n, e in one.page("", "", 100)[0]} == apply_all(first + second)


def test_stale_and_equal_writes_do_not_advance_or_touch_updated_at() -> None:
    store = StatusStore(10)
    assert store.advance({"posts": 10}, 1.0) == {"posts": Outcome(10, True)}
    assert store.advance({"posts": 10}, 2.0) == {"posts": Outcome(10, False)}
    assert store.advance({"posts": 5}, 3.0) == {"posts": Outcome(10, False)}
    assert store.get("posts") == (10, 1.0)
    assert store.advance({"posts": 11}, 4.0) == {"posts": Outcome(11, True)}
    assert store.get("posts") == (11, 4.0)


def test_processed_is_inclusive_and_unknown_is_false() -> None:
    store = StatusStore(10)
    store.advance({"posts": 100}, 1.0)
    assert store.processed("posts", 100) == (True, 100)
    assert store.processed("posts", 99) == (True, 100)
    assert store.processed("posts", 101) == (False, 100)
    assert store.processed("nobody", 0) == (False, None)


def test_page_sorts_filters_and_continues_after() -> None:
    store = StatusStore(100)
    names = ["posts", "post", "posts.v2", "comments", "users", "posts:archive"]
    store.advance({name: 1 for name in names}, 1.0)
    page, more = store.page("post", "", 2)
    assert [n for n, _ in page] == ["post", "posts"]
    assert more
    page, more = store.page("post", "posts", 10)
    assert [n for n, _ in page] == ["posts.v2", "posts:archive"]
    assert not more
    assert store.page("zzz", "", 10) == ([], False)


def test_bulk_and_single_inserts_keep_the_index_sorted() -> None:
    store = StatusStore(10_000)
    store.advance({f"e{i:05d}": i for i in range(0, 2000, 2)}, 1.0)  # bulk path
    for i in range(1, 60, 2):
        store.advance({f"e{i:05d}": i}, 1.0)  # one by one
    store.delete("e00002")
    names = [name for name, _ in store.page("", "", 10_000)[0]]
    assert names == sorted(names)
    assert len(names) == len(store) == 1000 + 30 - 1


def test_delete_and_reset_report_whether_anything_existed() -> None:
    store = StatusStore(10)
    store.advance({"a": 1, "b": 2}, 1.0)
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.reset() is True
    assert len(store) == 0
    assert store.page("", "", 10) == ([], False)


def test_capacity_counts_writes_still_in_flight() -> None:
    store = StatusStore(max_entities=3)
    store.advance({"a": 1}, 1.0)
    held = store.reserve(["b", "c"])
    with pytest.raises(CapacityError, match="--max-entities"):
        store.reserve(["d"])
    assert store.reserve(["a"]) == 0  # existing entities need no room
    store.release(held)
    assert store.reserve(["d"]) == 1


def test_listeners_hear_only_advances() -> None:
    store = StatusStore(10)
    heard: list[tuple[str, int]] = []
    store.subscribe(lambda entity, ts: heard.append((entity, ts)))
    store.advance({"a": 5}, 1.0)
    store.advance({"a": 3}, 1.0)
    store.advance({"a": 7, "b": 1}, 1.0)
    assert heard == [("a", 5), ("a", 7), ("b", 1)]


def test_held_notifications_arrive_at_the_end_of_the_block_in_order() -> None:
    store = StatusStore(10)
    heard: list[tuple[str, int]] = []
    store.subscribe(lambda entity, ts: heard.append((entity, ts)))
    with store.holding_notifications():
        store.advance({"a": 1}, 1.0)
        store.advance({"b": 2, "a": 3}, 1.0)
        assert heard == []
        assert store.get("a") == (3, 1.0)  # visible at once, only the telling waits
    assert heard == [("a", 1), ("b", 2), ("a", 3)]
    store.advance({"c": 1}, 1.0)
    assert heard[-1] == ("c", 1)
