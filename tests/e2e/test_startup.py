"""Starting the real `serve`: what it says about itself, how it refuses a bad start, TLS."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import trustme

import service
from tests.servers import EXECUTABLE, free_port, request, serving


def run_serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXECUTABLE), "serve", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_version_is_the_package_s() -> None:
    done = subprocess.run([str(EXECUTABLE), "--version"], capture_output=True, text=True,
                          timeout=30, check=True)
    assert done.stdout.strip() == f"process-status {service.__version__}"
    assert service.__version__ != "0+unknown"


def test_the_start_up_line_says_what_runs_and_warns_about_anonymous_writes(
    tmp_path: Path,
) -> None:
    with serving(tmp_path / "data") as server:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        status, _, body = request("GET", server.metrics_url)
    start = next(line for line in lines if "starting" in line["message"])
    assert f"process-status {service.__version__}" in start["message"]
    assert "fsync durability" in start["message"]
    assert f"127.0.0.1:{server.port}" in start["message"]
    assert "writes ANONYMOUS" in start["message"]
    assert any(line["level"] == "warning" and "writes need no token" in line["message"]
               for line in lines)
    assert status == 200
    text = body.decode()
    assert 'process_status_build_info{aiohttp="' in text
    assert f'version="{service.__version__}"' in text
    assert "process_resident_memory_bytes " in text
    assert "process_open_fds " in text


def refused(args: list[str], tmp_path: Path) -> str:
    done = run_serve("--data-dir", str(tmp_path / "data"), *args)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines:
        json.loads(line)  # every line is a JSON log line
    return output


def test_a_taken_api_port_is_named_with_its_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        output = refused(["--bind", f"127.0.0.1:{port}",
                          "--metrics-bind", f"127.0.0.1:{free_port()}"], tmp_path)
    assert f"--bind 127.0.0.1:{port} cannot be bound" in output
    assert "PROCESS_STATUS_BIND" in output


def test_a_taken_metrics_port_is_named_with_its_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        output = refused(["--bind", f"127.0.0.1:{free_port()}",
                          "--metrics-bind", f"127.0.0.1:{port}"], tmp_path)
    assert f"--metrics-bind 127.0.0.1:{port} cannot be bound" in output


def test_a_data_dir_that_is_a_file_is_named_with_its_flag(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    output = refused(["--bind", f"127.0.0.1:{free_port()}",
                      "--metrics-bind", f"127.0.0.1:{free_port()}"], tmp_path)
    assert "--data-dir" in output
    assert "is not a directory" in output


def test_tls_serves_https_without_naming_versions(tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    authority.configure_trust(context)
    data = tmp_path / "data"
    with serving(data, "--tls-cert", str(cert), "--tls-key", str(key), tls=context) as server:
        url = f"https://127.0.0.1:{server.port}/healthz"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Server"] == "process-status"
        # Plain HTTP on the TLS port gets no answer that a client could take for one.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain:
            plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not plain.recv(64).startswith(b"HTTP/1.1 200")


def test_half_a_tls_configuration_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    done = run_serve("--data-dir", str(tmp_path / "data"), "--tls-cert", str(cert))
    assert done.returncode == 2
    assert "--tls-cert and --tls-key go together" in done.stderr
