"""The README's tables stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.config import OPTIONS, BackendKind, Settings, shown_default
from service.web.app import create_app
from tests.servers import ROOT

README = (ROOT / "README.md").read_text()


def test_every_flag_is_in_the_config_table_with_its_env_var() -> None:
    for option in OPTIONS:
        assert re.search(rf"\| `{option.flag}` \| `{option.env}` \|", README), option.flag


def test_the_config_table_shows_the_defaults_that_serve_help_shows() -> None:
    for option in OPTIONS:
        row = re.search(rf"\| `{option.flag}` \| `{option.env}` \| ([^|]+) \|", README)
        assert row is not None, option.flag
        assert row.group(1).strip("` ") == shown_default(option), option.flag


def exported(settings: Settings) -> set[str]:
    registry = CollectorRegistry()
    create_app(settings, registry=registry)  # core and storage metrics; nothing starts
    return {family.name + ("_total" if family.type == "counter" else "")
            for family in registry.collect()}


def test_every_metric_is_in_the_metrics_table_marked_with_its_backend(tmp_path: Path) -> None:
    local = exported(Settings(data_dir=str(tmp_path)))
    redis = exported(Settings(data_dir=str(tmp_path), backend=BackendKind.REDIS))
    for name in local | redis:
        row = re.search(rf"^\| `{name}` \|.*$", README, re.M)
        assert row is not None, name
        for only, backend in ((local - redis, "local"), (redis - local, "redis")):
            if name in only:
                assert f"`--backend {backend}`" in row.group(0), name


def test_readme_gives_the_two_commands() -> None:
    assert "make run" in README
    assert "make test" in README
