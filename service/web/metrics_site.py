"""The metrics site: Prometheus's /metrics on a port of its own."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler


def create_metrics_app(registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    handler: Callable[[web.Request], object] = make_aiohttp_handler(registry)
    app.router.add_get("/metrics", handler)  # type: ignore[arg-type]
    return app
