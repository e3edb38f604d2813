"""create_app(settings) -> web.Application: wiring, routes, and load-at-start / snapshot-at-stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from importlib import resources

from aiohttp import web
from prometheus_client import CollectorRegistry

from service import looplag
from service.auth import Access, Authenticator
from service.config import Settings
from service.datadir import DataDirLock, DataDirLocked
from service.files import Files, OsFiles
from service.gate import GateView
from service.guard import View, fallback, guarded
from service.handlers import StatusViews, json_response
from service.metrics import Metrics, create_metrics_app
from service.persistence import Options, Persistence
from service.problems import Problem
from service.recovery import RecoveryError
from service.store import StatusStore
from service.waiters import Waiters

log = logging.getLogger("process_status.app")

settings_key = web.AppKey("settings", Settings)
store_key = web.AppKey("store", StatusStore)
persistence_key = web.AppKey("persistence", Persistence)
waiters_key = web.AppKey("waiters", Waiters)
metrics_key = web.AppKey("metrics", Metrics)

WORKER_BOOT_ERROR = 3


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    files: Files | None = None,
) -> web.Application:
    store = StatusStore(settings.max_entities)
    waiters = Waiters()
    store.subscribe(waiters.notify)
    metrics = Metrics(registry or CollectorRegistry(), store, settings.entity_metrics_limit)
    metrics.waiters.set_function(lambda: waiters.count)
    options = Options(settings.data_dir, settings.durability, settings.snapshot_interval,
                      settings.fsync_interval, settings.journal_max_bytes)
    persistence = Persistence(options, store, files or OsFiles(), metrics)
    # No middlewares: see service.guard for why each route is wrapped instead.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[settings_key] = settings
    app[store_key] = store
    app[persistence_key] = persistence
    app[waiters_key] = waiters
    app[metrics_key] = metrics
    _add_routes(app, Authenticator(settings.write_tokens, settings.read_tokens), metrics,
                StatusViews(settings, store, persistence, waiters, metrics),
                GateView(settings, store, waiters, metrics), persistence)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_release_waiters)
    return app


def _add_routes(
    app: web.Application,
    auth: Authenticator,
    metrics: Metrics,
    views: StatusViews,
    gate: GateView,
    persistence: Persistence,
) -> None:
    spec = resources.files("service").joinpath("openapi.yaml").read_bytes()

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problem = persistence.healthy
        if problem is not None:
            raise Problem(503, "not-ready", problem)
        return json_response({"status": "ready"})

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=spec, content_type="application/yaml")

    router = app.router
    table: list[tuple[str, str, View, Access]] = [
        ("GET", "/status/{entity}/processed", views.processed, Access.READ),
        ("GET", "/status/{entity}", views.get_status, Access.READ),
        ("PUT", "/status/{entity}", views.put_status, Access.WRITE),
        ("DELETE", "/status/{entity}", views.delete_status, Access.WRITE),
        ("GET", "/status", views.list_status, Access.READ),
        ("POST", "/status", views.post_batch, Access.WRITE),
        ("DELETE", "/status", views.reset, Access.WRITE),
        ("*", "/gate", gate.gate, Access.READ),
        # [\s\S], not ".": the original path may carry an encoded newline.
        ("*", r"/gate/{tail:[\s\S]*}", gate.gate, Access.READ),
        ("GET", "/healthz", healthz, Access.OPEN),
        ("GET", "/readyz", readyz, Access.OPEN),
        ("GET", "/openapi.yaml", openapi, Access.OPEN),
    ]
    for method, path, view, access in table:
        template = path.replace(r":[\s\S]*", "")
        handler = guarded(view, template, access, auth, metrics,
                          at_gate=template.startswith("/gate"))
        router.add_route(method, path, handler)
        if method == "GET":
            router.add_route("HEAD", path, handler)
    # Last, so every real route is tried first.
    router.add_route("*", r"/{path:[\s\S]*}", fallback(metrics))


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    persistence = app[persistence_key]
    lock = DataDirLock(settings.data_dir)
    metrics_runner: web.AppRunner | None = None
    lag: asyncio.Task[None] | None = None
    try:
        try:
            lock.acquire()
            report = await persistence.start()
        except (DataDirLocked, RecoveryError, OSError) as exc:
            # One clear line instead of a traceback; gunicorn's arbiter halts on exit code 3
            # (a worker that failed to boot) instead of respawning it forever.
            log.critical("cannot start: %s", exc)
            raise SystemExit(WORKER_BOOT_ERROR) from exc
        log.info("state restored: %d entities (snapshot %d, %d journal records replayed)",
                 len(app[store_key]), report.snapshot_entities, report.replayed)
        if settings.metrics_bind is not None:
            metrics_runner = web.AppRunner(create_metrics_app(app[metrics_key].registry),
                                           access_log=None)
            await metrics_runner.setup()
            site = web.TCPSite(metrics_runner, settings.metrics_bind.host,
                               settings.metrics_bind.port)
            await site.start()
            log.info("metrics on http://%s/metrics", settings.metrics_bind)
        lag = asyncio.create_task(looplag.watch(app[metrics_key].loop_lag.observe))
        yield
    finally:
        if lag is not None:
            lag.cancel()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        if persistence.restored:
            await persistence.stop()
        lock.release()


async def _release_waiters(app: web.Application) -> None:
    app[waiters_key].release_all()
    await asyncio.sleep(0)
