"""Lock-free counters and histograms for code that runs only on the event loop.

prometheus-client's metrics take a lock and re-check their state on every call;
on the request hot path that was a measurable share of each request. These keep
plain dicts of numbers, updated only from the event loop, and turn them into
metric families at scrape time (the metrics site runs on the same loop).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

Labels = tuple[str, ...]


class LoopCounter(Collector):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        yield family


class Distribution:
    """Observations counted into fixed buckets (upper bounds, plus one for +Inf) and summed."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.buckets = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count) pairs as a Prometheus histogram exposes them."""
        found: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip([*map(_bound, self.bounds), "+Inf"], self.buckets, strict=True):
            total += count
            found.append((bound, total))
        return found


class LoopHistogram(Collector):
    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], bounds: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = list(bounds)
        self.series: dict[Labels, Distribution] = {}

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = Distribution(self.bounds)
        series.observe(value)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in list(self.series.items()):
            family.add_metric(list(labels), series.cumulative(), series.sum)
        yield family


def _bound(value: float) -> str:
    return repr(float(value))
