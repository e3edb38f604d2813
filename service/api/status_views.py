"""The status API views: parse the request, ask the store or the backend, answer.

Views are bound methods of `StatusViews`, which holds its collaborators, so the
hot path does no per-request lookups of app state.
"""

from __future__ import annotations

import time

from aiohttp import web

from service.api.bodies import BodyReader, Pairs
from service.config import Settings
from service.http.problems import Problem, not_synced
from service.http.responses import json_response
from service.metrics import Metrics
from service.positions import PositionError, check_entity, format_token, parse_timestamp
from service.storage.backend import Backend, WriteFailed
from service.store import Advance, CapacityError, Delete, Outcome, Reset, StatusStore
from service.timefmt import rfc3339
from service.waiters import Waiters, WaitersFull

_NOT_CACHED = {"Content-Type": "application/json", "Cache-Control": "no-store"}

_MAX_LIST = 10_000
_DEFAULT_LIST = 1000



class StatusViews:
    def __init__(
        self,
        settings: Settings,
        store: StatusStore,
        backend: Backend,
        waiters: Waiters,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.bodies = BodyReader(settings.max_body_bytes, settings.body_timeout)
        cache = settings.gate_cache_seconds
        self._processed_headers = {
            "Content-Type": "application/json",
            "Cache-Control": f"max-age={cache}" if cache > 0 else "no-store"}
        self.store = store
        self.backend = backend
        self.waiters = waiters
        self._counted = metrics.decisions("api")
        self._wait_duration = metrics.wait_duration

    async def put_status(self, request: web.Request) -> web.Response:
        entity = _entity(request)
        body = await self.bodies.json(request)
        if not isinstance(body, dict) or len(body) != 1 or "timestamp" not in body:
            raise Problem(400, "invalid-body",
                          'expected a JSON object with exactly one member: {"timestamp": <ts>}')
        timestamp = _timestamp(body["timestamp"], "timestamp")
        outcomes = await self._record({entity: timestamp})
        outcome = outcomes[entity]
        return json_response(
            {"entity": entity, "timestamp": outcome.timestamp, "advanced": outcome.advanced},
            position=format_token(entity, outcome.timestamp),
        )

    async def post_batch(self, request: web.Request) -> web.Response:
        body = await self.bodies.pairs(request)
        if not isinstance(body, Pairs) or not body:
            raise Problem(400, "invalid-body",
                          'expected a non-empty JSON object of entity -> timestamp, e.g. '
                          '{"posts": 1422057007123000, "comments": 1422057007124000}')
        if len(body) > self.settings.max_batch:
            raise Problem(413, "batch-too-large",
                          f"the batch has {len(body)} entries; the limit is "
                          f"{self.settings.max_batch} (--max-batch): split it into smaller batches",
                          limit=self.settings.max_batch)
        # A repeated entity is recorded at the largest of its timestamps: a batch is a set
        # of max-merges, so the order of its members cannot matter.
        updates: dict[str, int] = {}
        for name, value in body:
            try:
                timestamp = parse_timestamp(value)
                if updates.get(check_entity(name), -1) < timestamp:
                    updates[name] = timestamp
            except PositionError as exc:
                raise Problem(400, "invalid-batch-entry",
                              f"entry {name[:80]!r}: {exc}; nothing was applied",
                              entity=name[:255]) from None
        outcomes = await self._record(updates)
        return json_response({"results": {
            name: {"timestamp": outcome.timestamp, "advanced": outcome.advanced}
            for name, outcome in outcomes.items()
        }})

    async def get_status(self, request: web.Request) -> web.Response:
        entity = _entity(request)
        entry = self.store.get(entity)
        if entry is None:
            raise self._unknown(entity)
        return json_response(
            {"entity": entity, "timestamp": entry[0], "updated_at": rfc3339(entry[1])},
            position=format_token(entity, entry[0]),
        )

    async def processed(self, request: web.Request) -> web.Response:
        entity = _entity(request)
        query = request.query
        raw = query.get("ts")
        if raw is None:
            raise Problem(400, "missing-timestamp",
                          "add the timestamp to check as ?ts=<integer or RFC 3339 date-time>")
        timestamp = _timestamp(_plus_in_query(raw) if " " in raw else raw, "ts")
        wait = self._wait_seconds(query["wait"]) if "wait" in query else 0.0
        done, last = self.store.processed(entity, timestamp)
        if not done:
            self._check_synced()
        waited = not done and wait > 0
        if waited:
            done, last = await self._wait(entity, timestamp, wait)
        # One result per decision: processed, or not (at once, or when the wait ran out).
        if done:
            self._counted.processed()
        elif waited:
            self._counted.timeout()
        else:
            self._counted.not_processed()
        # "processed" never goes back (short of a DELETE or reset): cacheable, as the gate's 200.
        return json_response({"entity": entity, "timestamp": timestamp, "processed": done,
                              "last_processed": last},
                             headers=self._processed_headers if done else _NOT_CACHED)

    async def list_status(self, request: web.Request) -> web.Response:
        query = request.query
        prefix = query.get("prefix", "")
        after = query.get("after", "")
        limit_text = query.get("limit", str(_DEFAULT_LIST))
        if not (limit_text.isascii() and limit_text.isdigit()) or \
                not 1 <= int(limit_text) <= _MAX_LIST:
            raise Problem(400, "invalid-limit",
                          f"limit must be a whole number from 1 to {_MAX_LIST}, got "
                          f"{limit_text[:40]!r}")
        if len(prefix) > 255 or len(after) > 255:
            raise Problem(400, "invalid-query", "prefix and after are at most 255 characters")
        self._check_synced()  # a partial list would silently omit entities
        page, more = self.store.page(prefix, after, int(limit_text))
        return json_response({
            "entities": [
                {"entity": name, "timestamp": entry[0], "updated_at": rfc3339(entry[1])}
                for name, entry in page
            ],
            "next": page[-1][0] if more else None,
        })

    async def delete_status(self, request: web.Request) -> web.Response:
        entity = _entity(request)
        if self.store.get(entity) is None:
            raise self._unknown(entity)
        existed = await self._submit(Delete(entity))
        if not existed:
            raise self._unknown(entity)
        return web.Response(status=204)

    async def reset(self, request: web.Request) -> web.Response:
        if not self.settings.allow_reset:
            raise Problem(403, "reset-disabled",
                          "DELETE /status wipes every entity and is disabled; start the service "
                          "with --allow-reset (meant for test environments) to enable it")
        await self._submit(Reset())
        return web.Response(status=204)

    # -- helpers ---------------------------------------------------------------

    def _check_synced(self) -> None:
        """Only on the answers that say "unknown" or "not yet": a positive answer is true
        from any copy, so the hot path pays nothing."""
        reason = self.backend.readiness
        if reason is not None:
            raise not_synced(reason)

    def _unknown(self, entity: str) -> Problem:
        self._check_synced()
        return Problem(404, "unknown-entity",
                       f"no timestamp has been recorded for entity {entity!r}", entity=entity)

    async def _record(self, updates: dict[str, int]) -> dict[str, Outcome]:
        # CapacityError: from this store's count, or (Redis) from the shared one.
        try:
            reserved = self.store.reserve(updates.keys())
            return await self.backend.submit(Advance(updates), reserved)
        except CapacityError as exc:
            raise Problem(507, "entity-limit-reached", str(exc),
                          limit=self.store.max_entities) from None
        except WriteFailed as exc:
            raise _not_durable(exc) from None

    async def _submit(self, mutation: Delete | Reset) -> bool:
        try:
            return await self.backend.submit(mutation)
        except WriteFailed as exc:
            raise _not_durable(exc) from None

    def _wait_seconds(self, text: str) -> float:
        try:
            wait = float(text)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= self.settings.max_wait:
            raise Problem(400, "invalid-wait",
                          f"wait must be a number of seconds from 0 to {self.settings.max_wait:g} "
                          f"(--max-wait), got {text[:40]!r}")
        return wait

    async def _wait(self, entity: str, timestamp: int, wait: float) -> tuple[bool, int | None]:
        started = time.monotonic()
        try:
            await self.waiters.wait(entity, timestamp, wait)
        except WaitersFull as exc:
            raise Problem(503, "too-many-waiters", f"{exc}; retry after 1 s, or ask without "
                          "?wait= and poll", headers={"Retry-After": "1"}) from None
        self._wait_duration.observe(time.monotonic() - started)
        return self.store.processed(entity, timestamp)


def _entity(request: web.Request) -> str:
    try:
        return check_entity(request.match_info["entity"])
    except PositionError as exc:
        raise Problem(400, "invalid-entity", str(exc)) from None


def _timestamp(value: object, field: str) -> int:
    try:
        return parse_timestamp(value)
    except PositionError as exc:
        raise Problem(400, "invalid-timestamp", f"{field}: {exc}") from None


def _plus_in_query(value: str) -> str:
    # An unencoded "+01:00" offset arrives as " 01:00" (form decoding): restore it.
    if len(value) > 6 and value[-6] == " " and value[-3] == ":":
        return value[:-6] + "+" + value[-5:]
    return value



def _not_durable(exc: WriteFailed) -> Problem:
    return Problem(503, "write-not-durable", str(exc), headers={"Retry-After": "1"})


