"""The Redis Functions library and the formats around it, in one place.

Keys (one hash tag, so all three land on one Cluster slot):

* ``{process-status}:entities`` -- hash: entity -> ``"<ts> <updated_at_us>"``, both
  unsigned decimal integers (ts up to 2^63-1; updated_at in microseconds of the
  Redis server clock, from ``TIME``).
* ``{process-status}:log`` -- stream: one entry per call that changed anything
  (see `Entry` below), trimmed by ``MAXLEN ~ <stream_maxlen>``.
* ``{process-status}:head`` -- string ``"<epoch> <seq> <stream id>"``: the epoch is the
  server time at which this data set was first written (a FLUSHALL or a fresh Redis
  gives a new one), seq counts the stream entries ever added in that epoch, the id is
  the last entry's. Written atomically with the hash and the stream.

Functions (``FCALL name 3 <entities> <log> <head> args...``):

* ``process_status_apply max_entities maxlen op...`` -- one call carries many
  mutations, applied in order (the coalescing writer's batch). Ops are
  ``A n e1 t1 ... en tn`` (max-merge), ``D e`` (delete), ``R`` (reset). Reply:
  ``[epoch, seq, result per op]``; an advance's result is ``[ts1, adv1, ts2, adv2...]``
  (stored ts as a decimal string, 1 if it moved) or ``["full", held, new]`` when it
  would take the hash past ``max_entities`` (checked atomically; nothing of that op
  applied); a delete's or reset's result is 1 if anything existed, else 0.
* ``process_status_version`` (read-only, no keys): `VERSION`, so a start loads the
  library only when the one in Redis differs (``FUNCTION LOAD REPLACE``).

Timestamps never become Lua numbers (doubles: 2^53 and 2^53+1 compare equal): they
stay canonical decimal strings and compare by length, then bytewise.

Stream entry fields: ``epoch``, ``seq``, ``now`` (server microseconds) and ``ops``:
lines ``a <entity> <ts>`` (an entity that advanced), ``d <entity>`` (deleted, it
existed) and ``r`` (reset), in the order they happened. Entity names never contain
spaces or newlines (see service.positions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from service.store import Advance, Delete, Mutation, Outcome

VERSION = "1"
NAME = "process_status"
APPLY = "process_status_apply"
VERSION_FUNCTION = "process_status_version"

ENTITIES = "{process-status}:entities"
LOG = "{process-status}:log"
HEAD = "{process-status}:head"
KEYS = (ENTITIES, LOG, HEAD)

SOURCE = f"""#!lua name={NAME}
local VERSION = '{VERSION}'
""" + r"""
-- a > b for canonical unsigned decimal strings (no Lua numbers: they are doubles)
local function newer(a, b)
  local la, lb = #a, #b
  if la ~= lb then return la > lb end
  return a > b
end

local function stored_ts(value)
  return string.sub(value, 1, string.find(value, ' ', 1, true) - 1)
end

local function apply(keys, args)
  local entities, log, headkey = keys[1], keys[2], keys[3]
  local max_entities = tonumber(args[1])
  local maxlen = args[2]
  local time = redis.call('TIME')
  local now = time[1] .. string.format('%06d', tonumber(time[2]))
  local epoch, seq = now, 0
  local head = redis.call('GET', headkey)
  if head then
    local e, s = string.match(head, '^(%S+) (%d+)')
    epoch, seq = e, tonumber(s)
  end
  local held = redis.call('HLEN', entities)
  local results, lines = {}, {}
  local i, n = 3, #args
  while i <= n do
    local op = args[i]
    if op == 'A' then
      local count = tonumber(args[i + 1])
      local first = i + 2
      local last = first + 2 * count - 1
      local current = {}
      local new = 0
      for j = first, last, 2 do
        local value = redis.call('HGET', entities, args[j])
        if value then current[j] = stored_ts(value) else new = new + 1 end
      end
      if new > 0 and held + new > max_entities then
        results[#results + 1] = {'full', held, new}
      else
        local out = {}
        for j = first, last, 2 do
          local entity, ts, cur = args[j], args[j + 1], current[j]
          if cur == nil or newer(ts, cur) then
            redis.call('HSET', entities, entity, ts .. ' ' .. now)
            lines[#lines + 1] = 'a ' .. entity .. ' ' .. ts
            out[#out + 1] = ts
            out[#out + 1] = 1
          else
            out[#out + 1] = cur
            out[#out + 1] = 0
          end
        end
        held = held + new
        results[#results + 1] = out
      end
      i = last + 1
    elseif op == 'D' then
      local existed = redis.call('HDEL', entities, args[i + 1])
      if existed == 1 then
        lines[#lines + 1] = 'd ' .. args[i + 1]
        held = held - 1
      end
      results[#results + 1] = existed
      i = i + 2
    elseif op == 'R' then
      local existed = redis.call('UNLINK', entities)
      lines[#lines + 1] = 'r'
      held = 0
      results[#results + 1] = existed
      i = i + 1
    else
      return redis.error_reply('ERR process_status: unknown op ' .. tostring(op))
    end
  end
  if #lines > 0 then
    seq = seq + 1
    local id = redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*', 'epoch', epoch,
                          'seq', seq, 'now', now, 'ops', table.concat(lines, '\n'))
    redis.call('SET', headkey, epoch .. ' ' .. seq .. ' ' .. id)
  end
  return {epoch, seq, results}
end

redis.register_function('process_status_apply', apply)
redis.register_function{
  function_name = 'process_status_version',
  callback = function() return VERSION end,
  flags = {'no-writes'},
}
"""
assert f"'{APPLY}'" in SOURCE
assert f"'{VERSION_FUNCTION}'" in SOURCE


class Full(NamedTuple):
    """An advance the entity limit refused: entities held, and new ones it would add."""

    held: int
    new: int


OpResult = dict[str, Outcome] | bool | Full


def encode(mutations: Sequence[Mutation]) -> list[str]:
    """The op arguments of one apply call, in order."""
    args: list[str] = []
    for mutation in mutations:
        if isinstance(mutation, Advance):
            updates = mutation.updates
            args += ("A", str(len(updates)))
            for entity, timestamp in updates.items():
                args += (entity, str(timestamp))
        elif isinstance(mutation, Delete):
            args += ("D", mutation.entity)
        else:
            args.append("R")
    return args


@dataclass(frozen=True, slots=True)
class Reply:
    epoch: str
    seq: int
    results: list[OpResult]


def decode_reply(mutations: Sequence[Mutation], reply: Sequence[object]) -> Reply:
    """The apply reply, matched to the mutations that went out in the call."""
    epoch, seq, raw = reply
    assert isinstance(raw, list), reply
    assert len(raw) == len(mutations), reply
    results: list[OpResult] = []
    for mutation, result in zip(mutations, raw, strict=True):
        if isinstance(mutation, Advance):
            assert isinstance(result, list)
            if result and _text(result[0]) == "full":
                results.append(Full(int(result[1]), int(result[2])))
                continue
            outcomes: dict[str, Outcome] = {}
            for index, entity in enumerate(mutation.updates):
                outcomes[entity] = Outcome(int(result[2 * index]), result[2 * index + 1] == 1)
            results.append(outcomes)
        else:
            results.append(result == 1)
    return Reply(_text(epoch), int(_text(seq)), results)


# -- the stream entry ------------------------------------------------------------


class Entry(NamedTuple):
    epoch: str
    seq: int
    now: float
    """Redis server time of the call, seconds since the epoch."""
    ops: list[tuple[str, ...]]
    """("a", entity, ts) / ("d", entity) / ("r",), in order."""


def decode_entry(fields: Mapping[bytes, bytes]) -> Entry:
    ops = [tuple(line.split(" ")) for line in fields[b"ops"].decode().split("\n")]
    return Entry(fields[b"epoch"].decode(), int(fields[b"seq"]),
                 int(fields[b"now"]) / 1e6, ops)


def decode_value(value: bytes) -> tuple[int, float]:
    """A hash value: (ts, updated_at seconds)."""
    ts, _, at = value.partition(b" ")
    return int(ts), int(at) / 1e6


def decode_head(value: bytes | None) -> tuple[str, int, str]:
    """(epoch, seq, last stream id); ("", 0, "0-0") for a Redis never written to."""
    if value is None:
        return "", 0, "0-0"
    epoch, seq, last_id = value.decode().split(" ")
    return epoch, int(seq), last_id


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
