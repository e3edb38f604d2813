"""The route table: every path, its view, who may call it, and how it is counted."""

from __future__ import annotations

from typing import NamedTuple

from aiohttp import web

from service.api.gate import GateView
from service.api.guard import View, expect_handler, fallback, guarded
from service.api.probes import ProbeViews
from service.api.status_views import StatusViews
from service.http.auth import Access, Authenticator
from service.metrics import Metrics


class Route(NamedTuple):
    method: str
    path: str
    """As the router matches it."""
    template: str
    """The `route` label of the request metrics: the path without its regex."""
    view: View
    access: Access
    at_gate: bool = False
    """Read tokens come from the gate's own header (see `wire.GATE_TOKEN_HEADER`)."""


def setup_routes(
    app: web.Application,
    max_body: int,
    auth: Authenticator,
    metrics: Metrics,
    status: StatusViews,
    gate: GateView,
    probes: ProbeViews,
) -> None:
    table = [
        Route("GET", "/status/{entity}/processed", "/status/{entity}/processed",
              status.processed, Access.READ),
        Route("GET", "/status/{entity}", "/status/{entity}", status.get_status, Access.READ),
        Route("PUT", "/status/{entity}", "/status/{entity}", status.put_status, Access.WRITE),
        Route("DELETE", "/status/{entity}", "/status/{entity}", status.delete_status,
              Access.WRITE),
        Route("GET", "/status", "/status", status.list_status, Access.READ),
        Route("POST", "/status", "/status", status.post_batch, Access.WRITE),
        Route("DELETE", "/status", "/status", status.reset, Access.WRITE),
        Route("*", "/gate", "/gate", gate.gate, Access.READ, at_gate=True),
        # [\s\S], not ".": the original path may carry an encoded newline.
        Route("*", r"/gate/{tail:[\s\S]*}", "/gate/{tail}", gate.gate, Access.READ,
              at_gate=True),
        Route("GET", "/healthz", "/healthz", probes.healthz, Access.OPEN),
        Route("GET", "/readyz", "/readyz", probes.readyz, Access.OPEN),
        Route("GET", "/readyz/writes", "/readyz/writes", probes.writable, Access.OPEN),
        Route("GET", "/openapi.yaml", "/openapi.yaml", probes.openapi, Access.OPEN),
    ]
    router = app.router
    for route in table:
        handler = guarded(route.view, route.template, route.access, auth, metrics,
                          at_gate=route.at_gate)
        expect = expect_handler(route.template, route.access, auth, metrics, max_body,
                                at_gate=route.at_gate)
        router.add_route(route.method, route.path, handler, expect_handler=expect)
        if route.method == "GET":
            router.add_route("HEAD", route.path, handler, expect_handler=expect)
    # Last, so every real route is tried first.
    miss = fallback(metrics)
    # An unknown route answers 404/405 at once, before any 100 Continue.
    router.add_route("*", r"/{path:[\s\S]*}", miss, expect_handler=miss)
