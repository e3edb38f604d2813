"""The wire vocabulary on the client side: header names and the problem types it reads
and writes. A test checks it against the service's openapi.yaml."""

from __future__ import annotations

POSITION_HEADER = "X-Event-Streamex-Entity-Timestamp"
GATE_TOKEN_HEADER = "X-Process-Status-Token"
PROBLEM_TYPE_PREFIX = "urn:process-status:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"

NOT_PROCESSED_YET = "not-processed-yet"
INVALID_TOKEN = "invalid-token"
STATUS_UNAVAILABLE = "status-unavailable"
"""Answered by `gate_middleware` only: the service could not be asked."""
