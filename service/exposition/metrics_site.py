"""The metrics site: Prometheus's /metrics on a port of its own.

Rendering the exposition on the event loop stalled it for the whole rendering (12 ms,
or 40 ms on a busy machine, with 1,000 per-entity series), and a flood of scrapes
starved the API: 8 scrapers in a loop took its p50 from 1 ms to 96 ms. So it renders
on a thread of its own: the loop gets the GIL back every switch interval (5 ms) while
it runs. The collectors only read loop-owned numbers, each read atomic (see
StatusStore.first). Rendering also draws on a budget of time, a
token bucket refilled at RENDER_SHARE of wall time up to RENDER_BURST seconds: Prometheus
and people always get a fresh rendering, while past the budget a flood gets the last
one again, so rendering never takes more than about a tenth of the loop. Sending the
body costs too (~90 KB with 1,000 per-entity series), so scrapes themselves are also
limited (exposition.scrape_gate, the same rule as the master's merged port).
"""

from __future__ import annotations

import asyncio
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from service import __version__
from service.exposition.scrape_gate import ScrapeGate
from service.http.problems import problem_response

RENDER_SHARE = 0.1
RENDER_BURST = 0.25
METRICS_CONNECTIONS = 64
"""Connections the metrics port holds at once: Prometheus needs one or two."""


class Exposition:
    def __init__(self, registry: CollectorRegistry, tokens: tuple[str, ...],
                 limited: bool = True) -> None:
        """`limited`: False for a worker's private socket, which only the master asks
        (and limits) on behalf of the scrapers."""
        self._registry = registry
        self._gate = ScrapeGate(tokens, limited)
        self._body = b""
        self._rendering: asyncio.Future[bytes] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1,
                                          thread_name_prefix="process-status-metrics")
        self._budget = RENDER_BURST
        self._checked = time.monotonic()

    async def metrics(self, request: web.Request) -> web.Response:
        refusal = self._gate.refuse(request.headers.get("Authorization"))
        if refusal is not None:
            return problem_response(refusal.status, refusal.kind, refusal.detail,
                                    headers=refusal.headers)
        now = time.monotonic()
        elapsed, self._checked = now - self._checked, now
        self._budget = min(RENDER_BURST, self._budget + elapsed * RENDER_SHARE)
        if self._budget > 0 or not self._body:
            rendering = self._rendering
            if rendering is None or rendering.done():  # concurrent scrapes share one
                rendering = self._rendering = asyncio.get_running_loop().run_in_executor(
                    self._thread, generate_latest, self._registry)
            # Shielded: a scraper that hangs up must not cancel the others' rendering.
            self._body = await asyncio.shield(rendering)
            self._budget -= time.monotonic() - now
        return web.Response(body=self._body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close(self, app: web.Application) -> None:
        self._thread.shutdown(wait=True)


def register_identity(registry: CollectorRegistry) -> None:
    """What is running: build info, and the process and platform collectors (RSS, open
    fds, start time, CPU) that the private registry does not get by default."""
    info = Gauge("process_status_build_info", "Always 1; the labels say what is running.",
                 ["version", "python", "aiohttp"], registry=registry)
    info.labels(__version__, platform.python_version(), aiohttp.__version__).set(1)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)


def create_metrics_app(registry: CollectorRegistry, tokens: tuple[str, ...],
                       limited: bool = True) -> web.Application:
    app = web.Application()
    exposition = Exposition(registry, tokens, limited)
    app.router.add_get("/metrics", exposition.metrics)
    app.on_cleanup.append(exposition.close)
    return app
