"""Hostile and careless clients against the real `serve`, over raw sockets.

Each test is one row of the hardening issue: what a client that hoards connections,
trickles bytes, lies about its body or sends garbage gets, and that everyone else is
still served.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.servers import EXECUTABLE, ServeProcess, put, request, serving, start_serve
from tests.support import until

WRITE = "limits-write-token-0123456789abcdef"
METRICS = "metrics-token-0123456789abcdef"


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection or goes quiet."""
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: (\d+)", head)
                if length and len(body) >= int(length.group(1)):
                    break
    return b"".join(chunks)


def status_of(raw: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    assert match, raw[:200]
    return int(match.group(1))


def problem_of(raw: bytes) -> dict[str, object]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head.lower(), head
    found: dict[str, object] = orjson.loads(body)
    assert str(found["type"]).startswith("urn:process-status:problem:")
    return found


def metric(server: ServeProcess, name: str, **labels: str) -> float:
    status, _, body = request("GET", server.metrics_url,
                              headers={"Authorization": f"Bearer {METRICS}"})
    assert status == 200, body
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in body.decode().splitlines():
        if line.startswith(name + ("{" + wanted + "}" if labels else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            with contextlib.suppress(OSError):
                opened.append(connect(port))
        yield opened
    finally:
        for sock in opened:
            sock.close()


def test_idle_connections_past_the_fd_limit_leave_health_and_writes_working(
    tmp_path: Path,
) -> None:
    # Under a 512-descriptor limit the cap becomes 512 - 256; 600 idle connections would
    # have exhausted the descriptors (EMFILE: resets for everyone, the journal failing).
    server = start_serve(tmp_path / "data", wait=False)
    server.kill_all()  # only its ports and paths are wanted: run it again under prlimit
    command = ["prlimit", "--nofile=512:512", "--", str(EXECUTABLE), *server.args[1:]]
    with open(server.log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    limited = ServeProcess(server.data_dir, server.port, server.metrics_port, process,
                           server.log_path, command)
    try:
        limited.wait_ready()
        assert "does not fit the open-file limit 512" in limited.log()
        with idle_connections(limited.port, 600) as hoarded:
            assert len(hoarded) == 600
            status, _, _ = request("GET", limited.url + "/healthz")
            assert status == 200
            assert put(limited.url, "after.flood", 7) == 200
            status, _, body = request("GET", limited.url + "/status/after.flood")
            assert status == 200
            assert orjson.loads(body)["timestamp"] == 7
            assert metric(limited, "process_status_connections_closed_total",
                          site="api", reason="evicted_idle") > 0
        assert "EMFILE" not in limited.log()
        assert "Too many open files" not in limited.log()
    finally:
        limited.kill_all()


def test_the_api_socket_listens_with_the_configured_backlog(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--backlog", "1000") as server:
        listing = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"],
                                 capture_output=True, text=True, check=True).stdout
        # For a listening socket ss shows the backlog as Send-Q (third column).
        assert listing.split()[2] == "1000", listing


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serving(tmp_path_factory.mktemp("limits") / "data", "--header-timeout", "1",
                 "--body-timeout", "1", "--keep-alive", "2",
                 env={"PROCESS_STATUS_WRITE_TOKENS": WRITE,
                      "PROCESS_STATUS_METRICS_TOKENS": METRICS}) as s:
        yield s


def test_headers_trickled_slowly_get_408(server: ServeProcess) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        raw = read_response(sock)
    assert status_of(raw) == 408
    assert problem_of(raw)["type"] == "urn:process-status:problem:request-timeout"
    assert time.monotonic() - started < 8  # cut by the 1 s timeout, not the keep-alive


def test_a_body_that_never_finishes_gets_408(server: ServeProcess) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"PUT /status/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + WRITE.encode() + b"\r\n"
                     b"Content-Length: 40\r\n\r\n{\"timestamp\": ")
        raw = read_response(sock)
    assert status_of(raw) == 408
    assert "--body-timeout" in str(problem_of(raw)["detail"])
    status, _, _ = request("GET", server.url + "/status/slow")
    assert status == 404  # nothing was recorded


def test_the_metrics_port_closes_idle_connections_and_needs_its_token(
    server: ServeProcess,
) -> None:
    with connect(server.metrics_port) as sock:
        sock.settimeout(10)
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server: keep-alive 2 s, not an hour
        assert time.monotonic() - started < 8
    status, headers, body = request("GET", server.metrics_url)
    assert status == 401
    assert headers["Content-Type"] == "application/problem+json"
    status, _, body = request("GET", server.metrics_url,
                              headers={"Authorization": f"Bearer {METRICS}"})
    assert status == 200
    assert b"process_status_connections" in body


@pytest.mark.parametrize(("headers", "status"), [
    (b"Content-Length: 1000000000000\r\nAuthorization: Bearer " + WRITE.encode(), 413),
    (b"Content-Length: 20", 401),
])
def test_expect_100_continue_is_answered_before_any_continue(
    server: ServeProcess, headers: bytes, status: int,
) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"PUT /status/big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     + headers + b"\r\n\r\n")
        raw = read_response(sock)
    assert b"100 Continue" not in raw
    assert status_of(raw) == status
    problem_of(raw)


def test_expect_100_continue_with_a_good_token_continues(server: ServeProcess) -> None:
    body = b'{"timestamp": 5}'
    with connect(server.port) as sock:
        sock.sendall(b"PUT /status/continued HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Authorization: Bearer " + WRITE.encode() + b"\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        raw = read_response(sock)
    assert status_of(raw) == 200


@pytest.mark.parametrize("head", [
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
])
def test_odd_requests_get_problems_too(server: ServeProcess, head: bytes) -> None:
    with connect(server.port) as sock:
        sock.sendall(head)
        raw = read_response(sock)
    assert 400 <= status_of(raw) < 500
    problem_of(raw)


def test_a_malformed_header_is_counted_and_never_logged_with_its_value(
    server: ServeProcess,
) -> None:
    secret = "Bearer leaked-token-0123456789abcdef"
    before = metric(server, "process_status_connections_closed_total", site="api",
                    reason="bad_request")
    with connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization\x01: "
                     + secret.encode() + b"\r\n\r\n")
        raw = read_response(sock)
    assert status_of(raw) == 400
    assert metric(server, "process_status_connections_closed_total", site="api",
                  reason="bad_request") == before + 1
    log = server.log()
    assert "leaked-token" not in log
    assert "Traceback" not in log


def test_a_scrape_flood_is_answered_429_past_its_rate(tmp_path: Path) -> None:
    statuses: list[int] = []
    with serving(tmp_path / "data") as server, connect(server.metrics_port) as sock:
        for _ in range(80):  # back to back on one connection, well over 20/s
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = read_response(sock)
            statuses.append(status_of(raw))
            if statuses[-1] == 429:
                assert str(problem_of(raw)["type"]).endswith("too-many-scrapes")
                break
    assert 429 in statuses
    assert statuses.count(200) >= 20  # the burst: Prometheus and people are never refused


def test_past_max_connections_a_busy_server_answers_503_and_logs_no_traceback(
    tmp_path: Path,
) -> None:
    with serving(tmp_path / "data", "--max-connections", "2", "--header-timeout", "30") as s:
        # Two connections mid-request (a byte of headers sent): busy, so not evictable.
        busy = [connect(s.port) for _ in range(2)]
        try:
            for sock in busy:
                sock.sendall(b"G")
            # The metrics port is served by the same event loop: once it counts both
            # connections, the loop has also read their byte (they are no longer idle).
            until(lambda: metric_open(s, "process_status_connections", site="api") == 2,
                  "both connections accepted and read")
            with connect(s.port) as third:
                third.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                raw = read_response(third)
            assert status_of(raw) == 503
            assert problem_of(raw)["type"] == "urn:process-status:problem:too-many-connections"
        finally:
            for sock in busy:
                sock.close()
        assert metric_open(s, "process_status_connections_closed_total", site="api",
                           reason="limit") >= 1
        assert "Traceback" not in s.log()


def metric_open(server: ServeProcess, name: str, **labels: str) -> float:
    status, _, body = request("GET", server.metrics_url)
    assert status == 200, body
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    found = re.search(rf"^{name}{{{wanted}}} (\S+)$", body.decode(), re.M)
    return float(found.group(1)) if found else 0.0


def test_body_bytes_after_an_early_answer_get_no_second_response(server: ServeProcess) -> None:
    with connect(server.port) as sock:
        # No token: 401 at once; the body then trickles in and must not look like a request.
        sock.sendall(b"PUT /status/x HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n")
        first = read_response(sock, timeout=5)
        assert status_of(first) == 401
        for _ in range(4):
            sock.sendall(b"12345")
            time.sleep(0.4)
        sock.settimeout(3)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            assert b"408" not in sock.recv(4096)
