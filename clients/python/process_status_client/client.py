"""ProcessStatusClient: record positions, check and wait for them, with bounded retries.

Every call is safe to repeat: a write is a max-merge (recording the same or an
older timestamp again changes nothing) and the rest are reads. So every call
retries on connection errors, timeouts and transient 5xx answers, with
exponential backoff and full jitter, a bounded number of times. 4xx answers are
never retried, nor are 5xx answers that a retry cannot fix (501, 505, 507: the
entity limit). Errors raise `ProcessStatusError` with the problem+json fields.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp
from yarl import URL

log = logging.getLogger("process_status.client")

Timestamp = int | str
"""An integer position, a string of digits, or an RFC 3339 date-time (as the service accepts)."""

_NOT_RETRIED_5XX = frozenset({501, 505, 507})
_TRANSIENT = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)


class ProcessStatusError(Exception):
    """The service answered with an error (or could not be reached: see the subclass).

    `status`, `type`, `title` and `detail` are the RFC 9457 members of the answer;
    `extra` holds its other members (`entity`, `last_processed`, `limit`, ...).
    """

    def __init__(self, status: int | None, type: str, title: str, detail: str,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}" if status else f"{title}: {detail}")
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.extra = dict(extra or {})


class ProcessStatusUnreachable(ProcessStatusError):
    """No HTTP answer after every attempt (refused, reset, timed out); `status` is None."""

    def __init__(self, detail: str) -> None:
        super().__init__(None, "about:blank", "Service Unreachable", detail)


@dataclass(frozen=True, slots=True)
class RecordResult:
    timestamp: int
    """The entity's timestamp after the write (greater than the one sent if it was stale)."""
    advanced: bool
    """Whether this write moved the entity forward."""


@dataclass(frozen=True, slots=True)
class Processed:
    entity: str
    timestamp: int
    processed: bool
    last_processed: int | None
    """The entity's recorded timestamp, None if nothing was ever recorded for it."""
    max_age: float | None = field(default=None, compare=False)
    """How long the service lets this answer be reused (its `Cache-Control`: `max-age`,
    0 for `no-store`/`no-cache`), None when the answer did not say."""


class ProcessStatusClient:
    """Talks to one process-status service; use as `async with ProcessStatusClient(...)`.

    `token` is sent as `Authorization: Bearer` (a write token for `record*`, a read
    or write token for the rest when the service requires one). A `session` you
    pass is used and left open; otherwise the client owns one. `retries` is how
    many times a failed attempt is repeated; the n-th retry sleeps a random time
    in [0, min(max_backoff, backoff * 2**n)] (or the server's Retry-After, capped
    the same way). `max_wait` must not exceed the service's --max-wait (default 30).
    """

    def __init__(
        self,
        base_url: str | URL,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        *,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        request_timeout: float = 10.0,
        max_wait: float = 30.0,
    ) -> None:
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must not be negative")
        if request_timeout <= 0 or max_wait <= 0:
            raise ValueError("request_timeout and max_wait must be positive")
        self.base_url = URL(base_url)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        self.max_wait = max_wait
        self._prefix = self.base_url.raw_path.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if the client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- operator side ---------------------------------------------------------

    async def record(self, entity: str, ts: Timestamp) -> RecordResult:
        """PUT /status/{entity}: the read model has processed `entity` up to `ts`."""
        body = await self._send("PUT", ("status", entity), json={"timestamp": ts})
        return RecordResult(body["timestamp"], body["advanced"])

    async def record_many(self, updates: Mapping[str, Timestamp]) -> dict[str, RecordResult]:
        """POST /status: several entities at once, all applied or none (one invalid -> 400)."""
        if not updates:
            return {}
        body = await self._send("POST", ("status",), json=dict(updates))
        return {name: RecordResult(result["timestamp"], result["advanced"])
                for name, result in body["results"].items()}

    # -- application side ------------------------------------------------------

    async def processed(self, entity: str, ts: Timestamp) -> bool:
        """Has `entity` been processed up to `ts`? (An unknown entity has not.)"""
        return (await self.check(entity, ts)).processed

    # `timeout` is the answer's deadline (False when it passes), not a cancellation.
    async def wait_processed(self, entity: str, ts: Timestamp, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait up to `timeout` seconds for `entity` to reach `ts`; False if it did not.

        Uses the service's long poll, so a write releases the wait at once. Waits
        longer than `max_wait` are split into several polls. Retries after errors
        stop at the deadline (then the error is raised).
        """
        return (await self.check_until(entity, ts, timeout)).processed

    async def check(self, entity: str, ts: Timestamp, wait: float = 0.0) -> Processed:
        """One GET /status/{entity}/processed, long-polling up to `wait` (<= max_wait) s."""
        return await self._check(entity, ts, wait, None)

    async def check_until(self, entity: str, ts: Timestamp, timeout: float) -> Processed:  # noqa: ASYNC109
        """Like `wait_processed`, returning the last answer (with `last_processed`)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = deadline - time.monotonic()
            result = await self._check(entity, ts, min(max(0.0, remaining), self.max_wait),
                                       deadline)
            if result.processed or time.monotonic() >= deadline:
                return result

    async def _check(self, entity: str, ts: Timestamp, wait: float,
                     deadline: float | None) -> Processed:
        params = {"ts": str(ts)}
        if wait > 0:
            params["wait"] = f"{min(wait, self.max_wait):.3f}"
        body, headers = await self._exchange("GET", ("status", entity, "processed"),
                                             params=params, wait=wait, deadline=deadline)
        return Processed(body["entity"], body["timestamp"], body["processed"],
                         body["last_processed"], _max_age(headers.get("Cache-Control")))

    # -- transport -------------------------------------------------------------

    def _url(self, segments: tuple[str, ...]) -> URL:
        path = "/".join(quote(segment, safe="") for segment in segments)
        return self.base_url.with_path(f"{self._prefix}/{path}", encoded=True)

    async def _send(
        self,
        method: str,
        segments: tuple[str, ...],
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        wait: float = 0.0,
        deadline: float | None = None,
    ) -> Any:
        body, _ = await self._exchange(method, segments, json=json, params=params, wait=wait,
                                       deadline=deadline)
        return body

    async def _exchange(
        self,
        method: str,
        segments: tuple[str, ...],
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        wait: float = 0.0,
        deadline: float | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """One call with retries: the decoded JSON body and the (case-insensitive) headers."""
        url = self._url(segments)
        data = None if json is None else jsonlib.dumps(json).encode()
        headers = self._headers if data is None else {
            **self._headers, "Content-Type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=self.request_timeout + wait)
        session = self._session_for_request()
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                async with session.request(method, url, params=params, data=data,
                                           headers=headers, timeout=timeout) as response:
                    raw = await response.read()
                    if response.status < 400:
                        return jsonlib.loads(raw), response.headers
                    error: ProcessStatusError = _problem(response.status, response.reason, raw)
                    if response.status < 500 or response.status in _NOT_RETRIED_5XX:
                        raise error
                    retry_after = _seconds(response.headers.get("Retry-After"))
            except _TRANSIENT as exc:
                error = ProcessStatusUnreachable(f"{method} {url}: {exc!r}")
                error.__cause__ = exc
            delay = self._delay(attempt, retry_after)
            if attempt >= self.retries or (
                    deadline is not None and time.monotonic() + delay >= deadline):
                raise error
            attempt += 1
            log.info("retry %d/%d of %s %s in %.3f s after: %s",
                     attempt, self.retries, method, url, delay, error)
            await asyncio.sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        return random.uniform(0.0, min(self.max_backoff, self.backoff * 2**attempt))

    def _session_for_request(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session


def _problem(status: int, reason: str | None, raw: bytes) -> ProcessStatusError:
    try:
        body = jsonlib.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        body = None
    phrase = reason or _phrase(status)
    if not isinstance(body, dict):
        text = raw[:200].decode(errors="replace").strip()
        return ProcessStatusError(status, "about:blank", phrase, text or phrase)
    extra = {k: v for k, v in body.items() if k not in ("type", "title", "status", "detail")}
    return ProcessStatusError(status, str(body.get("type", "about:blank")),
                              str(body.get("title", phrase)), str(body.get("detail", "")), extra)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _max_age(header: str | None) -> float | None:
    """Seconds a `Cache-Control` value lets an answer be reused; None when it does not say."""
    if header is None:
        return None
    directives = [part.strip().lower() for part in header.split(",")]
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    for directive in directives:
        name, _, value = directive.partition("=")
        if name.strip() == "max-age" and value.strip().isdigit():
            return float(value.strip())
    return None


def _seconds(header: str | None) -> float | None:
    if header is None or not header.strip().isdigit():
        return None
    return float(header.strip())
