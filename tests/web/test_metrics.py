"""Metrics as an SRE scrapes them: right names, labels and counts."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from service.config import BackendKind
from service.counters import LoopHistogram
from service.storage.local import LocalBackend
from service.web.app import backend_key
from tests.support import MakeClient


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_each_decision_is_counted_once_by_result_and_source(
    make_client: MakeClient,
) -> None:
    registry = CollectorRegistry()
    client = await make_client(registry=registry, gate_wait=0.05)
    await client.put("/status/posts", json={"timestamp": 10})
    await client.get("/status/posts/processed", params={"ts": "10"})
    await client.get("/status/posts/processed", params={"ts": "11"})
    await client.get("/status/posts/processed", params={"ts": "11", "wait": "0.05"})
    await client.get("/gate", headers={"X-Event-Streamex-Entity-Timestamp": "posts/10"})
    await client.get("/gate", headers={"X-Event-Streamex-Entity-Timestamp": "posts/12"})
    checks = "process_status_checks_total"
    assert sample(registry, checks, result="processed", source="api") == 1
    assert sample(registry, checks, result="not_processed", source="api") == 1
    assert sample(registry, checks, result="timeout", source="api") == 1
    assert sample(registry, checks, result="processed", source="gate") == 1
    assert sample(registry, checks, result="timeout", source="gate") == 1
    assert sample(registry, checks, result="not_processed", source="gate") == 0
    assert sample(registry, "process_status_wait_duration_seconds_count") == 2


async def test_updates_requests_and_entities(make_client: MakeClient) -> None:
    registry = CollectorRegistry()
    client = await make_client(registry=registry, entity_metrics_limit=2)
    await client.post("/status", json={"a": 5, "b": 5, "c": 5})
    await client.post("/status", json={"a": 6, "b": 1})
    await client.get("/status/zzz")
    await client.get("/no/such/route")
    assert sample(registry, "process_status_updates_total", result="advanced") == 4
    assert sample(registry, "process_status_updates_total", result="stale") == 1
    assert sample(registry, "process_status_entities") == 3
    requests = "process_status_http_requests_total"
    assert sample(registry, requests, method="POST", route="/status", status="200") == 2
    assert sample(registry, requests, method="GET", route="/status/{entity}", status="404") == 1
    assert sample(registry, requests, method="GET", route="unmatched", status="404") == 1
    assert sample(registry, "process_status_http_request_duration_seconds_count",
                  method="POST", route="/status") == 2
    # Per-entity series: only the first --entity-metrics-limit names.
    per_entity = "process_status_entity_last_processed_timestamp"
    assert sample(registry, per_entity, entity="a") == 6
    assert sample(registry, per_entity, entity="b") == 5
    assert registry.get_sample_value(per_entity, {"entity": "c"}) is None


def test_loop_histogram_buckets_are_cumulative_and_inclusive() -> None:
    registry = CollectorRegistry()
    histogram = LoopHistogram("h_seconds", "test", ["route"], [0.1, 1.0])
    registry.register(histogram)
    for value in (0.05, 0.1, 0.5, 2.0):
        histogram.observe(("/x",), value)
    assert sample(registry, "h_seconds_bucket", route="/x", le="0.1") == 2  # le is <=
    assert sample(registry, "h_seconds_bucket", route="/x", le="1.0") == 3
    assert sample(registry, "h_seconds_bucket", route="/x", le="+Inf") == 4
    assert sample(registry, "h_seconds_count", route="/x") == 4
    assert sample(registry, "h_seconds_sum", route="/x") == 2.65


@pytest.mark.parametrize("backend_kind", [BackendKind.LOCAL])  # snapshots are local-only
async def test_snapshot_age_ignores_a_wall_clock_step(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()
    client = await make_client(registry=registry, snapshot_interval=3600)
    backend = client.app[backend_key]
    assert isinstance(backend, LocalBackend)
    await client.put("/status/posts", json={"timestamp": 1})
    assert await backend.snapshot()
    written = sample(registry, "process_status_snapshot_last_success_timestamp_seconds")
    assert abs(written - time.time()) < 60
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)  # the clock steps back an hour
    await client.put("/status/posts", json={"timestamp": 2})
    assert await backend.snapshot()
    # The timestamp follows the wall clock back an hour: `time() - timestamp` would read an
    # hour too old (or, stepped forward, an hour in the future and blind). The age does not.
    stepped = sample(registry, "process_status_snapshot_last_success_timestamp_seconds")
    assert written - stepped > 3000
    assert 0 <= sample(registry, "process_status_snapshot_age_seconds") < 60
