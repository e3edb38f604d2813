"""Shared fixtures: an in-process app on a real socket (pytest-aiohttp) and settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.config import Durability, Settings
from service.web.app import create_app
from tests.support import AppClient, MakeClient


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), metrics_bind=None,
                    durability=Durability.FSYNC)


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
