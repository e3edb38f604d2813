"""Fixtures of the Postgres kit's tests: one scratch cluster, fresh databases per test, and
a real `process-status serve`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kit_support import Databases, fresh_databases
from process_status_postgres.scratch import ScratchCluster, bin_dir

from tests.servers import ServeProcess, serving


@pytest.fixture(scope="session")
def cluster() -> Iterator[ScratchCluster]:
    if bin_dir() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql-15 "
                    "(.ci/install-services.sh does)")
    # fsync off: these tests crash the operator, not the database.
    with ScratchCluster.start(fsync=False) as started:
        yield started


@pytest.fixture
def databases(cluster: ScratchCluster) -> Iterator[Databases]:
    with fresh_databases(cluster) as fresh:
        yield fresh


@pytest.fixture
def status(tmp_path: Path) -> Iterator[ServeProcess]:
    with serving(tmp_path / "process-status", "--durability", "batch") as server:
        yield server
