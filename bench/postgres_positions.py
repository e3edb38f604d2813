"""Commit -> processed latency through the Postgres kit: one record per transaction vs one
per drained batch, in the same run.

    .venv/bin/python bench/postgres_positions.py [--writers 32] [--transactions 40]

A scratch PostgreSQL cluster and a `process-status serve` on loopback; the kit's
operator on a thread with a trivial projection (one row per insert). --writers
concurrent writers each insert one row per transaction (0-20 ms of work inside it),
commit with `commit_with_position`, and at once ask `processed?` with `?wait=`; the
latency is from the commit's return to the answer "processed". Two operators, in
rotated rounds: `max_batch=1` (a transaction at a time: one apply, one POST, one
feedback each) and the default (everything drained at once, one POST per drain).
Prints p50/p99 per mode and the records (POSTs) each sent, idle advances included
(counted by the service's own request counter). Needs Debian's postgresql-15.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import orjson
import psycopg2

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "integrations" / "postgres" / "tests")]

from kit_support import Databases, fresh_databases, operating, project  # noqa: E402
from process_status_postgres import Operator, commit_with_position  # noqa: E402
from process_status_postgres.scratch import ScratchCluster  # noqa: E402

from tests.servers import ServeProcess, request, serving  # noqa: E402


def batch_posts(status: ServeProcess) -> int:
    """POST /status requests the service has answered 200."""
    text = request("GET", status.metrics_url)[2].decode()
    found = re.search(r'^process_status_http_requests_total\{method="POST",route="/status",'
                      r'status="200"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def one_round(databases: Databases, status: ServeProcess, writers: int, transactions: int,
              max_batch: int) -> tuple[list[float], int]:
    """Latencies (s) and the number of records the operator sent."""
    status_url = status.url
    latencies: list[float] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        connection = psycopg2.connect(databases.source)
        try:
            for index in range(transactions):
                with connection.cursor() as cur:
                    cur.execute("INSERT INTO items (n) VALUES (%s)", (index,))
                threading.Event().wait(rng.uniform(0, 0.02))
                position = commit_with_position(connection)
                committed = time.perf_counter()
                code, _, body = request(
                    "GET", f"{status_url}/status/items/processed?ts={position}&wait=10",
                    timeout=20)
                assert code == 200, body
                assert orjson.loads(body)["processed"], body
                with lock:
                    latencies.append(time.perf_counter() - committed)
        finally:
            connection.close()

    options = replace(databases.options(status_url), max_batch=max_batch)
    operator = Operator(options, project)
    with operating(operator) as running:
        deadline = time.monotonic() + 30
        while operator.recorded == 0:  # its slot exists and it has recorded a position
            assert running.error is None, running.error
            assert time.monotonic() < deadline, "the operator did not start"
            time.sleep(0.05)
        before = batch_posts(status)
        threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        records = batch_posts(status) - before
    return latencies, records


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[round(q * 100) - 1] if len(values) > 1 else \
        values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--transactions", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    modes = {"per transaction (max_batch=1)": 1, "batched (one POST per drain)": 10_000}
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    records: dict[str, int] = dict.fromkeys(modes, 0)
    work = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
    with ScratchCluster.start() as cluster, serving(work / "ps", "--durability", "batch") \
            as status:
        for round_ in range(args.rounds):
            order = list(modes.items()) if round_ % 2 == 0 else list(reversed(modes.items()))
            for mode, max_batch in order:
                with fresh_databases(cluster) as databases:
                    latencies, sent = one_round(databases, status, args.writers,
                                                args.transactions, max_batch)
                results[mode] += latencies
                records[mode] += sent
    print(f"commit -> processed, {args.writers} writers x {args.transactions} transactions x "
          f"{args.rounds} rounds (0-20 ms of work in each transaction)")
    print(f"{'operator':34} {'p50 ms':>8} {'p99 ms':>8} {'records':>8} {'transactions':>13}")
    for mode, latencies in results.items():
        print(f"{mode:34} {1000 * quantile(latencies, 0.5):8.1f} "
              f"{1000 * quantile(latencies, 0.99):8.1f} {records[mode]:8d} {len(latencies):13d}")


if __name__ == "__main__":
    main()
