"""Sentinel failovers under concurrent writes: no acknowledged write is lost.

A master, two replicas and three sentinels on loopback; a `serve` replica pointed at
the Sentinels with --redis-wait-replicas 1; writers put fresh entities (so max-merge
cannot hide a loss); the master is killed with SIGKILL; the writers go on until
writes succeed again. Every acknowledged write must then be in the new master and in
the replica's copy. Then a deposed master that keeps taking writes (a partition's
master side). Bounded waits, no timing assertions.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.test_redis_replicas import everything, write_until
from tests.redis_servers import RedisServer, Sentinel, start_redis, start_sentinel
from tests.servers import start_serve
from tests.support import Ledger, until

MASTER = "mymaster"


@dataclass
class SentinelSetup:
    master: RedisServer
    replicas: list[RedisServer]
    sentinels: list[Sentinel]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}"

    def master_port(self) -> int:
        with self.sentinels[0].client() as client:
            return int(client.sentinel_get_master_addr_by_name(MASTER)[1])


@contextlib.contextmanager
def sentinel_setup(tmp_path: Path, replicas: int, *master_args: str) -> Iterator[SentinelSetup]:
    """A master, `replicas` replicas and three sentinels that all see each other."""
    servers: list[RedisServer] = []
    sentinels: list[Sentinel] = []
    try:
        master = start_redis(tmp_path / "master", *master_args)
        servers.append(master)
        for index in range(replicas):
            servers.append(start_redis(tmp_path / f"replica{index}", "--replicaof", "127.0.0.1",
                                       str(master.port)))
        for index in range(3):
            sentinels.append(start_sentinel(tmp_path / f"sentinel{index}", MASTER, master.port))

        def ready() -> bool:
            for sentinel in sentinels:
                with sentinel.client() as client:
                    if len(client.sentinel_slaves(MASTER)) < replicas or \
                            len(client.sentinel_sentinels(MASTER)) < 2:
                        return False
            return True

        until(ready, "the sentinels to see the replicas and each other", 30)
        yield SentinelSetup(master, servers[1:], sentinels)
    finally:
        for sentinel in sentinels:
            sentinel.stop()
        for redis_server in servers:
            with contextlib.suppress(Exception):
                redis_server.stop()


@contextlib.contextmanager
def writing(url: str, ledger: Ledger, prefix: str, count: int) -> Iterator[None]:
    """`count` threads writing fresh entities (ledgered) until the block ends."""
    stop = threading.Event()
    writers = [threading.Thread(target=write_until, args=(url, ledger, stop, f"{prefix}{n}-"))
               for n in range(count)]
    for writer in writers:
        writer.start()
    try:
        yield
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)


def entities(server: RedisServer) -> dict[str, int]:
    with server.client() as client:
        return {name.decode(): int(value.split(b" ")[0]) for name, value in
                client.hgetall("{process-status}:entities").items()}


def test_failover_with_wait_loses_no_acknowledged_write(tmp_path: Path) -> None:
    with sentinel_setup(tmp_path, 2) as setup:
        master = setup.master
        (tmp_path / "serve").mkdir()
        server = start_serve(tmp_path / "serve" / "data", "--backend", "redis", "--redis-url",
                             setup.url, "--redis-wait-replicas", "1", "--redis-wait-timeout",
                             "100ms")
        try:
            ledger = Ledger()
            with writing(server.url, ledger, "w", 4):
                until(lambda: ledger.acks >= 300, "acknowledged writes before the kill")
                master.kill()
                killed_at = ledger.acks
                until(lambda: ledger.acks >= killed_at + 300, "writes to resume after the "
                      "failover", 60)
            port = setup.master_port()
            assert port != master.port
            held = entities(next(r for r in setup.replicas if r.port == port))
            assert ledger.lost(held) == []
            assert ledger.never_above_sent(held) == []
            until(lambda: everything(server.url) == held, "the replica's copy to match")
        finally:
            server.kill_all()


def test_a_deposed_master_that_still_takes_writes_loses_no_acknowledged_write(
    tmp_path: Path,
) -> None:
    """What a partition does to the master's side, on loopback: Sentinel promotes the
    replica, while the old master (its REPLICAOF renamed away, as if it could not hear the
    Sentinels) stays a master and keeps taking writes. Without --redis-wait-replicas, the
    serve replica must leave it for the master Sentinel names, and whatever it acknowledged
    on the old one in between must reach the new one (its copy writes it back)."""
    with sentinel_setup(tmp_path, 1, "--rename-command", "REPLICAOF", "",
                        "--rename-command", "SLAVEOF", "") as setup:
        old, promoted = setup.master, setup.replicas[0]
        (tmp_path / "serve").mkdir()
        server = start_serve(tmp_path / "serve" / "data", "--backend", "redis", "--redis-url",
                             setup.url, "--workers", "1")
        try:
            ledger = Ledger()
            with writing(server.url, ledger, "d", 2):
                until(lambda: ledger.acks >= 200, "acknowledged writes before the failover")
                with setup.sentinels[0].client() as client:
                    client.execute_command("SENTINEL", "FAILOVER", MASTER)
                until(lambda: setup.master_port() == promoted.port,
                      "Sentinel to name the promoted replica", 30)
                at_switch = ledger.acks
                until(lambda: ledger.acks >= at_switch + 300, "writes on the new master", 60)
            with old.client() as client:  # still a master: the scenario held
                assert client.info("replication")["role"] == "master"
            until(lambda: ledger.lost(entities(promoted)) == [],
                  "every acknowledged write on the new master")
            assert ledger.never_above_sent(entities(promoted)) == []
            assert "reconnecting" in server.log()
            until(lambda: everything(server.url) == entities(promoted),
                  "the replica's copy to match the new master")
        finally:
            server.kill_all()
