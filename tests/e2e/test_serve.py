"""`process-status serve` as a real subprocess: ports, signals, restart, refusals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

from tests.servers import (
    EXECUTABLE,
    ROOT,
    ServeProcess,
    free_port,
    put,
    request,
    serving,
    start_serve,
)

TS = 1422057007123000



def test_api_and_metrics_ports_answer(tmp_path: Path) -> None:
    with serving(tmp_path / "data") as server:
        assert put(server.url, "posts", TS) == 200
        status, _, body = request("GET", f"{server.url}/status/posts/processed?ts={TS}")
        assert status == 200
        assert orjson.loads(body)["processed"] is True
        status, _, body = request("GET", server.metrics_url)
        text = body.decode()
        assert status == 200
        assert 'process_status_http_requests_total{method="PUT",route="/status/{entity}",' \
               'status="200"} 1.0' in text
        assert "process_status_entities 1.0" in text
        assert 'process_status_entity_last_processed_timestamp{entity="posts"} 1.422057007123e+15' \
            in text
        # The loop-lag watcher is running (it wakes every 100 ms).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            scrape = request("GET", server.metrics_url)[2].decode()
            lag = re.search(r"^process_status_event_loop_lag_seconds_count (\S+)$", scrape, re.M)
            assert lag is not None
            if float(lag.group(1)) >= 1:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the loop-lag histogram never counted a wake-up")
        # Metrics are not on the API port.
        assert request("GET", f"{server.url}/metrics")[0] == 404
        # One JSON object per line on stderr.
        for line in server.log().splitlines():
            assert isinstance(orjson.loads(line), dict)


def test_sigterm_writes_final_snapshot_and_restart_restores(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data, "--durability", "snapshot", "--snapshot-interval", "3600") as server:
        assert put(server.url, "posts", TS) == 200
        assert put(server.url, "comments", 7) == 200
        assert not (data / "snapshot.pss").exists()  # nothing periodic yet
        assert server.stop(signal.SIGTERM) == 0
        assert "snapshot written: 2 entities" in server.log()
    assert (data / "snapshot.pss").exists()
    with serving(data, "--durability", "snapshot") as server:
        status, _, body = request("GET", f"{server.url}/status/posts")
        assert status == 200
        assert orjson.loads(body)["timestamp"] == TS
        assert request("GET", f"{server.url}/status/comments")[0] == 200


def test_sigint_is_graceful_too(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data, "--durability", "snapshot", "--snapshot-interval", "3600") as server:
        assert put(server.url, "posts", 5) == 200
        os.killpg(server.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        server.process.wait(60)
    with serving(data, "--durability", "snapshot") as server:
        assert request("GET", f"{server.url}/status/posts")[0] == 200


def test_corrupt_snapshot_refuses_to_start_naming_the_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data, "--durability", "snapshot") as server:
        assert put(server.url, "posts", TS) == 200
        server.stop()
    snapshot = data / "snapshot.pss"
    raw = bytearray(snapshot.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(raw))
    server = start_serve(data, "--durability", "snapshot", wait=False)
    try:
        code = server.process.wait(60)
    finally:
        server.kill_all()
    assert code != 0
    log = server.log()
    assert "cannot start" in log
    assert str(snapshot) in log
    assert "offset" in log


def test_non_loopback_without_token_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(EXECUTABLE), "serve", "--bind", f"0.0.0.0:{free_port()}",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30, env=_clean_env(),
    )
    assert result.returncode == 2
    assert "PROCESS_STATUS_WRITE_TOKENS" in result.stderr
    assert "--allow-anonymous-writes" in result.stderr


def test_bad_flag_values_exit_2_naming_the_fix(tmp_path: Path) -> None:
    for args, expected in (
        (["--max-batch", "0"], "--max-batch"),
        (["--bind", "localhost"], "HOST:PORT"),
        (["--durability", "sometimes"], "fsync, batch, snapshot"),
        (["--gate-status", "404"], "425"),
        # What is accepted, never Python's own words ("could not convert string to float").
        (["--redis-wait-timeout", "5min"], "seconds (0.1, 0.1s) or milliseconds (100ms)"),
        (["--retry-after", "1.5"], "must be a whole number >= 0"),
        (["--max-wait", "abc"], "must be a number of seconds >= 0, e.g. 0.1"),
        (["--workers", "two"], "must be a whole number >= 0"),
        # A URL the backend could not use is refused at start, naming the flag (it was a
        # traceback in every worker).
        (["--backend", "redis", "--redis-url", "redis:///0"], "--redis-url"),
        (["--redis-url", "redis://h:notaport/0"], "accepted forms"),
    ):
        result = subprocess.run([str(EXECUTABLE), "serve", *args], capture_output=True,
                                text=True, timeout=30, env=_clean_env())
        assert result.returncode == 2, args
        assert expected in result.stderr, result.stderr
        assert "convert" not in result.stderr, result.stderr
        assert "literal" not in result.stderr, result.stderr
    env = _clean_env() | {"PROCESS_STATUS_SNAPSHOT_INTERVAL": "-5"}
    result = subprocess.run([str(EXECUTABLE), "serve"], capture_output=True, text=True,
                            timeout=30, env=env)
    assert result.returncode == 2
    assert "PROCESS_STATUS_SNAPSHOT_INTERVAL" in result.stderr


def test_help_lists_flags_with_env_names() -> None:
    result = subprocess.run([str(EXECUTABLE), "--help"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    for name in ("--bind", "PROCESS_STATUS_BIND", "--durability", "PROCESS_STATUS_WRITE_TOKENS"):
        assert name in result.stdout
    module = subprocess.run([sys.executable, "-m", "service", "serve", "--help"],
                            capture_output=True, text=True, timeout=30)
    assert "PROCESS_STATUS_MAX_ENTITIES" in module.stdout


def test_gunicorn_by_hand_with_two_workers_refuses(tmp_path: Path) -> None:
    env = _clean_env() | {"PROCESS_STATUS_DATA_DIR": str(tmp_path / "data")}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    process = subprocess.Popen(
        [str(gunicorn), "service.web.server:app_factory", "-k", "aiohttp.GunicornUVLoopWebWorker",
         "-w", "2", "-b", f"127.0.0.1:{free_port()}", "--no-control-socket"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0
    assert b"exactly one worker" in output


def test_second_instance_on_the_same_data_dir_refuses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data) as first:
        second = start_serve(data, wait=False)
        try:
            assert second.process.wait(60) != 0
        finally:
            second.kill_all()
        assert f"in use by pid {first.process.pid} (stop it with kill -TERM" in second.log()
        assert put(first.url, "posts", 1) == 200  # the first one is unharmed


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PROCESS_STATUS_")}


def test_sigterm_with_a_parked_long_poll_answers_it_and_snapshots(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data, "--durability", "snapshot", "--snapshot-interval", "3600") as server:
        assert put(server.url, "posts", 5) == 200
        answers: list[tuple[int, bytes]] = []
        poll = threading.Thread(target=lambda: answers.append(request(
            "GET", f"{server.url}/status/posts/processed?ts=9&wait=30", timeout=60)[::2]))
        poll.start()
        wait_for_metric(server, "process_status_waiters", 1)
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 15  # far inside gunicorn's graceful timeout
        poll.join(10)
        assert answers
        assert answers[0][0] == 200
        assert orjson.loads(answers[0][1])["processed"] is False
    with serving(data, "--durability", "snapshot") as server:
        assert orjson.loads(request("GET", f"{server.url}/status/posts")[2])["timestamp"] == 5


def test_snapshot_mode_snapshots_periodically_and_only_when_changed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data, "--durability", "snapshot", "--snapshot-interval", "0.2") as server:
        assert put(server.url, "posts", 5) == 200
        first = wait_for_metric(server, "process_status_snapshot_last_success_timestamp_seconds",
                                1)
        time.sleep(0.6)  # three more intervals with nothing changed
        assert metric(server, "process_status_snapshot_last_success_timestamp_seconds") == first
        assert put(server.url, "posts", 6) == 200
        wait_for_metric(server, "process_status_snapshot_last_success_timestamp_seconds",
                        first + 1e-6)
        server.kill_all()  # no final snapshot: only the periodic one can have kept it
    with serving(data, "--durability", "snapshot") as server:
        assert orjson.loads(request("GET", f"{server.url}/status/posts")[2])["timestamp"] == 6


def test_token_files_with_comments_and_blank_lines(tmp_path: Path) -> None:
    token = "f" * 40
    tokens = tmp_path / "write-tokens"
    tokens.write_text(f"# rotated 2026-11-26\n\n{token}\n")
    with serving(tmp_path / "data", "--write-tokens-file", str(tokens)) as server:
        body = orjson.dumps({"timestamp": 1})
        assert request("PUT", f"{server.url}/status/posts", body)[0] == 401
        authorized = {"Authorization": f"Bearer {token}"}
        assert request("PUT", f"{server.url}/status/posts", body, authorized)[0] == 200
    missing = subprocess.run(
        [str(EXECUTABLE), "serve", "--write-tokens-file", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=30, env=_clean_env())
    assert missing.returncode == 2
    assert "--write-tokens-file" in missing.stderr
    weak = subprocess.run([str(EXECUTABLE), "serve"], capture_output=True, text=True,
                          timeout=30, env=_clean_env() | {"PROCESS_STATUS_WRITE_TOKENS": "abc"})
    assert weak.returncode == 2
    assert "at least 16 characters" in weak.stderr


def test_allow_anonymous_writes_lets_a_non_loopback_bind_start(tmp_path: Path) -> None:
    # 0.0.0.0 is the wildcard, not a target: the test talks to it over 127.0.0.1 only.
    with serving(tmp_path / "data", "--allow-anonymous-writes", bind_host="0.0.0.0") as server:
        assert server.args[server.args.index("--bind") + 1].startswith("0.0.0.0:")
        body = orjson.dumps({"timestamp": 1})
        assert request("PUT", f"{server.url}/status/posts", body)[0] == 200


def metric(server: ServeProcess, name: str) -> float:
    text = request("GET", server.metrics_url)[2].decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for_metric(server: ServeProcess, name: str, at_least: float) -> float:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        value = metric(server, name)
        if value >= at_least:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{name} never reached {at_least}")


def test_sighup_restarts_the_worker_in_place_keeping_state(tmp_path: Path) -> None:
    with serving(tmp_path / "data") as server:
        assert put(server.url, "posts", 5) == 200
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "state restored: 1 entities" not in server.log():
            assert time.monotonic() < deadline, server.log()
            assert server.process.poll() is None, server.log()  # the master stays up
            time.sleep(0.05)
        server.wait_ready()
        status, _, body = request("GET", f"{server.url}/status/posts")
        assert status == 200
        assert orjson.loads(body)["timestamp"] == 5
        assert put(server.url, "posts", 6) == 200


def test_access_log_is_off_by_default_and_json_when_on(tmp_path: Path) -> None:
    def access_lines(server: ServeProcess) -> list[dict[str, object]]:
        lines = [orjson.loads(line) for line in server.log().splitlines()]
        return [line for line in lines if line.get("logger") == "aiohttp.access"]

    with serving(tmp_path / "quiet") as server:
        assert request("GET", f"{server.url}/healthz")[0] == 200
        server.stop()
        assert access_lines(server) == []
    with serving(tmp_path / "loud", "--access-log") as server:
        assert request("GET", f"{server.url}/healthz")[0] == 200
        server.stop()
        entries = [e for e in access_lines(server) if e.get("first_request_line")
                   == "GET /healthz HTTP/1.1"]
        assert len(entries) == 1
        assert entries[0]["response_status"] == 200
