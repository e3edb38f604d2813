"""One million entities: restore time, memory, and event-loop lag during snapshots.

    .venv/bin/python bench/restore.py                      # everything (~1.5 min)
    .venv/bin/python bench/restore.py --only restore,rss --entities 200000

Builds the data dirs offline with the service's own modules (service.storage.snapshot,
service.storage.journal, service.storage.framing, service.storage.files): a snapshot of --entities
entities plus --records journal records after it, in two mixes (every record
advances an existing entity; or a tenth of them create new entities). Then:

* restore: `service.storage.recovery.recover` into a fresh StatusStore, timed in a fresh
  interpreter per mix (goal <= 1 s), with that process's RSS afterwards
  (goal <= 300 MB).
* rss: `process-status serve` on the same data: time to ready and the worker's RSS.
* lag: a `service.storage.local.LocalBackend` (fsync mode, uvloop) holding the 1M
  entities under a write load of 16 concurrent writers; a task sleeps 1 ms in a
  loop and records how late it wakes. Reported without and during snapshots
  (goal: max stall <= 50 ms).
* server: `serve` with --snapshot-interval 1 (snapshotting almost non-stop) vs
  3600 under the same light wrk PUT load: wrk's max and p99 latency show any
  stall as clients see it.

These are absolute figures with absolute goals, not throughput ratios; the
"quiet" rows are the same measurement without the snapshot, from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvloop
from benchlib import (
    BENCH,
    WrkResult,
    loadavg,
    mb,
    proc_status_kb,
    start_service,
    wrk,
    wrk_finish,
    wrk_start,
)

from service.config import Durability
from service.storage import records as records_codec
from service.storage import snapshot
from service.storage.files import OsFiles
from service.storage.journal import Journal
from service.storage.local import LocalBackend, LocalOptions
from service.storage.recovery import recover
from service.store import Advance, Entry, StatusStore

SNAPSHOT_LSN = 1_000
STALL_GOAL_MS = 50.0
RESTORE_GOAL_S = 1.0
RSS_GOAL_MB = 300.0
MAX_ENTITIES = 4_000_000


def entity_name(index: int) -> str:
    return f"tenant-{index % 997:03d}.stream.{index:07d}"


# -- building data dirs ---------------------------------------------------------


def build_snapshot(data_dir: Path, entities: int) -> float:
    """Write a snapshot of `entities` entities; returns the seconds it took."""
    data_dir.mkdir(parents=True)
    now = time.time()
    entries = {entity_name(i): (1_700_000_000_000_000 + i, now) for i in range(entities)}
    names = sorted(entries)
    started = time.perf_counter()
    snapshot.write(OsFiles(), str(data_dir), entries, names, SNAPSHOT_LSN)
    return time.perf_counter() - started


def build_journal(data_dir: Path, entities: int, records: int, new_fraction: float) -> None:
    """`records` journal records after the snapshot, as the journal writer writes them."""
    rng = random.Random(42)
    journal = Journal(OsFiles(), str(data_dir), next_seq=1)
    now = time.time()
    created = entities
    frames: list[bytes] = []
    for number in range(records):
        lsn = SNAPSHOT_LSN + 1 + number
        if rng.random() < new_fraction:
            name = entity_name(created) + "-new"
            created += 1
        else:
            name = entity_name(rng.randrange(entities))
        ts = 1_800_000_000_000_000 + number
        frames.append(records_codec.encode(lsn, now + number * 1e-5, Advance({name: ts})))
        if len(frames) == 1000 or number == records - 1:
            journal.write(b"".join(frames), lsn)
            frames.clear()
    journal.close()


def copy_dir(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# -- restore, measured in a fresh interpreter -----------------------------------


def child_recover(data_dir: str) -> None:
    """Run in a subprocess: time recovery, then report RSS holding the entities."""
    rss_before = proc_status_kb("self")
    store = StatusStore(MAX_ENTITIES)
    started = time.perf_counter()
    report = recover(OsFiles(), data_dir, store, repair=False)
    elapsed = time.perf_counter() - started
    rss_after = proc_status_kb("self")
    gc.collect()
    print(json.dumps({
        "seconds": elapsed,
        "entities": len(store),
        "replayed": report.replayed,
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "rss_after_gc_kb": proc_status_kb("self"),
        "hwm_kb": proc_status_kb("self", "VmHWM"),
    }))


@dataclass
class Restored:
    seconds: float
    entities: int
    replayed: int
    rss_before_kb: int
    rss_after_kb: int
    rss_after_gc_kb: int
    hwm_kb: int


def measure_restore(data_dir: Path, repeats: int) -> list[Restored]:
    runs = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, str(Path(__file__)), "--child-recover", str(data_dir)],
            capture_output=True, text=True, check=False, timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"recovery child failed:\n{done.stderr}")
        runs.append(Restored(**json.loads(done.stdout.strip().splitlines()[-1])))
    return runs


# -- event-loop lag under write load ---------------------------------------------


class LagProbe:
    """Sleeps 1 ms in a loop and records how late each wake-up is (ms).

    It also times the cyclic GC's full (generation 2) collections in the window:
    they stop every thread, the event loop included.
    """

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.full_gc_ms: list[float] = []
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.full_gc_ms.append((time.perf_counter() - self._gc_started) * 1000)

    async def _run(self) -> None:
        clock = time.perf_counter
        while True:
            started = clock()
            await asyncio.sleep(0.001)
            self.samples.append((clock() - started - 0.001) * 1000)

    def start(self) -> None:
        self.samples, self.full_gc_ms = [], []
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[float]:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        gc.callbacks.remove(self._on_gc)
        return self.samples


@dataclass
class Lag:
    label: str
    max_ms: float
    p99_ms: float
    writes_per_s: float
    seconds: float
    full_gcs: list[float]
    copy_ms: float | None


class TimedStore(StatusStore):
    """The real store, timing `capture()` (the part of a snapshot that runs on the loop)."""

    def __init__(self, max_entities: int) -> None:
        super().__init__(max_entities)
        self.copy_ms: list[float] = []

    def capture(self) -> tuple[dict[str, Entry], list[str]]:
        started = time.perf_counter()
        captured = super().capture()
        self.copy_ms.append((time.perf_counter() - started) * 1000)
        return captured


async def write_load(backend: LocalBackend, stop: asyncio.Event, counter: list[int]) -> None:
    rng = random.Random()
    ts = 1_900_000_000_000_000
    while not stop.is_set():
        ts += 1
        await backend.submit(Advance({entity_name(rng.randrange(300)): ts}))
        counter[0] += 1


async def lag_async(data_dir: Path, snapshots: int, quiet_seconds: float) -> list[Lag]:
    store = TimedStore(MAX_ENTITIES)
    options = LocalOptions(data_dir=str(data_dir), durability=Durability.FSYNC,
                           snapshot_interval=3600.0, fsync_interval=1.0,
                           journal_max_bytes=1 << 40)
    backend = LocalBackend(options, store)
    await backend.start()
    stop, counter = asyncio.Event(), [0]
    writers = [asyncio.create_task(write_load(backend, stop, counter)) for _ in range(16)]
    probe = LagProbe()
    results: list[Lag] = []
    try:
        await asyncio.sleep(0.5)  # let the load settle

        async def window(label: str, during: asyncio.Future[object] | None) -> None:
            gc.collect()
            copies = len(store.copy_ms)
            before, started = counter[0], time.perf_counter()
            probe.start()
            if during is None:
                await asyncio.sleep(quiet_seconds)
            else:
                await during
            samples = await probe.stop()
            elapsed = time.perf_counter() - started
            results.append(Lag(
                label, max(samples), statistics.quantiles(samples, n=100)[98],
                (counter[0] - before) / elapsed, elapsed, probe.full_gc_ms,
                store.copy_ms[-1] if len(store.copy_ms) > copies else None,
            ))

        await window("quiet: write load, no snapshot", None)
        for number in range(snapshots):
            await window(
                f"snapshot {number + 1} of {len(store):,} entities under write load",
                asyncio.ensure_future(backend.snapshot()),
            )
    finally:
        stop.set()
        await asyncio.gather(*writers, return_exceptions=True)
        await backend.stop()
    return results


# -- the running server ----------------------------------------------------------


@dataclass
class ServerRun:
    label: str
    ready_s: float
    rss_kb: int
    put: WrkResult | None
    get: WrkResult | None
    snapshots: int
    snapshot_mean_s: float


def scrape(port: int | None) -> dict[str, float]:
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def serve_run(
    label: str, data_dir: Path, work: Path, interval: float, load_seconds: float,
    connections: int,
) -> ServerRun:
    started = time.monotonic()
    server = start_service(
        f"serve-{label.split()[0]}", data_dir, work, "--durability", "fsync",
        "--snapshot-interval", str(interval), "--max-entities", str(MAX_ENTITIES),
        ready_timeout=120,
    )
    try:
        ready = time.monotonic() - started
        rss = proc_status_kb(server.worker_pid())
        put = get = None
        if load_seconds > 0:
            # Light load: PUTs (durable, so they wait for the I/O thread) and, alongside,
            # processed? GETs, which only need the event loop: their latency is the stall.
            writing = wrk_start(server.url + "/", load_seconds, connections=connections,
                                script=BENCH / "put.lua")
            try:
                get = wrk(f"{server.url}/status/{entity_name(0)}/processed?ts=1",
                          load_seconds, connections=max(1, connections // 2))
            finally:
                put = wrk_finish(writing)
        metrics = scrape(server.metrics_port)
        count = metrics.get("process_status_snapshot_duration_seconds_count", 0.0)
        total = metrics.get("process_status_snapshot_duration_seconds_sum", 0.0)
    finally:
        server.stop(60)
    return ServerRun(label, ready, rss, put, get, int(count), total / count if count else 0.0)


# -- report ----------------------------------------------------------------------


def goal(value: float, limit: float) -> str:
    return "met" if value <= limit else "NOT met"


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="process-status-restore-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--only", default="restore,rss,lag,server",
                        help="comma-separated parts: restore, rss, lag, server")
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="restores per mix")
    parser.add_argument("--snapshots", type=int, default=3, help="snapshots in the lag part")
    parser.add_argument("--duration", type=float, default=10.0, help="wrk seconds per server run")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (light)")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dirs")
    parser.add_argument("--child-recover", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_recover:
        child_recover(args.child_recover)
        return 0
    parts = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = parts - {"restore", "rss", "lag", "server"}
    if unknown or not parts:
        parser.error(f"unknown part(s) {sorted(unknown)}")

    with workdir(args.keep) as work:
        print(f"building {args.entities:,} entities + {args.records:,} journal records in {work}",
              file=sys.stderr, flush=True)
        base = work / "snapshot-only"
        write_s = build_snapshot(base, args.entities)
        size = (base / snapshot.FILENAME).stat().st_size
        mixes = {"updates": 0.0, "10% new": 0.1}
        dirs = {}
        for mix, fraction in mixes.items():
            dirs[mix] = copy_dir(base, work / f"data-{mix.replace('% ', '-')}")
            build_journal(dirs[mix], args.entities, args.records, fraction)
        print(f"\nsnapshot of {args.entities:,} entities: {size / 1e6:.1f} MB, written in "
              f"{write_s:.2f} s (service.storage.snapshot.write, offline)\n")

        if "restore" in parts:
            print("| restore (fresh process) | entities | replayed | time (best / median) "
                  "| goal <= 1 s | RSS after | RSS peak | interpreter alone | goal <= 300 MB |")
            print("|---|---:|---:|---:|---|---:|---:|---:|---|")
            for mix, path in dirs.items():
                restores = measure_restore(path, args.repeats)
                best = min(item.seconds for item in restores)
                median = statistics.median(item.seconds for item in restores)
                rss = max(item.rss_after_gc_kb for item in restores)
                first = restores[0]
                print(f"| snapshot + {args.records:,} records ({mix}) | {first.entities:,} "
                      f"| {first.replayed:,} | {best:.2f} s / {median:.2f} s "
                      f"| {goal(median, RESTORE_GOAL_S)} | {mb(rss)} "
                      f"| {mb(max(item.hwm_kb for item in restores))} "
                      f"| {mb(first.rss_before_kb)} | {goal(rss / 1024, RSS_GOAL_MB)} |")
            print()

        if "rss" in parts:
            held = serve_run("rss", copy_dir(dirs["updates"], work / "serve-rss"), work,
                             3600, 0, args.connections)
            print(f"| `serve` holding {args.entities:,} entities | start to ready | worker RSS "
                  "| goal <= 300 MB |\n|---|---:|---:|---|")
            print(f"| fsync mode, after recovery | {held.ready_s:.2f} s | {mb(held.rss_kb)} "
                  f"| {goal(held.rss_kb / 1024, RSS_GOAL_MB)} |\n")

        if "lag" in parts:
            lags = uvloop.run(lag_async(copy_dir(dirs["updates"], work / "lag"),
                                        args.snapshots, 3.0))
            print("| event-loop lag (LocalBackend, uvloop, 16 fsync writers) | window "
                  "| max stall | p99 lag | durable writes/s | full GCs (longest) "
                  "| store.capture() on the loop | goal max <= 50 ms |")
            print("|---|---:|---:|---:|---:|---:|---:|---|")
            for lag in lags:
                verdict = "" if lag.label.startswith("quiet") else goal(lag.max_ms, STALL_GOAL_MS)
                longest = f" ({max(lag.full_gcs):.0f} ms)" if lag.full_gcs else ""
                print(f"| {lag.label} | {lag.seconds:.2f} s | {lag.max_ms:.1f} ms "
                      f"| {lag.p99_ms:.2f} ms | {lag.writes_per_s:,.0f} "
                      f"| {len(lag.full_gcs)}{longest} "
                      f"| {'' if lag.copy_ms is None else f'{lag.copy_ms:.1f} ms'} | {verdict} |")
            print()

        if "server" in parts:
            server_runs = [
                serve_run("quiet (--snapshot-interval 3600)",
                          copy_dir(dirs["updates"], work / "serve-quiet"), work, 3600,
                          args.duration, args.connections),
                serve_run("snapshotting (--snapshot-interval 1)",
                          copy_dir(dirs["updates"], work / "serve-snap"), work, 1,
                          args.duration, args.connections),
            ]
            print(f"| `serve` with {args.entities:,} entities (fsync), {args.duration:g} s "
                  f"of wrk PUT -c{args.connections} + GET processed? "
                  f"-c{max(1, args.connections // 2)} | PUT req/s | PUT p99 | PUT max "
                  "| GET req/s | GET p99 | GET max | snapshots (mean) | goal GET max <= 50 ms |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
            for run in server_runs:
                assert run.put is not None
                assert run.get is not None
                verdict = goal(run.get.max_ms, STALL_GOAL_MS) if run.snapshots else ""
                print(f"| {run.label} | {run.put.rps:,.0f} | {run.put.p99_ms:.1f} ms "
                      f"| {run.put.max_ms:.0f} ms | {run.get.rps:,.0f} | {run.get.p99_ms:.1f} ms "
                      f"| {run.get.max_ms:.0f} ms "
                      f"| {run.snapshots} ({run.snapshot_mean_s:.2f} s) | {verdict} |")
            print("\nGET latency shows event-loop stalls as clients see them; PUT latency also "
                  "includes waiting for the one I/O thread, which a snapshot occupies.")
        print(f"\nload average (1 min) at the end: {loadavg()}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
