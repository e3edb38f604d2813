"""The alert rules and the Grafana dashboard, proven with the real Prometheus tools.

- `promtool check rules` and `promtool test rules` on deploy/prometheus/.
- A real Prometheus (loopback, free port, 1 s scrapes, the alert rules loaded) scrapes a
  real `process-status serve` on the local backend and a real two-worker replica on a
  real redis-server, while the test drives writes, processed? checks and gate calls. Then
  every panel query of deploy/grafana/process-status.json and every alert expression goes
  through Prometheus's HTTP API: each must parse, each panel query must
  return data, and every loaded rule must evaluate without error.

Needs the Debian package `prometheus` (/usr/bin/prometheus and /usr/bin/promtool;
`.ci/install-services.sh` installs it); skipped with that message when missing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.redis_servers import redis_running
from tests.servers import ROOT, ServeProcess, free_port, put, request, serving
from tests.support import until

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "process-status.json"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
INSTALL = ("install the Debian package `prometheus` "
           "(apt-get install prometheus, or .ci/install-services.sh)")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=f"promtool not found: {INSTALL}")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason=f"prometheus not found: {INSTALL}")

JOB = "process-status"
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "20s"
"""$__rate_interval stand-in: covers many 1 s scrapes, all of them after the traffic began."""

GRAFANA_VARIABLES = {
    "job": JOB,
    "instance": ".*",
    "__rate_interval": RATE_INTERVAL,
    "__interval": "1s",
    "__range": "1m",
    "__range_s": "60",
    "__range_ms": "60000",
    "__interval_ms": "1000",
}
"""How each Grafana variable is substituted: the dashboard's job, All instances (the
instance variable's allValue), and windows that fit a 1 s scrape interval."""




# ---- promtool ------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "test", "rules", ALERTS_TEST.name], cwd=PROMETHEUS_DIR,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    names = {rule["alert"] for rule in _alert_rules()}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a not-firing case"
    assert firing | quiet <= names, "tests name alerts that do not exist"


def test_every_alert_has_a_runbook_summary_and_severity() -> None:
    for rule in _alert_rules():
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), rule["alert"]
        runbook = annotations.get("runbook", "")
        assert runbook, rule["alert"]
        assert "\n" not in runbook, f"{rule['alert']}: runbook must be one line"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, rule["alert"]


# ---- the dashboard, statically --------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.panel} [{self.ref}]"


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _panel_queries() -> list[PanelQuery]:
    return [
        PanelQuery(panel["title"], target["refId"], target["expr"])
        for panel in _panels(_dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


PANEL_QUERIES = _panel_queries()
ALERT_EXPRESSIONS = [(rule["alert"], rule["expr"]) for rule in _alert_rules()]


def substitute(expr: str) -> str:
    """Replace Grafana's `$var`, `${var}` and `[[var]]` with GRAFANA_VARIABLES."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in GRAFANA_VARIABLES:
            raise AssertionError(f"no stand-in for Grafana variable {name!r} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            # Every query is scoped by the dashboard's variables.
            assert "$job" in target["expr"], panel["title"]
            assert "$instance" in target["expr"], panel["title"]
    # The list of panels, each present.
    titles = " | ".join(panel["title"].lower() for panel in panels)
    for wanted in ("request rate by route", "latency", "decisions by result", "425 ratio",
                   "position per entity", "lag per entity", "waiters", "journal fsync latency",
                   "journal batch size", "snapshot age", "snapshot duration", "event-loop lag",
                   "resident memory", "redis write calls", "redis follower",
                   "redis resyncs, losses and write-backs"):
        assert wanted in titles, wanted


def test_substitute_leaves_no_variable() -> None:
    for query in PANEL_QUERIES:
        assert "$" not in substitute(query.expr), query.id


# ---- a real Prometheus scraping a real serve -------------------------------------------


@dataclass
class Live:
    server: ServeProcess
    prometheus_url: str

    def query(self, expr: str) -> tuple[int, dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, _, body = request("GET", url, timeout=10)
        answer: dict[str, Any] = orjson.loads(body)
        return status, answer


def _drive_traffic(url: str, round_number: int) -> None:
    """One round of everything the dashboard shows: writes, checks, gate calls, errors."""
    base = 1_422_057_007_000_000 + round_number * 1_000_000
    assert put(url, "posts", base) == 200
    assert put(url, "comments", base + 500) == 200
    assert put(url, "posts", base - 1) == 200  # stale: updates_total{result="stale"}
    batch = orjson.dumps({"orders": base, "users": base + 1})
    assert request("POST", f"{url}/status", batch, {"Content-Type": "application/json"})[0] == 200
    # processed? from the API: processed, not yet, and a wait that runs out (timeout).
    assert request("GET", f"{url}/status/posts/processed?ts={base}")[0] == 200
    assert request("GET", f"{url}/status/posts/processed?ts={base + 10**9}")[0] == 200
    assert request("GET", f"{url}/status/posts/processed?ts={base + 10**9}&wait=0.05")[0] == 200
    # the gate: processed -> 200, not yet -> 425 (after --gate-wait)
    header = "X-Event-Streamex-Entity-Timestamp"
    assert request("GET", f"{url}/gate", headers={header: f"posts/{base}"})[0] == 200
    assert request("GET", f"{url}/gate", headers={header: f"posts/{base + 10**9}"})[0] == 425
    assert request("GET", f"{url}/status/posts")[0] == 200
    assert request("GET", f"{url}/no/such/route")[0] == 404


def _write_prometheus_config(work: Path, metrics_ports: list[int], dead_port: int) -> Path:
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL,
                   "scrape_timeout": SCRAPE_INTERVAL},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            "job_name": JOB,
            "static_configs": [
                {"targets": [f"127.0.0.1:{port}" for port in metrics_ports]},
                # Nothing listens here: ProcessStatusDown must see it (up == 0).
                {"targets": [f"127.0.0.1:{dead_port}"], "labels": {"role": "dead"}},
            ],
        }],
    }
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def _running_prometheus(work: Path, config: Path) -> Iterator[str]:
    assert PROMETHEUS is not None
    port = free_port()
    log_path = work / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
             "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited {process.returncode}:\n"
                                     + log_path.read_text(errors="replace"))
            with contextlib.suppress(OSError):
                if request("GET", f"{url}/-/ready", timeout=1)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("prometheus not ready in 30 s:\n"
                                     + log_path.read_text(errors="replace"))
            time.sleep(0.1)
        yield url
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if PROMETHEUS is None:
        pytest.skip(f"prometheus not found: {INSTALL}")
    work = tmp_path_factory.mktemp("prometheus")
    # Snapshots every second so the snapshot panels have data within the test; the Redis
    # replica fills the Redis panels and proves the Redis alerts evaluate on its series.
    with serving(work / "data", "--snapshot-interval", "1") as server, \
            redis_running(work / "redis") as redis, \
            serving(work / "replica", "--backend", "redis", "--redis-url", redis.url,
                    "--workers", "2") as replica, \
            _running_prometheus(
                work, _write_prometheus_config(
                    work, [server.metrics_port, replica.metrics_port], free_port())
            ) as prometheus_url:
        live = Live(server, prometheus_url)

        def scraped(expr: str, at_least: float) -> bool:
            status, answer = live.query(expr)
            result = answer.get("data", {}).get("result", [])
            return status == 200 and bool(result) and float(result[0]["value"][1]) >= at_least

        up = f'up{{job="{JOB}", role!="dead"}}'
        until(lambda: scraped(f"count_over_time({up}[1m])", 2), "the first scrapes", 30)
        # Traffic over a few scrape intervals, so rates and quantiles have something to show.
        for round_number in range(8):
            _drive_traffic(server.url, round_number)
            _drive_traffic(replica.url, round_number)
            time.sleep(0.4)
        until(lambda: scraped("process_status_snapshot_last_success_timestamp_seconds", 1),
              "a snapshot", 30)
        until(lambda: scraped('sum(process_status_checks_total{result="timeout"})', 16),
              "a scrape after the traffic", 30)
        until(lambda: scraped("sum(process_status_redis_call_duration_seconds_count)", 8),
              "the Redis replica's calls", 30)
        time.sleep(2.5)  # a couple more scrapes: every rate has two samples after the traffic
        # Rules evaluate every second: wait until each has been evaluated at least once.
        until(lambda: all(not rule.get("lastEvaluation", "0001").startswith("0001")
                          for rule in _loaded_rules(live)), "every rule evaluated", 30)
        yield live


def _loaded_rules(live: Live) -> list[dict[str, Any]]:
    status, _, body = request("GET", f"{live.prometheus_url}/api/v1/rules")
    assert status == 200, body
    groups = orjson.loads(body)["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


@needs_prometheus
@pytest.mark.parametrize("query", PANEL_QUERIES, ids=[q.id for q in PANEL_QUERIES])
def test_panel_query_returns_data(live: Live, query: PanelQuery) -> None:
    expr = substitute(query.expr)
    status, answer = live.query(expr)
    assert status == 200, (expr, answer)
    assert answer["status"] == "success", (expr, answer)
    result = answer["data"]["result"]
    if result:
        # Data, not merely series: at least one finite number (a quantile over no
        # observations, or 0/0, is NaN).
        values = [float(series["value"][1]) for series in result]
        assert any(math.isfinite(v) for v in values), (query.id, expr, result)
        return
    raise AssertionError(f"panel {query.id!r} returned no data: {expr}")


@needs_prometheus
@pytest.mark.parametrize(("alert", "expr"), ALERT_EXPRESSIONS,
                         ids=[name for name, _ in ALERT_EXPRESSIONS])
def test_alert_expression_parses_and_evaluates(live: Live, alert: str, expr: str) -> None:
    status, answer = live.query(expr)
    assert status == 200, (alert, answer)
    assert answer["status"] == "success", (alert, answer)


@needs_prometheus
def test_loaded_rules_evaluate_without_errors(live: Live) -> None:
    rules = {rule["name"]: rule for rule in _loaded_rules(live)}
    assert set(rules) == {name for name, _ in ALERT_EXPRESSIONS}
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))


@needs_prometheus
def test_down_alert_sees_a_dead_target(live: Live) -> None:
    """The scrape job has a second target nobody listens on: ProcessStatusDown is pending
    for it (its `for: 2m` keeps it from firing within a test), not for the live one."""
    until(lambda: any(alert["labels"].get("role") == "dead"
                      for rule in _loaded_rules(live) if rule["name"] == "ProcessStatusDown"
                      for alert in rule.get("alerts", [])), "ProcessStatusDown pending", 15)
    down = next(rule for rule in _loaded_rules(live) if rule["name"] == "ProcessStatusDown")
    instances = {alert["labels"]["instance"] for alert in down["alerts"]}
    assert f"127.0.0.1:{live.server.metrics_port}" not in instances
    assert all(alert["state"] == "pending" for alert in down["alerts"])


@needs_prometheus
def test_decisions_are_what_the_traffic_made(live: Live) -> None:
    """Spot checks that the panels show the traffic, not merely something."""
    _, answer = live.query(f'sum by (result, source) (process_status_checks_total{{job="{JOB}"}})')
    seen = {(r["metric"]["result"], r["metric"]["source"]) for r in answer["data"]["result"]}
    assert {("processed", "api"), ("not_processed", "api"), ("timeout", "api"),
            ("processed", "gate")} <= seen, seen
    assert any(result == "timeout" or result == "not_processed"
               for result, source in seen if source == "gate"), seen
    _, answer = live.query(
        f'process_status_entity_last_processed_timestamp{{job="{JOB}", entity="posts"}}')
    assert float(answer["data"]["result"][0]["value"][1]) == pytest.approx(
        1_422_057_007_000_000 + 7 * 1_000_000)
