"""Why positions must be commit LSNs: the reference design's `updated_at` breaks the
promise under ordinary concurrency, on a real Postgres.

32 concurrent writers each insert a row (its `updated_at` set by `clock_timestamp()`),
hold the transaction open 0-20 ms, commit, then do what a client behind the gate does:
wait until process-status says the position is processed, and read the derived row at
once. With LSN positions (the kit's) the row is always there. With an operator that
records the largest `updated_at` it has applied (the same loop, only `_positions`
changed), processed? says yes for rows still missing: a transaction that set an earlier
`updated_at` commits after one that set a later one, which the operator has already
recorded. This test guards the table in docs/positions.md (and the README's summary of it).
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from kit_support import Databases, operating, project
from process_status_postgres import Operator, commit_with_position
from process_status_postgres.pgoutput import Transaction
from test_operator import processed

from tests.servers import ServeProcess, request
from tests.support import until

WRITERS = 32
TRANSACTIONS = 15
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(text: str) -> int:
    """A timestamptz in PostgreSQL's text form -> microseconds since the epoch."""
    return (datetime.fromisoformat(text) - EPOCH) // timedelta(microseconds=1)


class UpdatedAtOperator(Operator):
    """The reference design's position: the largest `updated_at` applied, per table."""

    def _positions(self, batch: list[Transaction]) -> dict[str, int]:
        found: dict[str, int] = {}
        for transaction in batch:
            for change in transaction.changes:
                stamp = (change.new or {}).get("updated_at")
                if stamp is not None:
                    found[change.table] = max(found.get(change.table, 0), micros(stamp))
        return found


def run_writers(databases: Databases, status: ServeProcess, by_lsn: bool) -> tuple[int, int]:
    """(false "processed", checks): processed? said yes, and the row was not there."""
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        source = psycopg2.connect(databases.source)
        target = psycopg2.connect(databases.target)
        target.autocommit = True
        try:
            for index in range(TRANSACTIONS):
                with source.cursor() as cur:
                    cur.execute("INSERT INTO items (n) VALUES (%s) RETURNING id, "
                                "(extract(epoch FROM updated_at) * 1000000)::bigint", (index,))
                    item, stamp = cur.fetchone()  # type: ignore[misc]
                threading.Event().wait(rng.uniform(0, 0.02))  # work inside the transaction
                if by_lsn:
                    position = commit_with_position(source)
                else:
                    source.commit()
                    position = int(stamp)
                assert processed(status, "items", position, wait=10)
                with target.cursor() as cur:
                    cur.execute("SELECT 1 FROM item_view WHERE id = %s", (item,))
                    present = cur.fetchone() is not None
                with lock:
                    results.append(not present)
        except BaseException as exc:
            errors.append(exc)
        finally:
            source.close()
            target.close()

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]
    return sum(results), len(results)


@pytest.mark.parametrize("position", ["commit LSN", "updated_at"])
def test_only_commit_lsns_keep_processed_true(
    databases: Databases, status: ServeProcess, position: str
) -> None:
    by_lsn = position == "commit LSN"
    kind = Operator if by_lsn else UpdatedAtOperator
    with operating(kind(databases.options(status.url), project)):
        until(lambda: request("GET", f"{status.url}/status/items")[0] == 200,
              "the operator's first position")
        false, checks = run_writers(databases, status, by_lsn)
    print(f"\n{position}: {false} false 'processed' of {checks} checks "
          f"({100 * false / checks:.1f}%), {WRITERS} writers")
    assert checks == WRITERS * TRANSACTIONS
    if by_lsn:
        assert false == 0
    else:
        assert false > 0, "updated_at positions should have said 'processed' too early"
