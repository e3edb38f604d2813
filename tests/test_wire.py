"""Both sides speak the contract: header names and problem kinds match openapi.yaml.

The server and the client each define their wire vocabulary once (the client
installs without the server); this is where the two copies meet the spec.
"""

from __future__ import annotations

import re
from typing import Any

import process_status_client
import yaml
from process_status_client import wire as client_wire

from service.http import wire as server_wire
from tests.servers import ROOT

SPEC: dict[str, Any] = yaml.safe_load((ROOT / "openapi.yaml").read_text())
KINDS = set(SPEC["components"]["schemas"]["Problem"]["properties"]["type"]["x-problem-kinds"])
HEADERS = {item["name"] for group in ("parameters", "securitySchemes")
           for item in SPEC["components"][group].values() if item.get("in") == "header"}


def test_the_server_answers_exactly_the_documented_problem_kinds() -> None:
    assert server_wire.PROBLEM_KINDS == KINDS


def test_every_problem_the_server_code_raises_is_a_known_kind() -> None:
    raised: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        raised.update(re.findall(r'(?:Problem|problem_response)\(\s*[\w.]+,\s*"([a-z-]+)"',
                                 path.read_text()))
        raised.update(re.findall(r'\(\s*"([a-z-]+)",\s*"', path.read_text())
                      if path.name == "problems.py" else ())
    assert raised, "found no problem kinds in the code"
    assert raised <= server_wire.PROBLEM_KINDS, raised - server_wire.PROBLEM_KINDS


def test_header_names_on_both_sides_are_the_spec_s() -> None:
    for side in (server_wire, client_wire):
        assert side.POSITION_HEADER in HEADERS
        assert side.GATE_TOKEN_HEADER in HEADERS
        assert side.PROBLEM_TYPE_PREFIX == "urn:process-status:problem:"


def test_the_client_reads_and_writes_documented_kinds() -> None:
    # status-unavailable is the middleware's own answer when the service cannot be asked.
    assert {client_wire.NOT_PROCESSED_YET, client_wire.INVALID_TOKEN} <= KINDS
    assert client_wire.STATUS_UNAVAILABLE not in KINDS


def test_both_sides_parse_positions_alike() -> None:
    from service import positions as server

    for text in ("posts/1422057007123000", '"posts/2015-01-23T23:50:07.123Z"',
                 "a.b:c-d_e/0", "posts/2015-01-23T23:50:07.123456789+01:00"):
        assert process_status_client.parse_token(text) == server.parse_token(text), text
    for bad in ("posts", "-x/1", "posts/-1", "posts/99999999999999999999", "posts/1.5", "/1"):
        for parse in (process_status_client.parse_token, server.parse_token):
            try:
                parse(bad)
            except ValueError:
                continue
            raise AssertionError(f"{parse.__module__} accepted {bad!r}")
