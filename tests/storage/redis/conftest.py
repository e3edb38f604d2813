"""A redis-server per module for the Redis backend's storage tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_servers import RedisServer, start_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
