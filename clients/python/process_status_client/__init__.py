"""process_status_client: an asyncio client for process-status, on aiohttp alone.

Operators record how far a read model has processed; application code asks
whether (or waits until) a position is processed; Python gateways and apps can
put `gate_middleware` in front of their handlers::

    async with ProcessStatusClient("http://127.0.0.1:8080", token=WRITE_TOKEN) as client:
        await client.record("posts", 1422057007123000)
        await client.wait_processed("posts", 1422057007123000, timeout=5)

    app = web.Application(middlewares=[gate_middleware(client)])   # aiohttp
    app = GateMiddleware(asgi_app, client)                          # ASGI (Starlette, FastAPI)
"""

from process_status_client.asgi import GateMiddleware
from process_status_client.client import (
    Processed,
    ProcessStatusClient,
    ProcessStatusError,
    ProcessStatusUnreachable,
    RecordResult,
    Timestamp,
)
from process_status_client.middleware import gate_middleware
from process_status_client.positions import (
    PositionError,
    format_token,
    parse_token,
    parse_token_header,
)

__all__ = [
    "GateMiddleware",
    "PositionError",
    "ProcessStatusClient",
    "ProcessStatusError",
    "ProcessStatusUnreachable",
    "Processed",
    "RecordResult",
    "Timestamp",
    "format_token",
    "gate_middleware",
    "parse_token",
    "parse_token_header",
]
