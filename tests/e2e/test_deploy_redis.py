"""The Redis-backed deployment files: deploy/kubernetes/redis/ and compose's `redis` profile.

Parsed with PyYAML and checked for the properties that matter (replicas, disruption
budget, anti-affinity, probes, the Redis backend, no secret in any file); validated
against the Kubernetes schemas by `kubernetes-validate` when it is on PATH
(`pip install kubernetes-validate`), skipped otherwise. The shell scripts in the
try-it Redis manifest are syntax-checked with `sh -n`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings
from service.redis_url import SENTINEL_SCHEMES
from service.storage.redis.connection import parse
from tests.servers import EXECUTABLE, ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes" / "redis"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
GRACEFUL_TIMEOUT = Settings().graceful_timeout
SECRET_NAMES = re.compile(r"PASSWORD|TOKEN|SECRET|AUTH", re.IGNORECASE)

Doc = dict[str, Any]


def _documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _all() -> list[Doc]:
    return [doc for path in MANIFESTS for doc in _documents(path)]


def _one(kind: str, name: str) -> Doc:
    (found,) = [doc for doc in _all()
                if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def _container(workload: Doc) -> Doc:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def _option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_manifests_are_there() -> None:
    assert {path.name for path in MANIFESTS} == {
        "deployment.yaml", "service.yaml", "redis-sentinel.yaml"}
    assert (KUBERNETES / "README.md").is_file()


def test_deployment_runs_several_replicas_of_the_redis_backend() -> None:
    deployment = _one("Deployment", "process-status")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod_labels = spec["template"]["metadata"]["labels"]
    assert _selects(spec["selector"]["matchLabels"], pod_labels)
    args = _container(deployment)["args"]
    assert args[0] == "serve"
    assert _option(args, "--backend") == "redis"
    url = _option(args, "--redis-url")
    target = parse(url, None)
    assert url.split("://")[0] in SENTINEL_SCHEMES
    assert len(target.sentinels) == 3
    assert target.password is None, "no password in the URL: it comes from the Secret"
    assert int(_option(args, "--redis-wait-replicas")) >= 1
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > GRACEFUL_TIMEOUT


def test_deployment_flags_exist() -> None:
    help_text = subprocess.run([str(EXECUTABLE), "serve", "--help"], capture_output=True,
                               text=True, timeout=60, check=True).stdout
    args = _container(_one("Deployment", "process-status"))["args"]
    for flag in [arg for arg in args if arg.startswith("--")]:
        assert flag in help_text, flag


def test_disruption_budget_selects_the_deployment_pods() -> None:
    deployment = _one("Deployment", "process-status")
    budget = _one("PodDisruptionBudget", "process-status")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == \
        deployment["spec"]["selector"]["matchLabels"]
    assert _selects(budget["spec"]["selector"]["matchLabels"],
                    deployment["spec"]["template"]["metadata"]["labels"])
    assert deployment["spec"]["replicas"] > budget["spec"]["minAvailable"]


def test_replicas_prefer_different_nodes() -> None:
    deployment = _one("Deployment", "process-status")
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    term = preferred["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(term["labelSelector"]["matchLabels"],
                    deployment["spec"]["template"]["metadata"]["labels"])
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti


def test_probes_point_at_healthz_and_readyz() -> None:
    container = _container(_one("Deployment", "process-status"))
    ports = {port["name"] for port in container["ports"]}
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ports, probe


def test_services_select_the_deployment_pods_on_its_ports() -> None:
    deployment = _one("Deployment", "process-status")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {port["name"] for port in _container(deployment)["ports"]}
    for name, port in (("process-status", "http"), ("process-status-metrics", "metrics")):
        service = _one("Service", name)
        assert _selects(service["spec"]["selector"], labels), name
        assert [p["targetPort"] for p in service["spec"]["ports"]] == [port], name
        assert port in ports
    # ../servicemonitor.yaml selects the metrics Service by these labels.
    monitor = yaml.safe_load((KUBERNETES.parent / "servicemonitor.yaml").read_text())
    assert _selects(monitor["spec"]["selector"]["matchLabels"],
                    _one("Service", "process-status-metrics")["metadata"]["labels"])


def _env(container: Doc) -> dict[str, Doc]:
    return {item["name"]: item for item in container.get("env", [])}


def test_no_secret_literal_in_any_manifest() -> None:
    assert not [doc for doc in _all() if doc["kind"] == "Secret"]
    env = _env(_container(_one("Deployment", "process-status")))
    password = env["PROCESS_STATUS_REDIS_PASSWORD"]
    assert "value" not in password
    assert password["valueFrom"]["secretKeyRef"] == {"name": "process-status-redis",
                                                     "key": "password"}
    for doc in _all():
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        container = _container(doc)
        for name, item in _env(container).items():
            if SECRET_NAMES.search(name):
                assert "value" not in item, (doc["metadata"]["name"], name)
                assert "secretKeyRef" in item["valueFrom"], (doc["metadata"]["name"], name)
        text = " ".join(container.get("args", []) + container.get("command", []))
        assert not re.search(r"--(requirepass|masterauth|redis-password)\s+[^\s\"$]", text)
        assert not re.search(r"redis(s)?(\+sentinel)?://[^/\s]*:[^@/\s]*@", text)


def test_try_it_redis_has_a_master_two_replicas_and_three_sentinels() -> None:
    text = (KUBERNETES / "redis-sentinel.yaml").read_text()
    assert "FOR TRYING IT, NOT PRODUCTION" in text
    redis = _one("StatefulSet", "process-status-redis")
    sentinel = _one("StatefulSet", "process-status-sentinel")
    assert redis["spec"]["replicas"] == 3  # pod 0 the master, two replicas
    assert sentinel["spec"]["replicas"] == 3
    script = _container(sentinel)["command"][-1]
    assert re.search(r"sentinel monitor mymaster \S+ 6379 2", script)
    # The Deployment asks exactly these Sentinels for exactly this master.
    url = _option(_container(_one("Deployment", "process-status"))["args"], "--redis-url")
    target = parse(url, None)
    assert target.master == "mymaster"
    service = sentinel["spec"]["serviceName"]
    assert {host for host, _ in target.sentinels} == {
        f"{sentinel['metadata']['name']}-{i}.{service}" for i in range(3)}
    assert {port for _, port in target.sentinels} == {26379}


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
@pytest.mark.parametrize("name", ["process-status-redis", "process-status-sentinel"])
def test_try_it_redis_scripts_parse(name: str) -> None:
    command = _container(_one("StatefulSet", name))["command"]
    assert command[:2] == ["sh", "-c"]
    result = subprocess.run(["sh", "-n", "-c", command[2]], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr


# The test extra installs it into the venv; a venv's scripts need not be on PATH.
BESIDE = Path(sys.executable).with_name("kubernetes-validate")
VALIDATE = str(BESIDE) if BESIDE.exists() else shutil.which("kubernetes-validate")


@pytest.mark.skipif(VALIDATE is None,
                    reason="kubernetes-validate missing: pip install -e '.[test]' (make venv)")
def test_kubernetes_validate_accepts_every_manifest() -> None:
    assert VALIDATE is not None
    result = subprocess.run([VALIDATE, "--strict", *map(str, MANIFESTS)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- compose -----------------------------------------------------------------------------


def _compose_services() -> dict[str, Doc]:
    services: dict[str, Doc] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def test_compose_redis_profile_runs_two_replicas_on_one_redis() -> None:
    services = _compose_services()
    profiled = {name: service for name, service in services.items()
                if "redis" in service.get("profiles", [])}
    replicas = {name: service for name, service in profiled.items()
                if service.get("image") == services["process-status"]["image"]}
    assert len(replicas) == 2
    (redis_name,) = set(profiled) - set(replicas)
    assert "redis" in profiled[redis_name]["image"]
    for name, service in replicas.items():
        environment = service["environment"]
        assert environment["PROCESS_STATUS_BACKEND"] == "redis", name
        target = parse(environment["PROCESS_STATUS_REDIS_URL"], None)
        assert target.password is None
        assert target.url.startswith(f"redis://{redis_name}:6379"), name
        assert redis_name in service["depends_on"], name
        assert environment["PROCESS_STATUS_WRITE_TOKENS"].startswith(
            "${PROCESS_STATUS_WRITE_TOKENS:?"), name
        grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
        assert grace is not None
        assert int(grace.group(1)) > GRACEFUL_TIMEOUT
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
            assert not str(port).endswith(":9464"), (name, port)
    # The default `docker compose up` (no profile) is unchanged: no Redis in it.
    assert "profiles" not in services["process-status"]
    assert not profiled[redis_name].get("ports"), "Redis is reachable on the compose network only"
