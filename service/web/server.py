"""Run the app under gunicorn with exactly one aiohttp uvloop worker.

`process-status serve` uses `Server` programmatically. For gunicorn run by hand,
`service.web.server:app_factory` builds the app from PROCESS_STATUS_* env vars:

    gunicorn 'service.web.server:app_factory' -k aiohttp.GunicornUVLoopWebWorker -w 1

More than one worker cannot work (each would hold its own state): the data-dir
lock makes the second worker fail to boot, and gunicorn then stops.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from service.config import Settings, from_sources
from service.logs import logconfig_dict
from service.web.app import create_app

WORKER_CLASS = "aiohttp.GunicornUVLoopWebWorker"


def make_factory(settings: Settings) -> Callable[[], Awaitable[web.AppRunner]]:
    async def factory() -> web.AppRunner:
        # Our own runner, so shutdown_timeout is ours (gunicorn's default would be 95% of
        # graceful_timeout, leaving no room for the final snapshot) and access logging is
        # off unless asked for: it costs more than half the throughput.
        access_log = None
        if settings.access_log:
            import logging

            access_log = logging.getLogger("aiohttp.access")
        return web.AppRunner(
            create_app(settings),
            shutdown_timeout=settings.shutdown_timeout,
            handler_cancellation=True,
            access_log=access_log,
            keepalive_timeout=settings.keep_alive,
        )

    return factory


async def app_factory() -> web.AppRunner:
    """Entry point for gunicorn run by hand: settings come from the environment."""
    import argparse

    return await make_factory(from_sources(argparse.Namespace(), os.environ))()


class Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        config: dict[str, Any] = {
            "bind": [str(settings.bind)],
            "workers": 1,
            "worker_class": WORKER_CLASS,
            "graceful_timeout": math.ceil(settings.graceful_timeout),
            # The worker heartbeat; the loop never blocks (disk I/O runs on a thread).
            "timeout": 30,
            "keepalive": math.ceil(settings.keep_alive),
            "loglevel": settings.log_level,
            "logconfig_dict": logconfig_dict(settings.log_level),
            "accesslog": None,
            "proc_name": "process-status",
            # gunicorn >= 25 opens a control socket at a per-user path; two instances under
            # one user would clobber each other's.
            "control_socket_disable": True,
        }
        for key, value in config.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Callable[[], Awaitable[web.AppRunner]]:
        return make_factory(self.settings)

    def run(self) -> None:
        try:
            _Arbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(1)


class _Arbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's arbiter with SIGHUP made safe for one stateful worker.

    On SIGHUP gunicorn starts the new worker before it stops the old one; ours would
    find the data dir locked, fail to boot, and the arbiter would stop the service.
    Here the old worker stops first (writing its final snapshot), then the new one
    starts and restores it: a short pause in service instead of an outage.
    """

    def reload(self) -> None:
        self.log.info("SIGHUP: stopping the worker before starting its successor")
        self.kill_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while self.WORKERS and time.monotonic() < deadline:
            self.reap_workers()
            time.sleep(0.05)
        if self.WORKERS:
            self.kill_workers(signal.SIGKILL)
            self.reap_workers()
        super().reload()
