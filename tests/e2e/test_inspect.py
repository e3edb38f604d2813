"""`process-status inspect --data-dir DIR`: an offline, read-only check of a data dir."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service.storage import framing, journal, snapshot
from service.storage.files import OsFiles
from tests.servers import EXECUTABLE, ROOT, write_sample_data_dir


def run_inspect(data_dir: Path) -> tuple[int, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROCESS_STATUS_")}
    done = subprocess.run(
        [str(EXECUTABLE), "inspect", "--data-dir", str(data_dir)],
        capture_output=True, text=True, env=environment, cwd=ROOT, timeout=60, check=False,
    )
    return done.returncode, done.stdout + done.stderr


def fingerprint(data_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(data_dir.iterdir())}



@pytest.fixture(scope="module")
def healthy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of 30 entities and 21 journal records after it, cut by kill -9."""
    return write_sample_data_dir(tmp_path_factory.mktemp("inspect") / "data")


@pytest.fixture
def data_dir(healthy_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(healthy_dir, copy)
    return copy


def only_segment(data_dir: Path) -> Path:
    paths = sorted(data_dir.glob("journal-*.log"))
    assert len(paths) == 1, paths
    return paths[0]


def test_healthy_dir_exits_zero_with_counts(data_dir: Path) -> None:
    before = fingerprint(data_dir)

    code, output = run_inspect(data_dir)

    assert code == 0, output
    assert re.search(r"^snapshot: 30 entities, covers journal up to lsn \d+", output, re.M), output
    segment = only_segment(data_dir)
    size = segment.stat().st_size
    assert f"journal: {segment.name}: {size} bytes, 21 records" in output
    assert "replayed: 21 journal records" in output
    assert re.search(r"^entities: 50$", output, re.M), output
    assert "DAMAGED" not in output
    assert fingerprint(data_dir) == before


def test_empty_dir_has_nothing_and_no_damage(tmp_path: Path) -> None:
    code, output = run_inspect(tmp_path)
    assert code == 0, output
    assert "snapshot: none" in output
    assert re.search(r"^entities: 0$", output, re.M), output


def test_missing_dir_is_a_usage_error(tmp_path: Path) -> None:
    code, output = run_inspect(tmp_path / "absent")
    assert code == 2
    assert "is not a directory" in output


def test_snapshot_temp_leftover_is_no_damage_and_is_left_alone(data_dir: Path) -> None:
    """A crash during a snapshot leaves a temp file that `serve` removes at start."""
    temp = data_dir / f"{snapshot.FILENAME}{snapshot.TEMP_MARKER}1-00000000"
    temp.write_bytes(b"half a snapshot")
    before = fingerprint(data_dir)

    code, output = run_inspect(data_dir)

    assert code == 0, output
    assert re.search(r"^entities: 50$", output, re.M), output
    assert fingerprint(data_dir) == before


def frame_offsets(data: bytes) -> list[int]:
    frames, damage = framing.decode(data)
    assert damage is None
    return [offset for offset, _ in frames]


def damage_torn_tail(data_dir: Path) -> tuple[Path, str]:
    segment = only_segment(data_dir)
    size = segment.stat().st_size
    with segment.open("ab") as handle:
        handle.write(framing.encode(b'[99999, 0, "r", {"x": 1}]')[:-4])
    return segment, f"byte offset {size}"


def damage_journal_middle(data_dir: Path) -> tuple[Path, str]:
    segment = only_segment(data_dir)
    data = segment.read_bytes()
    offset = frame_offsets(data)[5]
    at = offset + framing.HEADER.size + 2
    segment.write_bytes(data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:])
    return segment, f"byte offset {offset}"


def damage_snapshot(data_dir: Path) -> tuple[Path, str]:
    path = data_dir / snapshot.FILENAME
    data = path.read_bytes()
    offset = frame_offsets(data)[1]
    path.write_bytes(data[: offset + 12] + b"\0" + data[offset + 13:])
    return path, f"byte offset {offset}"


def damage_missing_segment(data_dir: Path) -> tuple[Path, str]:
    segment = only_segment(data_dir)
    [seq] = journal.list_segments(OsFiles(), str(data_dir))
    later = data_dir / journal.segment_name(seq + 2)
    shutil.copyfile(segment, later)
    return data_dir / journal.segment_name(seq + 1), "is missing"


DAMAGE = {
    "torn-tail": (damage_torn_tail, "DAMAGED (repairable at start)"),
    "journal-corrupt-in-the-middle": (damage_journal_middle, "DAMAGED: "),
    "snapshot-corrupt": (damage_snapshot, "DAMAGED: "),
    "segment-missing": (damage_missing_segment, "DAMAGED: "),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_dir_exits_non_zero_naming_the_damage_and_changes_nothing(
    data_dir: Path, damage: str
) -> None:
    make_damage, verdict = DAMAGE[damage]
    path, where = make_damage(data_dir)
    before = fingerprint(data_dir)

    code, output = run_inspect(data_dir)

    assert code == 1, output
    assert verdict in output
    assert path.name in output
    assert where in output
    assert fingerprint(data_dir) == before
