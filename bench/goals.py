"""The speed goals of `make bench` in one table, from the figures its scripts recorded.

    .venv/bin/python bench/goals.py build/bench-goals.jsonl

Each benchmark script measures its goals as ratios (or latencies) within its own run and
records them with `benchlib.record_goal`; this prints them together, in the order below,
and names the goals no script recorded (a skipped benchmark: etcd not installed, say).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIGURES = {
    # key -> what is compared; docs/benchmarks.md's goals table names them the same way
    "put-vs-etcd": "durable PUT vs etcd HTTP/JSON put (`bench/peers.py`)",
    "processed-vs-etcd": "`processed?` vs etcd range (`bench/peers.py`)",
    "put-vs-aiohttp": "durable PUT vs bare aiohttp GET baseline (`bench/run.py`)",
    "processed-vs-aiohttp": "`processed?` vs bare aiohttp GET baseline (`bench/run.py`)",
    "haproxy-repeated": "HAProxy, repeated processed token vs ungated (`bench/gateway.py`)",
    "redis-wake-up": "Redis cross-replica wake-up p99 (`bench/redis_backend.py`)",
}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    path = Path(argv[0])
    recorded: dict[str, dict[str, object]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            recorded[str(entry["key"])] = entry  # a script run twice: its last figures
    print("\n## Goals (each a same-run ratio or latency; see each script's table above)\n")
    print("| figure | measured | goal | met | load (1 min) | what bounds a miss |")
    print("|---|---:|---|---|---:|---|")
    keys = [*FIGURES, *sorted(set(recorded) - set(FIGURES))]
    for key in keys:
        label = FIGURES.get(key, key)
        entry = recorded.get(key)
        if entry is None:
            print(f"| {label} | not measured | | | | its script was skipped or failed |")
            continue
        print(f"| {label} | {entry['measured']} | {entry['goal']} | "
              f"{'met' if entry['met'] else 'NOT met'} | {entry['load']} | {entry['note']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
