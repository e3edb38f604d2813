"""The wrapper around every view: auth, problem+json errors, request metrics.

A wrapper applied once per route at start-up rather than an aiohttp middleware:
with any middleware at all aiohttp adds a second one of its own and builds the
chain per request, which measurably cost throughput on this service's hot path.
Router misses (404/405) land on `fallback`, a catch-all route registered last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from service.http.auth import Access, Authenticator, bearer
from service.http.problems import Problem, from_http_exception, problem_response
from service.http.wire import GATE_TOKEN_HEADER
from service.metrics import Metrics

log = logging.getLogger("process_status.guard")

View = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNMATCHED = "unmatched"
_STATUS = {code: str(code) for code in range(100, 600)}
_BEARER = {"WWW-Authenticate": 'Bearer realm="process-status"'}


def guarded(
    view: View, template: str, access: Access, auth: Authenticator, metrics: Metrics,
    *, at_gate: bool = False,
) -> View:
    """Wrap `view` (served at route `template`) with auth, error mapping and metrics."""
    count = metrics.requests.inc
    observe = metrics.request_duration.observe
    needs_token = auth.needs_token(access)

    async def handler(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            if needs_token:
                token = (request.headers.get(GATE_TOKEN_HEADER) if at_gate
                         else bearer(request.headers.get("Authorization")))
                if not auth.allows(access, token):
                    raise _unauthorized(access, at_gate, token)
            response = await view(request)
        except Problem as problem:
            response = problem.response()
        except web.HTTPException as exc:  # aiohttp's own, e.g. 413 from request.read()
            response = from_http_exception(exc, request)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, template)
            response = problem_response(500, "internal-error",
                                        "the service failed unexpectedly; the logs have details")
        method = request.method
        status = response.status
        count((method, template, _STATUS.get(status) or str(status)))
        observe((method, template), time.perf_counter() - started)
        return response

    return handler


ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def expect_handler(
    template: str, access: Access, auth: Authenticator, metrics: Metrics, max_body: int,
    *, at_gate: bool = False,
) -> ExpectHandler:
    """What to do with `Expect:` before the body is sent: check the token and the declared
    size first, so a client is told 401 or 413 instead of being invited to upload."""
    count = metrics.requests.inc
    needs_token = auth.needs_token(access)

    async def expect(request: web.Request) -> web.StreamResponse | None:
        value = request.headers.get("Expect", "")
        problem: Problem | None = None
        if value.lower() != "100-continue":
            problem = Problem(417, "expectation-failed",
                              f"unsupported Expect: {value[:40]!r}; only 100-continue is known")
        elif needs_token:
            token = (request.headers.get(GATE_TOKEN_HEADER) if at_gate
                     else bearer(request.headers.get("Authorization")))
            if not auth.allows(access, token):
                problem = _unauthorized(access, at_gate, token)
        if problem is None and (request.content_length or 0) > max_body:
            problem = Problem(413, "body-too-large",
                              f"the request body would exceed the limit of {max_body} bytes "
                              "(--max-body-bytes); send fewer entries per request",
                              limit=max_body)
        if problem is not None:
            response = problem.response()
            response.force_close()  # the client may send the body anyway: do not read it
            count((request.method, template, str(response.status)))
            return response
        if request.version >= (1, 1):
            await request.writer.write(_CONTINUE)
            request.writer.output_size = 0  # what aiohttp's own handler does: no body yet
        return None

    return expect


def fallback(metrics: Metrics) -> View:
    """The catch-all route: 404 for unknown paths, 405 (with Allow) for a wrong method."""
    count = metrics.requests.inc

    async def handler(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource.canonical == "/{path}":
                continue
            _, methods = await resource.resolve(request)
            allowed |= methods
        if allowed:
            exc: web.HTTPException = web.HTTPMethodNotAllowed(request.method, allowed)
        else:
            exc = web.HTTPNotFound()
        response = from_http_exception(exc, request)
        count((request.method, UNMATCHED, str(response.status)))
        return response

    return handler


def _unauthorized(level: Access, at_gate: bool, token: str | None) -> Problem:
    if at_gate:
        where = f"the gateway must send a read token in the {GATE_TOKEN_HEADER} header"
    else:
        where = "send Authorization: Bearer <token>"
    what = "a write token" if level is Access.WRITE else "a read or write token"
    problem = "the token is not valid" if token else "no token was sent"
    return Problem(401, "unauthorized", f"{problem}: this needs {what}; {where}",
                   headers=_BEARER)
