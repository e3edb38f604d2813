"""ScratchCluster: a throwaway PostgreSQL cluster for tests and demos, never for data.

`initdb` in a fresh temporary directory, configured for logical replication, started on
a loopback port; `stop()` stops it and removes the directory. PostgreSQL refuses to run
as root, so as root the cluster runs as the `postgres` user (`runuser`), in a directory
that user owns, with its log beside it.

    with ScratchCluster.start() as cluster:
        dsn = cluster.dsn("postgres")

Needs Debian's `postgresql-15` (the binaries under /usr/lib/postgresql/15/bin), or
`pg_config --bindir` on PATH.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "16",
    "max_wal_senders": "16",
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    # Keepalives from the walsender every second at most: an idle operator learns the
    # end of WAL promptly even without asking (it asks anyway).
    "wal_sender_timeout": "60s",
    "log_min_messages": "warning",
}


class ClusterError(RuntimeError):
    pass


def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are, or None when PostgreSQL is not installed."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                    check=False).stdout.strip())
        if (found / "initdb").exists():
            return found
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ScratchCluster:
    directory: Path
    port: int
    binaries: Path
    user: str | None
    """The OS user the cluster runs as (None: this one)."""

    @classmethod
    @contextlib.contextmanager
    def start(cls, port: int | None = None, *, fsync: bool = True) -> Iterator[ScratchCluster]:
        cluster = cls.create(port, fsync=fsync)
        try:
            yield cluster
        finally:
            cluster.stop()

    @classmethod
    def create(cls, port: int | None = None, *, fsync: bool = True) -> ScratchCluster:
        binaries = bin_dir()
        if binaries is None:
            raise ClusterError("PostgreSQL is not installed: apt-get install postgresql-15")
        user = "postgres" if os.geteuid() == 0 else None
        directory = Path(tempfile.mkdtemp(prefix="process-status-pg-"))
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        cluster = cls(directory, port or _free_port(), binaries, user)
        try:
            cluster._run("initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres",
                         "-E", "UTF8", "--no-sync")
            settings = {**SETTINGS, "port": str(cluster.port),
                        "unix_socket_directories": f"'{directory}'",
                        "fsync": "on" if fsync else "off"}
            with open(cluster.data / "postgresql.conf", "a", encoding="utf-8") as conf:
                conf.write("".join(f"{key} = {value}\n" for key, value in settings.items()))
            cluster._run("pg_ctl", "-D", str(cluster.data), "-l", str(cluster.log_path),
                         "-w", "-t", "60", "start")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def stop(self) -> None:
        """Stop the server (fast: no waiting for clients) and remove the directory."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(ClusterError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30",
                          "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.binaries / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              cwd=self.directory, timeout=120)
        if done.returncode != 0:
            raise ClusterError(
                f"{program} failed ({done.returncode}) after {time.monotonic() - started:.1f} s:"
                f" {done.stderr.strip() or done.stdout.strip()}\n{self.log()[-2000:]}")
