"""ProcessedCache: positive answers, per entity, for their max-age, LRU-bounded."""

from __future__ import annotations

import pytest
from process_status_client.cache import ProcessedCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_processed_timestamp_covers_every_earlier_one_until_it_expires() -> None:
    clock = Clock()
    cache = ProcessedCache(8, clock)
    cache.remember("posts", 10, seconds=5)
    assert cache.covers("posts", 10)
    assert cache.covers("posts", 3)
    assert not cache.covers("posts", 11)
    assert not cache.covers("comments", 1)
    clock.now += 5
    assert not cache.covers("posts", 3)
    assert len(cache) == 0


def test_the_newest_answer_wins_even_when_lower() -> None:
    # Only a DELETE or a reset lowers a position; the newer answer saw it.
    cache = ProcessedCache(8, Clock())
    cache.remember("posts", 10, seconds=5)
    cache.remember("posts", 4, seconds=5)
    assert not cache.covers("posts", 5)


def test_no_entry_for_a_zero_lifetime_or_a_zero_size() -> None:
    cache = ProcessedCache(8, Clock())
    cache.remember("posts", 10, seconds=0)
    assert not cache.covers("posts", 1)
    off = ProcessedCache(0, Clock())
    off.remember("posts", 10, seconds=5)
    assert not off.covers("posts", 1)
    with pytest.raises(ValueError, match="size"):
        ProcessedCache(-1)


def test_the_least_recently_used_entity_goes_first() -> None:
    cache = ProcessedCache(2, Clock())
    cache.remember("a", 1, seconds=5)
    cache.remember("b", 1, seconds=5)
    assert cache.covers("a", 1)  # a is now the most recently used
    cache.remember("c", 1, seconds=5)
    assert len(cache) == 2
    assert not cache.covers("b", 1)
    assert cache.covers("a", 1)
    assert cache.covers("c", 1)
