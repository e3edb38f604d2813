"""aiohttp's private names that service.web.connections and service.web.worker rely on.

Those modules extend aiohttp where it has no public hook (a per-site connection cap,
header timeouts, the listen backlog, a stop during start-up), against aiohttp 3.14;
pyproject.toml pins the 3.14 series. An upgrade that renames or drops one of these
names fails here, naming it, instead of deep in a request: read the module the message
names against the new aiohttp, then update the pin and this list.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect

import aiohttp
from aiohttp import web
from aiohttp.worker import GunicornUVLoopWebWorker, GunicornWebWorker

WHY = ("aiohttp {version} changed a private name that {module} relies on: {what}. Review "
       "{module} against this aiohttp before moving the pin in pyproject.toml")

HANDLER_ATTRIBUTES = ("_manager", "_messages", "_request_in_progress", "_waiter",
                      "_force_close", "_close", "_request_count", "_loop")
HANDLER_METHODS = {
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "data_received": ["self", "data"],
    "finish_response": ["self", "request", "resp", "start_time"],
    "handle_error": ["self", "request", "status", "exc", "message"],
    "log_exception": ["self", "args", "kw"],
    "force_close": ["self"],
}
SERVER_ATTRIBUTES = ("_connections", "_loop", "_kwargs", "request_handler", "request_factory",
                     "handler_cancellation", "requests_count")
WORKER_NAMES = ("_run", "_create_ssl_context", "_wait_next_notify", "handle_exit",
                "handle_quit", "notify", "init_signals")
RUN_SOURCE_SHA256 = "0a4799e7b234d1771c47ba965c61ed60d2b23ccf37aaf911c79d87aa282f9a99"
"""GunicornWebWorker._run of aiohttp 3.14, which service.web.worker.Worker._run copies."""


def why(module: str, what: str) -> str:
    return WHY.format(version=aiohttp.__version__, module=module, what=what)


async def test_the_request_handler_and_server_names_connections_uses_exist() -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(handler)
    protocol = web.RequestHandler(server, loop=asyncio.get_running_loop())
    module = "service/web/connections.py"
    for name in HANDLER_ATTRIBUTES:
        assert hasattr(protocol, name), why(module, f"RequestHandler.{name}")
    for name, parameters in HANDLER_METHODS.items():
        method = getattr(web.RequestHandler, name, None)
        assert callable(method), why(module, f"RequestHandler.{name}()")
        found = list(inspect.signature(method).parameters)
        assert found == parameters, why(module, f"RequestHandler.{name}{tuple(found)}")
    for name in SERVER_ATTRIBUTES:
        assert hasattr(server, name), why(module, f"Server.{name}")
    assert callable(getattr(web.AppRunner, "_make_server", None)), \
        why(module, "AppRunner._make_server()")


def test_the_worker_names_and_the_run_loop_it_copies_are_unchanged() -> None:
    module = "service/web/worker.py"
    for name in WORKER_NAMES:
        assert callable(getattr(GunicornUVLoopWebWorker, name, None)), \
            why(module, f"GunicornWebWorker.{name}()")
    source = inspect.getsource(GunicornWebWorker._run)
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == RUN_SOURCE_SHA256, why(
        module, "GunicornWebWorker._run is no longer the code Worker._run copies (its listen "
        "backlog, --max-requests and start-up cancellation)")
