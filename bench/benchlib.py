"""Shared helpers for the benchmarks: servers in subprocesses, wrk, /proc readings.

Not a test helper: nothing here asserts. Every spawned process runs in its own
session and is stopped by its PID (SIGTERM to the process, SIGKILL to its group
if it does not exit). Free ports and Redis processes come from the tests' harness
(tests/servers.py, tests/redis_servers.py): one harness, imported by both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # the tests' harness, below
    sys.path.insert(0, str(ROOT))

from tests.servers import free_port as free_port  # noqa: E402 -- re-exported

BIN = Path(sys.executable).parent
PROCESS_STATUS = BIN / "process-status"
GUNICORN = BIN / "gunicorn"
WORKER_CLASS = "aiohttp.GunicornUVLoopWebWorker"


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log()}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + path, timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.log()}")

    def worker_pid(self) -> int:
        """The gunicorn worker: the (single) child of the master."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = child_pids(self.process.pid)
            if children:
                return children[0]
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no worker process under pid {self.process.pid}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def _spawn(name: str, command: Sequence[str], log_dir: Path, port: int) -> Server:
    log_path = log_dir / f"{name}.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROCESS_STATUS_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, env=environment,
            start_new_session=True, cwd=ROOT,
        )
    return Server(name, port, process, log_path)


def serve_command(port: int, metrics_port: int, data_dir: Path, *args: str) -> list[str]:
    """The `serve` command line every bench uses: loopback ports, quiet log."""
    return [
        str(PROCESS_STATUS), "serve",
        "--bind", f"127.0.0.1:{port}",
        "--metrics-bind", f"127.0.0.1:{metrics_port}",
        "--data-dir", str(data_dir),
        "--log-level", "warning",
        *args,
    ]  # fmt: skip


def start_service(
    name: str, data_dir: Path, log_dir: Path, *args: str, ready_timeout: float = 60.0
) -> Server:
    """`process-status serve` on free loopback ports with its own data dir."""
    port, metrics_port = free_port(), free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = _spawn(name, serve_command(port, metrics_port, data_dir, *args), log_dir, port)
    server.metrics_port = metrics_port
    try:
        server.wait_ready("/readyz", ready_timeout)
    except BaseException:
        server.stop(5)
        raise
    return server


def start_baseline(log_dir: Path) -> Server:
    """The bare aiohttp hello-world under gunicorn, same worker class, 1 worker, no access log."""
    port = free_port()
    command = [
        str(GUNICORN), "baseline_app:create_app",
        "--pythonpath", str(BENCH),
        "--bind", f"127.0.0.1:{port}",
        "--worker-class", WORKER_CLASS,
        "--workers", "1",
        "--keep-alive", "75",
        "--log-level", "warning",
        "--no-control-socket",
    ]
    server = _spawn("baseline", command, log_dir, port)
    try:
        server.wait_ready("/")
    except BaseException:
        server.stop(5)
        raise
    return server


def start_etcd(etcd: str, data_dir: Path, log_dir: Path, ready_timeout: float = 30.0) -> Server:
    """One etcd member on free loopback ports (client and peer) with its own data dir.

    Its defaults are kept (WAL fsync on every commit, linearizable reads): what an
    operator gets from the package. Ready once `/health` answers 200.
    """
    port, peer_port = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
    command = [
        etcd, "--name", "bench",
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"bench={peer_url}",
        "--logger", "zap", "--log-level", "warn",
    ]
    server = _spawn("etcd", command, log_dir, port)
    try:
        server.wait_ready("/health", ready_timeout)
    except BaseException:
        server.stop(5)
        raise
    return server


@contextlib.contextmanager
def stopping(servers: list[Server]) -> Iterator[list[Server]]:
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> int:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# -- /proc ---------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def tree_pids(pid: int) -> list[int]:
    """The process and its descendants (gunicorn: the master and its workers)."""
    found = [pid]
    for child in child_pids(pid):
        found += tree_pids(child)
    return found


def proc_status_kb(pid: int | str, field: str = "VmRSS") -> int:
    """A `kB` field of /proc/<pid>/status ("self" for this process)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def mb(kilobytes: float) -> str:
    return f"{kilobytes / 1024:.1f} MB"


# -- wrk -----------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _millis(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int
    """Non-2xx/3xx responses plus socket errors."""


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", output, re.MULTILINE)
    total = re.search(r"(\d+) requests in", output)
    if not (rps and p50 and p99 and latency and total):
        raise ValueError(f"unexpected wrk output:\n{output}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(value) for value in sockets.groups())
    return WrkResult(
        float(rps.group(1)), _millis(p50.group(1)), _millis(p99.group(1)),
        _millis(latency.group(1)), int(total.group(1)), errors,
    )


def wrk_start(
    url: str,
    duration: float,
    *,
    connections: int = 64,
    threads: int = 1,
    script: Path | None = None,
    timeout: float = 10.0,
) -> subprocess.Popen[str]:
    """Start wrk in the background; pass the process to `wrk_finish`."""
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    command = [
        binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
        f"--timeout={timeout:g}s", "--latency",
    ]
    if script is not None:
        command += ["-s", str(script)]
    return subprocess.Popen(
        [*command, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wrk_finish(process: subprocess.Popen[str], timeout: float = 120.0) -> WrkResult:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {stderr}{stdout}")
    return parse_wrk(stdout)


def wrk(
    url: str,
    duration: float,
    *,
    connections: int = 64,
    threads: int = 1,
    script: Path | None = None,
    timeout: float = 10.0,
) -> WrkResult:
    process = wrk_start(url, duration, connections=connections, threads=threads,
                        script=script, timeout=timeout)
    return wrk_finish(process, duration + 60)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[0]


# -- CPU accounting (to tell a noisy run) ---------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float:
    """CPU seconds spent busy on all cores since boot (excluding idle and iowait)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / _TICK


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


GOALS_ENV = "PROCESS_STATUS_BENCH_GOALS"
"""The file `make bench` collects every script's goal figures in, for bench/goals.py."""


def record_goal(key: str, measured: str, goal: str, met: bool, note: str = "") -> None:
    """Note one goal's figure (a line of JSON) when run under `make bench`; else nothing.

    `key` names the figure in bench/goals.py's table; `measured` and `goal` are as
    printed (a ratio or a latency, with its unit); `note` says what bounds a miss."""
    path = os.environ.get(GOALS_ENV)
    if not path:
        return
    line = {"key": key, "measured": measured, "goal": goal, "met": met, "note": note,
            "script": Path(sys.argv[0]).name, "load": loadavg()}
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(line) + "\n")
