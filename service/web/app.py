"""create_app(settings) -> web.Application: the wiring, and one lifecycle context per resource.

aiohttp enters the cleanup contexts in order at start-up and leaves them in reverse
at shutdown: the backend first in (restore before anything is served) and last out
(the final snapshot after the metrics site and the loop-lag watch have stopped).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web, web_response
from prometheus_client import CollectorRegistry, Gauge, disable_created_metrics

from service import looplag
from service.api.gate import GateView
from service.api.probes import ProbeViews
from service.api.routes import setup_routes
from service.api.status_views import StatusViews
from service.config import Settings
from service.exposition.metrics_site import (
    METRICS_CONNECTIONS,
    create_metrics_app,
    register_identity,
)
from service.http.auth import Authenticator
from service.metrics import Metrics
from service.storage.backend import Backend, StartFailed
from service.storage.factory import create_backend
from service.storage.files import Files
from service.store import StatusStore
from service.waiters import Waiters
from service.web.connections import ConnectionCollector, ConnectionStats, LimitedRunner, Limits

log = logging.getLogger("process_status.app")

settings_key = web.AppKey("settings", Settings)
store_key = web.AppKey("store", StatusStore)
backend_key = web.AppKey("backend", Backend)
waiters_key = web.AppKey("waiters", Waiters)
metrics_key = web.AppKey("metrics", Metrics)
metrics_socket_key: web.AppKey[Path | None] = web.AppKey("metrics_socket")
connections_key = web.AppKey("connections", dict[str, ConnectionStats])
"""Connection counts per site ("api", "metrics"), filled by the runners' servers."""

WORKER_BOOT_ERROR = 3


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    files: Files | None = None,
    metrics_socket: Path | None = None,
    service_pid: int | None = None,
) -> web.Application:
    """`metrics_socket`: serve /metrics there (a worker of many, see exposition.aggregator) instead
    of on --metrics-bind. `service_pid`: the process that stops the service (gunicorn's
    master), when it is not this one."""
    # `*_created` series double the scrape and nobody graphs them (process-wide switch).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    # aiohttp names itself and Python with their versions in every `Server` header, which
    # only helps whoever looks for a known hole (process-wide; aiohttp reads it per response).
    web_response.SERVER_SOFTWARE = "process-status"  # type: ignore[attr-defined]
    store = StatusStore(settings.max_entities)
    waiters = Waiters(settings.max_waiters)
    store.subscribe(waiters.notify)
    metrics = Metrics(registry or CollectorRegistry(), store, settings.entity_metrics_limit)
    metrics.waiters.set_function(lambda: waiters.count)
    metrics.waiters_limit.set(settings.max_waiters)
    backend = create_backend(settings, store, metrics.registry, files, service_pid)
    writable = Gauge("process_status_writable",
                     "1 while writes can be made durable (journal or Redis healthy), else 0.",
                     registry=metrics.registry)
    writable.set_function(lambda: float(backend.write_health is None))
    register_identity(metrics.registry)
    connections = {"api": ConnectionStats(), "metrics": ConnectionStats()}
    metrics.registry.register(ConnectionCollector(connections))
    # No middlewares: see service.api.guard for why each route is wrapped instead.
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[settings_key] = settings
    app[store_key] = store
    app[backend_key] = backend
    app[waiters_key] = waiters
    app[metrics_key] = metrics
    app[connections_key] = connections
    app[metrics_socket_key] = metrics_socket
    setup_routes(app, settings.max_body_bytes,
                 Authenticator(settings.write_tokens, settings.read_tokens), metrics,
                 StatusViews(settings, store, backend, waiters, metrics),
                 GateView(settings, store, backend, waiters, metrics), ProbeViews(backend))
    app.cleanup_ctx.append(_backend)
    app.cleanup_ctx.append(_metrics_site)
    app.cleanup_ctx.append(_loop_lag)
    app.on_shutdown.append(_release_waiters)
    return app


async def _backend(app: web.Application) -> AsyncIterator[None]:
    backend: Backend = app[backend_key]
    try:
        summary = await backend.start()
    except asyncio.CancelledError:
        await backend.stop()  # a stop signal during start-up (see web.worker)
        raise
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
    settings = app[settings_key]
    bind = settings.metrics_bind
    unix = app[metrics_socket_key]
    if bind is None:
        yield
        return
    # The same keep-alive and timeouts as the API (aiohttp's default keep-alive is an hour),
    # and a small connection cap of its own: Prometheus needs one or two.
    # A worker's private socket (mode 0700 directory) is asked only by the master, which
    # checks the token and the scrape rate itself.
    public = unix is None
    runner = LimitedRunner(
        create_metrics_app(app[metrics_key].registry,
                           settings.metrics_tokens if public else (), limited=public),
        site="metrics", limits=Limits(METRICS_CONNECTIONS, settings.header_timeout),
        stats=app[connections_key]["metrics"], access_log=None,
        keepalive_timeout=settings.keep_alive)
    await runner.setup()
    try:
        if unix is not None:
            await web.UnixSite(runner, str(unix)).start()
        else:
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
