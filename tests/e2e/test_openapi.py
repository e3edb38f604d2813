"""The spec is valid, and the running service conforms to it under schemathesis."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from tests.servers import ROOT, request, serving

SPEC = ROOT / "openapi.yaml"
TOKEN = "schemathesis-write-token-0123456789"
MAX_WAIT = 0.2


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return spec


def test_spec_is_valid_openapi() -> None:
    validate(load_spec())


def test_spec_documents_every_route() -> None:
    paths = set(load_spec()["paths"])
    assert {"/status", "/status/{entity}", "/status/{entity}/processed", "/gate",
            "/gate/{tail}", "/healthz", "/readyz", "/openapi.yaml"} <= paths


def fuzz_spec(tmp_path: Path) -> Path:
    """The spec with ?wait= capped so generated long-polls stay short."""
    spec = load_spec()
    spec["components"]["parameters"]["Wait"]["schema"]["maximum"] = MAX_WAIT
    path = tmp_path / "openapi.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("selection", "excluded"),
    [
        (["--exclude-tag", "gate"], []),
        # A valid token that is not processed yet is answered 425 by design, and the gate
        # takes every method (it answers for whatever the gateway forwards).
        (["--include-tag", "gate"], ["positive_data_acceptance", "unsupported_method"]),
    ],
    ids=["api", "gate"],
)
def test_service_conforms_to_spec(tmp_path: Path, selection: list[str],
                                  excluded: list[str]) -> None:
    spec = fuzz_spec(tmp_path)
    env = {"PROCESS_STATUS_WRITE_TOKENS": TOKEN}
    with serving(tmp_path / "data", "--max-wait", str(MAX_WAIT), "--gate-wait", "0",
                 "--allow-reset", env=env) as server:
        command = [
            str(Path(sys.executable).with_name("schemathesis")), "run", str(spec),
            "--url", server.url, "--checks", "all", "--max-examples", "30",
            "--header", f"Authorization: Bearer {TOKEN}", "--workers", "1",
            "--phases", "examples,coverage,fuzzing", "--seed", "1",
            "--suppress-health-check", "all", *selection,
        ]
        if excluded:
            command += ["--exclude-checks", ",".join(excluded)]
        hooks = {"SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
        result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                cwd=tmp_path, env={**os.environ, **hooks})
        assert "Internal Server Error" not in server.log()
    assert result.returncode == 0, result.stdout[-6000:]


def test_the_served_spec_is_the_repository_s(tmp_path: Path) -> None:
    with serving(tmp_path / "data") as server:
        status, headers, body = request("GET", server.url + "/openapi.yaml")
    assert status == 200
    assert headers["Content-Type"].startswith("application/yaml")
    assert body == SPEC.read_bytes()


def test_a_built_wheel_carries_the_spec_itself(tmp_path: Path) -> None:
    """service/openapi.yaml is a link to the root file; an installed package needs the bytes."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "--quiet", "-w", str(tmp_path), str(ROOT)], check=True, timeout=300,
                   capture_output=True)
    wheel = next(tmp_path.glob("process_status-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("service/openapi.yaml") == SPEC.read_bytes()
