"""The gate: a forward-auth endpoint that holds a read back until its write is processed.

Gateways (nginx auth_request, Traefik ForwardAuth, Caddy forward_auth, Envoy
ext_authz, HAProxy Lua) call it with the client's token header. Exactly 200 lets
the request through (Envoy treats any other 2xx as a denial); otherwise the
client gets 425 Too Early (or 503, by --gate-status) with Retry-After.
"""

from __future__ import annotations

import time

from aiohttp import web

from service.config import Settings
from service.metrics import Metrics
from service.positions import PositionError, parse_token_header
from service.store import StatusStore
from service.waiters import Waiters
from service.web.problems import Problem

_NO_STORE = "no-store"


class GateView:
    def __init__(
        self, settings: Settings, store: StatusStore, waiters: Waiters, metrics: Metrics
    ) -> None:
        self.header = settings.token_header
        self.wait = settings.gate_wait
        self.status = settings.gate_status
        self.retry_after = str(settings.retry_after)
        self.store = store
        self.waiters = waiters
        self._counted = metrics.decisions("gate")
        self._wait_duration = metrics.wait_duration

    async def gate(self, request: web.Request) -> web.Response:
        lines = request.headers.getall(self.header, ())
        if not lines:
            return web.Response(status=200)
        try:
            tokens = parse_token_header(lines)
        except PositionError as exc:
            raise Problem(400, "invalid-token", f"{self.header}: {exc}",
                          headers={"Cache-Control": _NO_STORE}) from None
        deadline = time.monotonic() + self.wait
        waited = False
        for entity, timestamp in tokens:
            done, last = self.store.processed(entity, timestamp)
            remaining = deadline - time.monotonic()
            if not done and remaining > 0:
                waited = True
                await self.waiters.wait(entity, timestamp, remaining)
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
        return web.Response(status=200)

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
