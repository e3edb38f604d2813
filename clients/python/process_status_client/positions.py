"""Positions on the client side: `entity/ts` strings, parsed and formatted as the service does.

A copy of the service's rules (the client installs without the server); the
tests check both against the same cases and against openapi.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone

MAX_TIMESTAMP = 2**63 - 1

_ENTITY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,254}")
_DIGITS = re.compile(r"[0-9]{1,19}")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)


class PositionError(ValueError):
    """Not a valid entity name, timestamp or `entity/ts` position."""


def format_token(entity: str, timestamp: int) -> str:
    """The position header value for one entity position."""
    return f"{entity}/{timestamp}"


def parse_token(text: str) -> tuple[str, int]:
    """Parse one `entity/ts` position, optionally wrapped in double quotes."""
    token = text.strip()
    if len(token) >= 2 and token[0] == '"' and token[-1] == '"':
        token = token[1:-1].strip()
    entity, slash, timestamp = token.partition("/")
    if not slash:
        raise PositionError(f"invalid token {text[:80]!r}: expected entity/timestamp, "
                            "e.g. posts/1422057007123000")
    if _ENTITY.fullmatch(entity) is None:
        raise PositionError(f"invalid entity name {entity[:80]!r}: use 1 to 255 characters "
                            "from A-Z a-z 0-9 _ . : -, not starting with '.', ':' or '-'")
    return entity, parse_timestamp(timestamp)


def parse_token_header(lines: Iterable[str]) -> list[tuple[str, int]]:
    """Every position in one or more header lines of comma-separated positions."""
    return [parse_token(part) for line in lines for part in line.split(",") if part.strip()]


def parse_timestamp(text: str) -> int:
    """Digits, or an RFC 3339 date-time as integer microseconds since the epoch."""
    if _DIGITS.fullmatch(text):
        value = int(text)
    else:
        match = _RFC3339.fullmatch(text)
        if match is None:
            raise PositionError(f"invalid timestamp {text[:80]!r}: expected an integer "
                                "(e.g. 1422057007123000) or an RFC 3339 date-time")
        value = _from_rfc3339(text, match)
    if not 0 <= value <= MAX_TIMESTAMP:
        raise PositionError(
            f"invalid timestamp {value}: out of range, must be between 0 and {MAX_TIMESTAMP}")
    return value


def _from_rfc3339(text: str, match: re.Match[str]) -> int:
    year, month, day, hour, minute, second, fraction, _zulu, sign, off_h, off_m = match.groups()
    # Truncate below a microsecond, as the service does: never round up into a
    # position that has not been reached.
    micros = int((fraction or "").ljust(6, "0")[:6])
    try:
        zone = UTC
        if sign is not None:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                          micros, tzinfo=zone)
    except ValueError as exc:
        raise PositionError(f"invalid timestamp {text[:80]!r}: {exc}") from None
    return (moment - _EPOCH) // _ONE_MICROSECOND
