"""The Redis backend against the local one, in one run: writes, reads, wake-ups, start-up.

    .venv/bin/python bench/redis_backend.py                   # everything (~5 min)
    .venv/bin/python bench/redis_backend.py --duration 5 --samples 100 --entities 100000

(Not `bench/redis.py`: every bench script runs with bench/ first on sys.path and mypy
reads bench/ as top-level modules, so a `redis.py` there would shadow redis-py.)

Starts real redis-server processes on free loopback ports (no network beyond
loopback) and `process-status serve` processes, each stopped by its PID at the end:

1. **Throughput** (wrk -t1 -c64, --rounds rounds round-robin, ratios per round):
   durable PUT on Redis (master with `appendfsync always`, one replica attached) vs the
   local backend's `--durability fsync` PUT (goal >= 0.9x); the same with
   `--redis-wait-replicas 1` (reported); `processed?` on Redis vs local (goal >= 0.95x).
   Each serve under test uses its own Redis database, so no other copy follows it.
2. **Cross-replica wake-up**: replicas A and B on one Redis; a long-poll parked on B,
   then a PUT on A; time from sending the PUT to B's answer (goal p99 <= 5 ms), --runs
   runs of --samples samples, on the AOF Redis above and on one without persistence.
   Baseline: a PUT to A with no waiter anywhere, interleaved with the samples. Each
   wake-up is split at the time the function ran in Redis (the `updated_at` it stored,
   from Redis's clock, the same machine's): PUT sent -> Redis, Redis -> B answered; and an
   HTTP round trip alone: a `processed?` on B that needs no wait, in the same loop.
3. **Start-up sync**: --entities entities loaded into a fresh Redis through the
   Functions library (pipelined FCALLs, the backend's own encoding), then `serve
   --backend redis` timed from its start to `/readyz` 200, and the worker's RSS, --runs
   times.
4. **Reads with 2 workers vs 1**.

`--wake-ups-only` runs 2 alone (on the same two Redis setups), for work on that path.

Every `serve` but those of 4 runs `--workers 1` (the Redis backend's default is one per
CPU). `--process-status PATH` benchmarks another executable, e.g. a wrapper running this
code from an environment that also has `hiredis` (redis-py's C reply parser).

Every goal is checked on ratios or latencies from the same run; this 2-core machine is
shared (wrk, the servers and Redis compete for the cores), so each figure is given as
the range over its runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import benchlib
import redis
import redis.utils
import uvloop
from benchlib import (
    BENCH,
    Server,
    free_port,
    http,
    loadavg,
    mb,
    proc_status_kb,
    record_goal,
    start_service,
    wrk,
)

from service.storage.redis import library
from service.store import Advance
from tests.redis_servers import RedisServer, start_redis

PUT_SCRIPT = BENCH / "put.lua"
READ_ENTITY = "bench-read"
READ_STORED = 2_000_000
READ_ASKED = 1_500_000
LOAD_BATCH = 10_000
"""Entities per FCALL when loading (the writer caps one call at 20,000)."""


# -- redis-server --------------------------------------------------------------------


@contextlib.contextmanager
def stopping_all(things: list[Server | RedisServer]) -> Iterator[list[Server | RedisServer]]:
    """Stops everything appended to the list, last started first."""
    try:
        yield things
    finally:
        for thing in reversed(things):
            thing.stop()


# -- helpers ---------------------------------------------------------------------------

PINNED = ("--workers", "1")
"""The Redis backend defaults to one worker per CPU: every comparison here is one worker
against one worker."""


def serve_one(name: str, data_dir: Path, log_dir: Path, *args: str) -> Server:
    return start_service(name, data_dir, log_dir, *args, *PINNED)



def span(values: list[float], fmt: str = "{:,.0f}", unit: str = "") -> str:
    low, high = min(values), max(values)
    if fmt.format(low) == fmt.format(high):
        return fmt.format(low) + unit
    return f"{fmt.format(low)}-{fmt.format(high)}{unit}"


def scrape(server: Server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                timeout=10) as response:
        text: str = response.read().decode()
        return text


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def seed(server: Server) -> None:
    status = http("PUT", f"{server.url}/status/{READ_ENTITY}", b'{"timestamp": %d}' % READ_STORED)
    deadline = time.monotonic() + 10
    while http("GET", f"{server.url}/status/{READ_ENTITY}/processed?ts={READ_ASKED}") != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"seeding {server.name} failed: PUT {status}")
        time.sleep(0.05)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


# -- 1. throughput ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str
    label: str
    put: bool


SCENARIOS = [
    Scenario("put-local", "local", "PUT, local `--durability fsync`", True),
    Scenario("put-redis", "redis", "PUT, Redis (AOF `appendfsync always`)", True),
    Scenario("put-redis-wait", "redis-wait",
             "PUT, Redis + `--redis-wait-replicas 1` (one replica)", True),
    Scenario("get-local", "local", "`processed?`, local", False),
    Scenario("get-redis", "redis", "`processed?`, Redis", False),
]
# figure -> (baseline, goal)
RATIOS = {"put-redis": ("put-local", 0.9), "put-redis-wait": ("put-local", None),
          "get-redis": ("get-local", 0.95)}


@dataclass
class Throughput:
    rps: dict[str, list[float]] = field(default_factory=dict)
    p99: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    batch: dict[str, float] = field(default_factory=dict)
    """Average writes per FCALL, per Redis-backed server."""


def durable_redis(work: Path, things: list[Server | RedisServer]) -> RedisServer:
    """A master with `appendfsync always` and one replica attached."""
    master = start_redis(work / "redis-master", "--appendonly", "yes",
                         "--appendfsync", "always")
    things.append(master)
    replica = start_redis(work / "redis-replica", "--appendonly", "no",
                          "--replicaof", "127.0.0.1", str(master.port))
    things.append(replica)
    with master.client(timeout=120) as client:
        deadline = time.monotonic() + 20
        while int(client.info("replication")["connected_slaves"]) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis replica did not attach")
            time.sleep(0.05)
    return master


def throughput(work: Path, args: argparse.Namespace, things: list[Server | RedisServer],
               ) -> tuple[Throughput, RedisServer, Server]:
    master = durable_redis(work, things)
    servers = {
        "local": serve_one("serve-local", work / "data-local", work, "--durability", "fsync"),
        "redis": serve_one("serve-redis", work / "data-redis", work, "--backend", "redis",
                           "--redis-url", master.db_url(0)),
        "redis-wait": serve_one("serve-redis-wait", work / "data-redis-wait", work,
                                "--backend", "redis", "--redis-url", master.db_url(1),
                                "--redis-wait-replicas", "1", "--redis-wait-timeout", "100ms"),
    }
    things.extend(servers.values())
    for name in ("local", "redis"):
        seed(servers[name])
    found = Throughput()
    for round_number in range(args.rounds):
        figures: dict[str, float] = {}
        # Every other round in reverse: what runs after a PUT phase (Redis rewriting its
        # AOF, say) lands on each scenario alike.
        for scenario in SCENARIOS if round_number % 2 == 0 else SCENARIOS[::-1]:
            server = servers[scenario.server]
            path = "/" if scenario.put else f"/status/{READ_ENTITY}/processed?ts={READ_ASKED}"
            script = PUT_SCRIPT if scenario.put else None
            if round_number == 0 and args.warmup > 0:
                wrk(server.url + path, args.warmup, connections=args.connections, script=script)
            result = wrk(server.url + path, args.duration, connections=args.connections,
                         script=script)
            figures[scenario.name] = result.rps
            found.rps.setdefault(scenario.name, []).append(result.rps)
            found.p99.setdefault(scenario.name, []).append(result.p99_ms)
            found.errors[scenario.name] = found.errors.get(scenario.name, 0) + result.errors
            print(f"round {round_number + 1} {scenario.name}: {result.rps:,.0f} req/s, "
                  f"p99 {result.p99_ms:.2f} ms, errors {result.errors}",
                  file=sys.stderr, flush=True)
        for top, (bottom, _) in RATIOS.items():
            found.ratios.setdefault(top, []).append(figures[top] / figures[bottom])
    for name in ("redis", "redis-wait"):
        text = scrape(servers[name])
        calls = metric(text, "process_status_redis_call_batch_size_count")
        writes = metric(text, "process_status_redis_call_batch_size_sum")
        found.batch[name] = writes / calls if calls else 0.0
    return found, master, servers["redis"]


def report_throughput(found: Throughput, args: argparse.Namespace) -> None:
    print(f"\n### Throughput (wrk -t1 -c{args.connections} -d{args.duration:g}s, "
          f"{args.rounds} rounds, ranges over rounds)\n")
    print("| scenario | req/s | p99 | vs local (same round) | goal | errors |")
    print("|---|---:|---:|---:|---|---:|")
    for scenario in SCENARIOS:
        name = scenario.name
        ratio, goal = "", ""
        if name in RATIOS:
            ratio = span(found.ratios[name], "{:.2f}", "x")
            minimum = RATIOS[name][1]
            if minimum is not None:
                goal = f">= {minimum:g}x: {verdict(min(found.ratios[name]) >= minimum)}"
        print(f"| {scenario.label} | {span(found.rps[name])} | "
              f"{span(found.p99[name], '{:.2f}', ' ms')} | {ratio} | {goal} | "
              f"{found.errors[name]} |")
    print(f"\nwrites per FCALL (coalescing), average: {found.batch['redis']:.1f} "
          f"(wait 0), {found.batch['redis-wait']:.1f} (WAIT 1)")


# -- 2. cross-replica wake-up ----------------------------------------------------------


@dataclass
class WakeUps:
    woken: list[float] = field(default_factory=list)
    """PUT sent to A -> B answered the long-poll, ms."""
    acked: list[float] = field(default_factory=list)
    """PUT sent to A -> A answered it, in the same samples, ms."""
    alone: list[float] = field(default_factory=list)
    """The baseline: a PUT to A with no waiter anywhere, interleaved with the samples, ms."""
    to_redis: list[float] = field(default_factory=list)
    """PUT sent -> the function ran in Redis (its TIME, stored as updated_at), ms."""
    from_redis: list[float] = field(default_factory=list)
    """The function ran in Redis -> B answered: Redis's fsync, B's read and apply, its
    answer, ms."""
    read: list[float] = field(default_factory=list)
    """An HTTP round trip alone: a `processed?` on B answered without waiting, ms."""


async def wake_ups(a: Server, b: Server, redis_at: RedisServer, samples: int,
                   run: int) -> WakeUps:
    """A long-poll parked on B, then a PUT on A: how long until B answers."""
    found = WakeUps()
    sent_at: dict[str, tuple[float, float]] = {}
    """entity -> (wall clock when its PUT was sent, wake-up ms)"""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def poll(entity: str) -> tuple[bool, float]:
            url = f"{b.url}/status/{entity}/processed?ts=1000&wait=5"
            async with session.get(url) as response:
                body = await response.json()
                return bool(body["processed"]), time.perf_counter()

        async def put(entity: str) -> tuple[int, float]:
            async with session.put(f"{a.url}/status/{entity}", json={"timestamp": 1000}) as r:
                await r.read()
                return r.status, time.perf_counter()

        for index in range(samples + 10):  # the first 10 warm the connections up
            entity = f"wake-{run}-{index}"
            parked = asyncio.create_task(poll(entity))
            await asyncio.sleep(0.01)  # the long-poll reaches B and parks (loopback: < 1 ms)
            sent_wall, sent = time.time(), time.perf_counter()
            written = asyncio.create_task(put(entity))
            processed, answered = await parked
            status, acked = await written
            if not processed or status != 200:
                raise RuntimeError(f"wake-up {entity}: processed={processed}, PUT {status}")
            await asyncio.sleep(0.005)
            alone_sent = time.perf_counter()
            alone_status, alone_acked = await put(f"alone-{run}-{index}")
            if alone_status != 200:
                raise RuntimeError(f"PUT alone: {alone_status}")
            read_sent = time.perf_counter()
            was, read_answered = await poll(entity)
            if not was:
                raise RuntimeError(f"{entity} not processed on B after its wake-up")
            if index >= 10:
                found.woken.append((answered - sent) * 1000)
                found.acked.append((acked - sent) * 1000)
                found.alone.append((alone_acked - alone_sent) * 1000)
                found.read.append((read_answered - read_sent) * 1000)
                sent_at[entity] = (sent_wall, found.woken[-1])
    with redis_at.client() as client:
        stored = client.hmget(library.ENTITIES, list(sent_at))
    for (entity, (sent_wall, woken)), value in zip(sent_at.items(), stored, strict=True):
        if value is None:
            raise RuntimeError(f"{entity} is not in Redis")
        ran = library.decode_value(value)[1]
        found.to_redis.append((ran - sent_wall) * 1000)
        found.from_redis.append(woken - found.to_redis[-1])
    return found


def report_wake_ups(label: str, a: Server, b: Server, redis_at: RedisServer,
                    args: argparse.Namespace) -> list[float]:
    p50s, p99s, alone50, alone99 = [], [], [], []
    for run in range(args.runs):
        with redis_at.client() as client:
            client.config_set("latency-monitor-threshold", 1)
            client.latency_reset()
        found = uvloop.run(wake_ups(a, b, redis_at, args.samples, run))
        p50s.append(percentile(found.woken, 0.5))
        p99s.append(percentile(found.woken, 0.99))
        alone50.append(percentile(found.alone, 0.5))
        alone99.append(percentile(found.alone, 0.99))
        print(f"- {label}, run {run + 1}: B answered p50 {p50s[-1]:.2f} ms, p99 "
              f"{p99s[-1]:.2f} ms (A answered the same PUTs p50 "
              f"{percentile(found.acked, 0.5):.2f} ms); baseline, a PUT alone: p50 "
              f"{alone50[-1]:.2f} ms, p99 {alone99[-1]:.2f} ms; ratio p50 "
              f"{p50s[-1] / alone50[-1]:.2f}x, p99 {p99s[-1] / alone99[-1]:.2f}x")
        print(f"  - split where the function ran in Redis: PUT sent -> Redis "
              f"{quantiles(found.to_redis)}, Redis -> B answered {quantiles(found.from_redis)} "
              f"(an HTTP round trip alone, a `processed?` on B that needs no wait: "
              f"{quantiles(found.read)}); load {loadavg()}")
        print(f"  - Redis's own stalls of 1 ms or more during the run: {stalls(redis_at)}")
    print(f"- {label}: wake-up p50 {span(p50s, '{:.2f}', ' ms')}, p99 "
          f"{span(p99s, '{:.2f}', ' ms')}; a PUT alone p50 {span(alone50, '{:.2f}', ' ms')}, "
          f"p99 {span(alone99, '{:.2f}', ' ms')}")
    return p99s


def stalls(server: RedisServer) -> str:
    """Redis's latency monitor: per event, the seconds with a stall >= 1 ms and the worst
    (an `aof-fsync-always` stall holds back every reply, B's XREAD among them)."""
    found = []
    with server.client() as client:
        for event, *_ in client.latency_latest():
            name = event.decode() if isinstance(event, bytes) else str(event)
            history = client.latency_history(name)
            found.append(f"{name} in {len(history)} s, worst "
                         f"{max(int(ms) for _, ms in history)} ms")
    return "; ".join(found) or "none"


def quantiles(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5):.2f} / p99 {percentile(values, 0.99):.2f} ms"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cross_replica(work: Path, args: argparse.Namespace, things: list[Server | RedisServer],
                  master: RedisServer, replica_a: Server) -> None:
    """Wake-ups on the durable Redis (A given, B started here), then on one without
    persistence (a pair of its own, stopped at the end)."""
    replica_b = serve_one("serve-redis-b", work / "data-redis-b", work,
                          "--backend", "redis", "--redis-url", master.db_url(0))
    things.append(replica_b)
    print(f"\n### Cross-replica wake-up ({args.samples} samples per run: long-poll "
          f"parked on B, PUT on A, PUT sent -> B answered; load {loadavg()})\n")
    p99s = report_wake_ups("Redis with AOF `appendfsync always`", replica_a, replica_b,
                           master, args)
    plain = start_redis(work / "redis-plain", "--appendonly", "no")
    things.append(plain)
    pair = [serve_one(f"serve-plain-{name}", work / f"data-plain-{name}", work,
                      "--backend", "redis", "--redis-url", plain.db_url(0))
            for name in ("a", "b")]
    things.extend(pair)
    aof_runs = len(p99s)
    p99s += report_wake_ups("Redis without persistence", pair[0], pair[1], plain, args)
    met = max(p99s) <= 5.0
    print(f"- goal p99 <= 5 ms: {verdict(met)}")
    record_goal("redis-wake-up", f"{span(p99s[:aof_runs], '{:.2f}', ' ms')} (AOF), "
                f"{span(p99s[aof_runs:], '{:.2f}', ' ms')} (no persistence)", "p99 <= 5 ms",
                met, "Redis's AOF fsync stalls (the stalls lines) and the 2 shared cores: "
                "see the split lines")
    for server in pair:
        server.stop()


# -- 3. start-up sync of many entities ---------------------------------------------------


def load_entities(server: RedisServer, count: int) -> float:
    """`count` entities through the library's apply function, pipelined; entity-writes/s."""
    started = time.perf_counter()
    with server.client(timeout=120) as client:
        client.function_load(library.SOURCE, replace=True)
        pipe = client.pipeline(transaction=False)
        queued = 0
        for first in range(0, count, LOAD_BATCH):
            updates = {f"entity-{i:07d}": 1_700_000_000_000_000 + i
                       for i in range(first, min(count, first + LOAD_BATCH))}
            pipe.fcall(library.APPLY, len(library.KEYS), *library.KEYS, count, 100_000,
                       *library.encode([Advance(updates)]))
            queued += 1
            if queued == 10:
                pipe.execute()
                queued = 0
        if queued:
            pipe.execute()
        held = int(client.hlen(library.ENTITIES))
    if held != count:
        raise RuntimeError(f"loaded {held} entities, wanted {count}")
    return count / (time.perf_counter() - started)


@dataclass
class Startup:
    seconds: float
    synced: float
    """The follower's own figure: HSCAN of the hash and install in the store."""
    rss_kb: int
    peak_kb: int


def start_up(work: Path, server: RedisServer, count: int, run: int) -> Startup:
    port, metrics_port = free_port(), free_port()
    log_path = work / f"serve-startup-{run}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROCESS_STATUS_")}
    command = [str(benchlib.PROCESS_STATUS), "serve", "--bind", f"127.0.0.1:{port}",
               "--metrics-bind", f"127.0.0.1:{metrics_port}",
               "--data-dir", str(work / f"data-startup-{run}"), "--log-level", "info",
               "--backend", "redis", "--redis-url", server.db_url(0),
               "--max-entities", str(max(count, 1_000_000)), *PINNED]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=environment, start_new_session=True)
    serve = Server(f"serve-startup-{run}", port, process, log_path, metrics_port)
    try:
        serve.wait_ready("/readyz", timeout=180)
        seconds = time.monotonic() - started
        worker = serve.worker_pid()
        match = re.search(r"synced \d+ entities from Redis at \S+ in ([0-9.]+) s", serve.log())
        return Startup(seconds, float(match.group(1)) if match else float("nan"),
                       proc_status_kb(worker),
                       proc_status_kb(worker, "VmHWM"))
    finally:
        serve.stop()


# -- 4. reads with 2 workers -----------------------------------------------------------


def workers(work: Path, master: RedisServer, args: argparse.Namespace,
            things: list[Server | RedisServer]) -> dict[int, list[float]]:
    servers: dict[int, Server] = {}
    for count in (1, 2):
        servers[count] = start_service(f"serve-workers-{count}", work / f"data-w{count}", work,
                                       "--backend", "redis", "--redis-url", master.db_url(2),
                                       "--workers", str(count))
        things.append(servers[count])
    for count in (1, 2):
        seed(servers[count])
    path = f"/status/{READ_ENTITY}/processed?ts={READ_ASKED}"
    found: dict[int, list[float]] = {1: [], 2: []}
    for round_number in range(args.rounds):
        for count in (1, 2):
            if round_number == 0 and args.warmup > 0:
                wrk(servers[count].url + path, args.warmup, connections=args.connections)
            result = wrk(servers[count].url + path, args.duration, connections=args.connections)
            found[count].append(result.rps)
            print(f"round {round_number + 1} workers {count}: {result.rps:,.0f} req/s",
                  file=sys.stderr, flush=True)
    return found


# -- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up seconds, 0: none")
    parser.add_argument("--rounds", type=int, default=2, help="wrk rounds (round-robin)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--runs", type=int, default=2, help="runs of the wake-up and start-up")
    parser.add_argument("--samples", type=int, default=300, help="wake-ups per run")
    parser.add_argument("--entities", type=int, default=1_000_000, help="entities at start-up")
    parser.add_argument("--process-status", type=Path, default=benchlib.PROCESS_STATUS,
                        help="the process-status executable to run (default: this venv's)")
    parser.add_argument("--wake-ups-only", action="store_true",
                        help="only the cross-replica wake-up (2.)")
    args = parser.parse_args(argv)
    benchlib.PROCESS_STATUS = args.process_status
    hiredis = "yes" if redis.utils.HIREDIS_AVAILABLE else "no"
    if args.process_status != parser.get_default("process_status"):
        hiredis = "see its environment"
    print(f"serving with {args.process_status}; hiredis (redis-py's C reply parser): {hiredis}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    with tempfile.TemporaryDirectory(prefix="process-status-bench-redis-") as temp:
        work = Path(temp)
        if args.wake_ups_only:
            with stopping_all([]) as things:
                master = durable_redis(work, things)
                replica_a = serve_one("serve-redis", work / "data-redis", work, "--backend",
                                      "redis", "--redis-url", master.db_url(0))
                things.append(replica_a)
                cross_replica(work, args, things, master, replica_a)
            print(f"\nload average (1 min) at the end: {loadavg()}")
            return 0
        with stopping_all([]) as things:
            found, master, replica_a = throughput(work, args, things)
            report_throughput(found, args)
            for thing in things:  # only A and its Redis take part from here on
                if thing is not master and thing is not replica_a:
                    thing.stop()
            cross_replica(work, args, things, master, replica_a)
            workers_rps = workers(work, master, args, things)
        with stopping_all([]) as things:
            print(f"\n### Start-up sync of {args.entities:,} entities\n")
            loaded = start_redis(work / "redis-startup", "--appendonly", "no")
            things.append(loaded)
            rate = load_entities(loaded, args.entities)
            print(f"- loaded through the Functions library ({LOAD_BATCH:,} entities per "
                  f"FCALL, pipelined): {rate:,.0f} entity-writes/s on one Redis thread")
            results = [start_up(work, loaded, args.entities, run) for run in range(args.runs)]
            for run, result in enumerate(results):
                print(f"- run {run + 1}: start -> /readyz 200 in {result.seconds:.2f} s "
                      f"(of which the copy {result.synced:.2f} s); worker RSS "
                      f"{mb(result.rss_kb)}, "
                      f"peak {mb(result.peak_kb)}")
            print(f"- start -> ready {span([r.seconds for r in results], '{:.2f}', ' s')} "
                  f"(copy {span([r.synced for r in results], '{:.2f}', ' s')}), "
                  f"worker RSS {span([r.rss_kb / 1024 for r in results], '{:.0f}', ' MB')} "
                  f"(peak {span([r.peak_kb / 1024 for r in results], '{:.0f}', ' MB')})")
    print("\n### Reads with 2 workers vs 1\n")
    ratios = [two / one for one, two in zip(workers_rps[1], workers_rps[2], strict=True)]
    print(f"- `processed?`, 1 worker {span(workers_rps[1])} req/s, 2 workers "
          f"{span(workers_rps[2])} req/s: {span(ratios, '{:.2f}', 'x')} (2 cores shared by "
          "wrk, which takes most of one, the workers, Redis and whatever else runs: a "
          "second worker gets at most what is left of the other core)")
    print(f"\nload average (1 min) at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
