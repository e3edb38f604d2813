"""The wire vocabulary on the server side: header names and problem types.

The Python client keeps its own copy (it installs without the server); a test
checks both copies against openapi.yaml, so neither can drift from the contract.
"""

from __future__ import annotations

from service.positions import POSITION_HEADER

__all__ = ["GATE_TOKEN_HEADER", "POSITION_HEADER", "PROBLEM_KINDS", "PROBLEM_TYPE_PREFIX"]

GATE_TOKEN_HEADER = "X-Process-Status-Token"
"""How gateways present a read token to the gate: the client's own Authorization header
is forwarded by Traefik and Caddy and belongs to the upstream app, not to us."""

PROBLEM_TYPE_PREFIX = "urn:process-status:problem:"

PROBLEM_KINDS = frozenset({
    "bad-request", "batch-too-large", "body-too-large", "entity-limit-reached",
    "expectation-failed", "http-error", "incomplete-body", "internal-error",
    "invalid-batch-entry", "invalid-body", "invalid-entity", "invalid-json", "invalid-limit",
    "invalid-query", "invalid-timestamp", "invalid-token", "invalid-wait", "method-not-allowed",
    "missing-timestamp", "not-found", "not-processed-yet", "not-ready", "not-synced",
    "not-writable",
    "request-timeout", "reset-disabled", "too-many-connections", "too-many-scrapes",
    "too-many-waiters", "unauthorized", "unknown-entity", "write-not-durable",
})
"""Every `<kind>` in `urn:process-status:problem:<kind>` the server answers with."""
