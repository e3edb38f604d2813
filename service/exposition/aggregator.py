"""Metrics of a replica with several workers: one port, every worker's numbers added up.

With `--workers N` (Redis backend) each worker is a full replica with its own
registry and its own lock-free counters. Each worker serves its exposition on a
unix socket in a private directory; the gunicorn master serves the metrics port and,
per scrape, asks every live worker and merges: counters and histograms are summed
(one scrape after N requests spread over the workers shows N), gauges keep one
series per worker with a `worker` label (the pid), since entities held, follower lag
or RSS of different workers do not add up. Kept out of the hot path: workers only
render when scraped, as with one worker.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from service.config import Address
from service.exposition.metrics_site import METRICS_CONNECTIONS
from service.exposition.scrape_gate import Refusal, ScrapeGate
from service.http.problems import CONTENT_TYPE as PROBLEM_CONTENT_TYPE
from service.http.problems import problem_body

log = logging.getLogger("process_status.metrics")

SUMMED = frozenset({"counter", "histogram", "summary"})
WORKER_TIMEOUT = 5.0


def socket_path(directory: Path, pid: int) -> Path:
    return directory / f"worker-{pid}.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("worker", timeout=WORKER_TIMEOUT)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(WORKER_TIMEOUT)
        sock.connect(str(self._path))
        self.sock = sock


def fetch(path: Path) -> str | None:
    """One worker's exposition, or None if it is gone (restarting, just exited)."""
    connection = _UnixConnection(path)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        if response.status != 200:
            return None
        return response.read().decode()
    except OSError:
        return None
    finally:
        connection.close()


def merge(expositions: Iterable[tuple[str, str]]) -> list[Metric]:
    """Families from (worker, exposition text) pairs: summed, or labelled by worker."""
    merged: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for worker, text in expositions:
        for family in text_string_to_metric_families(text):
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation,
                                                      family.type, family.unit)
                sums[family.name] = {}
            for sample in family.samples:
                if family.type in SUMMED:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    table = sums[family.name]
                    table[key] = table.get(key, 0.0) + sample.value
                else:
                    target.add_sample(sample.name, {**sample.labels, "worker": worker},
                                      sample.value)
    for name, table in sums.items():
        for (sample_name, labels), value in table.items():
            merged[name].add_sample(sample_name, dict(labels), value)
    return list(merged.values())


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


class Workers:
    """The workers' expositions, remembered so that counters never go down.

    A worker that misses one scrape (busy, restarting) counts with its last exposition
    while its socket is there; one that is gone for good (its pid no longer runs) has its
    counters kept in `retired`, as prometheus-client's multiprocess mode keeps those of
    dead processes. Otherwise a sum would drop, and Prometheus takes a drop for a reset.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._last: dict[str, str] = {}
        self._retired: list[str] = []
        self._lock = threading.Lock()

    def scrape(self) -> bytes:
        with self._lock:  # one fan-out at a time; concurrent scrapes queue up
            found: list[tuple[str, str]] = []
            for path in sorted(self.directory.glob("worker-*.sock")):
                pid = path.stem.removeprefix("worker-")
                text = fetch(path)
                if text is not None:
                    self._last[pid] = text
                elif not _running(int(pid)):
                    path.unlink(missing_ok=True)
                    continue
                if pid in self._last:
                    found.append((pid, self._last[pid]))
            for pid in list(self._last):
                if not socket_path(self.directory, int(pid)).exists():
                    self._retired.append(_counters_only(self._last.pop(pid)))
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Merged(merge(
                [*found, *(("retired", text) for text in self._retired)])))
            return generate_latest(registry)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counters_only(text: str) -> str:
    """The summed families of an exposition, as text: what a gone worker still adds."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([family for family in text_string_to_metric_families(text)
                               if family.type in SUMMED]))
    return generate_latest(registry).decode()


class Aggregator:
    """The replica's metrics port, served from the gunicorn master on a thread.

    The same limits as a worker's metrics site: a token, a connection cap
    (METRICS_CONNECTIONS), the header timeout (a watchdog per connection, since
    http.server only bounds each read), the scrape rate, and the API's backlog.
    """

    def __init__(self, bind: Address, directory: Path, tokens: tuple[str, ...],
                 header_timeout: float, backlog: int) -> None:
        gate = ScrapeGate(tokens)
        workers = Workers(directory)
        self._directory = directory

        class Handler(BaseHTTPRequestHandler):
            server_version = "process-status"
            sys_version = ""
            _watchdog: threading.Timer | None = None

            def setup(self) -> None:
                super().setup()
                # Headers must be in within header_timeout, however slowly they trickle.
                self._watchdog = threading.Timer(header_timeout, self._cut)
                self._watchdog.daemon = True
                self._watchdog.start()

            def _cut(self) -> None:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def parse_request(self) -> bool:
                parsed = super().parse_request()
                if self._watchdog is not None:
                    self._watchdog.cancel()
                return parsed

            def finish(self) -> None:
                if self._watchdog is not None:
                    self._watchdog.cancel()
                super().finish()

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self._answer(Refusal(404, "not-found", "see /metrics", {}))
                elif (refusal := gate.refuse(self.headers.get("Authorization"))) is not None:
                    self._answer(refusal)
                else:
                    self._send(200, workers.scrape(), CONTENT_TYPE_LATEST)

            def _answer(self, refusal: Refusal) -> None:
                body = problem_body(refusal.status, refusal.kind, refusal.detail)
                self._send(refusal.status, body, PROBLEM_CONTENT_TYPE, refusal.headers)

            def _send(self, status: int, body: bytes, content_type: str,
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # no access log, as on the API

        slots = threading.BoundedSemaphore(METRICS_CONNECTIONS)

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
            request_queue_size = backlog
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                if not slots.acquire(blocking=False):
                    # At the cap: hang up, as a worker does (not via shutdown_request,
                    # which would release a slot this connection never took).
                    with contextlib.suppress(OSError):
                        request.shutdown(socket.SHUT_RDWR)
                    request.close()
                    return
                super().process_request(request, client_address)

            def close_request(self, request: Any) -> None:
                super().close_request(request)
                with contextlib.suppress(ValueError):
                    slots.release()

        self._server = Server((bind.host, bind.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="process-status-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()
        host, port = self._server.server_address[:2]
        log.info("metrics of all workers on http://%s:%d/metrics (worker sockets in %s)",
                 host, port, self._directory)

    def close_in_child(self) -> None:
        """In a forked worker: drop the inherited listening socket (the master serves it)."""
        self._server.socket.close()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._server.shutdown()
            self._server.server_close()


def private_directory(base: str | None = None) -> Path:
    """A fresh directory only this user can enter (mkdtemp makes it 0700)."""
    return Path(tempfile.mkdtemp(prefix="process-status-metrics-", dir=base))
