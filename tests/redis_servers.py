"""Real redis-server (and redis-sentinel) processes on free loopback ports, for tests.

No persistence (`--save ''`, `--appendonly no`); every process is stopped by its PID.
Tests that need Redis skip when redis-server is not installed (`.ci/install-services.sh`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.servers import free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_SENTINEL = shutil.which("redis-sentinel")


def require_redis() -> str:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (run .ci/install-services.sh)")
    return REDIS_SERVER


@dataclass
class RedisServer:
    port: int
    directory: Path
    args: tuple[str, ...]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def db_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"redis-{self.port}.log"

    def client(self, timeout: float = 5) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=timeout)

    def start(self) -> RedisServer:
        assert self.process is None or self.process.poll() is not None
        binary = require_redis()
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.directory),
                   "--logfile", str(self.log_path), *self.args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return self
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start: {self.log()}") from None
                time.sleep(0.02)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start_redis(directory: Path, *args: str, port: int | None = None) -> RedisServer:
    return RedisServer(port or free_port(), directory, args).start()


@contextlib.contextmanager
def redis_running(directory: Path, *args: str) -> Iterator[RedisServer]:
    server = start_redis(directory, *args)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Sentinel:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def start_sentinel(directory: Path, master: str, master_port: int, *,
                   down_after_ms: int = 500) -> Sentinel:
    """A redis-sentinel on a free loopback port watching `master` at 127.0.0.1:master_port."""
    if REDIS_SENTINEL is None:
        pytest.skip("redis-sentinel is not installed (run .ci/install-services.sh)")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"sentinel-{port}.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
        f"logfile {directory / f'sentinel-{port}.log'}\n"
        f"sentinel monitor {master} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
        f"sentinel failover-timeout {master} 5000\n"
        f"sentinel parallel-syncs {master} 2\n")
    process = subprocess.Popen([REDIS_SENTINEL, str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, start_new_session=True)
    sentinel = Sentinel(port, directory, process)
    deadline = time.monotonic() + 10
    while True:
        try:
            with sentinel.client() as client:
                client.ping()
            return sentinel
        except redis.RedisError:
            if process.poll() is not None or time.monotonic() > deadline:
                sentinel.stop()
                raise RuntimeError(f"redis-sentinel did not start: {config}") from None
            time.sleep(0.02)
