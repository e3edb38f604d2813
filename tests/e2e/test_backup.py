"""`process-status backup | restore | salvage | inspect --backup` against the real `serve`."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest

from service.storage import framing, snapshot
from tests.servers import (
    EXECUTABLE,
    ROOT,
    ServeProcess,
    put,
    request,
    serving,
    start_serve,
    write_sample_data_dir,
)
from tests.support import Ledger


def run(*args: str) -> tuple[int, str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROCESS_STATUS_")}
    done = subprocess.run([str(EXECUTABLE), *args], capture_output=True, text=True,
                          env=environment, cwd=ROOT, timeout=60, check=False)
    return done.returncode, done.stdout, done.stderr


def backup_values(path: Path) -> dict[str, int]:
    loaded = snapshot.decode(str(path), path.read_bytes())
    return {name: entry[0] for name, entry in loaded.entries.items()}


def served(server: ServeProcess) -> dict[str, int]:
    """Every entity and its timestamp, through the list API page by page."""
    found: dict[str, int] = {}
    after = ""
    while True:
        status, _, body = request("GET", f"{server.url}/status?limit=10000&after={after}")
        assert status == 200, body
        page = orjson.loads(body)
        found.update({item["entity"]: item["timestamp"] for item in page["entities"]})
        if page["next"] is None:
            return found
        after = page["next"]


def contents(data_dir: Path) -> dict[str, bytes]:
    """The files in a dir, but the lock file (which holds the pid of its last taker)."""
    return {path.name: path.read_bytes() for path in sorted(data_dir.iterdir())
            if path.is_file() and path.name != "LOCK"}


@pytest.fixture(scope="module")
def written_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of 30 entities and 21 journal records after it, cut by kill -9."""
    return write_sample_data_dir(tmp_path_factory.mktemp("backup") / "data")


@pytest.fixture
def data_dir(written_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(written_dir, copy)
    return copy


WRITTEN = {**{f"e{index:02d}": 100 + index for index in range(30)},
           **{f"f{index:02d}": 200 + index for index in range(20)}, "e00": 999}


class Writers:
    """Threads that PUT ever-increasing values and record what was acknowledged."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.ledger = Ledger()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self.write, args=(worker,), daemon=True)
                        for worker in range(count)]

    def write(self, worker: int) -> None:
        count = 0
        while not self.stop.is_set():
            entity = f"w{worker}-{count % 5}"
            with self.lock:
                value = self.ledger.take(entity)
            status = put(self.url, entity, value)
            if status == 200:
                with self.lock:
                    self.ledger.ack(entity, value)
            else:
                self.errors.append(f"PUT {entity} answered {status}")
            count += 1

    def acknowledged(self) -> Ledger:
        with self.lock:
            return Ledger(sent=dict(self.ledger.sent), acked=dict(self.ledger.acked),
                          acks=self.ledger.acks)

    def wait_for(self, acks: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acknowledged().acks < acks:
            assert time.monotonic() < deadline, f"fewer than {acks} writes acknowledged"
            time.sleep(0.01)


def test_a_backup_under_concurrent_writes_restores_to_an_acknowledged_state(
    tmp_path: Path,
) -> None:
    """Snapshots every 50 ms and a 2 KB journal limit: segments come and go during backups."""
    source = tmp_path / "source"
    backups: list[tuple[Path, Ledger]] = []
    with serving(source, "--snapshot-interval", "0.05", "--journal-max-bytes", "2048") as server:
        writers = Writers(server.url, 4)
        for thread in writers.threads:
            thread.start()
        try:
            for round_ in range(3):
                writers.wait_for(100 * (round_ + 1))
                before = writers.acknowledged()
                out = tmp_path / f"backup-{round_}.pss"
                code, stdout, stderr = run("backup", "--data-dir", str(source), "--out", str(out))
                assert code == 0, stdout + stderr
                assert stdout.startswith("backup: "), stdout
                assert stdout.count("\n") == 1, stdout
                backups.append((out, before))
        finally:
            writers.stop.set()
            for thread in writers.threads:
                thread.join(15)
        sent = writers.acknowledged()
        assert writers.errors == []
        server.kill_all()

    for out, before in backups:
        found = backup_values(out)
        assert before.lost(found) == [], out
        assert sent.never_above_sent(found) == [], out

    last, before = backups[-1]
    target = tmp_path / "restored"
    code, stdout, stderr = run("restore", str(last), "--data-dir", str(target))
    assert code == 0, stdout + stderr
    assert stdout.startswith("restored: ")
    with serving(target) as restored:
        found = served(restored)
        assert found == backup_values(last)
        assert before.lost(found) == []
        # The restored service keeps writing from where the backup left off.
        assert put(restored.url, "after-restore", 1) == 200
        assert restored.stop() == 0
    with serving(target) as again:
        assert served(again) == {**backup_values(last), "after-restore": 1}


def test_restore_into_a_data_dir_a_running_service_holds_is_refused(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "backup.pss"
    assert run("backup", "--data-dir", str(data_dir), "--out", str(out))[0] == 0
    live = tmp_path / "live"
    with serving(live) as server:
        assert put(server.url, "live", 7) == 200
        before = contents(live)

        for force in ([], ["--force"]):
            code, stdout, stderr = run("restore", str(out), "--data-dir", str(live), *force)

            assert code == 1, stdout + stderr
            assert stdout == ""
            assert stderr.count("\n") == 1, stderr
            # The master's pid: the one whose SIGTERM stops the service (a worker's would
            # only make gunicorn start another).
            master = server.process.pid
            assert f"data dir {live} is in use by a running service (pid {master}): stop it " \
                f"first (kill -TERM {master}" in stderr
            assert "Traceback" not in stderr
        assert contents(live) == before
        assert [path.name for path in live.iterdir() if path.is_dir()] == []
        assert served(server) == {"live": 7}


def test_a_damaged_backup_is_refused_by_restore_and_reported_by_inspect(
    data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "backup.pss"
    assert run("backup", "--data-dir", str(data_dir), "--out", str(out))[0] == 0
    code, stdout, _ = run("inspect", "--backup", str(out))
    assert code == 0, stdout
    assert stdout.startswith("backup: 50 entities, lsn ")
    data = out.read_bytes()
    frames, damage = framing.decode(data)
    assert damage is None
    offset = frames[1][0]
    at = offset + framing.HEADER.size + 3
    out.write_bytes(data[:at] + bytes([data[at] ^ 0x04]) + data[at + 1:])

    code, stdout, stderr = run("inspect", "--backup", str(out))
    assert code == 1
    assert stdout.startswith(f"DAMAGED: backup {out} is corrupt at byte offset {offset}")
    assert stdout.count("\n") == 1

    target = tmp_path / "target"
    code, stdout, stderr = run("restore", str(out), "--data-dir", str(target))
    assert code == 1
    assert "DAMAGED" in stderr
    assert f"byte offset {offset}" in stderr
    assert stderr.count("\n") == 1
    assert "Traceback" not in stderr
    assert not (target / snapshot.FILENAME).exists()


def test_salvage_keeps_every_record_before_mid_journal_damage_and_reports_the_loss(
    data_dir: Path, tmp_path: Path
) -> None:
    [segment] = sorted(data_dir.glob("journal-*.log"))
    data = segment.read_bytes()
    frames, damage = framing.decode(data)
    assert damage is None
    assert len(frames) == 21
    offset = frames[5][0]  # f05
    at = offset + framing.HEADER.size + 2
    segment.write_bytes(data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:])
    before = contents(data_dir)
    refused = start_serve(data_dir, wait=False)
    try:
        assert refused.process.wait(60) != 0
    finally:
        refused.kill_all()
    assert f"byte offset {offset}" in refused.log()

    out = tmp_path / "salvaged.pss"
    code, stdout, stderr = run("salvage", "--data-dir", str(data_dir), "--out", str(out))

    assert code == 0, stdout + stderr
    assert stderr == ""
    assert f"damage: journal {segment} is corrupt at byte offset {offset}" in stdout
    size = len(data)
    assert (f"lost: {segment.name}: from byte offset {offset} to its end ({size - offset} "
            "bytes), 15 intact records skipped") in stdout
    assert "lost: in total 15 intact records, and the damaged record itself" in stdout
    assert contents(data_dir) == before
    expected = {**{f"e{index:02d}": 100 + index for index in range(30)},
                **{f"f{index:02d}": 200 + index for index in range(5)}}
    assert backup_values(out) == expected

    target = tmp_path / "restored"
    assert run("restore", str(out), "--data-dir", str(target))[0] == 0
    with serving(target) as server:
        assert served(server) == expected


def test_restore_force_moves_the_old_contents_aside(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "backup.pss"
    assert run("backup", "--data-dir", str(data_dir), "--out", str(out))[0] == 0
    target = tmp_path / "target"
    with serving(target) as server:
        assert put(server.url, "old", 1) == 200
        assert server.stop() == 0
    old = contents(target)

    code, stdout, stderr = run("restore", str(out), "--data-dir", str(target))
    assert code == 1
    assert "is not empty" in stderr
    assert "--force" in stderr
    assert contents(target) == old

    code, stdout, stderr = run("restore", str(out), "--data-dir", str(target), "--force")

    assert code == 0, stdout + stderr
    [aside] = [path for path in target.iterdir() if path.is_dir()]
    assert aside.name.startswith("replaced-")
    assert f"moved aside: the old contents are in {aside}" in stdout
    assert contents(aside) == old
    assert (target / snapshot.FILENAME).read_bytes() == out.read_bytes()
    assert list(target.glob("journal-*.log")) == []
    with serving(target) as server:
        assert served(server) == WRITTEN


def test_a_backup_of_a_stopped_dir_equals_what_inspect_sees(data_dir: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "backup.pss"
    code, stdout, _ = run("backup", "--data-dir", str(data_dir), "--out", str(out))
    assert code == 0
    assert backup_values(out) == WRITTEN
    assert "(snapshot at lsn 30 + 21 journal records)" in stdout
    assert oct(out.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(("args", "says"), [
    (["backup", "--data-dir", "{data}"], "the following arguments are required: --out"),
    (["backup", "--data-dir", "{data}", "--out", "{tmp}"], "is a directory: name a file"),
    (["backup", "--data-dir", "{data}", "--out", "{data}/copy"], "is inside --data-dir"),
    (["backup", "--data-dir", "{tmp}/absent", "--out", "{tmp}/b"], "is not a directory"),
    (["backup", "--data-dir", "{data}", "--out", "{tmp}/no/b"], "does not exist: create it"),
    (["salvage", "--data-dir", "{data}", "--out", "{tmp}"], "is a directory: name a file"),
    (["restore", "{tmp}/absent", "--data-dir", "{tmp}/t"], "no such file"),
    (["restore", "--data-dir", "{tmp}/t"], "the following arguments are required: FILE"),
    (["inspect", "--backup", "{tmp}"], "is a directory"),
    (["inspect", "--data-dir", "{data}/LOCK"], "use --backup FILE"),
])
def test_bad_flags_exit_2_naming_the_fix(
    data_dir: Path, tmp_path: Path, args: list[str], says: str
) -> None:
    code, stdout, stderr = run(*(arg.format(data=data_dir, tmp=tmp_path) for arg in args))
    assert code == 2, stdout + stderr
    assert says in stderr
    assert "Traceback" not in stderr
