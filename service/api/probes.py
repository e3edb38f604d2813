"""Health, readiness and the API spec: the views an orchestrator and a developer call."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from service.http.problems import Problem
from service.http.responses import json_response
from service.storage.backend import Backend


class ProbeViews:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        # Read once: the spec ships inside the package and never changes while running.
        self._spec = resources.files("service").joinpath("openapi.yaml").read_bytes()

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready = can serve reads. A journal or Redis fault refuses writes (503) but must
        not take the replica out of its load balancer: reads, the gate and long-polls
        still work from the local copy, and they are most of the traffic."""
        problem = self._backend.readiness
        if problem is not None:
            raise Problem(503, "not-ready", problem)
        backend = self._backend
        trouble = backend.write_health
        body: dict[str, object] = {"status": "ready", "writable": trouble is None}
        if trouble is not None:
            body["detail"] = trouble
        degraded = backend.degraded
        if degraded is not None:
            body["degraded"] = degraded
        return json_response(body)

    async def writable(self, request: web.Request) -> web.Response:
        """For whoever routes writes (or alerts): 503 while writes cannot be made durable."""
        trouble = self._backend.write_health
        if trouble is not None:
            raise Problem(503, "not-writable", trouble, headers={"Retry-After": "1"})
        return json_response({"status": "writable"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._spec, content_type="application/yaml")
