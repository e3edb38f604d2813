"""create_app(settings) -> web.Application: the wiring, and one lifecycle context per resource.

aiohttp enters the cleanup contexts in order at start-up and leaves them in reverse
at shutdown: the backend first in (restore before anything is served) and last out
(the final snapshot after the metrics site and the loop-lag watch have stopped).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics

from service import looplag
from service.config import Settings
from service.metrics import Metrics
from service.storage.backend import Backend, StartFailed
from service.storage.files import Files
from service.storage.local import LocalBackend, LocalOptions
from service.storage.stats import StorageCollector
from service.store import StatusStore
from service.waiters import Waiters
from service.web.auth import Authenticator
from service.web.gate import GateView
from service.web.metrics_site import create_metrics_app
from service.web.probes import ProbeViews
from service.web.routes import setup_routes
from service.web.status_views import StatusViews

log = logging.getLogger("process_status.app")

settings_key = web.AppKey("settings", Settings)
store_key = web.AppKey("store", StatusStore)
backend_key = web.AppKey("backend", LocalBackend)
waiters_key = web.AppKey("waiters", Waiters)
metrics_key = web.AppKey("metrics", Metrics)

WORKER_BOOT_ERROR = 3


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    files: Files | None = None,
) -> web.Application:
    # `*_created` series double the scrape and nobody graphs them (process-wide switch).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    store = StatusStore(settings.max_entities)
    waiters = Waiters()
    store.subscribe(waiters.notify)
    metrics = Metrics(registry or CollectorRegistry(), store, settings.entity_metrics_limit)
    metrics.waiters.set_function(lambda: waiters.count)
    backend = LocalBackend(
        LocalOptions(data_dir=settings.data_dir, durability=settings.durability,
                     snapshot_interval=settings.snapshot_interval,
                     fsync_interval=settings.fsync_interval,
                     journal_max_bytes=settings.journal_max_bytes),
        store, files,
    )
    metrics.registry.register(StorageCollector(backend.stats))
    # No middlewares: see service.web.guard for why each route is wrapped instead.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[settings_key] = settings
    app[store_key] = store
    app[backend_key] = backend
    app[waiters_key] = waiters
    app[metrics_key] = metrics
    setup_routes(app, Authenticator(settings.write_tokens, settings.read_tokens), metrics,
                 StatusViews(settings, store, backend, waiters, metrics),
                 GateView(settings, store, waiters, metrics), ProbeViews(backend))
    app.cleanup_ctx.append(_backend)
    app.cleanup_ctx.append(_metrics_site)
    app.cleanup_ctx.append(_loop_lag)
    app.on_shutdown.append(_release_waiters)
    return app


async def _backend(app: web.Application) -> AsyncIterator[None]:
    backend: Backend = app[backend_key]
    try:
        summary = await backend.start()
    except StartFailed as exc:
        # One clear line instead of a traceback; gunicorn's arbiter halts on exit code 3
        # (a worker that failed to boot) instead of respawning it forever.
        log.critical("cannot start: %s", exc)
        raise SystemExit(WORKER_BOOT_ERROR) from exc
    log.info("%s", summary)
    try:
        yield
    finally:
        await backend.stop()


async def _metrics_site(app: web.Application) -> AsyncIterator[None]:
    bind = app[settings_key].metrics_bind
    if bind is None:
        yield
        return
    runner = web.AppRunner(create_metrics_app(app[metrics_key].registry), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, bind.host, bind.port).start()
        log.info("metrics on http://%s/metrics", bind)
        yield
    finally:
        await runner.cleanup()


async def _loop_lag(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(looplag.watch(app[metrics_key].loop_lag.observe))
    yield
    task.cancel()


async def _release_waiters(app: web.Application) -> None:
    app[waiters_key].release_all()
    await asyncio.sleep(0)
