"""Helpers to run the real `process-status serve` in a subprocess on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXECUTABLE = Path(sys.executable).with_name("process-status")


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never the same one twice in this test run.

    The kernel may hand the port it just released straight back, so two calls in a
    row could otherwise name the same port (seen: --bind and --metrics-bind equal).
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class ServeProcess:
    data_dir: Path
    port: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)
    tls: ssl.SSLContext | None = None
    """The client context trusting the API's certificate, when it serves HTTPS."""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                self.url + "/readyz", timeout=1, context=self.tls
            ) as response:
                if response.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"serve did not become ready in {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the gunicorn master and wait for it; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
        return self.process.returncode

    def kill_all(self) -> None:
        """SIGKILL the master and its worker (a crash: no cleanup runs)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def start_serve(
    data_dir: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    bind_host: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
) -> ServeProcess:
    """Start `process-status serve` in its own process group on free ports.

    `bind_host` may be a wildcard ("0.0.0.0"); the tests still talk to 127.0.0.1 only.
    """
    port, metrics_port = free_port(), free_port()
    log_path = data_dir.parent / f"serve-{port}-{time.monotonic_ns()}.log"
    command = [
        str(EXECUTABLE), "serve",
        "--bind", f"{bind_host}:{port}",
        "--metrics-bind", f"127.0.0.1:{metrics_port}",
        "--data-dir", str(data_dir),
        *args,
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROCESS_STATUS_")}
    environment.update(env or {})
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment,
            start_new_session=True, cwd=ROOT,
        )
    server = ServeProcess(data_dir, port, metrics_port, process, log_path, command, tls)
    if wait:
        try:
            server.wait_ready()
        except BaseException:
            server.kill_all()
            raise
    return server


@contextlib.contextmanager
def serving(
    data_dir: Path, *args: str, env: Mapping[str, str] | None = None,
    bind_host: str = "127.0.0.1", tls: ssl.SSLContext | None = None,
) -> Iterator[ServeProcess]:
    server = start_serve(data_dir, *args, env=env, bind_host=bind_host, tls=tls)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.kill_all()


def request(
    method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """A blocking HTTP request that returns (status, headers, body) for any status."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def put(url: str, entity: str, timestamp: int) -> int:
    """PUT one timestamp; the HTTP status."""
    status, _, _ = request("PUT", f"{url}/status/{entity}",
                           f'{{"timestamp": {timestamp}}}'.encode(),
                           {"Content-Type": "application/json"})
    return status


def write_sample_data_dir(data_dir: Path) -> Path:
    """A data dir written by the real service: a snapshot of 30 entities e00..e29 (a clean
    stop), then 21 journal records (f00..f19 new, then e00=999) cut short by kill -9."""
    with serving(data_dir) as server:
        for index in range(30):
            assert put(server.url, f"e{index:02d}", 100 + index) == 200
        assert server.stop() == 0
    with serving(data_dir, "--snapshot-interval", "3600") as server:
        for index in range(20):
            assert put(server.url, f"f{index:02d}", 200 + index) == 200
        assert put(server.url, "e00", 999) == 200
        server.kill_all()
    return data_dir
