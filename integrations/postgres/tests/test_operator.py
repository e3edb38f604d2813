"""The operator against a real PostgreSQL and a real process-status: projection and
positions, idle advance, kill -9 mid-stream, a missing slot, a clean SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import replace
from pathlib import Path

import orjson
import psycopg2
from kit_support import Databases, operating, operator_process, project
from process_status_postgres import Operator, OperatorError, commit_with_position
from process_status_postgres.operator import Cursor

from tests.servers import ServeProcess, request
from tests.support import until


def insert(dsn: str, table: str, value: int | str) -> int:
    """One transaction; returns the position the API would hand back."""
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cur:
            if table == "items":
                cur.execute("INSERT INTO items (n) VALUES (%s)", (value,))
            else:
                cur.execute(f"INSERT INTO {table} (body) VALUES (%s)", (str(value),))
        return commit_with_position(connection)
    finally:
        connection.close()


def processed(status: ServeProcess, entity: str, position: int, wait: float = 10) -> bool:
    code, _, body = request("GET", f"{status.url}/status/{entity}/processed?ts={position}"
                            f"&wait={wait}", timeout=wait + 10)
    assert code == 200, body
    result: bool = orjson.loads(body)["processed"]
    return result


def recorded(status: ServeProcess, entity: str) -> int | None:
    code, _, body = request("GET", f"{status.url}/status/{entity}")
    return int(orjson.loads(body)["timestamp"]) if code == 200 else None


def progress(databases: Databases) -> int:
    """The progress row's LSN (0 before the operator made its table or row)."""
    exists = databases.query(databases.target,
                             "SELECT to_regclass('process_status_progress') IS NOT NULL")
    if not exists[0][0]:
        return 0
    rows = databases.query(databases.target, "SELECT lsn FROM process_status_progress "
                           "WHERE slot = %s", databases.slot)
    return int(rows[0][0]) if rows else 0


def test_batches_are_projected_and_every_table_gets_the_commit_position(
    databases: Databases, status: ServeProcess
) -> None:
    with operating(Operator(databases.options(status.url), project)):
        until(lambda: recorded(status, "items") is not None, "the slot and a first position")
        tokens = [insert(databases.source, "items", n) for n in range(20)]
        connection = psycopg2.connect(databases.source)
        with connection.cursor() as cur:  # one transaction, both tables
            cur.execute("INSERT INTO items (n) VALUES (100)")
            cur.execute("INSERT INTO notes (body) VALUES ('both')")
        both = commit_with_position(connection)
        connection.close()
        for token in tokens:
            assert processed(status, "items", token)
        assert processed(status, "items", both)
        assert processed(status, "notes", both)
        # processed? said yes: the rows are there, each applied once.
        assert databases.query(databases.target, "SELECT count(*) FROM item_view") == [(21,)]
        assert databases.query(databases.target, "SELECT body FROM note_view") == [("both",)]
        assert dict(databases.query(databases.target, "SELECT name, inserts FROM totals")) == \
            {"items": 21, "notes": 1}
        # The LSN is global: both tables are recorded at the same position.
        until(lambda: recorded(status, "items") == recorded(status, "notes"),
              "both tables recorded at one position")
        assert progress(databases) >= both


def test_an_idle_operator_advances_past_unrelated_wal(
    databases: Databases, status: ServeProcess
) -> None:
    with operating(Operator(databases.options(status.url), project)):
        until(lambda: recorded(status, "items") is not None, "the first position")
        # WAL the publication does not cover: no change reaches the operator, yet a token
        # taken after it must not wait for ever.
        connection = psycopg2.connect(databases.source)
        with connection.cursor() as cur:
            cur.execute("INSERT INTO unrelated (x) VALUES (1)")
        position = commit_with_position(connection)
        connection.close()
        assert processed(status, "items", position)
        assert processed(status, "notes", position)
        assert databases.query(databases.target, "SELECT count(*) FROM item_view") == [(0,)]


def test_kill_9_mid_stream_loses_and_doubles_nothing(
    databases: Databases, status: ServeProcess, tmp_path: Path
) -> None:
    log = tmp_path / "operator.log"
    stop = threading.Event()
    written: list[int] = []
    tokens: dict[int, int] = {}
    """item id -> the position its API call would have returned"""

    def write() -> None:
        connection = psycopg2.connect(databases.source)
        try:
            while not stop.is_set() and len(written) < 3000:
                with connection.cursor() as cur:
                    cur.execute("INSERT INTO items (n) VALUES (%s) RETURNING id",
                                (len(written),))
                    item = int(cur.fetchone()[0])  # type: ignore[index]
                tokens[item] = commit_with_position(connection)
                written.append(tokens[item])
        finally:
            connection.close()

    def applied() -> int:
        rows = databases.query(databases.target, "SELECT inserts FROM totals")
        return int(rows[0][0]) if rows else 0

    writers = [threading.Thread(target=write) for _ in range(4)]
    operator = operator_process(databases, status.url, log)
    try:
        until(lambda: progress(databases) > 0, "the slot (writes start after it)")
        for writer in writers:
            writer.start()
        until(lambda: applied() >= 200, "the operator to apply a few hundred transactions")
        os.killpg(operator.pid, signal.SIGKILL)
        operator.wait(10)
        at_kill = len(written)
        # No position recorded ahead of what the read model committed: every write whose
        # token the recorded position covers is in the read model.
        position = recorded(status, "items")
        assert position is not None
        covered = {item for item, token in list(tokens.items()) if token <= position}
        present = {row[0] for row in databases.query(databases.target,
                                                     "SELECT id FROM item_view")}
        assert covered, "the kill came after some positions were recorded"
        assert covered <= present, sorted(covered - present)[:10]
        until(lambda: len(written) >= at_kill + 200, "writes to go on while it is down")
        operator = operator_process(databases, status.url, log)
        until(lambda: len(written) >= at_kill + 400, "more writes after the restart")
    except BaseException:
        operator.kill()
        operator.wait(10)
        raise
    finally:
        stop.set()
        for writer in writers:
            if writer.is_alive() or writer.ident is not None:
                writer.join(30)
    try:
        count = databases.query(databases.source, "SELECT count(*) FROM items")[0][0]
        until(lambda: applied() == count, f"all {count} items applied", 60)
        # Not one lost, not one applied twice.
        source_ids = databases.query(databases.source, "SELECT id FROM items ORDER BY id")
        assert databases.query(databases.target, "SELECT id FROM item_view ORDER BY id") == \
            source_ids
        assert applied() == count
        assert processed(status, "items", max(written))
    finally:
        operator.send_signal(signal.SIGTERM)
        operator.wait(30)
    assert log.read_text().count("created replication slot") == 1


def test_a_progress_row_without_its_slot_refuses_to_start(
    databases: Databases, status: ServeProcess
) -> None:
    with operating(Operator(databases.options(status.url), project)):
        until(lambda: progress(databases) > 0, "a progress row")
        insert(databases.source, "items", 1)
    databases.query(databases.source, "SELECT pg_drop_replication_slot(%s)", databases.slot)
    with operating(Operator(databases.options(status.url), project)) as running:
        running.thread.join(30)
    assert isinstance(running.error, OperatorError), running.error
    message = str(running.error)
    assert f"slot {databases.slot!r}" in message
    assert "does not exist" in message
    assert "refusing to create a new slot" in message
    # ...and it did not create one behind the read model's back.
    assert databases.query(databases.source, "SELECT count(*) FROM pg_replication_slots WHERE "
                           "slot_name = %s", databases.slot) == [(0,)]


def test_sigterm_finishes_the_batch_and_exits(
    databases: Databases, status: ServeProcess, tmp_path: Path
) -> None:
    log = tmp_path / "operator.log"
    operator = operator_process(databases, status.url, log)
    try:
        until(lambda: progress(databases) > 0, "the slot")
        token = insert(databases.source, "items", 7)
        assert processed(status, "items", token)
        operator.send_signal(signal.SIGTERM)
        assert operator.wait(15) == 0
    finally:
        if operator.poll() is None:
            operator.kill()
    assert "SIGTERM: stopping after the current batch" in log.read_text()
    assert progress(databases) >= token


def test_a_missing_publication_is_named(databases: Databases, status: ServeProcess) -> None:
    options = replace(databases.options(status.url), publication="no_such_publication")
    with operating(Operator(options, project)) as running:
        running.thread.join(30)
    assert isinstance(running.error, OperatorError)
    assert "publication 'no_such_publication' does not exist" in str(running.error)


def copy_items(src: Cursor, dst: Cursor) -> None:
    src.execute("SELECT id, n FROM items")
    for row in src.fetchall():
        dst.execute("INSERT INTO item_view (id, n) VALUES (%s, %s)", row)
    dst.execute("INSERT INTO totals (name, inserts) SELECT 'items', count(*) FROM item_view")


def test_rows_written_before_the_slot_need_the_initial_copy(
    databases: Databases, status: ServeProcess
) -> None:
    before = [insert(databases.source, "items", n) for n in range(5)]
    with operating(Operator(databases.options(status.url), project)) as running:
        running.thread.join(30)
    assert isinstance(running.error, OperatorError)
    assert "table 'items' already holds rows" in str(running.error)
    assert "initial_copy" in str(running.error)
    assert recorded(status, "items") is None  # it vouched for nothing
    options = replace(databases.options(status.url), initial_copy=copy_items)
    with operating(Operator(options, project)):
        after = insert(databases.source, "items", 99)
        assert processed(status, "items", max(before))
        assert processed(status, "items", after)
        assert databases.query(databases.target, "SELECT count(*) FROM item_view") == [(6,)]
        assert databases.query(databases.target, "SELECT inserts FROM totals") == [(6,)]
