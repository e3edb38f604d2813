"""Ack-after-fsync, group commit, crash recovery and disk faults, through the file seam.

`kill -9` cannot tell whether fsync was called (the page cache survives a process
crash), so these tests run the real app in-process on `FakeFiles`, which forgets
every byte and directory entry that was not synced when it simulates a power loss,
can hold an fsync open, and can fail any operation with an errno.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.config import Durability, Settings
from service.storage import journal
from service.storage.local import LocalBackend
from service.storage.recovery import RecoveryError, recover
from service.store import StatusStore
from service.web.app import backend_key, create_app, waiters_key
from tests.storage.fakefiles import FakeFiles
from tests.support import AppClient, Ledger, eventually, state

Start = Callable[..., Awaitable[AppClient]]
PROBLEM = "application/problem+json"
SEGMENT = "journal-"


@pytest.fixture
def fake() -> FakeFiles:
    return FakeFiles()


@pytest.fixture
async def start(
    aiohttp_client: Callable[..., Awaitable[AppClient]], settings: Settings
) -> AsyncIterator[Start]:
    """start(files, registry=None, **settings overrides) -> a client of a fresh app on `files`."""
    used: list[FakeFiles] = []

    async def start_app(
        files: FakeFiles, registry: CollectorRegistry | None = None, **overrides: Any
    ) -> AppClient:
        used.append(files)
        app = create_app(replace(settings, **overrides), registry=registry or CollectorRegistry(),
                         files=files)
        return await aiohttp_client(app)

    yield start_app
    for files in used:  # never leave the app's I/O thread blocked at teardown
        files.release_all()


def backend_of(client: AppClient) -> LocalBackend:
    backend = client.app[backend_key]
    assert isinstance(backend, LocalBackend)
    return backend




def recovered(files: FakeFiles, data_dir: str) -> dict[str, int]:
    store = StatusStore(max_entities=10**6)
    recover(files, data_dir, store, repair=False)
    found, _ = store.page("", "", 10**6)
    return {name: entry[0] for name, entry in found}


async def queued(client: AppClient, count: int) -> None:
    """Wait until `count` writes wait for the next journal batch.

    Reads the journal writer's queue: no response or metric tells that a request has
    reached it, and sleeping instead would make the group-commit count flaky.
    """
    writer = backend_of(client).writer
    assert writer is not None
    await eventually(lambda: writer.queued >= count, f"{count} queued writes")


# -- ack after fsync ---------------------------------------------------------------

WRITES = {
    # kind: (method, path, body, status, state afterwards); before each: {"a": 1}
    "put": ("PUT", "/status/a", {"timestamp": 2}, 200, {"a": 2}),
    "batch": ("POST", "/status", {"a": 2, "b": 5}, 200, {"a": 2, "b": 5}),
    "delete": ("DELETE", "/status/a", None, 204, {}),
    "reset": ("DELETE", "/status", None, 204, {}),
}


@pytest.mark.parametrize("kind", list(WRITES))
async def test_no_answer_and_no_visibility_until_fsync_completes(
    start: Start, fake: FakeFiles, settings: Settings, kind: str
) -> None:
    method, path, body, status, after = WRITES[kind]
    client = await start(fake, allow_reset=True)
    assert (await client.put("/status/a", json={"timestamp": 1})).status == 200
    hold = fake.hold("sync", match=SEGMENT)

    async def send() -> tuple[int, bytes]:
        async with client.request(method, path, json=body) as response:
            return response.status, await response.read()

    task = asyncio.create_task(send())
    await hold.wait_entered()
    await asyncio.sleep(0.05)
    assert not task.done(), "answered while its fsync was still running"
    assert await state(client) == {"a": 1}, "visible to readers before its fsync"
    processed = await client.get("/status/a/processed", params={"ts": "1"})
    assert (await processed.json())["processed"] is True

    hold.release()
    answer_status, _ = await asyncio.wait_for(task, 10)
    assert answer_status == status
    # The moment the answer is out, the write is durable: a power loss now keeps it.
    assert recovered(fake.crash(), settings.data_dir) == after
    assert await state(client) == after


async def test_waiters_are_not_released_before_the_fsync(
    start: Start, fake: FakeFiles, settings: Settings
) -> None:
    """A long-poll or a gate released early would let a read through for a write a power
    loss can still erase."""
    client = await start(fake, gate_wait=5.0)
    assert (await client.put("/status/a", json={"timestamp": 1})).status == 200
    poll = asyncio.create_task(
        client.get("/status/a/processed", params={"ts": "2", "wait": "5"}))
    gate = asyncio.create_task(
        client.post("/gate/x", headers={"X-Event-Streamex-Entity-Timestamp": "a/2"}))
    await eventually(lambda: client.app[waiters_key].count == 2, "two parked waiters")
    hold = fake.hold("sync", match=SEGMENT)
    write = asyncio.create_task(client.put("/status/a", json={"timestamp": 2}))
    await hold.wait_entered()
    await asyncio.sleep(0.05)
    assert not poll.done(), "long-poll released while the write's fsync was still running"
    assert not gate.done(), "gate let the read through before the write was durable"
    assert recovered(fake.crash(), settings.data_dir) == {"a": 1}  # a power loss now

    hold.release()
    assert (await asyncio.wait_for(write, 10)).status == 200
    assert (await (await asyncio.wait_for(poll, 10)).json())["processed"] is True
    assert (await asyncio.wait_for(gate, 10)).status == 200


async def test_concurrent_writes_share_the_next_fsync(start: Start, fake: FakeFiles) -> None:
    registry = CollectorRegistry()
    client = await start(fake, registry=registry)
    hold = fake.hold("sync", match=SEGMENT)
    first = asyncio.create_task(client.put("/status/first", json={"timestamp": 1}))
    await hold.wait_entered()
    others = [
        asyncio.create_task(client.put(f"/status/e{index}", json={"timestamp": index + 1}))
        for index in range(30)
    ]
    await queued(client, 30)
    assert fake.count("sync", SEGMENT) == 1
    assert not first.done()
    assert not any(task.done() for task in others)
    assert await state(client) == {}

    hold.release()
    responses = await asyncio.wait_for(asyncio.gather(first, *others), 10)
    assert [response.status for response in responses] == [200] * 31
    assert fake.count("sync", SEGMENT) == 2, "the 30 queued writes should share one fsync"
    assert registry.get_sample_value("process_status_journal_batch_size_count") == 2
    assert registry.get_sample_value("process_status_journal_batch_size_sum") == 31
    assert len(await state(client)) == 31


# -- simulated power loss under load ---------------------------------------------

def acked_at_least(ledger: Ledger, count: int) -> bool:
    return ledger.acks >= count


async def write_until(client: AppClient, ledger: Ledger, rng: random.Random, entities: int,
                      stop: asyncio.Event) -> None:
    while not stop.is_set():
        entity = f"e{rng.randrange(entities):03d}"
        value = ledger.take(entity)
        async with client.put(f"/status/{entity}", json={"timestamp": value}) as response:
            if response.status == 200:
                ledger.ack(entity, value)
            else:
                ledger.unexpected.append(f"{response.status}: {await response.text()}")


async def test_power_loss_keeps_every_acknowledged_write(
    start: Start, settings: Settings
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    fake = FakeFiles()
    ledger = Ledger()
    for _round in range(6):
        # Frequent snapshots and a small journal, so the crash also lands in rotations,
        # snapshot renames and segment deletions.
        client = await start(fake, snapshot_interval=0.03, journal_max_bytes=3000)
        found = await state(client)
        assert ledger.lost(found) == []
        assert ledger.never_above_sent(found) == []
        stop = asyncio.Event()
        writers = [
            asyncio.create_task(write_until(client, ledger, random.Random(rng.random()), 300,
                                            stop))
            for _ in range(16)
        ]
        # Some acknowledged writes first, so that each round has something it could lose.
        await eventually(partial(acked_at_least, ledger, ledger.acks + 10),
                         "10 acknowledged writes")
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        survivor = fake.crash()
        acked_before_crash = dict(ledger.acked)
        stop.set()
        await asyncio.gather(*writers)
        await client.close()
        assert ledger.unexpected == [], f"seed {seed}"
        # Acks after the crash came from the old, doomed file system: forget them.
        ledger.acked = acked_before_crash
        fake = survivor
        found = recovered(fake, settings.data_dir)
        assert ledger.lost(found) == []
        assert ledger.never_above_sent(found) == []
    assert len(ledger.acked) > 50, f"too few acknowledged writes to mean anything (seed {seed})"


# -- disk failures -------------------------------------------------------------------

FAULTS = {
    "fsync-eio": ("sync", errno.EIO, False),
    "write-enospc-short": ("write", errno.ENOSPC, True),
    "write-erofs": ("write", errno.EROFS, False),
}


async def is_problem(response: Any, status: int, kind: str) -> None:
    assert response.status == status
    assert response.content_type == PROBLEM
    body = await response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:process-status:problem:{kind}"


@pytest.mark.parametrize("power_loss", [False, True], ids=["kill", "power-loss"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_failed_journal_write_is_rejected_and_never_applied(
    start: Start, fake: FakeFiles, settings: Settings, fault: str, power_loss: bool
) -> None:
    op, code, partial = FAULTS[fault]
    registry = CollectorRegistry()
    client = await start(fake, registry=registry)
    assert (await client.put("/status/a", json={"timestamp": 1})).status == 200
    assert (await client.get("/readyz")).status == 200

    fake.fail(op, code, match=SEGMENT, partial=partial)
    await is_problem(await client.put("/status/b", json={"timestamp": 1}), 503,
                     "write-not-durable")
    await is_problem(await client.post("/status", json={"a": 9, "c": 9}), 503,
                     "write-not-durable")
    # Nothing applied; reads keep working and the replica stays ready for them (the
    # Kubernetes probe must not take it out of the Service); the write check says why.
    assert await state(client) == {"a": 1}
    assert (await client.get("/status/b")).status == 404
    processed = await client.get("/status/a/processed", params={"ts": "9"})
    assert (await processed.json())["processed"] is False
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["writable"] is False
    await is_problem(await client.get("/readyz/writes"), 503, "not-writable")
    assert registry.get_sample_value("process_status_writable") == 0
    # One I/O failure: later writes are refused without touching the failed journal.
    assert registry.get_sample_value("process_status_journal_failures_total") == 1
    failed_segment = f"{settings.data_dir}/{journal.segment_name(1)}"

    fake.clear_faults()
    # Writes resume once the background probe has synced a fresh segment.
    await eventually(lambda: client.app[backend_key].write_health is None, "the journal probe")
    assert (await client.get("/readyz/writes")).status == 200
    assert registry.get_sample_value("process_status_writable") == 1
    assert (await client.put("/status/d", json={"timestamp": 4})).status == 200
    assert await state(client) == {"a": 1, "d": 4}
    assert b'"d"' not in fake.read(failed_segment), "the journal wrote to a failed segment"
    assert registry.get_sample_value("process_status_journal_failures_total") == 1

    survivor = fake.crash(power_loss=power_loss)
    await client.close()
    assert recovered(survivor, settings.data_dir) == {"a": 1, "d": 4}
    restarted = await start(survivor)
    assert await state(restarted) == {"a": 1, "d": 4}
    assert (await restarted.put("/status/e", json={"timestamp": 5})).status == 200


@pytest.mark.parametrize("restart", ["graceful", "kill"])
async def test_rejected_write_stays_rejected_even_without_a_later_write(
    start: Start, fake: FakeFiles, settings: Settings, restart: str
) -> None:
    client = await start(fake)
    assert (await client.put("/status/a", json={"timestamp": 1})).status == 200
    fake.fail("sync", errno.EIO, match=SEGMENT, times=1)
    await is_problem(await client.put("/status/b", json={"timestamp": 1}), 503,
                     "write-not-durable")
    if restart == "graceful":
        await client.close()
        survivor = fake
    else:
        survivor = fake.crash(power_loss=False)
        await client.close()
    assert recovered(survivor, settings.data_dir) == {"a": 1}


async def test_failed_directory_sync_does_not_lose_later_acknowledged_writes(
    start: Start, fake: FakeFiles, settings: Settings
) -> None:
    client = await start(fake)
    fake.fail("sync_dir", errno.EIO, times=1)
    await is_problem(await client.put("/status/a", json={"timestamp": 1}), 503,
                     "write-not-durable")
    await journal_probed(client)
    assert (await client.put("/status/a", json={"timestamp": 2})).status == 200
    assert recovered(fake.crash(), settings.data_dir) == {"a": 2}


async def test_restart_after_fault_and_interrupted_cleanup_starts_again(
    start: Start, fake: FakeFiles, settings: Settings
) -> None:
    client = await start(fake)
    assert (await client.put("/status/a", json={"timestamp": 1})).status == 200
    fake.fail("sync", errno.EIO, match=SEGMENT, times=1)
    assert (await client.put("/status/b", json={"timestamp": 1})).status == 503
    await journal_probed(client)
    assert (await client.put("/status/a", json={"timestamp": 2})).status == 200
    # A snapshot covers everything, but deleting the covered segments fails (or the
    # process dies before it gets there).
    fake.fail("remove", errno.EIO, match=SEGMENT)
    assert await backend_of(client).snapshot()
    survivor = fake.crash(power_loss=False)
    await client.close()

    restarted = await start(survivor)
    assert await state(restarted) == {"a": 2}
    assert (await restarted.put("/status/c", json={"timestamp": 3})).status == 200
    again = survivor.crash(power_loss=False)
    await restarted.close()
    try:
        assert recovered(again, settings.data_dir) == {"a": 2, "c": 3}
    except RecoveryError as exc:
        pytest.fail(f"cannot start again: {exc}")


# -- snapshots through the seam ------------------------------------------------------

async def test_failed_snapshot_keeps_the_journal(
    start: Start, fake: FakeFiles, settings: Settings
) -> None:
    registry = CollectorRegistry()
    client = await start(fake, registry=registry)
    for index in range(5):
        assert (await client.put(f"/status/e{index}", json={"timestamp": 7})).status == 200
    fake.fail("sync", errno.EIO, match=".tmp-", times=1)
    assert await backend_of(client).snapshot() is False
    assert registry.get_sample_value("process_status_snapshot_failures_total") == 1
    assert journal.list_segments(fake, settings.data_dir) == [1]
    assert [name for name in fake.listdir(settings.data_dir) if ".tmp-" in name] == []
    expected = {f"e{index}": 7 for index in range(5)}
    assert recovered(fake.crash(), settings.data_dir) == expected

    assert await backend_of(client).snapshot() is True
    assert journal.list_segments(fake, settings.data_dir) == []
    assert recovered(fake.crash(), settings.data_dir) == expected


async def journal_probed(client: AppClient) -> None:
    """Wait until the background probe has found the journal writable again."""
    await eventually(lambda: backend_of(client).write_health is None, "the journal probe")


async def periodic_fsyncs(registry: CollectorRegistry, count: int) -> None:
    """Wait until batch mode's periodic fsync has run `count` more times."""
    name = "process_status_journal_fsync_duration_seconds_count"
    start = registry.get_sample_value(name) or 0
    await eventually(lambda: (registry.get_sample_value(name) or 0) >= start + count,
                     f"{count} periodic fsyncs")


async def test_batch_mode_stays_unready_while_journal_writes_fail(
    start: Start, fake: FakeFiles, settings: Settings
) -> None:
    registry = CollectorRegistry()
    client = await start(fake, registry=registry, durability=Durability.BATCH,
                         fsync_interval=0.01)
    assert (await client.put("/status/a", json={"timestamp": 1})).status == 200
    first = f"{settings.data_dir}/{journal.segment_name(1)}"
    await eventually(lambda: bool(fake.durable(first)), "a durable first write")
    fake.fail("write", errno.ENOSPC, match=SEGMENT)
    assert (await client.put("/status/b", json={"timestamp": 2})).status == 200  # batch: at once
    await eventually(lambda: registry.get_sample_value(
        "process_status_journal_failures_total") == 1, "the journal failure")
    creates = fake.count("create", SEGMENT)
    await eventually(lambda: fake.count("create", SEGMENT) >= creates + 2,
                     "two probes of a fresh segment")
    # Nothing has been written since the failure: the disk is still full.
    assert (await client.get("/readyz/writes")).status == 503


async def test_batch_mode_after_a_failed_write_restarts_cleanly(
    start: Start, fake: FakeFiles, settings: Settings
) -> None:
    """Batch mode may lose the writes around a failure, but must still start afterwards."""
    registry = CollectorRegistry()
    client = await start(fake, registry=registry, durability=Durability.BATCH,
                         fsync_interval=0.01)
    assert (await client.put("/status/a", json={"timestamp": 1})).status == 200
    first = f"{settings.data_dir}/{journal.segment_name(1)}"
    await eventually(lambda: bool(fake.durable(first)), "a durable first write")

    # A short write on a full disk, and the cleanup truncate fails too.
    fake.fail("write", errno.ENOSPC, match=SEGMENT, partial=True, times=1)
    fake.fail("truncate", errno.EIO, match=SEGMENT)
    assert (await client.put("/status/b", json={"timestamp": 2})).status == 200
    await eventually(lambda: registry.get_sample_value(
        "process_status_journal_failures_total") == 1, "the journal failure")
    await periodic_fsyncs(registry, 2)

    fake.clear_faults()
    assert (await client.put("/status/c", json={"timestamp": 3})).status == 200
    # The journal recovered on a fresh segment (and a snapshot caught up on what missed
    # it): c becomes durable within a few fsync intervals.
    await eventually(lambda: recovered(fake.crash(), settings.data_dir).get("c") == 3,
                     "c to be durable")

    survivor = fake.crash(power_loss=False)
    await client.close()
    found = recovered(survivor, settings.data_dir)  # raises RecoveryError: cannot start
    assert found.items() >= {"a": 1, "c": 3}.items()
