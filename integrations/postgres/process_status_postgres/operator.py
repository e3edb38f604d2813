"""Operator: turns a Postgres change stream into a read model and commit-ordered positions.

You hand it a projection, a function that applies a batch of row changes to your read
model with the cursor it gives you. The operator consumes logical replication
(pgoutput) from a named slot and publication and, for each drained batch of committed
transactions, in this order:

1. calls the projection and stores the batch's end LSN in the progress table
   (`process_status_progress`), **in one transaction** on the read model's database;
2. records that LSN for **every table of the publication** in process-status, in one
   batch write (the LSN is global: once everything up to L is applied, every table is
   processed up to L);
3. confirms the LSN to the slot (`flush_lsn`, forced: feedback is otherwise held for
   the status interval), so Postgres may recycle the WAL before it.

A crash between any two steps repeats nothing and loses nothing: on restart the
operator resumes from the progress row and skips transactions at or below it, and a
position is only ever recorded after the transaction that stores it committed. When
idle it asks the server for the end of what has been decoded and records that (after
applying everything before it), or tokens taken after unrelated WAL would wait for ever;
it stores that point as progress and confirms it to the slot only every
`idle_confirm_interval` and at a clean stop (a progress write is WAL too: doing it every
turn would keep an operator whose read model shares the cluster busy advancing past its own
writes).

Why LSNs: they are in commit order, and a transaction's rows are visible exactly when
its commit is. An `updated_at` column is set before the commit, and transactions
commit in another order than they set it: recording max(updated_at) lets the gate say
"processed" for a transaction that has not committed yet (measured: up to 41% false
"processed" under 32 concurrent writers; 0 with LSNs).

The first start creates the slot and hands `initial_copy` the tables as they were at
the slot's starting point (a source cursor in the slot's exported snapshot, and a
target cursor in the transaction that also stores that point as progress), so rows
written before the slot existed are in the read model too; without `initial_copy` the
publication's tables must be empty then, or the operator refuses (the gate would vouch
for rows the read model never got).

Refuses to start when the progress row exists but its slot does not (a new slot would
start past transactions the read model never saw), or when the slot was confirmed past
the progress row (someone else consumed it). Retries Postgres and process-status errors
with backoff, saying what it waits for; `stop()` (SIGTERM, SIGINT with
`stop_on_signals`) finishes or abandons the open batch and never records a position it
has not applied.
"""

from __future__ import annotations

import asyncio
import logging
import select
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from process_status_client import ProcessStatusClient, ProcessStatusError
from psycopg2 import sql

from process_status_postgres.lsn import format_lsn, parse
from process_status_postgres.pgoutput import Change, Decoder, Transaction

log = logging.getLogger("process_status_postgres.operator")

Cursor = psycopg2.extensions.cursor
Projection = Callable[[Cursor, list[Change]], None]
"""Apply the changes (in commit order) to the read model with this cursor; do not commit."""
InitialCopy = Callable[[Cursor, Cursor], None]
"""Load the read model from the source as of the slot's start: (source, target) cursors."""

PROGRESS_TABLE = "process_status_progress"


class OperatorError(RuntimeError):
    """The operator cannot run as configured; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class OperatorOptions:
    source_dsn: str
    """The database whose tables the publication covers (the user needs REPLICATION)."""
    target_dsn: str
    """The read model's database: the projection's writes and the progress row go here."""
    slot: str
    publication: str
    status_url: str
    status_token: str | None = None
    max_batch: int = 10_000
    """Changes per applied batch at most (a drain stops there and applies)."""
    idle_interval: float = 0.05
    """Seconds between asks for the end of WAL while nothing arrives."""
    idle_confirm_interval: float = 10.0
    """Seconds between progress writes (and slot confirmations) while idle."""
    max_backoff: float = 5.0
    initial_copy: InitialCopy | None = None
    """On the first start: load what the tables already hold (see the module's notes)."""


class Operator:
    def __init__(self, options: OperatorOptions, projection: Projection) -> None:
        self.options = options
        self.projection = projection
        self._stopping = False
        self.entities: tuple[str, ...] = ()
        self._tables: tuple[tuple[str, str], ...] = ()
        self.applied = 0
        """The end LSN of everything applied and stored in the progress row."""
        self.recorded = 0
        """The last LSN recorded in process-status."""
        self._loop = asyncio.new_event_loop()
        self._status = ProcessStatusClient(options.status_url, token=options.status_token,
                                           retries=2, max_backoff=1.0)

    # -- control ----------------------------------------------------------------------

    def stop(self) -> None:
        """Leave `run` after the batch in hand (applied and recorded, or not started)."""
        self._stopping = True

    def stop_on_signals(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("%s: stopping after the current batch", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> None:
        """Consume until `stop()`; reconnect with backoff on Postgres errors."""
        backoff = 0.1
        try:
            while not self._stopping:
                try:
                    self._session()
                    backoff = 0.1
                except psycopg2.OperationalError as exc:
                    log.warning("Postgres connection lost or refused (%s); retrying in %.1f s",
                                str(exc).strip(), backoff)
                    self._sleep(backoff)
                    backoff = min(self.options.max_backoff, backoff * 2)
        finally:
            self._loop.run_until_complete(self._status.close())
            self._loop.close()

    # -- one connected session ------------------------------------------------------

    def _session(self) -> None:
        options = self.options
        target = psycopg2.connect(options.target_dsn)
        source = psycopg2.connect(options.source_dsn)
        stream = psycopg2.connect(
            options.source_dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
        try:
            progress = self._prepare(target, source)
            cursor = stream.cursor()
            if progress is None:
                self._create_slot(cursor, source, target)
            start = self.applied
            cursor.start_replication(
                slot_name=options.slot, decode=False, start_lsn=start, status_interval=10,
                options={"proto_version": "1", "publication_names": options.publication})
            log.info("consuming slot %s (publication %s, tables %s) from %s",
                     options.slot, options.publication, ", ".join(self.entities),
                     format_lsn(start))
            self._consume(cursor, target)
        finally:
            for connection in (stream, source, target):
                connection.close()

    def _prepare(self, target: Any, source: Any) -> int | None:
        """The progress row (created if missing) and the publication's tables; refuse a
        progress row without its slot, or a slot confirmed past it."""
        options = self.options
        with target.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} ("
                        "slot text PRIMARY KEY, lsn bigint NOT NULL, "
                        "updated_at timestamptz NOT NULL DEFAULT now())")
            cur.execute(f"SELECT lsn FROM {PROGRESS_TABLE} WHERE slot = %s", (options.slot,))
            row = cur.fetchone()
        target.commit()
        progress: int | None = None if row is None else int(row[0])
        with source.cursor() as cur:
            cur.execute("SELECT schemaname, tablename FROM pg_publication_tables "
                        "WHERE pubname = %s ORDER BY tablename", (options.publication,))
            tables = cur.fetchall()
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s",
                        (options.publication,))
            if cur.fetchone() is None:
                raise OperatorError(
                    f"publication {options.publication!r} does not exist in the source "
                    f"database: CREATE PUBLICATION {options.publication} FOR TABLE ...")
            cur.execute("SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots "
                        "WHERE slot_name = %s AND database = current_database()",
                        (options.slot,))
            slot = cur.fetchone()
        source.commit()
        names = [name for _, name in tables]
        if len(set(names)) != len(names):
            raise OperatorError("the publication has two tables of one name in different "
                                "schemas: entities are table names, so they would collide")
        self.entities = tuple(names)
        self._tables = tuple((str(schema), str(name)) for schema, name in tables)
        if progress is not None and slot is None:
            raise OperatorError(
                f"the read model has progress for slot {options.slot!r} (LSN "
                f"{format_lsn(progress)}) but the slot does not exist: transactions committed "
                "since were never read, and a new slot would start past them, so the read "
                "model would silently miss them and the gate would vouch for rows that never "
                "appear. Rebuild the read model (empty it and delete its row in "
                f"{PROGRESS_TABLE}), then start again; refusing to create a new slot")
        if progress is not None and slot is not None and slot[0] is not None \
                and int(slot[0]) > progress:
            raise OperatorError(
                f"slot {options.slot!r} was confirmed up to {format_lsn(int(slot[0]))}, past "
                f"the read model's progress {format_lsn(progress)}: another consumer read it, "
                "and the transactions in between are lost to this read model. Rebuild the "
                "read model (empty it and delete its progress row) and use a slot of its own")
        self.applied = progress or 0
        return progress

    def _create_slot(self, cursor: Any, source: Any, target: Any) -> None:
        """The first start: a new slot, the initial copy as of its starting point, and that
        point stored as progress, in one target transaction."""
        options = self.options
        with source.cursor() as cur:
            # No progress row, so nothing was recorded from a slot of this name: one left
            # by a start that died before its first commit can go.
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s", (options.slot,))
        source.commit()
        cursor.create_replication_slot(options.slot, output_plugin="pgoutput")
        _, point_text, snapshot, _ = cursor.fetchone()
        point = parse(point_text)
        copy = psycopg2.connect(options.source_dsn)
        copy.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
                         readonly=True)
        try:
            with copy.cursor() as src, target.cursor() as dst:
                src.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
                if options.initial_copy is not None:
                    options.initial_copy(src, dst)
                else:
                    self._require_empty(src)
                self._store(dst, point)
            target.commit()
        except BaseException:
            target.rollback()
            raise
        finally:
            copy.close()
        self.applied = point
        log.info("created replication slot %s at %s%s", options.slot, format_lsn(point),
                 " and loaded the tables as of then" if options.initial_copy else "")

    def _require_empty(self, src: Cursor) -> None:
        for schema, table in self._tables:
            src.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(
                sql.Identifier(schema, table)))
            row = src.fetchone()
            if row is not None and row[0]:
                raise OperatorError(
                    f"table {table!r} already holds rows, and the slot {self.options.slot!r} "
                    "starts after them: the read model would never see them while the gate "
                    "vouched for them. Pass initial_copy to load them (it gets the tables "
                    "as of the slot's start), or start the operator before the first write")

    def _consume(self, cursor: Any, target: Any) -> None:
        decoder = Decoder()
        batch: list[Transaction] = []
        changes = 0
        asked = confirmed = time.monotonic()
        while not self._stopping:
            message = cursor.read_message()
            if message is not None:
                done = decoder.feed(message.payload)
                if done is not None and done.end_lsn > self.applied:
                    batch.append(done)
                    changes += len(done.changes)
                if changes < self.options.max_batch:
                    continue
            if batch:
                # Drained (or full): apply what is complete, then read on.
                self._apply(target, batch)
                self._record(self._positions(batch))
                cursor.send_feedback(flush_lsn=self.applied, force=True)
                batch, changes = [], 0
                continue
            if message is not None:
                continue
            # Idle. The walsender's keepalive carries the end of what it has decoded and
            # sent; every message before it has been read and applied, so when no
            # transaction is open that position is processed for every table.
            end = int(cursor.wal_end)
            now = time.monotonic()
            if not decoder.in_transaction and end > self.recorded:
                self._record(dict.fromkeys(self.entities, end))
            if not decoder.in_transaction and end > self.applied and \
                    now - confirmed >= self.options.idle_confirm_interval:
                self._confirm(target, end)
                cursor.send_feedback(flush_lsn=self.applied, force=True)
                confirmed = now
            if now - asked >= self.options.idle_interval:
                cursor.send_feedback(reply=True, force=True)  # "send a keepalive now"
                asked = now
            select.select([cursor], [], [], self.options.idle_interval)
        if self.recorded > self.applied:
            # A clean stop keeps what idle keepalives recorded (everything up to it was
            # applied when it was recorded): the next start resumes there instead of
            # reading again WAL that the gate already vouched for.
            try:
                self._confirm(target, self.recorded)
                cursor.send_feedback(flush_lsn=self.applied, force=True)
            except psycopg2.Error as exc:
                log.warning("could not store progress %s at stop (%s); the next start "
                            "resumes from %s", format_lsn(self.recorded), str(exc).strip(),
                            format_lsn(self.applied))

    def _apply(self, target: Any, batch: list[Transaction]) -> None:
        end = batch[-1].end_lsn
        changes = [change for transaction in batch for change in transaction.changes]
        try:
            with target.cursor() as cur:
                self.projection(cur, changes)
                self._store(cur, end)
            target.commit()
        except BaseException:
            target.rollback()
            raise
        self.applied = end
        log.debug("applied %d transactions, %d changes, up to %s", len(batch), len(changes),
                  format_lsn(end))

    def _confirm(self, target: Any, end: int) -> None:
        """Idle: store `end` as progress (nothing in between concerns the read model)."""
        with target.cursor() as cur:
            self._store(cur, end)
        target.commit()
        self.applied = max(self.applied, end)

    def _store(self, cur: Cursor, lsn: int) -> None:
        cur.execute(f"INSERT INTO {PROGRESS_TABLE} (slot, lsn) VALUES (%s, %s) "
                    "ON CONFLICT (slot) DO UPDATE SET lsn = GREATEST("
                    f"{PROGRESS_TABLE}.lsn, EXCLUDED.lsn), updated_at = now()",
                    (self.options.slot, lsn))

    def _positions(self, batch: list[Transaction]) -> dict[str, int]:
        """What to record once `batch` is applied: its end LSN for every table. (A seam
        for the test that shows why `updated_at` is no position.)"""
        return dict.fromkeys(self.entities, batch[-1].end_lsn)

    def _record(self, updates: Mapping[str, int]) -> None:
        """Record the positions, retrying until process-status takes them (or stop)."""
        lsn = max(updates.values(), default=0)
        backoff = 0.1
        while updates:
            try:
                self._loop.run_until_complete(self._status.record_many(updates))
                self.recorded = max(self.recorded, lsn)
                return
            except ProcessStatusError as exc:
                if self._stopping:
                    log.warning("stopping without recording %s (it is applied: the next "
                                "start records it)", format_lsn(lsn))
                    return
                log.warning("waiting for process-status at %s to record %s: %s; retrying "
                            "in %.1f s", self.options.status_url, format_lsn(lsn), exc,
                            backoff)
                self._sleep(backoff)
                backoff = min(self.options.max_backoff, backoff * 2)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, seconds))
