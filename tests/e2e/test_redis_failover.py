"""Sentinel failover under concurrent writes with WAIT: no acknowledged write is lost.

A master, two replicas and three sentinels on loopback; a `serve` replica pointed at
the Sentinels with --redis-wait-replicas 1; writers put fresh entities (so max-merge
cannot hide a loss); the master is killed with SIGKILL; the writers go on until
writes succeed again. Every acknowledged write must then be in the new master and in
the replica's copy. Bounded waits, no timing assertions.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import redis

from tests.e2e.test_redis_replicas import everything, until, write_until
from tests.redis_servers import RedisServer, Sentinel, start_redis, start_sentinel
from tests.servers import start_serve
from tests.support import Ledger

MASTER = "mymaster"


def test_failover_with_wait_loses_no_acknowledged_write(tmp_path: Path) -> None:
    servers: list[RedisServer] = []
    sentinels: list[Sentinel] = []
    try:
        master = start_redis(tmp_path / "master")
        servers.append(master)
        for index in range(2):
            servers.append(start_redis(tmp_path / f"replica{index}", "--replicaof", "127.0.0.1",
                                       str(master.port)))
        for index in range(3):
            sentinels.append(start_sentinel(tmp_path / f"sentinel{index}", MASTER, master.port))

        def sentinels_ready() -> bool:
            for sentinel in sentinels:
                with sentinel.client() as client:
                    if len(client.sentinel_slaves(MASTER)) < 2 or \
                            len(client.sentinel_sentinels(MASTER)) < 2:
                        return False
            return True

        until(sentinels_ready, "the sentinels to see both replicas and each other", 30)
        url = "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in sentinels) + \
            f"/{MASTER}"
        (tmp_path / "serve").mkdir()
        server = start_serve(tmp_path / "serve" / "data", "--backend", "redis", "--redis-url",
                             url, "--redis-wait-replicas", "1", "--redis-wait-timeout", "100ms")
        try:
            ledger = Ledger()
            stop = threading.Event()
            writers = [threading.Thread(target=write_until, args=(server.url, ledger, stop,
                                                                   f"w{index}-"))
                       for index in range(4)]
            for writer in writers:
                writer.start()
            try:
                until(lambda: ledger.acks >= 300, "acknowledged writes before the kill")
                master.kill()
                killed_at = ledger.acks
                until(lambda: ledger.acks >= killed_at + 300, "writes to resume after the "
                      "failover", 60)
            finally:
                stop.set()
                for writer in writers:
                    writer.join(30)
            with sentinels[0].client() as client:
                host, port = client.sentinel_get_master_addr_by_name(MASTER)
            assert int(port) != master.port
            with redis.Redis(host=host, port=int(port)) as new_master:
                held = {name.decode(): int(value.split(b" ")[0]) for name, value in
                        new_master.hgetall("{process-status}:entities").items()}
            assert ledger.lost(held) == []
            assert ledger.never_above_sent(held) == []
            until(lambda: everything(server.url) == held, "the replica's copy to match")
        finally:
            server.kill_all()
    finally:
        for sentinel in sentinels:
            sentinel.stop()
        for redis_server in servers:
            with contextlib.suppress(Exception):
                redis_server.stop()
