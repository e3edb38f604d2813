"""examples/posts end to end: the one command, the README session, 32 concurrent clients
through nginx, and the stop.

Real PostgreSQL (a scratch cluster the example starts), the kit's operator, the API,
process-status and nginx with the project's gate config. With the token, a client that
creates a post and reads it back at once, then adds comments and reads the count back,
never sees a 404 or a stale count; without the token, a share of the same reads are
false 404s (printed: small here, where the operator keeps up within milliseconds). Then
the operator lags (SIGSTOP for 1.5 s, as a slow projection, a pause or a deploy would):
every read without the token is a false 404, every read with it waits and gets the post.
Bounded: 32 clients x 4 rounds, then 32 clients once.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import pytest
from process_status_postgres.scratch import bin_dir

from tests.e2e.gateways.specs import SBIN_DIRS, _which
from tests.servers import ROOT, free_port, request

RUN = ROOT / "examples" / "posts" / "run"
HEADER = "X-Event-Streamex-Entity-Timestamp"
CLIENTS = 32
ROUNDS = 4
COMMENTS = 2
UNTOKENED = 3

pytestmark = [
    pytest.mark.skipif(bin_dir() is None, reason="PostgreSQL is not installed: apt-get "
                       "install postgresql-15 (.ci/install-services.sh does)"),
    pytest.mark.skipif(_which("nginx", SBIN_DIRS) is None, reason="nginx is not installed "
                       "(deploy/gateways/install.sh installs it)"),
]


@dataclass
class Example:
    process: subprocess.Popen[str]
    gateway: str
    output: list[str] = field(default_factory=list)


@contextlib.contextmanager
def example(port: int) -> Iterator[Example]:
    process = subprocess.Popen([str(RUN), "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               cwd=ROOT)
    assert process.stdout is not None
    stdout = process.stdout
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("Ctrl-C stops everything" in line for line in lines):
            if time.monotonic() > deadline or process.poll() is not None:
                reader.join(5)
                raise AssertionError("the example did not start:\n" + "".join(lines))
            time.sleep(0.1)
        found = re.search(r"gateway \(nginx \+ gate\)\s+(\S+)", "".join(lines))
        assert found is not None, lines
        yield Example(process, found.group(1), lines)
    finally:
        if process.poll() is None:
            # SIGTERM first: the example stops what it started (each in a session of its
            # own) and removes the cluster.
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        reader.join(10)
        stdout.close()


def post(url: str, body: dict[str, str]) -> tuple[int, str, dict[str, object]]:
    status, headers, raw = request("POST", url, orjson.dumps(body),
                                   {"Content-Type": "application/json"})
    assert status == 201, raw
    return status, headers[HEADER], orjson.loads(raw)


@dataclass
class Tally:
    reads: int = 0
    false_404: int = 0
    stale: int = 0
    too_early: int = 0
    untokened: int = 0
    untokened_404: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def read_with(gateway: str, post_id: int, token: str | None, tally: Tally,
              ) -> dict[str, object] | None:
    """GET the read model; with a token, retry 425 as a client would (Retry-After)."""
    headers = {HEADER: token} if token else {}
    for _ in range(20):
        status, answer_headers, raw = request(
            "GET", f"{gateway}/post_with_comments_counts/{post_id}", headers=headers)
        if status == 425 and token:
            with tally.lock:
                tally.too_early += 1
            time.sleep(float(answer_headers.get("Retry-After", "1")))
            continue
        if status == 404:
            return None
        assert status == 200, (status, raw)
        found: dict[str, object] = orjson.loads(raw)
        return found
    raise AssertionError(f"still 425 after 20 tries for {token}")


def client(gateway: str, number: int, tally: Tally) -> None:
    try:
        for round_ in range(ROUNDS):
            title = f"client {number} round {round_}"
            _, token, created = post(f"{gateway}/posts", {"title": title})
            post_id = int(str(created["id"]))
            seen = read_with(gateway, post_id, token, tally)
            with tally.lock:
                tally.reads += 1
                if seen is None:
                    tally.false_404 += 1
                elif seen["title"] != title:
                    tally.errors.append(f"post {post_id}: {seen}")
            for count in range(1, COMMENTS + 1):
                _, token, _ = post(f"{gateway}/posts/{post_id}/comments", {"body": str(count)})
                seen = read_with(gateway, post_id, token, tally)
                with tally.lock:
                    tally.reads += 1
                    if seen is None:
                        tally.false_404 += 1
                    elif seen["comments_count"] != count:
                        tally.stale += 1
            # The same flow without the token: what a client sees today.
            for extra in range(UNTOKENED):
                _, _, created = post(f"{gateway}/posts", {"title": f"{title} untokened {extra}"})
                untokened = read_with(gateway, int(str(created["id"])), None, tally)
                with tally.lock:
                    tally.untokened += 1
                    tally.untokened_404 += untokened is None
    except BaseException as exc:  # reported by the test, not lost in a thread
        with tally.lock:
            tally.errors.append(repr(exc))


def test_the_example_never_answers_a_false_404_or_a_stale_count_with_the_token() -> None:
    with example(free_port()) as running:
        gateway = running.gateway
        tally = Tally()
        threads = [threading.Thread(target=client, args=(gateway, number, tally))
                   for number in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not tally.errors, tally.errors[:5]
        assert tally.reads == CLIENTS * ROUNDS * (1 + COMMENTS)
        print(f"\nwith the token: {tally.false_404} false 404s and {tally.stale} stale counts "
              f"in {tally.reads} reads ({tally.too_early} answered 425 first); without it: "
              f"{tally.untokened_404} false 404s in {tally.untokened} reads "
              f"({100 * tally.untokened_404 / tally.untokened:.0f}%)")
        assert tally.false_404 == 0
        assert tally.stale == 0
        lagging(running, gateway)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(60) == 0
    output = "".join(running.output)
    cluster = re.search(r"PostgreSQL\s+host=127\.0\.0\.1 port=(\d+)", output)
    assert cluster is not None
    # Everything it started is gone: the gateway and the cluster's port are closed.
    with pytest.raises(urllib.error.URLError):
        request("GET", f"{gateway}/post_with_comments_counts/1", timeout=2)
    with pytest.raises(urllib.error.URLError):
        request("GET", f"http://127.0.0.1:{cluster.group(1)}/", timeout=2)


def lagging(running: Example, gateway: str) -> None:
    """While the operator is stopped: untokened reads all 404, tokened ones all wait."""
    found = subprocess.run(["pgrep", "-P", str(running.process.pid), "-f",
                            "examples.posts.projector"], capture_output=True, text=True,
                           check=False).stdout.split()
    assert len(found) == 1, found
    projector = int(found[0])
    answers: list[int] = []
    untokened_404: list[bool] = []
    lock = threading.Lock()
    os.kill(projector, signal.SIGSTOP)
    try:
        def one(number: int) -> None:
            _, token, created = post(f"{gateway}/posts", {"title": f"lagging {number}"})
            post_id = int(str(created["id"]))
            without = read_with(gateway, post_id, None, Tally())
            seen = read_with(gateway, post_id, token, Tally())
            with lock:
                untokened_404.append(without is None)
                answers.append(0 if seen is None else int(str(seen["id"])) == post_id)

        threads = [threading.Thread(target=one, args=(number,)) for number in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
    finally:
        os.kill(projector, signal.SIGCONT)
    for thread in threads:
        thread.join(120)
    print(f"operator stopped 1.5 s: without the token {sum(untokened_404)} false 404s in "
          f"{len(untokened_404)} reads; with it {sum(answers)} of {len(answers)} got the post")
    assert untokened_404 == [True] * CLIENTS
    assert answers == [1] * CLIENTS


def test_the_readme_session_is_true() -> None:
    readme = (ROOT / "examples" / "posts" / "README.md").read_text()
    block = readme.split("## The session", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    expected = [line.split("# ", 1)[1].split("  ")[0].strip()
                for line in block.splitlines() if line.startswith("# ")]
    port = free_port()
    with example(port) as running:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c",
                               block.replace("8088", str(port))],
                              capture_output=True, text=True, timeout=60, check=False)
        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(60) == 0
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert re.fullmatch(r"posts/\d+", printed[0]), printed
    assert printed[1:] == expected[1:], (printed, expected)
