"""Several workers per replica (Redis backend): each a full replica, one metrics port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from service.exposition.aggregator import fetch, socket_path
from tests.redis_servers import RedisServer
from tests.servers import EXECUTABLE, ServeProcess, put, request, serving

REQUESTS = 200



def worker_pids(server: ServeProcess, headers: dict[str, str] | None = None) -> set[str]:
    _, _, body = request("GET", server.metrics_url, headers=headers)
    return set(re.findall(r'process_status_entities\{worker="(\d+)"\}', body.decode()))


def both_workers(server: ServeProcess, headers: dict[str, str] | None = None) -> set[str]:
    """The two workers' pids, once both serve (the second may still be syncing)."""
    deadline = time.monotonic() + 30
    while len(found := worker_pids(server, headers)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_one_scrape_adds_up_requests_served_by_every_worker(
    tmp_path: Path, redis_server: RedisServer,
) -> None:
    with serving(tmp_path / "data", "--backend", "redis", "--redis-url", redis_server.url,
                 "--workers", "2") as server:
        workers = both_workers(server)
        assert len(workers) == 2
        assert put(server.url, "spread", 1) == 200
        # A fresh connection per request: the kernel hands them to either worker.
        for _ in range(REQUESTS):
            status, _, body = request("GET", f"{server.url}/status/spread/processed?ts=1")
            assert status == 200
            assert orjson.loads(body)["processed"] is True
        _, _, text = request("GET", server.metrics_url)
        counted = re.search(
            r'process_status_http_requests_total\{method="GET",'
            r'route="/status/\{entity\}/processed",status="200"\} (\S+)', text.decode())
        assert counted is not None
        assert float(counted.group(1)) == REQUESTS
        # ...and it is a sum: each worker, asked on its own socket, served its share.
        logged = re.search(r"worker sockets in (\S+)\)", server.log())
        assert logged is not None
        directory = Path(logged.group(1))
        shares = {}
        for pid in workers:
            own = fetch(socket_path(directory, int(pid)))
            assert own is not None
            found = re.search(r'process_status_http_requests_total\{method="GET",'
                              r'route="/status/\{entity\}/processed",status="200"\} (\S+)',
                              own)
            shares[pid] = float(found.group(1)) if found else 0.0
        assert sum(shares.values()) == REQUESTS
        assert all(share > 0 for share in shares.values()), shares


def test_a_write_on_one_worker_is_read_on_every_worker(
    tmp_path: Path, redis_server: RedisServer,
) -> None:
    with serving(tmp_path / "data", "--backend", "redis", "--redis-url", redis_server.url,
                 "--workers", "2") as server:
        for value in range(1, 21):
            assert put(server.url, "everywhere", value) == 200
            # Read-your-writes whichever worker the next connection lands on.
            status, _, body = request("GET", f"{server.url}/status/everywhere")
            assert status == 200
            assert orjson.loads(body)["timestamp"] == value


def test_several_workers_need_the_redis_backend(tmp_path: Path) -> None:
    done = subprocess.run([str(EXECUTABLE), "serve", "--data-dir", str(tmp_path / "data"),
                           "--workers", "2"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--workers 2 needs --backend redis" in done.stderr


def test_the_merged_metrics_port_keeps_its_token_and_its_limits(
    tmp_path: Path, redis_server: RedisServer,
) -> None:
    token = "workers-metrics-token-0123456789"
    with serving(tmp_path / "data", "--backend", "redis", "--redis-url", redis_server.url,
                 "--workers", "2", env={"PROCESS_STATUS_METRICS_TOKENS": token}) as server:
        status, headers, _ = request("GET", server.metrics_url)
        assert status == 401
        assert headers["Content-Type"] == "application/problem+json"
        # The same answer as a single worker's metrics site gives (one ScrapeGate).
        assert headers["WWW-Authenticate"] == 'Bearer realm="process-status-metrics"'
        authorized = {"Authorization": f"Bearer {token}"}
        status, _, _ = request("GET", server.metrics_url, headers=authorized)
        assert status == 200
        # Every worker answers the master (their sockets need no token of their own).
        assert len(both_workers(server, authorized)) == 2
        with ThreadPoolExecutor(8) as pool:  # a flood: far over 20 scrapes a second
            statuses = list(pool.map(
                lambda _: request("GET", server.metrics_url, headers=authorized)[0],
                range(120)))
        assert 429 in statuses
        assert statuses.count(200) >= 20


def test_a_worker_that_dies_keeps_its_counts_in_the_sum(
    tmp_path: Path, redis_server: RedisServer,
) -> None:
    with serving(tmp_path / "data", "--backend", "redis", "--redis-url", redis_server.url,
                 "--workers", "2") as server:
        workers = both_workers(server)
        assert put(server.url, "survivor", 1) == 200
        for _ in range(REQUESTS):
            assert request("GET", f"{server.url}/status/survivor/processed?ts=1")[0] == 200
        assert processed_total(server) == REQUESTS  # the master has seen every worker's part
        victim = int(sorted(workers)[0])
        os.kill(victim, signal.SIGKILL)  # gunicorn starts a replacement
        deadline = time.monotonic() + 30
        while str(victim) in (pids := worker_pids(server)) or len(pids) < 2:
            assert time.monotonic() < deadline, "no replacement worker"
            time.sleep(0.1)
        # A counter that went down would read as a reset to Prometheus: the dead worker's
        # requests stay counted.
        assert processed_total(server) == REQUESTS


def processed_total(server: ServeProcess) -> float:
    _, _, body = request("GET", server.metrics_url)
    found = re.search(r'process_status_http_requests_total\{method="GET",'
                      r'route="/status/\{entity\}/processed",status="200"\} (\S+)',
                      body.decode())
    return float(found.group(1)) if found else 0.0
