"""The file-operation seam under snapshots and the journal.

Everything persistence does to the disk goes through a `Files` object, so tests
can substitute one that forgets unsynced bytes at a simulated crash or fails an
fsync on demand. `OsFiles` is the real thing.
"""

from __future__ import annotations

import os
from typing import Protocol


class WritableFile(Protocol):
    def write(self, data: bytes) -> None: ...
    def sync(self) -> None:
        """Make everything written so far durable (fdatasync)."""
    def close(self) -> None: ...


class Files(Protocol):
    def create(self, path: str) -> WritableFile:
        """Create a new file (it must not exist) for writing."""
    def read(self, path: str) -> bytes: ...
    def truncate(self, path: str, size: int) -> None: ...
    def replace(self, source: str, target: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def listdir(self, directory: str) -> list[str]: ...
    def sync_dir(self, directory: str) -> None: ...


class OsFile:
    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class OsFiles:
    def create(self, path: str) -> WritableFile:
        return OsFile(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))

    def read(self, path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    def truncate(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def replace(self, source: str, target: str) -> None:
        os.replace(source, target)

    def remove(self, path: str) -> None:
        os.remove(path)

    def listdir(self, directory: str) -> list[str]:
        return os.listdir(directory)

    def sync_dir(self, directory: str) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
