"""The README and docs/ stay true to the code: the two commands, the config table (in
docs/configuration.md), the metrics table (in docs/operations.md), and links that lead
somewhere."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.config import OPTIONS, BackendKind, Settings, shown_default
from service.web.app import create_app
from tests.servers import ROOT

README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def test_every_flag_is_in_the_config_table_with_its_env_var() -> None:
    for option in OPTIONS:
        assert re.search(rf"\| `{option.flag}` \| `{option.env}` \|", CONFIGURATION), option.flag


def test_the_config_table_shows_the_defaults_that_serve_help_shows() -> None:
    for option in OPTIONS:
        row = re.search(rf"\| `{option.flag}` \| `{option.env}` \| ([^|]+) \|", CONFIGURATION)
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
        row = re.search(rf"^\| `{name}` \|.*$", OPERATIONS, re.M)
        assert row is not None, name
        for only, backend in ((local - redis, "local"), (redis - local, "redis")):
            if name in only:
                assert f"`--backend {backend}`" in row.group(0), name


def test_readme_gives_the_two_commands() -> None:
    assert "make run" in README
    assert "make test" in README


def test_the_readme_stays_a_front_door() -> None:
    assert len(README.splitlines()) <= 200, "move the detail into docs/"


def test_every_relative_link_in_the_readme_and_docs_leads_somewhere() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "deploy").glob("**/README.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to {target}: not found"


def test_the_benchmark_goals_table_names_what_make_bench_measures() -> None:
    """docs/benchmarks.md's goals table lists every figure bench/goals.py prints, so the
    published table and `make bench` cannot drift apart (the numbers are the run's)."""
    spec = importlib.util.spec_from_file_location("bench_goals", ROOT / "bench" / "goals.py")
    assert spec is not None
    assert spec.loader is not None
    goals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goals)
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    table = text[text.index("## The goals"):text.index("### What bounds")]
    missing = [label for label in goals.FIGURES.values() if f"| {label} |" not in table]
    assert missing == [], f"docs/benchmarks.md's goals table lacks {missing}"
