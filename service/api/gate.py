"""The gate: a forward-auth endpoint that holds a read back until its write is processed.

Gateways (nginx auth_request, Traefik ForwardAuth, Caddy forward_auth, Envoy
ext_authz, HAProxy Lua) call it with the client's token header. Exactly 200 lets
the request through (Envoy treats any other 2xx as a denial); otherwise the
client gets 425 Too Early (or 503, by --gate-status) with Retry-After.

A 200 may be cached (`--gate-cache-seconds`): a processed position never goes
back, short of a DELETE or a reset, so "let it through" stays true for the same
tokens. The negative answers change as soon as the operator catches up, so they
are never stored.
"""

from __future__ import annotations

import contextlib
import time

from aiohttp import web

from service.config import Settings
from service.http.problems import Problem, not_synced
from service.http.wire import GATE_TOKEN_HEADER
from service.metrics import Metrics
from service.positions import PositionError, parse_token_header
from service.storage.backend import Backend
from service.store import StatusStore
from service.waiters import Waiters, WaitersFull

_NO_STORE = "no-store"


def allowed_headers(header: str, cache_seconds: int) -> dict[str, str]:
    """Headers of the gate's 200: cacheable for `cache_seconds`, or not at all when 0.

    Vary names the request headers the answer depends on, so that an HTTP cache
    keyed on the URL alone (the gate ignores path and query) cannot hand one
    token's 200 to another; nginx also uses it to tell apart tokens sent on
    several header lines, which its `$http_` variables (1.22) see only the
    first of.
    """
    if cache_seconds <= 0:
        return {"Cache-Control": _NO_STORE}
    return {"Cache-Control": f"max-age={cache_seconds}",
            "Vary": f"{header}, {GATE_TOKEN_HEADER}"}


class GateView:
    def __init__(
        self, settings: Settings, store: StatusStore, backend: Backend, waiters: Waiters,
        metrics: Metrics,
    ) -> None:
        self.header = settings.token_header
        self.wait = settings.gate_wait
        self.status = settings.gate_status
        self.retry_after = str(settings.retry_after)
        self.allowed = allowed_headers(self.header, settings.gate_cache_seconds)
        self.store = store
        self.backend = backend
        self.waiters = waiters
        self._counted = metrics.decisions("gate")
        self._wait_duration = metrics.wait_duration

    async def gate(self, request: web.Request) -> web.Response:
        lines = request.headers.getall(self.header, ())
        if not lines:
            return web.Response(status=200, headers=self.allowed)
        try:
            tokens = parse_token_header(lines)
        except PositionError as exc:
            raise Problem(400, "invalid-token", f"{self.header}: {exc}",
                          headers={"Cache-Control": _NO_STORE}) from None
        deadline = time.monotonic() + self.wait
        waited = False
        for entity, timestamp in tokens:
            done, last = self.store.processed(entity, timestamp)
            if not done and (reason := self.backend.readiness) is not None:
                raise not_synced(reason)
            remaining = deadline - time.monotonic()
            if not done and remaining > 0:
                # At --max-waiters the answer is the same 425, only without the wait.
                with contextlib.suppress(WaitersFull):
                    await self.waiters.wait(entity, timestamp, remaining)
                    waited = True
                done, last = self.store.processed(entity, timestamp)
            if not done:
                if waited:
                    self._counted.timeout()
                    self._wait_duration.observe(self.wait)
                else:
                    self._counted.not_processed()
                raise self._too_early(entity, timestamp, last)
        if waited:
            self._wait_duration.observe(self.wait - max(0.0, deadline - time.monotonic()))
        self._counted.processed()
        return web.Response(status=200, headers=self.allowed)

    def _too_early(self, entity: str, timestamp: int, last: int | None) -> Problem:
        seen = "nothing yet" if last is None else f"up to {last}"
        return Problem(
            self.status, "not-processed-yet",
            f"{entity} has processed {seen}, not yet {timestamp}; retry after "
            f"{self.retry_after} s",
            title="Too Early" if self.status == 425 else None,
            headers={"Retry-After": self.retry_after, "Cache-Control": _NO_STORE},
            entity=entity, timestamp=timestamp, last_processed=last,
        )
