"""The README's tables stay true to the code."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from service.config import OPTIONS
from service.metrics import Metrics
from service.store import StatusStore
from tests.servers import ROOT

README = (ROOT / "README.md").read_text()


def test_every_flag_is_in_the_config_table_with_its_env_var() -> None:
    for option in OPTIONS:
        assert re.search(rf"\| `{option.flag}` \| `{option.env}` \|", README), option.flag


def test_every_metric_is_in_the_metrics_table() -> None:
    registry = CollectorRegistry()
    Metrics(registry, StatusStore(10), entity_limit=10)
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"| `{name}` |" in README, name


def test_readme_gives_the_two_commands() -> None:
    assert "make run" in README
    assert "make test" in README
