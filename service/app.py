"""create_app(settings) -> web.Application: wiring, routes, middleware, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractRoute
from prometheus_client import CollectorRegistry

from service.auth import GATE_TOKEN_HEADER, Access, Authenticator, bearer
from service.config import Settings
from service.datadir import DataDirLock, DataDirLocked
from service.files import Files, OsFiles
from service.gate import GateView
from service.handlers import StatusViews, json_response
from service.metrics import Metrics, create_metrics_app
from service.persistence import Options, Persistence
from service.problems import Problem, from_http_exception, problem_response
from service.recovery import RecoveryError
from service.store import StatusStore
from service.waiters import Waiters

log = logging.getLogger("process_status.app")

settings_key = web.AppKey("settings", Settings)
store_key = web.AppKey("store", StatusStore)
persistence_key = web.AppKey("persistence", Persistence)
waiters_key = web.AppKey("waiters", Waiters)
metrics_key = web.AppKey("metrics", Metrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_UNMATCHED = "unmatched"
WORKER_BOOT_ERROR = 3
_BEARER = {"WWW-Authenticate": 'Bearer realm="process-status"'}


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
    access: dict[AbstractRoute, Access] = {}

    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_guard(Authenticator(settings.write_tokens, settings.read_tokens),
                            access, metrics)],
    )
    app[settings_key] = settings
    app[store_key] = store
    app[persistence_key] = persistence
    app[waiters_key] = waiters
    app[metrics_key] = metrics
    _add_routes(app, access, StatusViews(settings, store, persistence, waiters, metrics),
                GateView(settings, store, waiters, metrics), persistence)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_release_waiters)
    return app


def _add_routes(
    app: web.Application,
    access: dict[AbstractRoute, Access],
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
    table: list[tuple[str, str, Handler, Access]] = [
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
    for method, path, handler, level in table:
        route = router.add_route(method, path, handler)
        access[route] = level
        if method == "GET":
            access[router.add_route("HEAD", path, handler)] = level


def _guard(
    auth: Authenticator, access: dict[AbstractRoute, Access], metrics: Metrics
) -> Middleware:
    """One middleware for auth, problem+json errors and request metrics.

    Three concerns in one function because each middleware layer costs a
    coroutine frame per request, and this is the hot path.
    """
    counters: dict[tuple[str, str, int], Callable[[], None]] = {}
    timers: dict[tuple[str, str], Callable[[float], None]] = {}
    gate_routes = {"/gate", "/gate/{tail}"}

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route
        level = access.get(route)
        template = route.resource.canonical if route.resource is not None else _UNMATCHED
        try:
            if level is not None and auth.needs_token(level):
                token = (request.headers.get(GATE_TOKEN_HEADER) if template in gate_routes
                         else bearer(request.headers.get("Authorization")))
                if not auth.allows(level, token):
                    raise _unauthorized(level, template in gate_routes, token)
            response = await handler(request)
        except Problem as problem:
            response = problem.response()
        except web.HTTPException as exc:
            response = from_http_exception(exc, request)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, template)
            response = problem_response(500, "internal-error",
                                        "the service failed unexpectedly; the logs have details")
        method = request.method
        key = (method, template, response.status)
        count = counters.get(key)
        if count is None:
            count = counters[key] = metrics.requests.labels(*key).inc
        count()
        timer_key = (method, template)
        observe = timers.get(timer_key)
        if observe is None:
            observe = timers[timer_key] = metrics.request_duration.labels(*timer_key).observe
        observe(time.perf_counter() - started)
        return response

    return guard


def _unauthorized(level: Access, at_gate: bool, token: str | None) -> Problem:
    if at_gate:
        where = f"the gateway must send a read token in the {GATE_TOKEN_HEADER} header"
    else:
        where = "send Authorization: Bearer <token>"
    what = "a write token" if level is Access.WRITE else "a read or write token"
    problem = "the token is not valid" if token else "no token was sent"
    detail = f"{problem}: this needs {what}; {where}"
    return Problem(401, "unauthorized", detail, headers=_BEARER)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    persistence = app[persistence_key]
    lock = DataDirLock(settings.data_dir)
    metrics_runner: web.AppRunner | None = None
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
        yield
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        if persistence.restored:
            await persistence.stop()
        lock.release()


async def _release_waiters(app: web.Application) -> None:
    app[waiters_key].release_all()
    await asyncio.sleep(0)
