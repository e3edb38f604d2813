"""Connections: the limits aiohttp's server leaves open, closed here.

* A cap on open connections per site. At the cap, a new connection first evicts the
  oldest idle one (a keep-alive connection between requests, or one that never sent
  a byte: what a client hoarding connections holds); only if every connection is busy
  is the new one refused, with a canned 503. So a flood of idle connections can
  neither exhaust file descriptors (which made the journal fail with EMFILE) nor
  lock out the health checks.
* A header-read timeout: a request whose headers have not all arrived within
  `header_timeout` seconds of its first byte gets 408 and the connection is closed
  (aiohttp only has its keep-alive timer, which a trickle of bytes never trips).
* Parser rejections (a malformed request line or header) answer problem+json and
  are logged at DEBUG in one line without any header value: aiohttp logs them at
  ERROR with a traceback whose message can quote the offending header, token included.

The hooks are aiohttp's own extension points (the runner's `_make_server`, the
server's protocol factory, the handler's `handle_error`/`log_exception`), checked
against aiohttp 3.14 and covered by the end-to-end tests in tests/e2e/test_limits.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.http.problems import from_http_exception, problem_body, problem_response

log = logging.getLogger("process_status.connections")

# Seconds a refused connection may stay open for its 503 to be read.
REFUSAL_LINGER = 0.5
# How many of the oldest connections to look at for an idle one before refusing: the
# idle hoarders are the oldest, and the scan must stay cheap under a flood.
_EVICTION_SCAN = 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int
    header_timeout: float


@dataclass(slots=True)
class ConnectionStats:
    """Per site; counted on the event loop, read at scrape time."""

    open: int = 0
    closed: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1


class ConnectionCollector(Collector):
    def __init__(self, stats: dict[str, ConnectionStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        opened = GaugeMetricFamily("process_status_connections",
                                   "Open client connections, by site (api or metrics).",
                                   labels=["site"])
        closed = CounterMetricFamily(
            "process_status_connections_closed",
            "Connections the service closed or refused itself, by site and reason: limit "
            "(refused at --max-connections), evicted_idle (closed to make room), "
            "header_timeout, bad_request (the HTTP parser rejected it).",
            labels=["site", "reason"])
        for site, stats in self._stats.items():
            opened.add_metric([site], stats.open)
            for reason, count in list(stats.closed.items()):
                closed.add_metric([site, reason], count)
        yield opened
        yield closed


def _raw_problem(status: int, reason: str, kind: str, detail: str) -> bytes:
    body = problem_body(status, kind, detail)
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
            ).encode() + body


_REFUSED = _raw_problem(503, "Service Unavailable", "too-many-connections",
                        "every connection slot is busy (--max-connections); retry after 1 s")
_HEADER_TIMEOUT = _raw_problem(408, "Request Timeout", "request-timeout",
                               "the request headers did not arrive in time (--header-timeout)")


class _Refusal(asyncio.Protocol):
    """Answers 503 and hangs up, without parsing anything.

    The client has usually sent its request already; closing with it unread would make
    the kernel answer RST, which can destroy the 503 before the client reads it. So the
    write side is shut first and the socket closed when the client hangs up, or after
    REFUSAL_LINGER seconds at most.
    """

    _transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance here.
        writer = cast(asyncio.WriteTransport, transport)
        self._transport = writer
        writer.write(_REFUSED)
        if writer.can_write_eof():
            writer.write_eof()
        asyncio.get_running_loop().call_later(REFUSAL_LINGER, writer.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request nobody will answer

    def eof_received(self) -> bool:
        if self._transport is not None:
            self._transport.close()
        return False


class LimitedRequestHandler(web.RequestHandler):
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        assert isinstance(manager, LimitedServer)
        manager.stats.open += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        manager = self._manager
        if isinstance(manager, LimitedServer):
            manager.stats.open -= 1
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages or self._request_in_progress:
            if self._header_timer is not None:  # the headers are complete
                self._cancel_header_timer()
        elif (data and self._header_timer is None and not self._force_close
              and not self._close and (self._waiter is not None or not self._request_count)):
            # Only while waiting for a request (the first one may arrive before the handler
            # task first runs): body bytes read after an early answer (aiohttp's lingering
            # read) are not a request.
            manager = self._manager
            assert isinstance(manager, LimitedServer)
            self._header_timer = self._loop.call_later(
                manager.limits.header_timeout, self._headers_too_slow)

    @property
    def idle(self) -> bool:
        """Between requests (or before the first): nothing parsed, nothing running."""
        return (not self._request_in_progress and not self._messages
                and self._header_timer is None and self._waiter is not None)

    def evict(self) -> None:
        self.force_close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._messages or self._request_in_progress or self.transport is None:
            return  # a request is being handled: its body has a timeout of its own
        manager = self._manager
        if isinstance(manager, LimitedServer):
            manager.stats.count("header_timeout")
        self.transport.write(_HEADER_TIMEOUT)
        self.force_close()

    def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> Coroutine[Any, Any, tuple[web.StreamResponse, bool]]:
        # The router answers request targets no route can match (`OPTIONS *`, `CONNECT
        # host:443`) with aiohttp's plain-text errors: make them problems too. Not a
        # coroutine itself: handing back aiohttp's saves a frame on every response.
        if isinstance(resp, web.HTTPException) and isinstance(request, web.Request):
            resp = from_http_exception(resp, request)
        return super().finish_response(request, resp, start_time)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        manager = self._manager
        parser = isinstance(exc, HttpProcessingError)
        if parser and isinstance(manager, LimitedServer):
            manager.stats.count("bad_request")
        # The class name only: the exception's text can quote a header (a token).
        if parser:
            log.debug("rejected a request the HTTP parser could not read: %s %s",
                      status, type(exc).__name__)
        else:
            log.error("request failed before a view could answer: %s %s", status,
                      type(exc).__name__ if exc is not None else "timeout")
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        if parser:
            response = problem_response(400, "bad-request", "the request could not be parsed as "
                                        "HTTP/1.1 (a malformed request line or header, or one "
                                        "over 8 KiB)")
        else:
            response = problem_response(status, "internal-error",
                                        "the service failed unexpectedly; the logs have details")
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        log.error("request failed: %s", type(exc).__name__ if isinstance(exc, BaseException)
                  else "error")


class LimitedServer(web.Server):
    def __init__(self, *args: Any, site: str, limits: Limits, stats: ConnectionStats,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site = site
        self.limits = limits
        self.stats = stats

    # The loop calls this protocol factory per accepted connection; any protocol will do.
    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        if len(self._connections) >= self.limits.max_connections and not self._evict_idle():
            self.stats.count("limit")
            return _Refusal()
        return LimitedRequestHandler(self, loop=self._loop, **self._kwargs)

    def _evict_idle(self) -> bool:
        for scanned, handler in enumerate(self._connections):
            if scanned == _EVICTION_SCAN:
                return False
            if isinstance(handler, LimitedRequestHandler) and handler.idle:
                handler.evict()
                self.stats.count("evicted_idle")
                return True
        return False


class LimitedRunner(web.AppRunner):
    """An AppRunner whose server enforces `limits` and counts into `stats`."""

    def __init__(self, app: web.Application, *, site: str, limits: Limits,
                 stats: ConnectionStats, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._site_name = site
        self._limits = limits
        self._stats = stats

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return LimitedServer(
            plain.request_handler, request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation, loop=plain._loop,
            site=self._site_name, limits=self._limits, stats=self._stats, **plain._kwargs,
        )
