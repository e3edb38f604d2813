"""Subprocess and port helpers for the gateway tests: free ports, start, wait, stop by PID."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"


@dataclass
class Process:
    """A child process whose stdout and stderr go to `log`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, limit: int = 4000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-limit:]

    def describe(self) -> str:
        return (
            f"{self.name} (pid {self.pid}, exit {self.popen.poll()}); log tail:\n{self.log_tail()}"
        )


@dataclass(frozen=True)
class Service:
    """A running `process-status serve`: its API and metrics host:port."""

    address: str
    metrics: str
    process: Process

    def stop(self) -> None:
        stop(self.process)


def start(name: str, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path) -> Process:
    """Start `argv` in its own session, output appended to `log`."""
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(name, popen, log)


def stop(process: Process, timeout: float = 15.0) -> None:
    """SIGTERM the process by PID, then SIGKILL it if it has not exited after `timeout`."""
    if process.popen.poll() is None:
        process.popen.send_signal(signal.SIGTERM)
        try:
            process.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait(5)


def probe(address: str, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes] | None:
    """GET http://address/path once: (status, body), or None when nothing answered."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_for(
    process: Process,
    ready: Callable[[], bool],
    what: str,
    timeout: float = 30.0,
) -> None:
    """Poll `ready` until it holds; fail with the process's log if it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            pytest.fail(f"{process.name} exited before {what}: {process.describe()}")
        if ready():
            return
        time.sleep(0.05)
    pytest.fail(f"{process.name}: no {what} within {timeout} s: {process.describe()}")


def clean_environ() -> dict[str, str]:
    """os.environ without the service's own PROCESS_STATUS_* settings (tokens, etc.)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PROCESS_STATUS_")}
