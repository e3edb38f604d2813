"""The baseline: a bare aiohttp hello-world, run under aiohttp's own uvloop worker (the
service's worker is that class plus the listen backlog and a stop during start-up).

    gunicorn baseline_app:create_app --pythonpath bench \
        -k aiohttp.GunicornUVLoopWebWorker -w 1

It answers every GET with a small orjson body, so the service's figures can be
read as "what our code costs on top of aiohttp itself".
"""

from __future__ import annotations

import orjson
from aiohttp import web

_HEADERS = {"Content-Type": "application/json"}


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps({"hello": "world"}), headers=_HEADERS)


async def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello)
    return app
