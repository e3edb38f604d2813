"""The in-process API, gate and long-poll tests run against both backends."""

from __future__ import annotations

import pytest

from service.config import BackendKind


@pytest.fixture(params=[BackendKind.LOCAL, BackendKind.REDIS], ids=["local", "redis"])
def backend_kind(request: pytest.FixtureRequest) -> BackendKind:
    kind: BackendKind = request.param
    return kind
