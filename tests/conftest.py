"""Shared fixtures: an in-process app on a real socket (pytest-aiohttp) and settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.config import BackendKind, Durability, Settings
from service.web.app import create_app
from tests.redis_servers import RedisServer, start_redis
from tests.support import AppClient, MakeClient


@pytest.fixture
def backend_kind() -> BackendKind:
    """Which backend `settings` uses; tests/web overrides it to run with both."""
    return BackendKind.LOCAL


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session's in-process tests (flushed before each)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(tmp_path: Path, backend_kind: BackendKind, request: pytest.FixtureRequest) -> Settings:
    base = Settings(data_dir=str(tmp_path / "data"), metrics_bind=None,
                    durability=Durability.FSYNC)
    if backend_kind is BackendKind.LOCAL:
        return base
    server: RedisServer = request.getfixturevalue("shared_redis")
    with server.client() as client:
        client.flushall()
    return replace(base, backend=BackendKind.REDIS, redis_url=server.url)


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Awaitable[AppClient]], settings: Settings
) -> MakeClient:
    """make_client(**overrides) -> a TestClient for create_app(settings with overrides)."""

    async def make(registry: CollectorRegistry | None = None, **overrides: Any) -> AppClient:
        app = create_app(replace(settings, **overrides), registry=registry)
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> AppClient:
    return await make_client()
