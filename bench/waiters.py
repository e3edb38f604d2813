"""Concurrent long-poll waiters (20,000 by default) released by one PUT.

    .venv/bin/python bench/waiters.py                  # ~40 s
    .venv/bin/python bench/waiters.py --waiters 2000

Starts `process-status serve` (fsync mode, temp data dir, free loopback ports),
seeds one entity, parks --waiters requests
`GET /status/{e}/processed?ts=T_i&wait=30` (T_i distinct, all above the stored
value) from one aiohttp client on uvloop, waits until the service's
`process_status_waiters` gauge shows them all, then sends one PUT that
satisfies every one of them. Reports the time from sending the PUT to the last
waiter's answer, and the worker's RSS before and after parking.

The baseline, from the same run and the same client: the same number of
concurrent `processed?` GETs that are answered at once (already processed), over
the connections the waiters left open. "release / baseline" near 1 means the
fan-out costs no more than answering that many ordinary requests.

The stall: while the waiters are released, a separate process asks `/healthz` over
its own keep-alive connection in a loop and reports its slowest answer. The service
releases waiters in slices (service/waiters.py), so that answer should stay within
~50 ms however many waiters one PUT releases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import uvloop
from benchlib import Server, http, loadavg, mb, proc_status_kb, start_service

PROBE = """
import json, socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
request = b"GET /healthz HTTP/1.1\\r\\nHost: probe\\r\\n\\r\\n"
until = time.monotonic() + float(sys.argv[2])
slowest, count = 0.0, 0
while time.monotonic() < until:
    started = time.perf_counter()
    sock.sendall(request)
    answer = b""
    while not answer.endswith(b"}"):
        answer += sock.recv(4096)
    slowest = max(slowest, time.perf_counter() - started)
    count += 1
    time.sleep(0.001)
print(json.dumps({"slowest_s": slowest, "probes": count}))
"""
ENTITY = "bench-wait"
STORED = 1_000
WAIT = 30


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, needed))
            hard = needed
    wanted = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def waiters_gauge(server: Server) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("process_status_waiters "):
                return float(line.split()[1])
    raise RuntimeError("process_status_waiters not found in /metrics")


@dataclass
class Result:
    parked: int
    park_s: float
    put_s: float
    first_s: float
    median_s: float
    last_s: float
    not_released: int
    healthz_slowest_s: float
    healthz_probes: int
    baseline_s: float
    rss_idle_kb: int
    rss_parked_kb: int
    rss_after_kb: int


async def run(server: Server, count: int, batch: int) -> Result:
    worker = server.worker_pid()
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=120)
    timeout = aiohttp.ClientTimeout(total=WAIT + 60)
    url = f"{server.url}/status/{ENTITY}/processed"
    finished: list[float] = []
    failures: list[str] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm up the worker, then read its idle RSS.
        for _ in range(50):
            async with session.get(url, params={"ts": str(STORED)}) as response:
                await response.read()
        rss_idle = proc_status_kb(worker)

        async def wait_one(ts: int) -> None:
            params = {"ts": str(ts), "wait": str(WAIT)}
            async with session.get(url, params=params) as response:
                body = await response.json()
            finished.append(time.perf_counter())
            if response.status != 200 or body.get("processed") is not True:
                failures.append(f"{response.status} {body}")

        target = STORED + count
        started = time.perf_counter()
        tasks = []
        for index in range(count):
            tasks.append(asyncio.create_task(wait_one(STORED + 1 + index)))
            if (index + 1) % batch == 0:
                await asyncio.sleep(0.05)  # don't overflow the listen backlog
        deadline = time.monotonic() + 120
        parked = 0.0
        while time.monotonic() < deadline:
            parked = await asyncio.to_thread(waiters_gauge, server)
            if parked >= count or finished:
                break
            await asyncio.sleep(0.1)
        park_s = time.perf_counter() - started
        if parked < count:
            raise RuntimeError(f"only {parked:.0f} of {count} waiters parked ({failures[:3]})")
        await asyncio.sleep(0.5)
        rss_parked = proc_status_kb(worker)

        probe = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PROBE, str(server.port), "6",
            stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.5)  # the probe is connected and looping
        put_started = time.perf_counter()
        async with session.put(f"{server.url}/status/{ENTITY}",
                               json={"timestamp": target}) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"PUT answered {response.status}")
        put_s = time.perf_counter() - put_started
        done, pending = await asyncio.wait(tasks, timeout=WAIT + 30)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                failures.append(repr(task.exception()))
        releases = sorted(moment - put_started for moment in finished)
        probed = orjson.loads((await probe.communicate())[0])

        await asyncio.sleep(0.5)
        rss_after = proc_status_kb(worker)

        # Baseline: as many concurrent GETs answered at once, over the open connections.
        async def get_one() -> None:
            async with session.get(url, params={"ts": str(STORED)}) as response:
                await response.read()

        base_started = time.perf_counter()
        await asyncio.gather(*(get_one() for _ in range(count)))
        baseline_s = time.perf_counter() - base_started

    if failures:
        print(f"{len(failures)} waiter(s) failed, e.g. {failures[:3]}", file=sys.stderr)
    return Result(
        int(parked), park_s, put_s, releases[0], statistics.median(releases), releases[-1],
        count - len(releases) + len(failures), probed["slowest_s"], probed["probes"],
        baseline_s, rss_idle, rss_parked, rss_after,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--waiters", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500,
                        help="connections opened per 50 ms while parking")
    parser.add_argument("--durability", default="fsync", choices=["fsync", "batch", "snapshot"])
    args = parser.parse_args(argv)
    limit = raise_fd_limit(args.waiters + 1024)  # inherited by the server too
    if limit < args.waiters + 1024:
        # A container's hard limit may be below what was asked: measure what fits (the
        # figures are per waiter, or say how many were parked) rather than nothing.
        fitting = limit - 1024
        if fitting < 1000:
            parser.error(f"RLIMIT_NOFILE is {limit}: too low for {args.waiters} connections "
                         "(raise the hard limit: ulimit -Hn, LimitNOFILE=, --ulimit)")
        print(f"RLIMIT_NOFILE's hard limit is {limit} here: parking {fitting:,} waiters, "
              f"not {args.waiters:,}", file=sys.stderr)
        args.waiters = fitting
    with tempfile.TemporaryDirectory(prefix="process-status-waiters-") as temp:
        work = Path(temp)
        server = start_service("serve-waiters", work / "data", work,
                               "--durability", args.durability,
                               "--max-connections", str(args.waiters + 1000),
                               "--max-waiters", str(args.waiters + 1000))
        try:
            status = http("PUT", f"{server.url}/status/{ENTITY}", b'{"timestamp": %d}' % STORED)
            if status != 200:
                raise RuntimeError(f"seeding answered {status}")
            result = uvloop.run(run(server, args.waiters, args.batch))
        finally:
            server.stop(60)
    per_waiter = (result.rss_parked_kb - result.rss_idle_kb) * 1024 / max(1, result.parked)
    print(f"\n{result.parked:,} waiters parked on one entity in {result.park_s:.2f} s "
          f"(--durability {args.durability}, one aiohttp client on uvloop, loopback, "
          f"{os.cpu_count()} CPUs shared)\n")
    print("| figure | value |\n|---|---:|")
    print(f"| PUT sent -> PUT answered | {result.put_s * 1000:.1f} ms |")
    print(f"| PUT sent -> first waiter answered | {result.first_s * 1000:.1f} ms |")
    print(f"| PUT sent -> median waiter answered | {result.median_s * 1000:.1f} ms |")
    print(f"| **PUT sent -> last waiter answered** | **{result.last_s * 1000:.1f} ms** |")
    print(f"| baseline: {args.waiters:,} concurrent immediate GETs, same client "
          f"| {result.baseline_s * 1000:.1f} ms |")
    print(f"| release / baseline | {result.last_s / result.baseline_s:.2f}x |")
    print(f"| waiters not released (or failed) | {result.not_released} |")
    print(f"| **slowest /healthz while releasing** ({result.healthz_probes} probes, "
          f"goal <= 50 ms) | **{result.healthz_slowest_s * 1000:.1f} ms** |")
    print(f"| worker RSS idle | {mb(result.rss_idle_kb)} |")
    print(f"| worker RSS with waiters parked | {mb(result.rss_parked_kb)} |")
    print(f"| RSS per parked waiter | {per_waiter / 1024:.1f} KB |")
    print(f"| worker RSS after release | {mb(result.rss_after_kb)} |")
    print(f"\nload average (1 min) at the end: {loadavg()}")
    return 0 if result.not_released == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
