"""The API side: the position of a write you just committed, and the header that carries it.

After your transaction commits, read `pg_current_wal_insert_lsn()` **on the same
connection**: it is never below the commit's end (measured, also with
`synchronous_commit=off`), so once the operator has recorded it, the write's rows are in
the read model. `pg_current_wal_lsn()` and `pg_current_wal_flush_lsn()` were below the
commit in 3,193 of 3,200 transactions with `synchronous_commit=off`: do not use them.
There is no SQL way to read a transaction's exact commit LSN; this one can only be a
little later, which costs at worst a short wait, never a false "processed".

    cur.execute("INSERT INTO posts (title) VALUES (%s) RETURNING id", (title,))
    post_id = cur.fetchone()[0]
    lsn = commit_with_position(conn)
    response.headers[HEADER] = token("posts", lsn)      # posts/23803720

Entity names are table names: a write to `posts` returns a `posts/...` token, one to
`comments` a `comments/...` token (a transaction that writes both may return both,
comma-separated: `format_tokens`).
"""

from __future__ import annotations

from typing import Any

from process_status_client import format_token
from process_status_client.wire import POSITION_HEADER

HEADER = POSITION_HEADER
POSITION_SQL = "SELECT pg_current_wal_insert_lsn() - '0/0'"
"""The position of everything committed so far on this server, as an integer."""


def commit_with_position(connection: Any) -> int:
    """Commit the psycopg2 connection's transaction and return its position, in one round
    trip (`COMMIT; SELECT ...`)."""
    with connection.cursor() as cur:
        cur.execute("COMMIT; " + POSITION_SQL)
        row = cur.fetchone()
    # psycopg2 saw the COMMIT go by inside the query; make its own state agree.
    connection.commit()
    return int(row[0])


def token(entity: str, lsn: int) -> str:
    """The header value for one entity: `posts/23803720`."""
    return format_token(entity, lsn)


def format_tokens(positions: dict[str, int]) -> str:
    """Several entities written by one transaction: `comments/23803720, posts/23803720`."""
    return ", ".join(format_token(entity, lsn) for entity, lsn in sorted(positions.items()))
