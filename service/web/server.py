"""Run the app under gunicorn with our aiohttp uvloop worker (service.web.worker).

`process-status serve` uses `Server` programmatically. For gunicorn run by hand,
`service.web.server:app_factory` builds the app from PROCESS_STATUS_* env vars:

    gunicorn 'service.web.server:app_factory' -k service.web.worker.Worker -w 1

With the local backend there is exactly one worker (it holds the state; the data-dir
lock makes a second one fail to boot, and gunicorn then stops). With the Redis backend
every worker is a full replica and `--workers` sets how many; the master then serves
the metrics port for all of them (exposition.aggregator).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from service import __version__
from service.config import BackendKind, Settings, from_sources, option
from service.exposition.aggregator import Aggregator, private_directory, socket_path
from service.logs import logconfig_dict
from service.redis_url import redacted
from service.web.app import connections_key, create_app
from service.web.connections import LimitedRunner, Limits

WORKER_CLASS = "service.web.worker.Worker"
log = logging.getLogger("process_status.server")
# Descriptors kept back from --max-connections: journal segments, the snapshot, the
# metrics site's connections, logs. Past the fd limit accept() fails (EMFILE) and so
# does the journal.
FD_RESERVE = 256


def make_factory(
    settings: Settings, metrics_dir: Path | None = None,
) -> Callable[[], Awaitable[web.AppRunner]]:
    """`metrics_dir`: where each of several workers serves its metrics (exposition.aggregator)."""

    async def factory() -> web.AppRunner:
        # Our own runner, so shutdown_timeout is ours (gunicorn's default would be 95% of
        # graceful_timeout, leaving no room for the final snapshot) and access logging is
        # off unless asked for: it costs more than half the throughput.
        access_log = logging.getLogger("aiohttp.access") if settings.access_log else None
        socket = None if metrics_dir is None else socket_path(metrics_dir, os.getpid())
        # A gunicorn worker: the master is who stops the service.
        app = create_app(settings, metrics_socket=socket, service_pid=os.getppid())
        return LimitedRunner(
            app, site="api", limits=Limits(connection_limit(settings.max_connections),
                                           settings.header_timeout),
            stats=app[connections_key]["api"],
            shutdown_timeout=settings.shutdown_timeout,
            handler_cancellation=True,
            access_log=access_log,
            keepalive_timeout=settings.keep_alive,
        )

    return factory


def preflight(settings: Settings) -> str | None:
    """What would make the start fail, said in one line naming the flag to change.

    gunicorn would otherwise retry a taken port for five seconds and end with a line that
    names no flag, and a bad data dir would surface as an errno deep in the worker.
    """
    for flag, address in (("--bind", settings.bind), ("--metrics-bind", settings.metrics_bind)):
        if address is None or address.port == 0:
            continue
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address.host, address.port))
            except OSError as exc:
                return (f"{flag} {address} cannot be bound ({exc.strerror}): another process "
                        f"listens there, or the address is not this host's; choose another "
                        f"with {flag} or {option(flag).env}")
    data_dir = settings.data_dir
    env = option("--data-dir").env
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        return f"--data-dir {data_dir} is not a directory; point --data-dir or {env} at one"
    existing = data_dir if os.path.isdir(data_dir) else os.path.dirname(
        os.path.abspath(data_dir))
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"--data-dir {data_dir}: {existing} is not writable by this user; fix its "
                f"permissions or mount, or point --data-dir or {env} elsewhere")
    return None


def describe(settings: Settings) -> str:
    """The one start-up line: what runs, where, and who may write."""
    if settings.backend is BackendKind.LOCAL:
        storage = f"local backend ({settings.durability} durability, data dir {settings.data_dir})"
    else:
        storage = f"redis backend ({redacted(settings.redis_url)})"
    writes = "need a write token" if settings.write_tokens else "ANONYMOUS"
    reads = "need a read token" if settings.read_tokens else "open"
    metrics = "off" if settings.metrics_bind is None else f"http://{settings.metrics_bind}"
    scheme = "https" if settings.tls_cert else "http"
    return (f"process-status {__version__} starting: api {scheme}://{settings.bind}, metrics "
            f"{metrics}, {storage}; writes {writes}, reads {reads}")


def raise_fd_limit() -> None:
    """Lift the soft limit on open files to the hard one: 1,024 is a common soft limit,
    and ~1,100 idle connections were enough to make the journal fail with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return
    log.info("open-file limit %d (was %d, hard limit %d)", hard, soft, hard)


def connection_limit(wanted: int) -> int:
    """--max-connections, lowered to fit the open-file limit (with a warning)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = max(16, soft - FD_RESERVE)
    if wanted > room:
        log.warning("--max-connections %d does not fit the open-file limit %d: using %d; "
                    "raise the limit (ulimit -n, LimitNOFILE=) to allow more", wanted, soft,
                    room)
        return room
    return wanted


async def app_factory() -> web.AppRunner:
    """Entry point for gunicorn run by hand: settings come from the environment."""
    import argparse

    return await make_factory(from_sources(argparse.Namespace(), os.environ))()


def worker_count(settings: Settings) -> int:
    """--workers, or by default: one with the local backend, one per CPU this process may
    use with Redis (the affinity mask, lowered to a cgroup CPU quota as containers set)."""
    if settings.workers:
        return settings.workers
    if settings.backend is BackendKind.LOCAL:
        return 1
    cpus = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cpus)


class Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers = worker_count(settings)
        self.metrics_dir: Path | None = None
        self.aggregator: Aggregator | None = None
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        config: dict[str, Any] = {
            "bind": [str(settings.bind)],
            "workers": self.workers,
            "worker_class": WORKER_CLASS,
            "graceful_timeout": math.ceil(settings.graceful_timeout),
            # The worker heartbeat; the loop never blocks (disk I/O runs on a thread).
            "timeout": 30,
            "keepalive": math.ceil(settings.keep_alive),
            "backlog": settings.backlog,
            "loglevel": settings.log_level,
            "logconfig_dict": logconfig_dict(settings.log_level),
            "accesslog": None,
            "proc_name": "process-status",
            # gunicorn >= 25 opens a control socket at a per-user path; two instances under
            # one user would clobber each other's.
            "control_socket_disable": True,
        }
        if self.workers > 1:
            config["post_fork"] = self._post_fork
        if settings.tls_cert is not None:
            config["certfile"] = settings.tls_cert
            config["keyfile"] = settings.tls_key
        for key, value in config.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def _post_fork(self, arbiter: Arbiter, worker: object) -> None:
        if self.aggregator is not None:
            self.aggregator.close_in_child()

    def load(self) -> Callable[[], Awaitable[web.AppRunner]]:
        return make_factory(self.settings, self.metrics_dir)

    def run(self) -> None:
        problem = preflight(self.settings)
        if problem is not None:
            log.critical("cannot start: %s", problem)
            sys.exit(1)
        raise_fd_limit()
        log.info("%s", describe(self.settings))
        if not self.settings.write_tokens:
            log.warning("writes need no token: anyone who can reach %s can record, delete and "
                        "reset positions; set PROCESS_STATUS_WRITE_TOKENS or "
                        "--write-tokens-file", self.settings.bind)
        settings = self.settings
        master = os.getpid()
        if self.workers > 1 and settings.metrics_bind is not None:
            # One port for the replica: the master merges what each worker serves.
            self.metrics_dir = private_directory()
            self.aggregator = Aggregator(settings.metrics_bind, self.metrics_dir,
                                         settings.metrics_tokens, settings.header_timeout,
                                         settings.backlog)
            self.aggregator.start()
        try:
            _Arbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(1)
        finally:
            # A worker leaves gunicorn's fork through SystemExit, which unwinds this very
            # frame in the child: the aggregator's thread and the socket directory are the
            # master's. (Stopping a thread that was never forked waited for ever: every
            # two-worker replica took gunicorn's graceful timeout to stop.)
            if os.getpid() == master:
                if self.aggregator is not None:
                    self.aggregator.stop()
                if self.metrics_dir is not None:
                    shutil.rmtree(self.metrics_dir, ignore_errors=True)


class _Arbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's arbiter with SIGHUP made safe for one stateful worker.

    On SIGHUP gunicorn starts the new worker before it stops the old one; ours would
    find the data dir locked, fail to boot, and the arbiter would stop the service.
    Here the old worker stops first (writing its final snapshot), then the new one
    starts and restores it: a short pause in service instead of an outage.
    """

    def reload(self) -> None:
        if self.app.settings.backend is not BackendKind.LOCAL:
            super().reload()  # no data-dir lock: new workers first, as gunicorn does
            return
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
