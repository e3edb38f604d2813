"""Schemathesis hooks for tests/e2e/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

The contract says a timestamp is a JSON integer literal: `1.0` and `1e15` are refused
with 400, since they are what a client computing timestamps in floating point sends,
and rejecting them always beats accepting them only while the float happens to be
whole. JSON Schema cannot say so (to it, 2.0 is the integer 2), and the generators
produce such floats for `type: integer` as valid data. Only those are dropped here;
fractional numbers are invalid to the schema too and stay in the negative tests.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _whole_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_whole_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_whole_float(item) for item in value)
    return False


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    return not _whole_float(body)


@schemathesis.hook
def filter_query(context: Any, query: Any) -> bool:
    return not _whole_float(query)
