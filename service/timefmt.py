"""RFC 3339 UTC formatting for the times of day the service reports."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(seconds: float) -> str:
    """`2026-11-26T14:30:13.123456Z` for a POSIX time in seconds."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")[:-6] + "Z"
