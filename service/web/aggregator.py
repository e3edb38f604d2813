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
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from service.config import Address
from service.web.auth import Access, Authenticator, bearer

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


def scrape(directory: Path) -> bytes:
    found = []
    for path in sorted(directory.glob("worker-*.sock")):
        text = fetch(path)
        if text is not None:
            found.append((path.stem.removeprefix("worker-"), text))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(merge(found)))
    return generate_latest(registry)


class Aggregator:
    """The replica's metrics port, served from the gunicorn master on a thread."""

    def __init__(self, bind: Address, directory: Path, tokens: tuple[str, ...],
                 timeout: float) -> None:
        auth = Authenticator((), tokens)
        self._directory = directory

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self._answer(404, b"see /metrics\n", "text/plain")
                elif not auth.allows(Access.READ, bearer(self.headers.get("Authorization"))):
                    self._answer(401, b"/metrics needs a metrics token\n", "text/plain")
                else:
                    self._answer(200, scrape(directory), CONTENT_TYPE_LATEST)

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # no access log, as on the API

        # The socket timeout of each read: bounds a client that trickles or idles.
        Handler.timeout = timeout
        Handler.server_version = "process-status"
        Handler.sys_version = ""
        family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
        ThreadingHTTPServer.address_family = family
        self._server = ThreadingHTTPServer((bind.host, bind.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="process-status-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()
        host, port = self._server.server_address[:2]
        log.info("metrics of all workers on http://%s:%d/metrics (worker sockets in %s)",
                 host, port, self._directory)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._server.shutdown()
            self._server.server_close()


def private_directory(base: str | None = None) -> Path:
    """A fresh directory only this user can enter, for the workers' sockets."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="process-status-metrics-", dir=base))
    os.chmod(path, 0o700)
    return path
