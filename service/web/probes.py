"""Health, readiness and the API spec: the views an orchestrator and a developer call."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from service.storage.backend import Backend
from service.web.problems import Problem
from service.web.responses import json_response


class ProbeViews:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        # Read once: the spec ships inside the package and never changes while running.
        self._spec = resources.files("service").joinpath("openapi.yaml").read_bytes()

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        problem = self._backend.health
        if problem is not None:
            raise Problem(503, "not-ready", problem)
        return json_response({"status": "ready"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._spec, content_type="application/yaml")
