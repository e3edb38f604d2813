"""Log sequence numbers: PostgreSQL's `X/Y` text form and the integer process-status records.

An LSN is a 64-bit byte position in the WAL; `0/16B3748` is 0x16B3748. Positions in
process-status are that integer (`posts/23803720`), so "processed?" compares them in
commit order.
"""

from __future__ import annotations


def parse(text: str) -> int:
    """`"0/16B3748"` -> 23803720."""
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN (expected X/Y in hexadecimal): {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    """23803720 -> `"0/16B3748"`."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
