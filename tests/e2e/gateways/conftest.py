"""Fixtures: the real process-status, a stub read model, and each real gateway on loopback.

Every process is started on a free 127.0.0.1 port and stopped by PID when its
fixture ends. A gateway whose binary is missing skips its tests and names the
package to install.
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest

from tests.servers import free_port

from .processes import (
    LOOPBACK,
    Process,
    Service,
    clean_environ,
    probe,
    start,
    stop,
    wait_for,
)
from .specs import (
    GATE_CACHE_SECONDS,
    GATE_WAIT,
    GATEWAYS,
    UPSTREAM_BODY,
    UPSTREAM_FAIL_PATH,
    Addresses,
    Gateway,
    Stack,
)


class _ReadModel(BaseHTTPRequestHandler):
    """Stub upstream: 200 "read-model <method> <path>" for everything, 500 on the fail path."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        failing = self.path.startswith(UPSTREAM_FAIL_PATH)
        body = UPSTREAM_BODY + f" {self.command} {self.path}".encode()
        self.send_response(500 if failing else 200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ReadModelServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Gateways drop idle keep-alive connections when they stop: not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    """host:port of the stub read model (a thread in this process)."""
    server = _ReadModelServer((LOOPBACK, 0), _ReadModel)
    thread = threading.Thread(target=server.serve_forever, name="read-model", daemon=True)
    thread.start()
    try:
        yield f"{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _service_argv() -> list[str]:
    script = Path(sys.executable).parent / "process-status"
    if script.is_file():
        return [str(script)]
    found = shutil.which("process-status")
    return [found] if found else [sys.executable, "-m", "service"]


@contextmanager
def _run_service(work: Path, *extra: str) -> Iterator[Service]:
    address, metrics = f"{LOOPBACK}:{free_port()}", f"{LOOPBACK}:{free_port()}"
    argv = [
        *_service_argv(),
        "serve",
        "--bind", address,
        "--metrics-bind", metrics,
        "--data-dir", str(work / "data"),
        "--durability", "snapshot",
        "--gate-wait", str(GATE_WAIT),
        # Long enough that a cached answer cannot expire between two requests
        # of one test, however slow the machine.
        "--gate-cache-seconds", str(GATE_CACHE_SECONDS),
        *extra,
    ]  # fmt: skip
    (work / "data").mkdir()
    process = start("process-status", argv, clean_environ(), work / "service.log", work)
    try:
        wait_for(process, lambda: _status(probe(address, "/readyz")) == 200, "200 from /readyz")
        yield Service(address, metrics, process)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The real `process-status serve`, ready, on a fresh data dir, no tokens."""
    with _run_service(tmp_path_factory.mktemp("process-status")) as running:
        yield running


@pytest.fixture(scope="session")
def service_gate_503(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Another process-status, run with `--gate-status 503`."""
    with _run_service(tmp_path_factory.mktemp("process-status-503"), "--gate-status", "503") as s:
        yield s


def _status(answer: tuple[int, bytes] | None) -> int | None:
    return None if answer is None else answer[0]


@pytest.fixture(scope="module", params=sorted(GATEWAYS))
def gateway_spec(request: pytest.FixtureRequest) -> Gateway:
    """The gateway under test; skips when its binary is not installed."""
    spec = GATEWAYS[str(request.param)]
    reason = spec.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    return spec


@contextmanager
def _run_gateway(spec: Gateway, addrs: Addresses, work: Path) -> Iterator[Process]:
    binary = spec.find()
    assert binary is not None
    launch = spec.prepare(binary, addrs, work, clean_environ())
    process = start(spec.name, launch.argv, launch.env, work / f"{spec.name}.log", work)
    try:
        # Wait until a request without a token reaches the read model, i.e. the
        # gateway listens and has loaded its routes (it does not ask the gate).
        wait_for(
            process,
            lambda: _status(probe(addrs.listen, "/")) == 200,
            "200 through the gateway",
        )
        yield process
    finally:
        stop(process)


@contextmanager
def _gateway_in_front_of(
    spec: Gateway, service: Service, upstream: str, work: Path
) -> Iterator[Stack]:
    addrs = Addresses(listen=f"{LOOPBACK}:{free_port()}", gate=service.address,
                      upstream=upstream)
    with _run_gateway(spec, addrs, work) as process:
        yield Stack(spec, process, f"http://{addrs.listen}", service.address, upstream,
                    service.metrics)


@pytest.fixture(scope="module")
def gateway(
    gateway_spec: Gateway, service: Service, upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The gateway on its committed config, in front of the stub, gating through the service."""
    work = tmp_path_factory.mktemp(gateway_spec.name)
    with _gateway_in_front_of(gateway_spec, service, upstream, work) as stack:
        yield stack


@pytest.fixture
def gateway_and_own_service(
    gateway_spec: Gateway, upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Service]]:
    """The same gateway and config, gating through a process-status of its own to stop."""
    work = tmp_path_factory.mktemp(f"{gateway_spec.name}-down")
    with _run_service(work) as own, _gateway_in_front_of(gateway_spec, own, upstream,
                                                          work) as stack:
        yield stack, own


OwnStack = Callable[..., tuple[Stack, Service]]


@pytest.fixture
def gateway_with_serve_args(
    gateway_spec: Gateway, upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OwnStack]:
    """Start the same gateway and config in front of a process-status of its own, run with
    extra `serve` flags (they win over the defaults above, e.g. --gate-cache-seconds);
    both are stopped when the test ends."""
    with ExitStack() as running:

        def start(*serve_args: str) -> tuple[Stack, Service]:
            work = tmp_path_factory.mktemp(f"{gateway_spec.name}-own")
            own = running.enter_context(_run_service(work, *serve_args))
            stack = running.enter_context(_gateway_in_front_of(gateway_spec, own, upstream,
                                                               work))
            return stack, own

        yield start


@pytest.fixture
def gateway_gate_503(
    gateway_spec: Gateway,
    service_gate_503: Service,
    upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The same gateway and config, gating through the service run with `--gate-status 503`."""
    work = tmp_path_factory.mktemp(f"{gateway_spec.name}-503")
    with _gateway_in_front_of(gateway_spec, service_gate_503, upstream, work) as stack:
        yield stack


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for talking to the gateway and the service."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session
