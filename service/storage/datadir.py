"""An exclusive lock on the data dir, so only one process ever writes it.

Two writers would each keep their own in-memory state and overwrite each other's
snapshots and journal. That happens when gunicorn is run by hand with more than
one worker, or a second instance is pointed at the same directory: the second
one to start finds the lock held and refuses to start, saying why.
"""

from __future__ import annotations

import fcntl
import os

LOCK_FILE = "LOCK"


class DataDirLocked(Exception):
    pass


class DataDirLock:
    def __init__(self, data_dir: str, owner: int | None = None) -> None:
        """`owner`: the pid that stops the holder (under gunicorn, the master, not the worker
        that holds the lock: killing a worker only makes gunicorn start another)."""
        self.path = os.path.join(data_dir, LOCK_FILE)
        self.owner = owner
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DataDirLocked(
                f"data dir {os.path.dirname(self.path)} is in use by pid {holder} (stop it with "
                f"kill -TERM {holder}). "
                "process-status keeps its state in one process: run gunicorn with exactly one "
                "worker (--workers 1), and give each instance its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(self.owner or os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
