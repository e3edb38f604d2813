"""API latency while /metrics is scraped in a loop, against the same flood of /healthz.

    .venv/bin/python bench/scrapes.py                 # ~1 min
    .venv/bin/python bench/scrapes.py --scrapers 8 --duration 10

Starts `process-status serve` (fsync mode, 1,000 entities so the per-entity series are
exported), then, in alternating rounds, drives `GET /status/{e}/processed` with wrk
(-t1 -c16) alone, while a separate process keeps --scrapers connections asking
`/healthz` back to back (the baseline: any flood costs the loop and, on this 2-core
machine, the flooding client's CPU), and while the same process scrapes /metrics
instead. "scrape flood / healthz flood" near 1 means a scrape costs the API no more
than an ordinary request. Before the scrape limits (service/exposition/metrics_site.py), 8
scrapers took the API's p50 from 1 ms to 96 ms.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
from benchlib import WrkResult, http, loadavg, start_service, wrk

ENTITIES = 1000
SCRAPER = """
import asyncio, json, sys, time
import aiohttp

async def main(url, connections, seconds):
    counts = [0] * connections
    until = time.monotonic() + seconds
    async def loop(index):
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < until:
                async with session.get(url) as response:
                    await response.read()
                counts[index] += response.status == 200
    await asyncio.gather(*(loop(i) for i in range(connections)))
    print(json.dumps({"scrapes": sum(counts)}))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--scrapers", type=int, default=8)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    alone: list[WrkResult] = []
    flooded: list[WrkResult] = []
    scraped: list[WrkResult] = []
    scrapes = 0
    with tempfile.TemporaryDirectory(prefix="process-status-scrapes-") as temp:
        work = Path(temp)
        server = start_service("serve-scrapes", work / "data", work)
        try:
            batch = {f"entity-{index:04d}": 1_000_000 + index for index in range(ENTITIES)}
            if http("POST", f"{server.url}/status", orjson.dumps(batch)) != 200:
                raise RuntimeError("seeding failed")
            url = f"{server.url}/status/entity-0001/processed?ts=1"
            metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
            wrk(url, 2, connections=16)  # warm-up
            for _ in range(args.rounds):
                alone.append(wrk(url, args.duration, connections=16))
                for target, into in ((f"{server.url}/healthz", flooded), (metrics, scraped)):
                    flood = subprocess.Popen(
                        [sys.executable, "-c", SCRAPER, target, str(args.scrapers),
                         str(args.duration + 1)], stdout=subprocess.PIPE, text=True)
                    into.append(wrk(url, args.duration, connections=16))
                    out, _ = flood.communicate(timeout=args.duration + 60)
                    if target == metrics:
                        scrapes += int(orjson.loads(out)["scrapes"])
        finally:
            server.stop(30)

    def median(results: list[WrkResult], field: str) -> float:
        values = sorted(float(getattr(result, field)) for result in results)
        return values[len(values) // 2]

    seconds = args.rounds * args.duration
    print(f"\nprocessed? with wrk -t1 -c16, {args.rounds} x {args.duration:g} s each; floods of "
          f"{args.scrapers} connections asking back to back ({ENTITIES} per-entity series)\n")
    print("| figure | alone | /healthz flood | /metrics flood | scrape / healthz flood |")
    print("|---|---:|---:|---:|---:|")
    for label, field, unit in (("API req/s", "rps", ""), ("API p50", "p50_ms", " ms"),
                               ("API p99", "p99_ms", " ms")):
        a, f, m = (median(group, field) for group in (alone, flooded, scraped))
        print(f"| {label} | {a:,.2f}{unit} | {f:,.2f}{unit} | {m:,.2f}{unit} | {m / f:.2f}x |")
    print(f"| scrapes answered 200 (the rest: 429) | | | {scrapes / seconds:,.0f}/s | |")
    print(f"\nload average (1 min) at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
