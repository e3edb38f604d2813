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

    def value(self, labels: Labels) -> float:
        return self.values.get(labels, 0)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        yield family


class _Series:
    __slots__ = ("buckets", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.sum = 0.0


class LoopHistogram(Collector):
    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], bounds: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = list(bounds)
        self.series: dict[Labels, _Series] = {}

    def observe(self, labels: Labels, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = _Series(len(self.bounds) + 1)
        series.buckets[bisect.bisect_left(self.bounds, value)] += 1
        series.sum += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in list(self.series.items()):
            cumulative: list[tuple[str, float]] = []
            total = 0
            for bound, count in zip([*map(_bound, self.bounds), "+Inf"], series.buckets,
                                    strict=True):
                total += count
                cumulative.append((bound, total))
            family.add_metric(list(labels), cumulative, series.sum)
        yield family


def _bound(value: float) -> str:
    return repr(float(value))
