"""JSON answers: built with orjson, headers made once."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from service.http.wire import POSITION_HEADER

_JSON = {"Content-Type": "application/json"}


def json_response(data: Any, position: str | None = None,
                  headers: dict[str, str] = _JSON) -> web.Response:
    """A 200. `position` (an `entity/ts` string) goes out in the position header; `headers`
    must carry the Content-Type (the default is shared, never modified)."""
    if position is None:
        return web.Response(body=orjson.dumps(data), headers=headers)
    return web.Response(body=orjson.dumps(data), headers={**headers, POSITION_HEADER: position})
