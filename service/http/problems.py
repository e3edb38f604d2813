"""RFC 9457 problem details: the one shape every error answer takes."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from service.http.wire import PROBLEM_TYPE_PREFIX

CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """Raise from a handler to answer with a problem+json body.

    `kind` becomes the `type` URI (urn:process-status:problem:<kind>); `extra`
    members are added to the body (RFC 9457 extension members).
    """

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers
        self.extra = extra

    def response(self) -> web.Response:
        return problem_response(
            self.status, self.kind, self.detail, title=self.title, headers=self.headers,
            **self.extra,
        )


def problem_response(
    status: int,
    kind: str,
    detail: str,
    *,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    response = web.Response(body=problem_body(status, kind, detail, title=title, **extra),
                            status=status, headers=headers)
    response.content_type = CONTENT_TYPE
    return response


def problem_body(status: int, kind: str, detail: str, *, title: str | None = None,
                 **extra: Any) -> bytes:
    """The RFC 9457 body every answer of the service's own uses (API, metrics ports, the
    canned answers written straight to a socket)."""
    return orjson.dumps({"type": PROBLEM_TYPE_PREFIX + kind,
                         "title": title or HTTPStatus(status).phrase, "status": status,
                         "detail": detail, **extra})


def not_synced(reason: str) -> Problem:
    """A replica without its first copy cannot tell "unknown" or "not yet" from "yes":
    saying 404 or "not processed" then would be the false answer this service prevents."""
    return Problem(503, "not-synced",
                   f"this replica cannot answer yet ({reason}); retry in a moment (or ask "
                   "another replica)", headers={"Retry-After": "1"})


_KINDS = {
    404: ("not-found", "no route matches {path}: see GET /openapi.yaml for the API"),
    405: ("method-not-allowed", "{method} is not allowed on {path}; allowed: {allowed}"),
}


def from_http_exception(exc: web.HTTPException, request: web.Request) -> web.Response:
    """Turn aiohttp's own errors (router 404/405, and any other it raises) into problems."""
    kind, template = _KINDS.get(exc.status, ("http-error", "{reason}"))
    allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ())))
    detail = template.format(path=request.path, method=request.method, allowed=allowed,
                             reason=exc.text or exc.reason)
    headers = {"Allow": allowed} if exc.status == 405 else None
    return problem_response(exc.status, kind, detail, headers=headers)
