"""Start the whole posts example on loopback, print its URLs, stop it all on SIGINT/SIGTERM.

A scratch PostgreSQL cluster (source and read-model databases), process-status, the
operator (projector.py, the kit's Operator), the API (api.py) and nginx with the
project's own gate config (deploy/gateways/nginx/process-status-gate.conf) in front.
Installs nothing: `make venv` (or CI) has installed the Python side, Debian the
`postgresql-15` and `nginx` packages. Run it as `examples/posts/run`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import psycopg2
from process_status_postgres.scratch import ClusterError, ScratchCluster

from examples.posts import schema

ROOT = Path(__file__).resolve().parents[2]
NGINX = ROOT / "deploy" / "gateways" / "nginx"
class Stop(Exception):
    pass


def render(template: Path, target: Path, **values: str) -> None:
    """`envsubst` for exactly these names (nginx's own $variables stay)."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    target.write_text(text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str, expected: tuple[int, ...]) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status in expected
    except urllib.error.HTTPError as exc:
        return exc.code in expected
    except OSError:
        return False


def describe(process: subprocess.Popen[bytes]) -> str:
    args = process.args
    return " ".join(map(str, args[:3])) if isinstance(args, list) else str(args)


def until(what: str, check: Callable[[], bool], processes: list[subprocess.Popen[bytes]],
          seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{describe(process)} exited with {process.returncode} while "
                                   f"waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up after {seconds:g} s waiting for {what}")
        time.sleep(0.1)


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError("nginx is not installed: apt-get install nginx")
    return found


def prepare_databases(cluster: ScratchCluster) -> None:
    admin = psycopg2.connect(cluster.dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        for database in (schema.SOURCE_DATABASE, schema.TARGET_DATABASE):
            cur.execute(f"CREATE DATABASE {database}")
    admin.close()
    for database, ddl in ((schema.SOURCE_DATABASE, schema.SOURCE),
                          (schema.TARGET_DATABASE, schema.TARGET)):
        connection = psycopg2.connect(cluster.dsn(database))
        with connection.cursor() as cur:
            cur.execute(ddl)
        connection.commit()
        connection.close()


def _die_with_parent() -> None:
    """In the child: SIGTERM when this script dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def started(argv: list[str], log: Path, env: dict[str, str] | None = None,
            ) -> Iterator[subprocess.Popen[bytes]]:
    # A session of its own: Ctrl-C reaches this script only, which stops them in order.
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env=env, start_new_session=True,
                                   preexec_fn=_die_with_parent)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def run(port: int, work: Path, gate_wait: str) -> None:
    api_port, status_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in [key for key in env if key.startswith("PROCESS_STATUS_")]:
        del env[key]
    serve = str(Path(sys.executable).with_name("process-status"))
    with ScratchCluster.start() as cluster, contextlib.ExitStack() as stack:
        prepare_databases(cluster)
        source, target = cluster.dsn(schema.SOURCE_DATABASE), cluster.dsn(schema.TARGET_DATABASE)
        status_url = f"http://127.0.0.1:{status_port}"
        processes = []
        processes.append(stack.enter_context(started(
            [serve, "serve", "--bind", f"127.0.0.1:{status_port}", "--metrics-bind", "off",
             "--data-dir", str(work / "process-status"), "--gate-wait", gate_wait],
            work / "process-status.log", env)))
        until("process-status", lambda: answers(f"{status_url}/readyz", (200,)), processes)
        processes.append(stack.enter_context(started(
            [sys.executable, "-m", "examples.posts.projector", "--source-dsn", source,
             "--target-dsn", target, "--status-url", status_url],
            work / "projector.log", env)))
        processes.append(stack.enter_context(started(
            [sys.executable, "-m", "examples.posts.api", "--source-dsn", source,
             "--target-dsn", target, "--bind", f"127.0.0.1:{api_port}"],
            work / "api.log", env)))
        nginx_work = work / "nginx"
        (nginx_work / "conf.d").mkdir(parents=True)
        render(NGINX / "process-status-gate.conf", nginx_work / "conf.d" / "gate.conf",
               LISTEN_ADDR=f"127.0.0.1:{port}", GATE_ADDR=f"127.0.0.1:{status_port}",
               UPSTREAM_ADDR=f"127.0.0.1:{api_port}")
        # The user: as root, root, or nginx's workers could not enter the 0700 directory.
        render(NGINX / "standalone.conf", nginx_work / "nginx.conf", PREFIX=str(nginx_work),
               NGINX_USER=pwd.getpwuid(os.geteuid()).pw_name)
        processes.append(stack.enter_context(started(
            [nginx_binary(), "-e", "stderr", "-p", str(nginx_work), "-c",
             str(nginx_work / "nginx.conf")], work / "nginx.log")))
        gateway = f"http://127.0.0.1:{port}"
        until("the operator's first position",
              lambda: answers(f"{status_url}/status/posts", (200,)), processes)
        until("the API", lambda: answers(f"http://127.0.0.1:{api_port}/post_with_comments_"
                                         "counts/0", (404,)), processes)
        until("nginx", lambda: answers(f"{gateway}/post_with_comments_counts/0", (404,)),
              processes)
        print(f"posts example ready\n"
              f"  gateway (nginx + gate)  {gateway}\n"
              f"  API (behind nginx)      http://127.0.0.1:{api_port}\n"
              f"  process-status          {status_url}\n"
              f"  PostgreSQL              {source}\n"
              f"                          {target}\n"
              f"  logs                    {work}\n"
              f"Ctrl-C stops everything and removes the cluster.", flush=True)
        while True:
            for process in processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{describe(process)} exited with {process.returncode}; "
                                       f"its log is in {work}")
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="examples/posts/run", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8088,
                        help="the gateway's port on 127.0.0.1 (default 8088)")
    parser.add_argument("--gate-wait", default="1",
                        help="seconds the gate holds a read before answering 425 (default 1)")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    work = Path(tempfile.mkdtemp(prefix="posts-example-"))
    try:
        run(args.port, work, args.gate_wait)
    except Stop as exc:
        print(f"{exc}: stopping", flush=True)
        return 0
    except (RuntimeError, ClusterError, psycopg2.Error) as exc:
        print(f"posts example failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
