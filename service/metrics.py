"""Prometheus metrics of the core: requests, decisions, waiters, the store's collectors.

The registry is passed in (tests make a fresh one each); nothing here touches the
global default registry or any other global state. Hot-path counters are loop-only
(see `counters`). Storage backends export their own counts (`storage.stats`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.counters import LoopCounter, LoopHistogram
from service.store import StatusStore

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry, store: StatusStore, entity_limit: int):
        self.registry = registry
        # Per-request metrics: loop-only counters, no lock on the hot path.
        self.requests = LoopCounter(
            "process_status_http_requests", "HTTP requests answered, by route template.",
            ["method", "route", "status"],
        )
        self.request_duration = LoopHistogram(
            "process_status_http_request_duration_seconds",
            "Time from routing a request to its response, by route template.",
            ["method", "route"], _LATENCY_BUCKETS,
        )
        self.checks = LoopCounter(
            "process_status_checks",
            "processed? decisions, by result and by who asked (the API or the gate).",
            ["result", "source"],
        )
        for collector in (self.requests, self.request_duration, self.checks):
            registry.register(collector)
        entities = Gauge("process_status_entities", "Entities in the store.", registry=registry)
        entities.set_function(lambda: len(store))
        self.waiters = Gauge(
            "process_status_waiters", "Requests waiting for an entity to advance.",
            registry=registry,
        )
        self.waiters_limit = Gauge(
            "process_status_waiters_limit",
            "--max-waiters: past it, long-polls get 503 and the gate answers without waiting.",
            registry=registry,
        )
        self.wait_duration = Histogram(
            "process_status_wait_duration_seconds",
            "How long waiting requests (long-poll and gate) were held.",
            buckets=_WAIT_BUCKETS, registry=registry,
        )
        self.loop_lag = Histogram(
            "process_status_event_loop_lag_seconds",
            "How late a 100 ms timer on the event loop fires: any stall delays every request.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        registry.register(EntityCollector(store, entity_limit))
        registry.register(UpdatesCollector(store))

    def decisions(self, source: str) -> Decisions:
        """Zero-argument incrementers for each processed? result asked by `source`."""
        inc = self.checks.inc
        return Decisions(partial(inc, ("processed", source)),
                         partial(inc, ("not_processed", source)),
                         partial(inc, ("timeout", source)))


class Decisions(NamedTuple):
    processed: Callable[[], None]
    not_processed: Callable[[], None]
    timeout: Callable[[], None]
    """The wait ran out before the entity got there."""


class UpdatesCollector(Collector):
    """`process_status_updates_total{result}`, read from the store's own counts at scrape
    time (counting in the store costs an integer increment per entity written)."""

    def __init__(self, store: StatusStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "process_status_updates",
            "Per-entity timestamp updates applied: advanced the stored value, or stale "
            "(older or equal, left unchanged).",
            labels=["result"],
        )
        family.add_metric(["advanced"], self._store.advanced)
        family.add_metric(["stale"], self._store.stale)
        yield family


class EntityCollector(Collector):
    """`process_status_entity_last_processed_timestamp{entity}` for the first N entities.

    Computed at scrape time from the store, capped so a million entities cannot
    blow up a scrape or the time series database behind it.
    """

    def __init__(self, store: StatusStore, limit: int) -> None:
        self._store = store
        self._limit = limit

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "process_status_entity_last_processed_timestamp",
            "Last processed timestamp per entity (as recorded, usually microseconds), for the "
            "first --entity-metrics-limit entities by name.",
            labels=["entity"],
        )
        if self._limit:
            # first(), not page(): the exposition is rendered on a thread (exposition.metrics_site).
            for name, (timestamp, _updated) in self._store.first(self._limit):
                family.add_metric([name], float(timestamp))
        yield family

