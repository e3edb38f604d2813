"""The deployment files: PrometheusRule and ServiceMonitor (Kubernetes), the systemd unit,
compose. Real tools where they exist here (`systemd-analyze verify` and `security`,
`promtool check config`); docker is not available, so compose is checked as YAML."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings
from tests.servers import EXECUTABLE, ROOT

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
UNIT = DEPLOY / "systemd" / "process-status.service"
COMPOSE_DIR = DEPLOY / "compose"
JOB = "process-status"
GRACEFUL_TIMEOUT = Settings().graceful_timeout

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
PROMTOOL = shutil.which("promtool")


# ---- Kubernetes ------------------------------------------------------------------------


def _render_prometheusrule() -> str:
    spec = importlib.util.spec_from_file_location(
        "render_prometheusrule", DEPLOY / "prometheus" / "render_prometheusrule.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered: str = module.render()
    return rendered


def test_prometheusrule_wraps_exactly_the_alert_rules() -> None:
    path = DEPLOY / "kubernetes" / "prometheusrule.yaml"
    rule = yaml.safe_load(path.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    assert path.read_text() == _render_prometheusrule(), (
        "prometheusrule.yaml is stale: python deploy/prometheus/render_prometheusrule.py")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_servicemonitor_selects_the_metrics_service_only() -> None:
    monitor = yaml.safe_load((DEPLOY / "kubernetes" / "servicemonitor.yaml").read_text())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    services = [doc for doc in _documents(DEPLOY / "kubernetes" / "service.yaml")
                if doc["kind"] == "Service"]
    selected = [s for s in services if wanted.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["process-status-metrics"]
    port_names = {port["name"] for port in selected[0]["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    # The scrape job is named from this label of the Service: the alerts select it.
    assert selected[0]["metadata"]["labels"][monitor["spec"]["jobLabel"]] == JOB
    assert f'job="{JOB}"' in ALERTS.read_text()


# ---- systemd ---------------------------------------------------------------------------


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


def test_systemd_unit_is_hardened_and_outlasts_the_graceful_timeout() -> None:
    unit = _unit_settings()
    one = {key: values[-1] for key, values in unit.items()}
    assert one["DynamicUser"] == "yes"
    assert one["StateDirectory"] == "process-status"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices",
                "ProtectKernelTunables", "ProtectControlGroups", "RestrictNamespaces"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in unit["SystemCallFilter"]
    assert one["CapabilityBoundingSet"] == ""
    assert "--data-dir /var/lib/process-status" in one["ExecStart"]
    assert one["ExecStart"].split()[1] == "serve"
    assert one["KillMode"] == "mixed"
    assert float(one["TimeoutStopSec"]) > GRACEFUL_TIMEOUT


def test_systemd_unit_flags_exist() -> None:
    """Every --flag on ExecStart is one `serve` knows."""
    help_text = subprocess.run([str(EXECUTABLE), "serve", "--help"], capture_output=True,
                               text=True, timeout=60, check=True).stdout
    for flag in re.findall(r"--[a-z-]+", _unit_settings()["ExecStart"][-1]):
        assert flag in help_text, flag


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's executable (verify checks that
    the binary exists; /opt/process-status is where the unit's install steps put it)."""
    text = UNIT.read_text().replace("/opt/process-status/bin/process-status", str(EXECUTABLE))
    assert str(EXECUTABLE) in text
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


@pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                    reason="systemd-analyze not found: install the Debian package `systemd`")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no",
                             str(_unit_for_this_machine(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys or unparsable values, but says so: no output at all.
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                    reason="systemd-analyze not found: install the Debian package `systemd`")
def test_systemd_analyze_security_rates_it_ok(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager",
                             str(_unit_for_this_machine(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip(f"this systemd-analyze has no --offline: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    # systemd's scale: 0-10, "OK" below 2.
    assert float(match.group(1)) < 2.0, result.stdout
    assert match.group(2) == "OK"


# ---- compose ---------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    return loaded


def _published(service: dict[str, Any]) -> list[str]:
    return [str(port) for port in service.get("ports", [])]


def test_compose_publishes_the_api_on_loopback_and_metrics_nowhere() -> None:
    services = _compose()["services"]
    app = services["process-status"]
    assert (COMPOSE_DIR / app["build"]["context"] / app["build"]["dockerfile"]).resolve() \
        == ROOT / "Dockerfile"
    assert _published(app) == ["127.0.0.1:8080:8080"]
    for name, service in services.items():
        for port in _published(service):
            # host_ip:host_port:container_port, never a bare port (0.0.0.0 on the host).
            assert port.startswith("127.0.0.1:"), (name, port)
            assert not port.endswith(":9464"), (name, port)
    assert "9464" in [str(port) for port in app["expose"]]
    environment = app["environment"]
    assert environment["PROCESS_STATUS_METRICS_BIND"] == "0.0.0.0:9464"  # compose network
    assert environment["PROCESS_STATUS_WRITE_TOKENS"].startswith("${PROCESS_STATUS_WRITE_TOKENS:?")
    grace = re.fullmatch(r"(\d+)s", app["stop_grace_period"])
    assert grace is not None
    assert int(grace.group(1)) > GRACEFUL_TIMEOUT


def test_compose_prometheus_scrapes_the_service_with_the_alert_rules() -> None:
    prometheus = _compose()["services"]["prometheus"]
    mounts = {}  # source -> path in the container
    for volume in prometheus["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[source] = target
    assert (COMPOSE_DIR / mounts["../prometheus/alerts.yml"]).name == "alerts.yml"
    config_mount = mounts["./prometheus.yml"]
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    assert f"--config.file={config_mount}" in prometheus["command"]
    assert config["rule_files"] == [mounts["../prometheus/alerts.yml"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for group in jobs[JOB]["static_configs"] for t in group["targets"]]
    assert targets == ["process-status:9464"]
    assert "process-status-readyz" in jobs  # ProcessStatusNotReady's probe_success


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not found: install the Debian package "
                    "`prometheus` (apt-get install prometheus, or .ci/install-services.sh)")
def test_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    text = (COMPOSE_DIR / "prometheus.yml").read_text()
    rewritten = text.replace("/etc/prometheus/alerts.yml", str(ALERTS))
    assert rewritten != text
    config = tmp_path / "prometheus.yml"
    config.write_text(rewritten)
    result = subprocess.run([PROMTOOL, "check", "config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
