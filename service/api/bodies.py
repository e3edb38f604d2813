"""Request bodies: read within --max-body-bytes and --body-timeout, parsed as JSON.

A body that stops arriving gets 408 after `timeout` seconds (aiohttp itself would wait
for it forever); one over `limit` bytes gets 413 without being read.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
from aiohttp import web

from service.http.problems import Problem


class Pairs(list[tuple[str, Any]]):
    """A JSON object as its members in order, duplicates kept (see `BodyReader.pairs`)."""


class BodyReader:
    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout

    async def json(self, request: web.Request) -> Any:
        raw = await self.read(request)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _invalid_json(exc) from None

    async def pairs(self, request: web.Request) -> Any:
        """Like `json`, but every object is a `Pairs`, so a repeated key is not lost (the
        usual parsers keep the last value silently). Slower than orjson: batches only."""
        raw = await self.read(request)
        try:
            return json.loads(raw, object_pairs_hook=Pairs, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise _invalid_json(exc) from None

    async def read(self, request: web.Request) -> bytes:
        """The whole body; a small one usually arrives with its headers, and then taking
        what is buffered is much cheaper than aiohttp's general read loop."""
        length = request.content_length
        if length is not None and length > self.limit:
            raise self._too_large()
        if length is not None and "Content-Encoding" not in request.headers:
            content = request.content
            body = content.read_nowait()
            if len(body) < length:
                body += await self._within_timeout(content.readexactly(length - len(body)),
                                                   len(body), length)
        else:
            # Chunked or compressed: aiohttp's loop enforces the limit (the app's
            # client_max_size, set from the same flag) on what it decodes.
            body = await self._within_timeout(request.read(), 0, None)
        if not body:
            raise Problem(400, "invalid-body", "the request body is empty; send a JSON object")
        return body

    async def _within_timeout(self, reading: Any, have: int, length: int | None) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                data: bytes = await reading
                return data
        except TimeoutError:
            raise Problem(408, "request-timeout",
                          f"the request body did not arrive within {self.timeout:g} s "
                          "(--body-timeout)", headers={"Connection": "close"}) from None
        except asyncio.IncompleteReadError as exc:
            raise Problem(400, "incomplete-body", f"the body ended after "
                          f"{have + len(exc.partial)} of {length} bytes") from None
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large() from None

    def _too_large(self) -> Problem:
        return Problem(413, "body-too-large",
                       f"the request body exceeds the limit of {self.limit} bytes "
                       "(--max-body-bytes); send fewer entries per request", limit=self.limit)


def _invalid_json(exc: Exception) -> Problem:
    return Problem(400, "invalid-json", f"the request body is not valid JSON: {exc}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
