"""The gateway read path: what the gate costs a read through nginx (and HAProxy), in one run.

    .venv/bin/python bench/gateway.py                     # nginx and HAProxy (~3 min)
    .venv/bin/python bench/gateway.py --gateways nginx --duration 5 --rounds 1

All on 127.0.0.1: a trivial read model (a second nginx answering `return 200`),
the real `process-status serve`, and the gateway on the committed config from
deploy/gateways/ (placeholders filled in as its README says). For each gateway,
wrk (-t1 -c64) measures, round-robin over --rounds rounds:

* ungated: the same config with the gate taken out (nginx `auth_request off`,
  HAProxy without the Lua action): the baseline every ratio is against;
* no token: reads without X-Event-Streamex-Entity-Timestamp (goal >= 0.95x);
* repeated token: every read carries the same processed token, which the
  gateway's cache answers for the gate's max-age (goal >= 0.80x);
* fresh token: a token never seen before on every read (bench/fresh_token.lua,
  its counter started past every earlier run's), so the gateway asks
  process-status every time: reported, no goal.

"gate calls/read" is process-status's own count of gate decisions
(process_status_checks_total{source="gate"}) per request wrk completed.

Then, what a restart of process-status costs a token read (--restart-entities,
default 1,000,000, in a snapshot built as bench/restore.py does): a client asks
/gate with a processed token every 5 ms while the service gets SIGHUP (the
worker restarts in place), then SIGTERM followed at once by a new `serve` on
the same port and data dir. The gap is the time between the last answer before
and the first 200 after; every token read in it gets the gateway's "down"
answer (or passes, with a fail-open config). Token-less reads do not notice.
"""

from __future__ import annotations

import argparse
import itertools
import os
import pwd
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    BENCH,
    ROOT,
    Server,
    WrkResult,
    _spawn,
    free_port,
    http,
    loadavg,
    record_goal,
    serve_command,
    start_service,
    wrk,
)
from restore import build_snapshot, entity_name

DEPLOY = ROOT / "deploy" / "gateways"
TOKEN_HEADER = "X-Event-Streamex-Entity-Timestamp"
ENTITY = "bench-gate"
RECORDED = 10**15  # every token the bench sends is at or below it: processed
FRESH_SCRIPT = BENCH / "fresh_token.lua"
REPEATED_SCRIPT = BENCH / "repeated_token.lua"

READ_MODEL = 'server { listen 127.0.0.1:%d; location / { return 200 "read model\\n"; } }'


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    gated: bool
    script: Path | None
    goal: float | None


SCENARIOS = (
    Scenario("ungated", "ungated (same config, gate taken out)", False, None, None),
    Scenario("no-token", "(a) no token", True, None, 0.95),
    Scenario("repeated", "(b) a repeated processed token", True, REPEATED_SCRIPT, 0.80),
    Scenario("fresh", "(c) a fresh token per request", True, FRESH_SCRIPT, None),
)


@dataclass
class Measured:
    runs: list[WrkResult] = field(default_factory=list)
    gate_calls: int = 0

    @property
    def rps(self) -> float:
        return statistics.fmean(run.rps for run in self.runs)

    @property
    def p99(self) -> float:
        return statistics.median(run.p99_ms for run in self.runs)

    @property
    def requests(self) -> int:
        return sum(run.requests for run in self.runs)

    @property
    def errors(self) -> int:
        return sum(run.errors for run in self.runs)


# -- processes ---------------------------------------------------------------------


def _nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise SystemExit("nginx is not installed: deploy/gateways/install.sh")
    return found


def _haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise SystemExit("haproxy is not installed: deploy/gateways/install.sh")
    return found


def _wait_listening(server: Server, path: str = "/") -> None:
    """Until anything answers HTTP on the port (the gateway's own status does not matter)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log()}")
        try:
            http("GET", server.url + path, timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{server.name} does not answer:\n{server.log()}")


def _run_nginx(name: str, work: Path, body: str) -> Server:
    (work / "conf.d").mkdir(parents=True)
    (work / "conf.d" / f"{name}.conf").write_text(body)
    main = (DEPLOY / "nginx" / "standalone.conf").read_text()
    main = main.replace("${PREFIX}", str(work)).replace(
        "${NGINX_USER}", pwd.getpwuid(os.geteuid()).pw_name)
    (work / "nginx.conf").write_text(main)
    port = int(re.findall(r"listen 127\.0\.0\.1:(\d+)", body)[0])
    argv = [_nginx_binary(), "-e", "stderr", "-p", str(work), "-c", str(work / "nginx.conf")]
    server = _spawn(name, argv, work, port)
    _wait_listening(server)
    return server


def read_model(work: Path) -> Server:
    """A second nginx answering 200 to everything: the trivial upstream."""
    return _run_nginx("read-model", work / "read-model", READ_MODEL % free_port())


def nginx_gateway(work: Path, gate: str, upstream: str, gated: bool) -> Server:
    """nginx on deploy/gateways/nginx/process-status-gate.conf, rendered like envsubst does."""
    listen = f"127.0.0.1:{free_port()}"
    text = (DEPLOY / "nginx" / "process-status-gate.conf").read_text()
    for name, value in (("LISTEN_ADDR", listen), ("GATE_ADDR", gate),
                        ("UPSTREAM_ADDR", upstream)):
        text = text.replace("${" + name + "}", value)
    if not gated:
        text = _replace_once(text, "auth_request /_process_status_gate;", "auth_request off;")
    name = "nginx-gated" if gated else "nginx-ungated"
    return _run_nginx(name, work / name, text)


def haproxy_gateway(work: Path, gate: str, upstream: str, gated: bool) -> Server:
    """HAProxy on deploy/gateways/haproxy/ (addresses from the environment, as documented)."""
    name = "haproxy-gated" if gated else "haproxy-ungated"
    folder = work / name
    folder.mkdir(parents=True)
    config = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    if not gated:
        config = _replace_once(config, "    http-request lua.process_status_gate ",
                               "    # http-request lua.process_status_gate ")
    shutil.copy(DEPLOY / "haproxy" / "process_status_gate.lua", folder)
    (folder / "haproxy.cfg").write_text(config)
    listen = f"127.0.0.1:{free_port()}"
    env = {"LISTEN_ADDR": listen, "GATE_ADDR": gate, "UPSTREAM_ADDR": upstream}
    argv = [_haproxy_binary(), "-db", "-f", str(folder / "haproxy.cfg")]
    with _environment(env):
        server = _spawn(name, argv, folder, int(listen.rsplit(":", 1)[1]))
    _wait_listening(server)
    return server


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"the committed config no longer has exactly one {old!r}")
    return text.replace(old, new)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """benchlib._spawn passes os.environ on: set the config's variables around it."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


GATEWAYS: dict[str, Callable[[Path, str, str, bool], Server]] = {
    "nginx": nginx_gateway,
    "haproxy": haproxy_gateway,
}


# -- measuring ---------------------------------------------------------------------


def gate_calls(service: Server) -> int:
    """process_status_checks_total{source="gate"}, all results."""
    with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics",
                                timeout=5) as response:
        text = response.read().decode()
    pattern = r'^process_status_checks_total\{result="\w+",source="gate"\} (\S+)$'
    return round(sum(float(v) for v in re.findall(pattern, text, re.MULTILINE)))


_fresh_runs = itertools.count(1)


def fresh_tokens_script(work: Path) -> Path:
    """bench/fresh_token.lua with its counter started where no earlier run has been.

    Every wrk process starts the script's counter at 0, so without this a measured run
    repeats the tokens of its warm-up and of earlier rounds, which the gateway's cache
    already holds, and "fresh" reads are partly answered from it (0.6-0.7 gate calls a
    read were measured that way).
    """
    run = next(_fresh_runs)
    # 10**9 tokens a run, far more than wrk sends; the tokens stay below RECORDED
    # (processed) for up to 15,000 runs.
    text = _replace_once(FRESH_SCRIPT.read_text(), "local counter = 0",
                         f"local counter = {run * 10**9}")
    path = work / f"fresh_token_{run}.lua"
    path.write_text(text)
    return path


def check_answers(gated: Server) -> None:
    """Make sure the gated gateway really gates before measuring it."""
    cases = ((f"{ENTITY}/1", 200), (f"{ENTITY}-never/1", 425))
    for token, expected in cases:
        request = urllib.request.Request(gated.url + "/", headers={TOKEN_HEADER: token})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        if status != expected:
            raise RuntimeError(f"{gated.name}: {token} answered {status}, not {expected}")


def report(gateway: str, results: dict[str, Measured], args: argparse.Namespace) -> None:
    base = results["ungated"].rps
    print(f"\n{gateway}: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
          f"{args.rounds} round(s), loopback, {os.cpu_count()} CPUs shared by all\n")
    print("| read through " + gateway + " | req/s | p99 | vs ungated | goal | gate calls/read "
          "| errors |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for scenario in SCENARIOS:
        measured = results[scenario.name]
        ratio = measured.rps / base if base else 0.0
        goal = ""
        if scenario.goal is not None:
            verdict = "met" if ratio >= scenario.goal else "NOT met"
            goal = f">= {scenario.goal:.2f}x: {verdict}"
        calls = measured.gate_calls / measured.requests if measured.requests else 0.0
        print(f"| {scenario.label} | {measured.rps:,.0f} | {measured.p99:.2f} ms | "
              f"{ratio:.2f}x | {goal} | {calls:.3f} | {measured.errors} |")
        if scenario.goal is not None:
            record_goal(f"{gateway.lower()}-{scenario.name}", f"{ratio:.2f}x",
                        f">= {scenario.goal:.2f}x", ratio >= scenario.goal,
                        f"{calls:.3f} gate calls per read")


def _script(scenario: Scenario, work: Path) -> Path | None:
    return fresh_tokens_script(work) if scenario.script == FRESH_SCRIPT else scenario.script


def bench_gateway(name: str, work: Path, service: Server, upstream: str,
                  args: argparse.Namespace) -> dict[str, Measured]:
    start = GATEWAYS[name]
    gate = f"127.0.0.1:{service.port}"
    results: dict[str, Measured] = {}
    with ExitStack() as stack:
        ungated = start(work, gate, upstream, False)
        stack.callback(ungated.stop)
        gated = start(work, gate, upstream, True)
        stack.callback(gated.stop)
        check_answers(gated)
        for round_number in range(args.rounds):
            for scenario in SCENARIOS:
                server = gated if scenario.gated else ungated
                if round_number == 0 and args.warmup > 0:
                    wrk(server.url + "/", args.warmup, connections=args.connections,
                        threads=args.threads, script=_script(scenario, work))
                before = gate_calls(service)
                result = wrk(server.url + "/", args.duration, connections=args.connections,
                             threads=args.threads, script=_script(scenario, work))
                measured = results.setdefault(scenario.name, Measured())
                measured.runs.append(result)
                measured.gate_calls += gate_calls(service) - before
                print(f"{name} round {round_number + 1} {scenario.name}: {result.rps:,.0f} "
                      f"req/s, p99 {result.p99_ms:.2f} ms, errors {result.errors}",
                      file=sys.stderr, flush=True)
    return results


# -- restarts ----------------------------------------------------------------------


class Prober:
    """Asks /gate with a processed token every `interval` s; keeps the times of 200s."""

    def __init__(self, url: str, token: str, interval: float = 0.005) -> None:
        self.request = urllib.request.Request(url, headers={TOKEN_HEADER: token})
        self.interval = interval
        self.successes: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.request, timeout=0.5) as response:
                    if response.status == 200:
                        self.successes.append(time.monotonic())
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(self.interval)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time without a 200 between the last one before `start` and `end`."""
        times = [t for t in self.successes if t <= end]
        first = max((i for i, t in enumerate(times) if t <= start), default=None)
        if first is None or first == len(times) - 1:
            raise RuntimeError("no answer on one side of the restart")
        return max(b - a for a, b in zip(times[first:], times[first + 1:], strict=False))

    def wait_success_after(self, moment: float, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.successes and self.successes[-1] > moment:
                return
            time.sleep(0.01)
        raise RuntimeError("the service did not answer again")


def serve_on(port: int, metrics_port: int, data_dir: Path, work: Path, name: str) -> Server:
    server = _spawn(name, serve_command(port, metrics_port, data_dir), work, port)
    server.metrics_port = metrics_port
    return server


def measure_restarts(work: Path, entities: int) -> None:
    data_dir = work / "restart-data"
    built = build_snapshot(data_dir, entities)
    print(f"\nrestarts: a snapshot of {entities:,} entities (built in {built:.1f} s)",
          file=sys.stderr, flush=True)
    port, metrics_port = free_port(), free_port()
    token = f"{entity_name(0)}/1"
    started = time.monotonic()
    server = serve_on(port, metrics_port, data_dir, work, "restart-1")
    try:
        server.wait_ready("/readyz", 120)
        cold = time.monotonic() - started
        with Prober(f"http://127.0.0.1:{port}/gate", token) as prober:
            time.sleep(1)
            hup = time.monotonic()
            os.kill(server.process.pid, signal.SIGHUP)
            # The old worker answers for a moment after the signal: wait out
            # the whole restart (the 1M-entity restore takes about a second).
            time.sleep(10)
            hup_gap = prober.longest_gap(hup, time.monotonic())

            term = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(120)
            exited = time.monotonic()
            server = serve_on(port, metrics_port, data_dir, work, "restart-2")
            prober.wait_success_after(exited)
            time.sleep(0.5)
            term_gap = prober.longest_gap(term, time.monotonic())
    finally:
        server.stop()
    print(f"\nrestart of `serve` holding {entities:,} entities (token reads through /gate, "
          "probed every 5 ms)\n")
    print("| event | token reads unanswered for |")
    print("|---|---:|")
    print(f"| cold start to ready (for reference) | {cold:.2f} s |")
    print(f"| SIGHUP (worker restarts in place) | {hup_gap:.2f} s |")
    print(f"| SIGTERM, exit (final snapshot: {exited - term:.2f} s), then a new `serve` "
          f"| {term_gap:.2f} s |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--gateways", default="nginx,haproxy",
                        help=f"comma-separated, out of {','.join(GATEWAYS)}")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up seconds, 0: none")
    parser.add_argument("--rounds", type=int, default=2, help="round-robin rounds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--restart-entities", type=int, default=1_000_000,
                        help="entities held while measuring restarts; 0: skip that part")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.gateways.split(",") if name.strip()]
    if set(chosen) - set(GATEWAYS):
        parser.error(f"choose gateways out of {sorted(GATEWAYS)} (or none: '')")
    print(f"load average (1 min) at the start: {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="process-status-gateway-bench-") as temp:
        work = Path(temp)
        with ExitStack() as stack:
            model = read_model(work)
            stack.callback(model.stop)
            service = start_service("process-status", work / "data", work,
                                    "--durability", "snapshot")
            stack.callback(service.stop)
            body = b'{"timestamp": %d}' % RECORDED
            if http("PUT", f"{service.url}/status/{ENTITY}", body) != 200:
                raise RuntimeError(f"recording {ENTITY} failed")
            for name in chosen:
                report(name, bench_gateway(name, work, service, f"127.0.0.1:{model.port}",
                                           args), args)
        if args.restart_entities > 0:
            measure_restarts(work, args.restart_entities)
    print(f"\nload average (1 min) at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
