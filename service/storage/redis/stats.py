"""What the Redis backend counts, and the collector that exports it at scrape time.

Like `service.storage.stats`: plain numbers updated on the event loop, read by
Prometheus when it scrapes, and by tests directly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.counters import BATCH_SIZE_BUCKETS, IO_SECONDS_BUCKETS, Distribution


@dataclass(slots=True)
class RedisStats:
    call_duration: Distribution = field(default_factory=lambda: Distribution(IO_SECONDS_BUCKETS))
    """One coalesced FCALL (and WAIT) round trip."""
    call_batch: Distribution = field(default_factory=lambda: Distribution(BATCH_SIZE_BUCKETS))
    """Writes carried by one FCALL."""
    write_failures: int = 0
    """Calls that failed (Redis unreachable, an error, or WAIT short): their writes got 503."""
    data_losses: int = 0
    """Times this copy found that Redis had lost positions it had acknowledged."""
    repair_pending: int = 0
    """Positions this copy holds that Redis lost, not yet written back."""
    sentinel_switches: int = 0
    """Times Sentinel named another master than the one this replica was writing to."""
    follower_entries: int = 0
    follower_resyncs: int = 0
    follower_lag: float = 0.0
    """Seconds from the Redis server time of the last applied entry to its local apply
    (includes any clock difference between the hosts)."""
    follower_connected: bool = False
    current_since: float | None = None
    """time.monotonic() at which the local copy was last known to hold everything in
    Redis (None before the first sync)."""
    following: bool = False
    """A stream read is in flight on a live connection (so the copy is current)."""
    synced: bool = False

    def staleness(self) -> float:
        """Seconds the local copy may be behind Redis (0 while it follows; inf before sync)."""
        if self.current_since is None:
            return float("inf")
        if self.following:
            return 0.0
        return max(0.0, time.monotonic() - self.current_since)


class RedisCollector(Collector):
    def __init__(self, stats: RedisStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield stats.call_duration.family("process_status_redis_call_duration_seconds",
                                         "One coalesced Redis write call (FCALL, plus "
                                         "WAIT when set).")
        yield stats.call_batch.family("process_status_redis_call_batch_size",
                                      "Writes carried by one Redis call (coalescing).")
        yield CounterMetricFamily("process_status_redis_write_failures",
                                  "Redis write calls that failed; their writes were answered 503.",
                                  value=stats.write_failures)
        yield CounterMetricFamily("process_status_redis_data_losses",
                                  "Times Redis was found to have lost positions this replica's "
                                  "copy holds (FLUSHALL, a restart without persistence, a "
                                  "failover without them).", value=stats.data_losses)
        yield GaugeMetricFamily("process_status_redis_repair_pending",
                                "Positions Redis lost that this replica's copy holds and has "
                                "not yet written back.", value=stats.repair_pending)
        yield CounterMetricFamily("process_status_redis_master_switches",
                                  "Times Sentinel named another master than the one writes "
                                  "went to (connections were dropped and re-resolved).",
                                  value=stats.sentinel_switches)
        yield CounterMetricFamily("process_status_redis_follower_entries",
                                  "Stream entries applied to the local copy by the follower.",
                                  value=stats.follower_entries)
        yield CounterMetricFamily("process_status_redis_follower_resyncs",
                                  "Full copies of the Redis hash (first sync, trimmed stream, "
                                  "failover, flush).", value=stats.follower_resyncs)
        yield GaugeMetricFamily("process_status_redis_follower_lag_seconds",
                                "Redis server time of the last applied stream entry to its "
                                "local apply.", value=stats.follower_lag)
        staleness = stats.staleness()
        yield GaugeMetricFamily("process_status_redis_follower_staleness_seconds",
                                "How far behind Redis the local copy may be (0 while following; "
                                "+Inf before the first sync).", value=staleness)
        yield GaugeMetricFamily("process_status_redis_follower_connected",
                                "1 while the follower's stream connection is up.",
                                value=1.0 if stats.follower_connected else 0.0)

