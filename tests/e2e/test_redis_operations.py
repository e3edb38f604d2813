"""Redis mode as operators live with it: stops, health, the first sync, read-your-writes,
Redis losing its data, trims. Real redis-server, real gunicorn workers, real signals.

Each test pins a defect an operator or a fault-injection run found; bounded waits.
The stop tests bound how long a stop may take (gunicorn's graceful timeout, 41 s, is
what a hung worker costs), which is the behaviour under test, not a speed figure.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from tests.e2e.test_redis_replicas import everything, metric, processed, replica
from tests.e2e.test_workers import both_workers
from tests.redis_servers import RedisServer, start_redis
from tests.servers import ServeProcess, free_port, put, request, start_serve
from tests.support import Ledger, until

HEADER = "X-Event-Streamex-Entity-Timestamp"
# A hung worker costs gunicorn's graceful timeout (41 s); a healthy stop takes 1-3 s.
PROMPT_STOP = 15.0


def timed_stop(server: ServeProcess, sig: int = signal.SIGTERM) -> float:
    started = time.monotonic()
    code = server.stop(sig, timeout=60)
    elapsed = time.monotonic() - started
    assert code == 0, server.log()[-3000:]
    return elapsed


def redis_replica(tmp_path: Path, redis: RedisServer, *args: str, workers: int = 2,
                  wait: bool = True) -> ServeProcess:
    (tmp_path / "replica").mkdir(exist_ok=True)
    return start_serve(tmp_path / "replica" / "data", "--backend", "redis", "--redis-url",
                       redis.url, "--workers", str(workers), *args, wait=wait)


def answers(url: str) -> bool:
    try:
        return request("GET", url)[0] == 200
    except OSError:
        return False  # not listening yet


def problem_kind(body: bytes) -> str:
    kind: str = orjson.loads(body)["type"]
    return kind.rsplit(":", 1)[1]


def redis_positions(redis: RedisServer) -> dict[str, int]:
    with redis.client() as client:
        return {name.decode(): int(value.split(b" ")[0]) for name, value in
                client.hgetall("{process-status}:entities").items()}


# -- 1, 7: prompt, quiet stops ----------------------------------------------------------


def test_a_two_worker_replica_stops_promptly_idle_and_with_parked_long_polls(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    server = redis_replica(tmp_path, redis_server)
    try:
        both_workers(server)
        assert timed_stop(server) < PROMPT_STOP
    finally:
        server.kill_all()
    assert "Error while closing socket" not in server.log()


    server = redis_replica(tmp_path, redis_server)
    try:
        both_workers(server)
        with ThreadPoolExecutor(4) as pool:
            polls = [pool.submit(request, "GET",
                                 f"{server.url}/status/parked/processed?ts=1&wait=25",
                                 timeout=40) for _ in range(4)]
            until(lambda: metric(server, "process_status_waiters") == 4, "the polls to park")
            assert timed_stop(server) < PROMPT_STOP
            # Each parked poll got its answer (not processed) before the workers went.
            for poll in polls:
                status, _, body = poll.result(10)
                assert status == 200
                assert orjson.loads(body)["processed"] is False
    finally:
        server.kill_all()


def test_a_two_worker_replica_stops_promptly_under_load(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    server = redis_replica(tmp_path, redis_server)
    stop = threading.Event()
    ledger = Ledger()

    def load(prefix: str) -> None:
        index = 0
        while not stop.is_set():
            index += 1
            value = ledger.take(f"{prefix}{index}")
            try:
                if put(server.url, f"{prefix}{index}", value) == 200:
                    ledger.ack(f"{prefix}{index}", value)
            except OSError:
                return
    try:
        both_workers(server)
        threads = [threading.Thread(target=load, args=(f"l{n}-",)) for n in range(4)]
        for thread in threads:
            thread.start()
        until(lambda: ledger.acks > 100, "writes under way")
        assert timed_stop(server) < PROMPT_STOP
        stop.set()
        for thread in threads:
            thread.join(30)
    finally:
        stop.set()
        server.kill_all()
    # Every write answered 200 before the stop is in Redis.
    assert ledger.lost(redis_positions(redis_server)) == []


def test_sighup_replaces_the_workers_without_the_arbiter_killing_any(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    server = redis_replica(tmp_path, redis_server)
    try:
        old = both_workers(server)
        assert put(server.url, "kept", 5) == 200
        os.kill(server.process.pid, signal.SIGHUP)
        until(lambda: all(f"Worker exiting (pid: {pid})" in server.log() for pid in old),
              "the old workers to exit", PROMPT_STOP)
        until(lambda: len(both_workers(server) - old) == 2, "two new workers")
        assert processed(server.url, "kept", 5)
        assert timed_stop(server) < PROMPT_STOP
    finally:
        server.kill_all()
    log = server.log()
    assert "SIGKILL" not in log
    assert "Error while closing socket" not in log


# -- 3: no false answers before the first sync ---------------------------------------------


def test_before_its_first_sync_a_replica_answers_503_never_404_and_stops_at_once(
    tmp_path: Path,
) -> None:
    nowhere = RedisServer(free_port(), tmp_path / "redis", ())
    server = redis_replica(tmp_path, nowhere, workers=1, wait=False)
    try:
        until(lambda: answers(f"{server.url}/healthz"), "the worker to serve")
        for method, path, headers in (
            ("GET", "/status/posts", {}),
            ("GET", "/status/posts/processed?ts=1", {}),
            ("GET", "/status", {}),
            ("GET", "/gate/posts/1", {HEADER: "posts/1"}),
        ):
            status, answer_headers, body = request(method, server.url + path, headers=headers)
            assert status == 503, (path, body)
            assert problem_kind(body) == "not-synced", body
            assert answer_headers["Retry-After"] == "1"
            assert b"cannot answer yet" in body
        status, _, body = request("PUT", f"{server.url}/status/posts", b'{"timestamp": 1}',
                                  {"Content-Type": "application/json"})
        assert status == 503
        assert b"was not sent" in body
        assert request("GET", f"{server.url}/readyz")[0] == 503
        assert "no local copy yet" in server.log()
        assert "reads are served from the local copy" not in server.log()
        # A stop while the worker still waits for its first sync does not wait it out.
        assert timed_stop(server) < 5.0
    finally:
        server.kill_all()


def test_a_replica_started_before_redis_serves_once_redis_comes(tmp_path: Path) -> None:
    port = free_port()
    later = RedisServer(port, tmp_path / "redis", ())
    server = redis_replica(tmp_path, later, workers=1, wait=False)
    try:
        until(lambda: answers(f"{server.url}/healthz"), "the worker to serve")
        assert request("GET", f"{server.url}/status/x")[0] == 503
        later.start()
        try:
            server.wait_ready(30)
            assert request("GET", f"{server.url}/status/x")[0] == 404  # now it knows
            assert put(server.url, "x", 1) == 200
        finally:
            later.stop()
    finally:
        server.kill_all()


# -- 2: writes-health follows WAIT -------------------------------------------------------


def test_a_failing_wait_turns_writes_health_503_until_a_replica_confirms_again(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    server = redis_replica(tmp_path, redis_server, "--redis-wait-replicas", "1",
                           "--redis-wait-timeout", "100ms", workers=1)
    follower: RedisServer | None = None
    try:
        status, _, body = request("PUT", f"{server.url}/status/w", b'{"timestamp": 1}',
                                  {"Content-Type": "application/json"})
        assert status == 503
        assert b"only 0 of 1 Redis replicas confirmed" in body
        assert b"Retrying is safe" in body
        status, _, body = request("GET", f"{server.url}/readyz/writes")
        assert status == 503
        assert b"writes to Redis fail" in body
        ready = orjson.loads(request("GET", f"{server.url}/readyz")[2])
        assert ready["status"] == "ready"
        assert ready["writable"] is False
        assert metric(server, "process_status_writable") == 0
        # No write comes; a Redis replica attaches: the probe clears the state by itself.
        follower = start_redis(tmp_path / "redis-replica", "--replicaof", "127.0.0.1",
                               str(redis_server.port))
        until(lambda: request("GET", f"{server.url}/readyz/writes")[0] == 200,
              "writes-health to recover without a write")
        assert metric(server, "process_status_writable") == 1
        assert put(server.url, "w", 2) == 200
    finally:
        server.kill_all()
        if follower is not None:
            follower.stop()


# -- 8: a 2xx write is read on the worker that answered it -------------------------------


def test_an_acknowledged_write_is_read_back_while_the_follower_is_stalled(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    server = redis_replica(tmp_path, redis_server, workers=1)
    try:
        assert put(server.url, "ryw", 1) == 200
        with redis_server.client() as admin:
            admin.execute_command("ACL", "SETUSER", "default", "-xread")
            try:
                # Ends the XREAD already blocked; the follower's next one is refused.
                assert put(server.url, "other", 1) == 200
                assert put(server.url, "ryw", 2) == 200
                status, _, body = request("GET", f"{server.url}/status/ryw")
                assert status == 200
                assert orjson.loads(body)["timestamp"] == 2
                assert request("GET", f"{server.url}/gate/ryw/1",
                               headers={HEADER: "ryw/2"})[0] == 200
                assert processed(server.url, "ryw", 2)
            finally:
                admin.execute_command("ACL", "SETUSER", "default", "+xread")
        assert put(server.url, "ryw", 3) == 200
        until(lambda: metric(server, "process_status_redis_follower_connected") == 1,
              "the follower to follow again")
        assert everything(server.url) == {"ryw": 3, "other": 1}
    finally:
        server.kill_all()


# -- 10: Redis losing its data -----------------------------------------------------------


def test_a_flushall_keeps_every_copy_and_writes_it_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    a = replica(tmp_path, redis_server, 0)
    b = replica(tmp_path, redis_server, 1)
    try:
        written = {f"f{index}": 1000 + index for index in range(200)}
        status, _, _ = request("POST", f"{a.url}/status", orjson.dumps(written),
                               {"Content-Type": "application/json"})
        assert status == 200
        until(lambda: everything(b.url) == written, "B to follow")
        with redis_server.client() as admin:
            admin.flushall()
        until(lambda: redis_positions(redis_server) == written,
              "the copies to be written back into Redis")
        for server in (a, b):
            assert everything(server.url) == written  # never emptied
            assert metric(server, "process_status_redis_data_losses_total") >= 1
            until(lambda server=server: metric(  # type: ignore[misc]
                server, "process_status_redis_repair_pending") == 0, "the repair to finish")
            ready = orjson.loads(request("GET", f"{server.url}/readyz")[2])
            assert ready == {"status": "ready", "writable": True}
        assert "written back" in a.log() or "written back" in b.log()
        # Writes go on as before, in Redis's new epoch.
        assert put(b.url, "f1", 5000) == 200
        until(lambda: everything(a.url)["f1"] == 5000, "A to follow B")
    finally:
        a.kill_all()
        b.kill_all()


def test_a_redis_restarted_empty_gets_the_copies_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    a = replica(tmp_path, redis_server, 0)
    try:
        assert put(a.url, "kept", 3) == 200
        redis_server.kill()
        redis_server.start()  # same port, no persistence: empty, no function library
        until(lambda: redis_positions(redis_server) == {"kept": 3},
              "the copy to be written back into the restarted Redis")
        assert processed(a.url, "kept", 3)
        assert put(a.url, "after", 4) == 200
        assert everything(a.url) == {"kept": 3, "after": 4}
    finally:
        a.kill_all()


# -- 11: trims --------------------------------------------------------------------------


def test_a_trim_to_nothing_does_not_make_a_current_copy_resync(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    a = replica(tmp_path, redis_server, 0)
    try:
        both_workers(a)
        assert put(a.url, "t1", 1) == 200
        until(lambda: metric(a, "process_status_redis_follower_entries_total") == 2,
              "both workers' followers to apply the write")
        before = metric(a, "process_status_redis_follower_resyncs_total")
        with redis_server.client() as admin:
            admin.xtrim("{process-status}:log", maxlen=0, approximate=False)
        time.sleep(3)  # three of the follower's checks (every second)
        assert metric(a, "process_status_redis_follower_resyncs_total") == before
        assert put(a.url, "t2", 2) == 200
        assert everything(a.url) == {"t1": 1, "t2": 2}
    finally:
        a.kill_all()


def test_a_copy_that_lagged_past_a_trim_copies_again_exactly(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    a = replica(tmp_path, redis_server, 0)
    b = replica(tmp_path, redis_server, 1)
    workers = [int(pid) for pid in both_workers(b)]
    try:
        assert put(a.url, "gone", 1) == 200
        until(lambda: processed(b.url, "gone", 1), "B to follow")
        before = metric(b, "process_status_redis_follower_resyncs_total")
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            assert put(a.url, "t2", 2) == 200
            assert request("DELETE", f"{a.url}/status/gone")[0] == 204
            with redis_server.client() as admin:
                admin.xtrim("{process-status}:log", maxlen=0, approximate=False)
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        until(lambda: metric(b, "process_status_redis_follower_resyncs_total") > before,
              "B to copy again")
        # Exactly what Redis holds: the delete B never saw in the stream included, and
        # nothing written back (Redis lost nothing).
        until(lambda: everything(b.url) == {"t2": 2}, "B to hold what Redis holds")
        assert metric(b, "process_status_redis_data_losses_total") == 0
    finally:
        a.kill_all()
        b.kill_all()


def test_a_stalled_redis_is_answered_within_the_documented_bound(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    server = redis_replica(tmp_path, redis_server, "--redis-wait-timeout", "100ms", workers=1)
    try:
        assert put(server.url, "s", 1) == 200
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, headers, body = request("PUT", f"{server.url}/status/s", b'{"timestamp": 2}',
                                            {"Content-Type": "application/json"}, timeout=30)
            elapsed = time.monotonic() - started
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert re.search(rb"may or may not have been applied", body), body
        assert b"Retrying is safe" in body
        assert elapsed < 0.1 + 2.0 + 1.0  # --redis-wait-timeout + the 2 s margin, + slack
        until(lambda: put(server.url, "s", 3) == 200, "writes to resume")
    finally:
        server.kill_all()
