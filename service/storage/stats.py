"""What the local backend counts, and the collector that exports it at scrape time.

The backend only ever updates plain numbers, from the event loop; Prometheus reads
them when it scrapes (as the store's advanced/stale counts are read). So the
storage layer carries no metric objects or locks, and tests read the numbers directly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.counters import BATCH_SIZE_BUCKETS, IO_SECONDS_BUCKETS, Distribution

_SNAPSHOT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class StorageStats:
    journal_fsync: Distribution = field(default_factory=lambda: Distribution(IO_SECONDS_BUCKETS))
    journal_batch: Distribution = field(default_factory=lambda: Distribution(BATCH_SIZE_BUCKETS))
    journal_bytes: int = 0
    journal_failures: int = 0
    snapshot_duration: Distribution = field(
        default_factory=lambda: Distribution(_SNAPSHOT_BUCKETS))
    snapshot_failures: int = 0
    snapshot_last_success: float = 0.0
    """Unix time of the last snapshot written successfully (0: none since start)."""
    snapshot_current_at: float = field(default_factory=time.monotonic)
    """Monotonic time at which the snapshot on disk last held the whole store: a
    wall-clock step cannot move it, so an alert on the age never goes blind."""


class StorageCollector(Collector):
    def __init__(self, stats: StorageStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield _gauge("process_status_snapshot_last_success_timestamp_seconds",
                     "Unix time of the last snapshot written successfully.",
                     stats.snapshot_last_success)
        yield _gauge("process_status_snapshot_age_seconds",
                     "Seconds since the snapshot on disk last held every change (by the "
                     "monotonic clock); alert on this rather than on the timestamp.",
                     time.monotonic() - stats.snapshot_current_at)
        yield stats.snapshot_duration.family("process_status_snapshot_duration_seconds",
                                             "Time to capture and durably write a snapshot.")
        yield CounterMetricFamily("process_status_snapshot_failures",
                                  "Snapshots that failed to be written.",
                                  value=stats.snapshot_failures)
        yield stats.journal_fsync.family("process_status_journal_fsync_duration_seconds",
                                         "Time to write and fsync one journal batch "
                                         "(group commit).")
        yield stats.journal_batch.family("process_status_journal_batch_size",
                                         "Writes made durable by one fsync.")
        yield _gauge("process_status_journal_bytes",
                     "Bytes in journal segments not yet covered by a snapshot.",
                     stats.journal_bytes)
        yield CounterMetricFamily(
            "process_status_journal_failures",
            "Journal writes or fsyncs that failed (the affected writes were rejected).",
            value=stats.journal_failures)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)

