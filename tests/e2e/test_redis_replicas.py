"""Two real `serve` replicas on one real redis-server: the cross-replica contract.

A PUT on A releases a gate wait and a long-poll on B; B started late catches up;
killing the follower's connection loses nothing; with Redis stopped writes get 503
while reads are served and readiness says why, and it all recovers without a restart
(the copies writing back what the restarted, empty Redis lost). Trims, flushes and
the rest of what operators run into: test_redis_operations. Bounded waits, no timing
assertions.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from tests.redis_servers import RedisServer
from tests.servers import ServeProcess, put, request, start_serve
from tests.support import Ledger, until

HEADER = "X-Event-Streamex-Entity-Timestamp"



@contextlib.contextmanager
def replicas(tmp_path: Path, redis: RedisServer, count: int, *args: str,
             ) -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    try:
        for index in range(count):
            started.append(replica(tmp_path, redis, index, *args))
        yield started
    finally:
        for server in started:
            server.kill_all()


def replica(tmp_path: Path, redis: RedisServer, index: int, *args: str) -> ServeProcess:
    """A replica of two workers: each contract test then also crosses workers."""
    (tmp_path / f"replica{index}").mkdir(exist_ok=True)
    return start_serve(tmp_path / f"replica{index}" / "data", "--backend", "redis",
                       "--redis-url", redis.url, "--workers", "2", *args)


def everything(url: str) -> dict[str, int]:
    found: dict[str, int] = {}
    after = ""
    while True:
        status, _, body = request("GET", f"{url}/status?limit=10000&after={after}")
        assert status == 200
        page = orjson.loads(body)
        found.update({item["entity"]: item["timestamp"] for item in page["entities"]})
        if page["next"] is None:
            return found
        after = page["next"]


def processed(url: str, entity: str, ts: int, wait: float = 0) -> bool:
    status, _, body = request("GET", f"{url}/status/{entity}/processed?ts={ts}&wait={wait}",
                              timeout=wait + 10)
    assert status == 200, body
    result: bool = orjson.loads(body)["processed"]
    return result


def metric(server: ServeProcess, name: str) -> float:
    """`name` summed over the replica's workers (each worker's gauge has a `worker` label)."""
    text = request("GET", server.metrics_url)[2].decode()
    found = re.findall(rf'^{name}(?:\{{worker="\d+"\}})? (\S+)$', text, re.M)
    assert found, name
    return sum(float(value) for value in found)


def write_until(url: str, ledger: Ledger, stop: threading.Event, prefix: str) -> None:
    """Write fresh entities (max-merge cannot hide a loss) until `stop`; ledger the acks."""
    index = 0
    while not stop.is_set():
        entity = f"{prefix}{index}"
        index += 1
        value = ledger.take(entity)
        with contextlib.suppress(OSError):
            if put(url, entity, value) == 200:
                ledger.ack(entity, value)


def test_a_put_on_a_releases_a_gate_wait_and_a_long_poll_on_b(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with replicas(tmp_path, redis_server, 2, "--gate-wait", "20") as (a, b):
        assert not processed(b.url, "orders", 5)
        with ThreadPoolExecutor(2) as pool:
            gate = pool.submit(request, "GET", f"{b.url}/gate/orders/1",
                               headers={HEADER: "orders/5"}, timeout=30)
            poll = pool.submit(processed, b.url, "orders", 5, 20)
            until(lambda: metric(b, "process_status_waiters") == 2, "both requests to park")
            assert put(a.url, "orders", 5) == 200
            assert gate.result(30)[0] == 200
            assert poll.result(30) is True
        # The writer's own replica reads its write at once (it waited for its follower).
        assert put(b.url, "invoices", 7) == 200
        assert processed(b.url, "invoices", 7)
        until(lambda: processed(a.url, "invoices", 7), "A to see B's write")


def test_a_replica_started_late_catches_up(tmp_path: Path, redis_server: RedisServer) -> None:
    with replicas(tmp_path, redis_server, 1) as (a,):
        batch = {f"late{index}": index + 1 for index in range(2500)}
        status, _, _ = request("POST", f"{a.url}/status", orjson.dumps(batch),
                               {"Content-Type": "application/json"})
        assert status == 200
        assert request("DELETE", f"{a.url}/status/late7")[0] == 204
        del batch["late7"]
        b = replica(tmp_path, redis_server, 1)
        try:
            assert everything(b.url) == batch
            assert put(a.url, "late7", 99) == 200
            until(lambda: everything(b.url) == {**batch, "late7": 99}, "B to follow A")
        finally:
            b.kill_all()


def test_killing_the_followers_connection_loses_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    ledger = Ledger()
    stop = threading.Event()
    with replicas(tmp_path, redis_server, 2) as (a, b), redis_server.client() as admin:
        writer = threading.Thread(target=write_until, args=(a.url, ledger, stop, "k"))
        writer.start()
        try:
            kills = 0
            for round_ in range(4):
                target = (round_ + 1) * 50
                until(lambda: ledger.acks > target, "more acknowledged writes")  # noqa: B023
                for client in admin.client_list():
                    if client["cmd"] == "xread":  # a follower (one per replica)
                        admin.client_kill_filter(_id=client["id"])
                        kills += 1
            assert kills >= 4
        finally:
            stop.set()
            writer.join(30)
        for server in (a, b):
            until(lambda server=server: not ledger.lost(everything(server.url)),  # type: ignore[misc]
                  "every acknowledged write on both replicas")
            assert not ledger.never_above_sent(everything(server.url))


def test_redis_down_refuses_writes_serves_reads_and_recovers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    with replicas(tmp_path, redis_server, 2) as (a, b):
        assert put(a.url, "kept", 3) == 200
        until(lambda: processed(b.url, "kept", 3), "B to see the write")
        redis_server.kill()
        status, headers, body = request("PUT", f"{a.url}/status/other",
                                        b'{"timestamp": 1}', {"Content-Type": "application/json"})
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert b"write-not-durable" in body
        for server in (a, b):
            assert processed(server.url, "kept", 3)  # reads are served from the copy
            until(lambda server=server: request("GET", f"{server.url}/readyz/writes")[0] == 503,  # type: ignore[misc]
                  "the write check to say Redis is gone")
            assert b"unreachable" in request("GET", f"{server.url}/readyz/writes")[2]
            status, _, body = request("GET", f"{server.url}/readyz")  # reads still served
            assert status == 200
            assert orjson.loads(body)["writable"] is False
        until(lambda: metric(b, "process_status_redis_follower_connected") == 0,
              "the follower to notice")
        redis_server.start()  # same port, empty (no persistence): the copies keep theirs
        for server in (a, b):
            until(lambda server=server: request("GET", f"{server.url}/readyz/writes")[0] == 200,  # type: ignore[misc]
                  "writes ready after Redis is back")
        until(lambda: put(a.url, "after", 4) == 200, "writes to resume")
        # Nothing acknowledged is forgotten: "kept" was written back into Redis.
        until(lambda: everything(b.url) == {"kept": 3, "after": 4}, "B to hold both")
        with redis_server.client() as admin:
            assert admin.hget("{process-status}:entities", "kept") is not None
