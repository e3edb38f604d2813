"""process_status_postgres: commit-ordered positions from PostgreSQL for process-status.

Operator side: `Operator` consumes logical replication (pgoutput) from a slot and
publication, hands each batch of committed changes to your projection inside one
transaction on the read model's database (with its progress row), then records the
batch's commit LSN in process-status for every table of the publication.

API side: `commit_with_position(conn)` commits and returns the position to hand back
(`token("posts", lsn)` -> `posts/23803720` in `X-Event-Streamex-Entity-Timestamp`);
`process_status_client.gate_middleware` (aiohttp) and `GateMiddleware` (ASGI: Starlette,
FastAPI) answer 425 for reads whose token is not processed yet.
"""

from process_status_postgres.lsn import format_lsn, parse
from process_status_postgres.operator import Operator, OperatorError, OperatorOptions, Projection
from process_status_postgres.pgoutput import Change, Row
from process_status_postgres.writes import (
    HEADER,
    POSITION_SQL,
    commit_with_position,
    format_tokens,
    token,
)

__all__ = [
    "HEADER",
    "POSITION_SQL",
    "Change",
    "Operator",
    "OperatorError",
    "OperatorOptions",
    "Projection",
    "Row",
    "commit_with_position",
    "format_lsn",
    "format_tokens",
    "parse",
    "token",
]
