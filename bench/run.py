"""HTTP throughput of the service against a bare aiohttp baseline, all in one run.

    .venv/bin/python bench/run.py                   # everything (~2.5 min)
    .venv/bin/python bench/run.py --only baseline,processed --duration 5 --rounds 1

Starts a bare aiohttp hello-world under gunicorn with aiohttp's uvloop worker
(bench/baseline_app.py) and `process-status serve` in the durability modes the
chosen scenarios need, each on free loopback ports with a temp data dir, then
drives each with wrk (-t1 -c64 by default, --latency). Scenarios run round-robin
for --rounds rounds so that drift on this shared 2-core machine hits them all
alike; req/s is the mean over rounds, "spread" half the min-max range.

Every figure is a ratio against the baseline measured in the same run. The
"other CPU" column is the share of the machine's CPU used by processes other than
wrk and the server under test while it ran: above a few percent, someone else
was competing and the absolute numbers (less so the ratios) are noisy.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
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
    start_baseline,
    start_service,
    stopping,
    system_busy_seconds,
    wrk,
)

READ_ENTITY = "bench-read"
READ_STORED = 2_000_000
READ_ASKED = 1_500_000
PUT_SCRIPT = BENCH / "put.lua"


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str
    """Key of the server it drives: baseline, snapshot, fsync or batch."""
    path: str
    put: bool = False


SCENARIOS = [
    Scenario("baseline", "baseline", "/"),
    Scenario("aiohttp-processed", "baseline",
             f"/status/{READ_ENTITY}/processed?ts={READ_ASKED}"),
    Scenario("aiohttp-put", "baseline", "/", put=True),
    Scenario("processed", "fsync", f"/status/{READ_ENTITY}/processed?ts={READ_ASKED}"),
    Scenario("put-snapshot", "snapshot", "/", put=True),
    Scenario("put-fsync", "fsync", "/", put=True),
    Scenario("put-batch", "batch", "/", put=True),
]
LABELS = {
    "baseline": "baseline GET (bare aiohttp)",
    "aiohttp-processed": "same route and answer as processed?, bare aiohttp",
    "aiohttp-put": "same route and answer as PUT, bare aiohttp",
    "processed": "GET /status/{e}/processed?ts=",
    "put-snapshot": "PUT /status/{e} --durability snapshot",
    "put-fsync": "PUT /status/{e} --durability fsync",
    "put-batch": "PUT /status/{e} --durability batch",
}
GOALS: dict[str, tuple[str, float]] = {
    # scenario -> (denominator scenario, minimum ratio)
    "processed": ("baseline", 0.9),
    "put-fsync": ("baseline", 0.6),
}


@dataclass
class Measured:
    runs: list[WrkResult] = field(default_factory=list)
    other_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    """Server CPU-seconds per request, per run: less sensitive to a busy machine than req/s."""

    @property
    def cpu_us(self) -> float:
        return statistics.median(self.server_cpu) * 1e6

    @property
    def rps(self) -> float:
        return statistics.fmean(run.rps for run in self.runs)

    @property
    def spread(self) -> float:
        values = [run.rps for run in self.runs]
        return (max(values) - min(values)) / 2 / self.rps if self.rps else 0.0

    @property
    def p99(self) -> float:
        return statistics.median(run.p99_ms for run in self.runs)

    @property
    def errors(self) -> int:
        return sum(run.errors for run in self.runs)


def measure(
    server: Server, scenario: Scenario, args: argparse.Namespace
) -> tuple[WrkResult, float, float]:
    """One wrk run; also returns the share of machine CPU used by other processes, and the
    server's CPU-seconds per request."""
    pids = [server.process.pid, server.worker_pid()]
    ours_before = sum(process_cpu_seconds(pid) for pid in pids)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before, started = system_busy_seconds(), time.monotonic()
    result = wrk(
        server.url + scenario.path, args.duration, connections=args.connections,
        threads=args.threads, script=PUT_SCRIPT if scenario.put else None,
    )
    elapsed = time.monotonic() - started
    busy = system_busy_seconds() - busy_before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children.ru_utime - children_before.ru_utime
               + children.ru_stime - children_before.ru_stime)
    server_cpu = sum(process_cpu_seconds(pid) for pid in pids) - ours_before
    other = max(0.0, busy - server_cpu - wrk_cpu) / (elapsed * (os.cpu_count() or 1))
    return result, other, server_cpu / max(1, result.requests)


def start_servers(needed: set[str], work: Path) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    try:
        if "baseline" in needed:
            servers["baseline"] = start_baseline(work)
        for mode in ("snapshot", "fsync", "batch"):
            if mode in needed:
                servers[mode] = start_service(
                    f"serve-{mode}", work / f"data-{mode}", work, "--durability", mode
                )
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def seed(server: Server) -> None:
    body = b'{"timestamp": %d}' % READ_STORED
    status = http("PUT", f"{server.url}/status/{READ_ENTITY}", body)
    check = http("GET", f"{server.url}/status/{READ_ENTITY}/processed?ts={READ_ASKED}")
    if status != 200 or check != 200:
        raise RuntimeError(f"seeding {READ_ENTITY} failed: PUT {status}, GET {check}")


def seed_check(server: Server) -> None:
    """The bare app's PUT route answers as the service's does (else wrk counts errors)."""
    status = http("PUT", f"{server.url}/status/{READ_ENTITY}", b'{"timestamp": 1}')
    if status != 200:
        raise RuntimeError(f"the baseline app's PUT route answered {status}")


def ratio(results: dict[str, Measured], top: str, bottom: str) -> float | None:
    if top in results and bottom in results and results[bottom].rps:
        return results[top].rps / results[bottom].rps
    return None


def verdict(value: float | None, goal: float) -> str:
    if value is None:
        return "n/a"
    return "met" if value >= goal else "NOT met"


def report(results: dict[str, Measured], args: argparse.Namespace) -> None:
    print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency, "
          f"{args.rounds} round(s), loopback, {os.cpu_count()} CPUs shared by wrk and server\n")
    print("| scenario | req/s | spread | p99 | vs baseline | goal | server CPU/req "
          "| other CPU | errors |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for scenario in SCENARIOS:
        if scenario.name not in results:
            continue
        measured = results[scenario.name]
        against = ratio(results, scenario.name, "baseline")
        goal = ""
        if scenario.name in GOALS:
            bottom, minimum = GOALS[scenario.name]
            goal = f">= {minimum:g}x ({verdict(ratio(results, scenario.name, bottom), minimum)})"
        print(
            f"| {LABELS[scenario.name]} | {measured.rps:,.0f} | ±{measured.spread:.0%} "
            f"| {measured.p99:.2f} ms | {'' if against is None else f'{against:.2f}x'} "
            f"| {goal} | {measured.cpu_us:.0f} us | {max(measured.other_cpu):.0%} "
            f"| {measured.errors} |"
        )
    pairs: list[tuple[str, str, float | None]] = [
        ("processed", "aiohttp-processed", None),
        ("put-fsync", "aiohttp-put", None),
        ("put-fsync", "put-snapshot", 0.7),
        ("put-batch", "put-snapshot", None),
        ("put-fsync", "put-batch", None),
    ]
    lines = []
    for top, bottom, floor in pairs:
        value = ratio(results, top, bottom)
        if value is None:
            continue
        goal = "" if floor is None else f" (goal >= {floor:g}x: {verdict(value, floor)})"
        cpu = results[bottom].cpu_us / results[top].cpu_us if results[top].cpu_us else 0.0
        lines.append(f"- {LABELS[top]} / {LABELS[bottom]}: {value:.2f}x in req/s, "
                     f"{cpu:.2f}x in server CPU per request{goal}")
    if lines:
        print()
        print("\n".join(lines))
    print(f"\nload average (1 min) at the end: {loadavg()}")
    record_goals(results)
    if any(max(m.other_cpu) > 0.05 for m in results.values()):
        print("NOTE: other processes used over 5% of the CPU during some runs: "
              "absolute figures are noisy; compare the ratios.")


# goal -> (the scenario, its goal key in bench/goals.py, bare aiohttp with the same shape)
_RECORDED = {"processed": ("processed-vs-aiohttp", "aiohttp-processed"),
             "put-fsync": ("put-vs-aiohttp", "aiohttp-put")}


def record_goals(results: dict[str, Measured]) -> None:
    """The goals against the hello-world baseline, with what bounds them: the same route
    and answer in bare aiohttp, and the server CPU per request both cost."""
    for name, (key, shaped) in _RECORDED.items():
        value = ratio(results, name, "baseline")
        if value is None:
            continue
        minimum = GOALS[name][1]
        note = ""
        bound = ratio(results, shaped, "baseline")
        if bound is not None:
            note = (f"bare aiohttp with the same route and answer: {bound:.2f}x; server CPU "
                    f"per request {results[name].cpu_us:.0f} us against its "
                    f"{results[shaped].cpu_us:.0f} us (hello-world "
                    f"{results['baseline'].cpu_us:.0f} us)")
        record_goal(key, f"{value:.2f}x", f">= {minimum:g}x", value >= minimum, note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    names = [scenario.name for scenario in SCENARIOS]
    parser.add_argument("--only", default=",".join(names),
                        help=f"comma-separated scenarios out of {','.join(names)} "
                             "(ratios need baseline; default: all)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up seconds, 0: none")
    parser.add_argument("--rounds", type=int, default=2, help="round-robin rounds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown or not chosen:
        parser.error(f"unknown scenario(s) {unknown}; choose from {names}")
    scenarios = [scenario for scenario in SCENARIOS if scenario.name in chosen]
    results: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory(prefix="process-status-bench-") as temp:
        servers = start_servers({scenario.server for scenario in scenarios}, Path(temp))
        with stopping(list(servers.values())):
            if any(scenario.name == "processed" for scenario in scenarios):
                seed(servers["fsync"])
            if any(scenario.server == "baseline" and scenario.put for scenario in scenarios):
                seed_check(servers["baseline"])
            for round_number in range(args.rounds):
                for scenario in scenarios:
                    server = servers[scenario.server]
                    if round_number == 0 and args.warmup > 0:
                        wrk(server.url + scenario.path, args.warmup,
                            connections=args.connections, threads=args.threads,
                            script=PUT_SCRIPT if scenario.put else None)
                    result, other, cpu = measure(server, scenario, args)
                    measured = results.setdefault(scenario.name, Measured())
                    measured.runs.append(result)
                    measured.other_cpu.append(other)
                    measured.server_cpu.append(cpu)
                    print(f"round {round_number + 1} {scenario.name}: {result.rps:,.0f} req/s, "
                          f"p99 {result.p99_ms:.2f} ms, errors {result.errors}, "
                          f"other CPU {other:.0%}", file=sys.stderr, flush=True)
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
