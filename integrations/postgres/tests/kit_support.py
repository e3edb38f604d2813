"""What the kit's tests share: a scratch cluster, fresh databases per test, the projection
they run, and an operator in a thread or a subprocess (operator_main.py).

The projection keeps `item_view` (one row per item) and `totals` (inserts counted one by
one), so a transaction applied twice shows as a count above the source's, and one lost
as a missing row.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
from process_status_postgres import Change, Operator, OperatorOptions
from process_status_postgres.operator import Cursor
from process_status_postgres.scratch import ScratchCluster

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
_numbers = itertools.count(1)

SOURCE = """
CREATE TABLE items (id bigserial PRIMARY KEY, n integer NOT NULL,
                    updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);
CREATE TABLE unrelated (id bigserial PRIMARY KEY, x integer);
CREATE PUBLICATION {publication} FOR TABLE items, notes;
"""
TARGET = """
CREATE TABLE item_view (id bigint PRIMARY KEY, n integer NOT NULL);
CREATE TABLE note_view (id bigint PRIMARY KEY, body text NOT NULL);
CREATE TABLE totals (name text PRIMARY KEY, inserts integer NOT NULL);
"""


def project(cur: Cursor, changes: list[Change]) -> None:
    for change in changes:
        if change.operation != "insert":
            continue
        assert change.new is not None
        if change.table == "items":
            cur.execute("INSERT INTO item_view (id, n) VALUES (%s, %s)",
                        (int(change.new["id"] or 0), int(change.new["n"] or 0)))
        else:
            cur.execute("INSERT INTO note_view (id, body) VALUES (%s, %s)",
                        (int(change.new["id"] or 0), change.new["body"]))
        cur.execute("INSERT INTO totals (name, inserts) VALUES (%s, 1) ON CONFLICT (name) "
                    "DO UPDATE SET inserts = totals.inserts + 1", (change.table,))


@dataclass
class Databases:
    cluster: ScratchCluster
    source: str
    target: str
    slot: str
    publication: str

    def options(self, status_url: str, **overrides: Any) -> OperatorOptions:
        return OperatorOptions(source_dsn=self.source, target_dsn=self.target, slot=self.slot,
                               publication=self.publication, status_url=status_url,
                               **overrides)

    def query(self, dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        connection = psycopg2.connect(dsn)
        try:
            with connection.cursor() as cur:
                cur.execute(sql, args)
                rows = cur.fetchall() if cur.description else []
            connection.commit()
            return rows
        finally:
            connection.close()


@contextlib.contextmanager
def fresh_databases(cluster: ScratchCluster) -> Iterator[Databases]:
    number = next(_numbers)
    names = (f"source_{number}", f"target_{number}")
    admin = psycopg2.connect(cluster.dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        for name in names:
            cur.execute(f"CREATE DATABASE {name}")
    databases = Databases(cluster, cluster.dsn(names[0]), cluster.dsn(names[1]),
                          f"slot_{number}", f"publication_{number}")
    for dsn, ddl in ((databases.source, SOURCE.format(publication=databases.publication)),
                     (databases.target, TARGET)):
        databases.query(dsn, ddl)
    try:
        yield databases
    finally:
        with admin.cursor() as cur:
            # A slot keeps WAL for ever: drop it once nothing uses it.
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s AND NOT active", (databases.slot,))
            for name in names:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


class Running:
    """An operator on a thread; `error` holds what ended it, if anything did."""

    def __init__(self, operator: Operator) -> None:
        self.operator = operator
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.operator.run()
        except BaseException as exc:
            self.error = exc


@contextlib.contextmanager
def operating(operator: Operator) -> Iterator[Running]:
    running = Running(operator)
    running.thread.start()
    try:
        yield running
    finally:
        operator.stop()
        running.thread.join(30)
        assert not running.thread.is_alive(), "the operator did not stop within 30 s"


def operator_process(databases: Databases, status_url: str, log: Path) -> subprocess.Popen[bytes]:
    """The same operator and projection in a process of its own (to kill -9 it)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, str(HERE / "operator_main.py"), databases.source, databases.target,
             databases.slot, databases.publication, status_url],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
