"""Positions: entity names, timestamps, and the `entity/ts` strings that carry both.

A position is how far an entity's read model has got. Everything that comes off
the wire passes through here before it reaches the store, so the store can trust
its inputs. Errors are `PositionError` with a message written for the human who
sent the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone

POSITION_HEADER = "X-Event-Streamex-Entity-Timestamp"
"""The header that carries `entity/ts` positions (EventStreamex's name for it)."""
MAX_TIMESTAMP = 2**63 - 1
MAX_ENTITY_LENGTH = 255

_ENTITY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,254}")
_DIGITS = re.compile(r"[0-9]{1,19}")
# RFC 3339 section 5.6, with the offset made optional (no offset means UTC, as
# EventStreamex converts naive DateTime values) and a space allowed for "T".
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)


class PositionError(ValueError):
    """A value from a request that is not a valid entity name, timestamp or position."""


def check_entity(name: str) -> str:
    """Return `name` if it is a valid entity name, else raise `PositionError`."""
    if _ENTITY.fullmatch(name) is None:
        raise PositionError(
            f"invalid entity name {_shorten(name)!r}: use 1 to {MAX_ENTITY_LENGTH} characters "
            "from A-Z a-z 0-9 _ . : -, not starting with '.', ':' or '-'"
        )
    return name


def parse_timestamp(value: object) -> int:
    """Parse a timestamp given as an int, a string of digits, or an RFC 3339 date-time.

    A date-time becomes integer microseconds since the Unix epoch, so
    "2015-01-23T23:50:07.123Z" and 1422057007123000 are the same position.
    """
    if type(value) is str and value.isdigit() and value.isascii() and len(value) <= 19:
        return _check_range(int(value))  # the common case, first: a query string's digits
    if isinstance(value, bool):
        raise PositionError("invalid timestamp: expected an integer, not a boolean")
    if isinstance(value, int):
        return _check_range(value)
    if isinstance(value, str):
        if _DIGITS.fullmatch(value):
            return _check_range(int(value))
        match = _RFC3339.fullmatch(value)
        if match is not None:
            return _from_rfc3339(value, match)
        raise PositionError(
            f"invalid timestamp {_shorten(value)!r}: expected an integer (e.g. 1422057007123000) "
            "or an RFC 3339 date-time (e.g. 2015-01-23T23:50:07.123Z)"
        )
    if isinstance(value, float):
        # JSON parsers hand over integers too large for 64 bits as floats as well.
        if abs(value) >= 2**63:
            raise PositionError(f"invalid timestamp {value:.0f}: out of range; timestamps are "
                                f"integers from 0 to {MAX_TIMESTAMP}")
        raise PositionError("invalid timestamp: expected an integer; a JSON number with a "
                            "fraction or an exponent (such as 1.0 or 1e15) is not one")
    raise PositionError(f"invalid timestamp: expected an integer or a string, not {_kind(value)}")


def format_token(entity: str, timestamp: int) -> str:
    """The `X-Event-Streamex-Entity-Timestamp` value for one entity position."""
    return f"{entity}/{timestamp}"


def parse_token(text: str) -> tuple[str, int]:
    """Parse one `entity/ts` token, optionally wrapped in double quotes."""
    token = text.strip()
    if len(token) >= 2 and token[0] == '"' and token[-1] == '"':
        token = token[1:-1].strip()
    entity, slash, timestamp = token.partition("/")
    if not slash:
        raise PositionError(
            f"invalid token {_shorten(text)!r}: expected entity/timestamp, "
            "e.g. posts/1422057007123000"
        )
    return check_entity(entity), parse_timestamp(timestamp)


def parse_token_header(lines: Iterable[str]) -> list[tuple[str, int]]:
    """Parse every token from one or more header lines of comma-separated tokens."""
    tokens: list[tuple[str, int]] = []
    for line in lines:
        for part in line.split(","):
            if part.strip():
                tokens.append(parse_token(part))
    return tokens


def _check_range(value: int) -> int:
    if 0 <= value <= MAX_TIMESTAMP:
        return value
    raise PositionError(
            f"invalid timestamp {value}: out of range, must be between 0 and {MAX_TIMESTAMP}")


def _from_rfc3339(text: str, match: re.Match[str]) -> int:
    year, month, day, hour, minute, second, fraction, _zulu, sign, off_h, off_m = match.groups()
    # Digits past the sixth are below the service's resolution: truncate, never round up
    # into a position that has not been reached.
    micros = int((fraction or "").ljust(6, "0")[:6])
    try:
        zone = UTC
        if sign is not None:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros,
            tzinfo=zone,
        )
    except ValueError as exc:
        raise PositionError(f"invalid timestamp {_shorten(text)!r}: {exc}") from None
    return _check_range((moment - _EPOCH) // _ONE_MICROSECOND)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
