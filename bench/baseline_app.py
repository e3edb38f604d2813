"""The baseline: a bare aiohttp hello-world, run under aiohttp's own uvloop worker (the
service's worker is that class plus the listen backlog and a stop during start-up).

    gunicorn baseline_app:create_app --pythonpath bench \
        -k aiohttp.GunicornUVLoopWebWorker -w 1

It answers GET / with a small orjson body, so the service's figures can be read as
"what our code costs on top of aiohttp itself". Two more routes have the shape of the
service's hot paths with none of its work (no auth, limits, metrics, store or journal):
`GET /status/{entity}/processed?ts=` and `PUT /status/{entity}` parse what the service
parses and answer the same JSON with the same headers. What they cost against GET / is
aiohttp's share of the gap (dynamic routes, query and body parsing, bigger answers);
what the service costs on top of them is ours.
"""

from __future__ import annotations

import orjson
from aiohttp import web

_HEADERS = {"Content-Type": "application/json"}
_CACHED = {"Content-Type": "application/json", "Cache-Control": "max-age=60"}
_POSITION = "X-Event-Streamex-Entity-Timestamp"


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps({"hello": "world"}), headers=_HEADERS)


async def processed(request: web.Request) -> web.Response:
    entity = request.match_info["entity"]
    body = {"entity": entity, "timestamp": int(request.query["ts"]), "processed": True,
            "last_processed": 2_000_000}
    return web.Response(body=orjson.dumps(body), headers=_CACHED)


async def put(request: web.Request) -> web.Response:
    entity = request.match_info["entity"]
    timestamp = int(orjson.loads(await request.read())["timestamp"])
    body = {"entity": entity, "timestamp": timestamp, "advanced": True}
    return web.Response(body=orjson.dumps(body),
                        headers={**_HEADERS, _POSITION: f"{entity}/{timestamp}"})


async def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/status/{entity}/processed", processed)
    app.router.add_put("/status/{entity}", put)
    return app
