"""ScrapeGate: who may scrape /metrics, and how often, in one place.

The same rule for a worker's metrics site (exposition.metrics_site, on the event loop) and for
the replica's merged metrics port (exposition.aggregator, on the master's threads): the token
when --metrics-tokens-file sets any (401 with WWW-Authenticate without it), and
SCRAPE_RATE scrapes a second after a burst of SCRAPE_BURST (429 with Retry-After past
it). Prometheus scrapes a target every few seconds at most; a person or a test polling
ten times a second stays well inside.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

from service.http.auth import Access, Authenticator, bearer

SCRAPE_RATE = 20.0
SCRAPE_BURST = 40.0


class Refusal(NamedTuple):
    status: int
    kind: str
    detail: str
    headers: dict[str, str]


_UNAUTHORIZED = Refusal(
    401, "unauthorized", "/metrics needs a metrics token: send Authorization: Bearer <token> "
    "(set in Prometheus's scrape config as authorization.credentials)",
    {"WWW-Authenticate": 'Bearer realm="process-status-metrics"'})
_TOO_MANY = Refusal(
    429, "too-many-scrapes", f"/metrics answers at most {SCRAPE_RATE:g} scrapes a second "
    "(after a burst): scrape less often", {"Retry-After": "1"})


class ScrapeGate:
    def __init__(self, tokens: tuple[str, ...], limited: bool = True) -> None:
        """`limited`: False for a worker's private socket, which only the master asks (and
        limits) on behalf of the scrapers."""
        self._auth = Authenticator((), tokens)
        self._limited = limited
        self._scrapes = SCRAPE_BURST
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def refuse(self, authorization: str | None) -> Refusal | None:
        """None: serve this scrape (it is counted); else the answer to give instead."""
        if not self._auth.allows(Access.READ, bearer(authorization)):
            return _UNAUTHORIZED
        if not self._limited:
            return None
        with self._lock:
            now = time.monotonic()
            self._scrapes = min(SCRAPE_BURST,
                                self._scrapes + (now - self._checked) * SCRAPE_RATE)
            self._checked = now
            if self._scrapes < 1:
                return _TOO_MANY
            self._scrapes -= 1
        return None
