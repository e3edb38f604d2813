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


# Shared by both backends' write paths: a journal group commit and a Redis call take
# from ~0.1 ms (page cache, loopback) to 0.5 s (a stalled disk or Redis), and carry
# from one write to the thousand a burst can queue behind one call.
IO_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                      0.5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)


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

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """This distribution as an unlabelled histogram, for a collector to yield."""
        return HistogramMetricFamily(name, documentation, buckets=self.cumulative(),
                                     sum_value=self.sum)


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
