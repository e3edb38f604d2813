"""process-status against a peer, etcd, under the same wrk load in the same run.

    .venv/bin/python bench/peers.py                         # ~4 min
    .venv/bin/python bench/peers.py --duration 4 --rounds 1

Starts `process-status serve --durability fsync` (fsync'd journal, group commit) and one
etcd member (its defaults: WAL fsync'd on every commit, linearizable reads), each on free
loopback ports with a temp data dir, seeds the same 1,000 keys in both and drives both with
wrk (-t1 -c64 by default, --latency): bench/peer_status.lua and bench/peer_etcd.lua issue
the same requests in the same order over those keys. etcd is driven through its HTTP/JSON
gateway (`/v3/kv/range`, `/v3/kv/put`, base64 keys and values), the one etcd API an HTTP
client like wrk can speak. Its native gRPC clients are faster than that gateway, which
decodes the JSON and hands each call to the gRPC server inside the same process: the
etcd figures here are etcd-over-HTTP/JSON, not etcd at its best.

Scenarios: reads (`processed?` against etcd's default, linearizable range), reads against
a serializable range (answered by the member without a consensus round: what a local
`processed?` answer is comparable to), durable writes, and a mixed load of nine reads to
one write. Each round runs both systems back to back per scenario and swaps which goes
first every round; the table gives medians over rounds, and each ratio is the median of
the per-round ratios, with their range. "Per server CPU-second" divides requests by the
CPU time (user + system) the server's processes spent during the load: etcd's one
process, process-status's gunicorn master and worker. It moves less than req/s when
other jobs share the cores. wrk shares them too, so its CPU is printed per run.

Exits 0 with one "skipped" line when etcd is not installed.
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    BENCH,
    Server,
    WrkResult,
    http,
    loadavg,
    process_cpu_seconds,
    record_goal,
    start_etcd,
    start_service,
    stopping,
    system_busy_seconds,
    tree_pids,
    wrk,
)

SKIP = ("skipped: etcd not installed (apt-get install etcd-server, "
        "or deploy/install-quietly.sh etcd-server etcd)")
KEYS = 1000
SEEDED = 100_000_000_000
"""The position every key starts at; the reads ask for it (so every answer is "processed"),
the writes go above it. Must match `seeded` in the Lua scripts."""
SCRIPTS = {"process-status": BENCH / "peer_status.lua", "etcd": BENCH / "peer_etcd.lua"}
SYSTEMS = ("process-status", "etcd")


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    loads: dict[str, str]
    """System -> the load the Lua script runs (the URL's path names it)."""
    goal: float | None = None
    """Minimum process-status / etcd req/s ratio."""
    p99_goal: bool = False
    """Also: process-status's p99 no higher than etcd's."""
    goal_key: str = ""
    """Its figure in bench/goals.py's table."""


SCENARIOS = [
    Scenario("read", "reads: `processed?` vs range (linearizable, etcd's default)",
             {"process-status": "read", "etcd": "read"}, goal=2.5,
             goal_key="processed-vs-etcd"),
    Scenario("read-serializable", "reads: `processed?` vs range (serializable)",
             {"process-status": "read", "etcd": "read-serializable"}),
    Scenario("write", "durable writes: PUT (`--durability fsync`) vs put",
             {"process-status": "write", "etcd": "write"}, goal=1.5, p99_goal=True,
             goal_key="put-vs-etcd"),
    Scenario("mixed", "mixed 90/10: reads and durable writes",
             {"process-status": "mixed", "etcd": "mixed"}),
]


@dataclass(frozen=True)
class Run:
    result: WrkResult
    server_cpu: float
    """CPU seconds of the server's processes during the load."""
    wrk_cpu: float
    elapsed: float
    other_cpu: float
    """Share of the machine's CPU used by processes other than wrk and the server."""

    @property
    def per_cpu_second(self) -> float:
        return self.result.requests / self.server_cpu if self.server_cpu else 0.0


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)
    """(scenario, system) -> one run per round."""

    def add(self, scenario: str, system: str, run: Run) -> None:
        self.runs.setdefault((scenario, system), []).append(run)

    def median(self, scenario: str, system: str, figure: str) -> float:
        """Median over rounds of a WrkResult field (rps, p50_ms, p99_ms)."""
        return statistics.median(
            float(getattr(run.result, figure)) for run in self.runs[(scenario, system)])

    def ratios(self, scenario: str, per_cpu: bool = False) -> list[float]:
        """The same round's process-status / etcd figure, one per round."""
        pairs = zip(self.runs[(scenario, "process-status")], self.runs[(scenario, "etcd")],
                    strict=True)
        if per_cpu:
            return [ours.per_cpu_second / theirs.per_cpu_second
                    for ours, theirs in pairs if theirs.per_cpu_second]
        return [ours.result.rps / theirs.result.rps for ours, theirs in pairs
                if theirs.result.rps]


def ratio_cell(values: list[float]) -> str:
    """The median, and the range over rounds: on a shared machine one round can swing."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def measure(server: Server, url: str, script: Path, args: argparse.Namespace) -> Run:
    pids = tree_pids(server.process.pid)
    cpu_before = sum(process_cpu_seconds(pid) for pid in pids)
    # wrk is our child: its CPU shows in RUSAGE_CHILDREN once wrk() has waited for it.
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before, started = system_busy_seconds(), time.monotonic()
    result = wrk(url, args.duration, connections=args.connections, threads=args.threads,
                 script=script)
    elapsed = time.monotonic() - started
    busy = system_busy_seconds() - busy_before
    server_cpu = sum(process_cpu_seconds(pid) for pid in pids) - cpu_before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children.ru_utime - children_before.ru_utime
               + children.ru_stime - children_before.ru_stime)
    other = max(0.0, busy - server_cpu - wrk_cpu) / (elapsed * (os.cpu_count() or 1))
    return Run(result, server_cpu, wrk_cpu, elapsed, other)


def seed(servers: dict[str, Server]) -> None:
    """Every key at SEEDED in both systems, so both reads find a value to answer with."""
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    for key in range(KEYS):
        name = f"peer-{key}"
        ours = http("PUT", f"{servers['process-status'].url}/status/{name}",
                    b'{"timestamp": %d}' % SEEDED)
        body = f'{{"key": "{b64(name)}", "value": "{b64(str(SEEDED))}"}}'.encode()
        theirs = http("POST", f"{servers['etcd'].url}/v3/kv/put", body)
        if ours != 200 or theirs != 200:
            raise RuntimeError(f"seeding {name}: process-status {ours}, etcd {theirs}")


def etcd_version(etcd: str) -> str:
    output = subprocess.run([etcd, "--version"], capture_output=True, text=True,
                            timeout=10, check=False).stdout
    first = output.splitlines()[0] if output else "etcd (version unknown)"
    return " ".join(first.replace("Version:", "").split())  # "etcd Version: 3.4.23"


def report(results: Results, args: argparse.Namespace, version: str) -> None:
    print(f"\nprocess-status `serve --durability fsync` vs {version} (one member, HTTP/JSON "
          f"gateway); wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s "
          f"--latency, {args.rounds} rotated round(s), {KEYS:,} keys, loopback, "
          f"{os.cpu_count()} CPUs shared by wrk and the servers; medians over rounds\n")
    print("| scenario | process-status req/s | p50 | p99 | etcd req/s | p50 | p99 "
          "| ratio (range) | per server CPU-s (range) | goal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for scenario in SCENARIOS:
        name = scenario.name
        ratios = results.ratios(name)
        ratio = statistics.median(ratios) if ratios else 0.0
        goal = ""
        if scenario.goal is not None:
            met = ratio >= scenario.goal
            goal = f">= {scenario.goal:g}x"
            if scenario.p99_goal:
                met = met and (results.median(name, "process-status", "p99_ms")
                               <= results.median(name, "etcd", "p99_ms"))
                goal += ", p99 <= etcd's"
            goal += f": {'met' if met else 'NOT met'}"
            if scenario.goal_key:
                per_cpu = statistics.median(results.ratios(name, per_cpu=True))
                p99 = (f"; p99 {results.median(name, 'process-status', 'p99_ms'):.1f} ms "
                       f"vs {results.median(name, 'etcd', 'p99_ms'):.1f} ms"
                       if scenario.p99_goal else "")
                record_goal(scenario.goal_key, f"{ratio:.2f}x{p99}", goal.split(":")[0], met,
                            f"{per_cpu:.2f}x per server CPU-second: the local backend is one "
                            "worker (one core); etcd used more than one")
        cells = [scenario.label]
        for system in SYSTEMS:
            cells += [f"{results.median(name, system, 'rps'):,.0f}",
                      f"{results.median(name, system, 'p50_ms'):.2f} ms",
                      f"{results.median(name, system, 'p99_ms'):.2f} ms"]
        cells += [ratio_cell(ratios), ratio_cell(results.ratios(name, per_cpu=True)), goal]
        print("| " + " | ".join(cells) + " |")
    errors = sum(run.result.errors for runs in results.runs.values() for run in runs)
    other = max(run.other_cpu for runs in results.runs.values() for run in runs)
    print(f"\nerrors (non-2xx and socket errors), all runs: {errors}; most CPU used by other "
          f"processes in any run: {other:.0%}; load average (1 min) at the end: {loadavg()}")
    print("etcd's native gRPC clients are faster than its HTTP/JSON gateway measured here "
          "(the gateway decodes JSON and base64 and relays each call over gRPC inside etcd).")
    if other > 0.05:
        print("NOTE: other processes used over 5% of the CPU during some runs: absolute "
              "figures are noisy; compare the same-round ratios.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="wrk warm-up seconds per system and scenario in round 1, 0: none")
    parser.add_argument("--rounds", type=int, default=3, help="rotated rounds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    etcd = shutil.which("etcd")
    if etcd is None:
        print(SKIP)
        return 0
    # The Lua scripts read the key count from here, so the seeded and loaded keys agree.
    os.environ["PEER_KEYS"] = str(KEYS)
    results = Results()
    with tempfile.TemporaryDirectory(prefix="process-status-peers-") as temp:
        work = Path(temp)
        servers: dict[str, Server] = {}
        with stopping([]) as started:
            servers["etcd"] = start_etcd(etcd, work / "etcd-data", work)
            started.append(servers["etcd"])
            servers["process-status"] = start_service(
                "serve-fsync", work / "data-fsync", work, "--durability", "fsync")
            started.append(servers["process-status"])
            seed(servers)
            for round_number in range(args.rounds):
                order = SYSTEMS if round_number % 2 == 0 else SYSTEMS[::-1]
                for scenario in SCENARIOS:
                    for system in order:
                        server, script = servers[system], SCRIPTS[system]
                        url = f"{server.url}/{scenario.loads[system]}"
                        if round_number == 0 and args.warmup > 0:
                            wrk(url, args.warmup, connections=args.connections,
                                threads=args.threads, script=script)
                        run = measure(server, url, script, args)
                        results.add(scenario.name, system, run)
                        print(f"round {round_number + 1} {scenario.name} {system}: "
                              f"{run.result.rps:,.0f} req/s, p50 {run.result.p50_ms:.2f} ms, "
                              f"p99 {run.result.p99_ms:.2f} ms, errors {run.result.errors}, "
                              f"{run.per_cpu_second:,.0f} req per server CPU-s, server "
                              f"{run.server_cpu / run.elapsed:.2f} cores, wrk "
                              f"{run.wrk_cpu / run.elapsed:.2f} cores, other "
                              f"{run.other_cpu:.0%}", flush=True)
    report(results, args, etcd_version(etcd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
