"""Shared fixtures: an in-process app on a real socket (pytest-aiohttp) and settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.config import Settings
from service.persistence import Durability

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
AppClient = TestClient[web.Request, web.Application]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), metrics_bind=None,
                    durability=Durability.FSYNC)


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Awaitable[AppClient]], settings: Settings
) -> Callable[..., Awaitable[AppClient]]:
    """make_client(**overrides) -> a TestClient for create_app(settings with overrides)."""

    async def make(registry: CollectorRegistry | None = None, **overrides: Any) -> AppClient:
        app = create_app(replace(settings, **overrides), registry=registry)
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[AppClient]]) -> AppClient:
    return await make_client()
