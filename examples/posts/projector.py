"""The operator of the example: posts and comments -> post_with_comments_counts.

    python -m examples.posts.projector --source-dsn ... --target-dsn ... --status-url ...

The projection is the only part that is the example's own; the loop around it
(replication, batching, progress, recording positions, restarts) is the kit's.
"""

from __future__ import annotations

import argparse
import logging
import sys

from process_status_postgres import Change, Operator, OperatorError, OperatorOptions
from process_status_postgres.operator import Cursor

from examples.posts import schema


def project(cur: Cursor, changes: list[Change]) -> None:
    """Apply one batch of committed changes, in commit order."""
    for change in changes:
        if change.table == "posts":
            if change.operation in ("insert", "update"):
                assert change.new is not None
                cur.execute(
                    "INSERT INTO post_with_comments_counts (id, title) VALUES (%s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title",
                    (int(change.new["id"] or 0), change.new["title"]))
            elif change.operation == "delete":
                assert change.old is not None
                cur.execute("DELETE FROM post_with_comments_counts WHERE id = %s",
                            (int(change.old["id"] or 0),))
            else:
                cur.execute("TRUNCATE post_with_comments_counts")
        elif change.table == "comments":
            if change.operation == "insert":
                assert change.new is not None
                _count(cur, change.new["post_id"], +1)
            elif change.operation == "delete":
                assert change.old is not None
                _count(cur, change.old["post_id"], -1)
            elif change.operation == "update":
                assert change.new is not None
                assert change.old is not None
                if change.old["post_id"] != change.new["post_id"]:
                    _count(cur, change.old["post_id"], -1)
                    _count(cur, change.new["post_id"], +1)
            else:
                cur.execute("UPDATE post_with_comments_counts SET comments_count = 0")


def _count(cur: Cursor, post_id: str | None, delta: int) -> None:
    cur.execute("UPDATE post_with_comments_counts SET comments_count = comments_count + %s "
                "WHERE id = %s", (delta, int(post_id or 0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-dsn", required=True)
    parser.add_argument("--target-dsn", required=True)
    parser.add_argument("--status-url", required=True)
    parser.add_argument("--slot", default=schema.SLOT)
    parser.add_argument("--publication", default=schema.PUBLICATION)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="projector %(levelname)s %(message)s")
    operator = Operator(OperatorOptions(
        source_dsn=args.source_dsn, target_dsn=args.target_dsn, slot=args.slot,
        publication=args.publication, status_url=args.status_url), project)
    operator.stop_on_signals()
    try:
        operator.run()
    except OperatorError as exc:
        logging.critical("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
