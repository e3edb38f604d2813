"""An in-memory `service.storage.files.Files` that knows what a power failure would keep.

Per file it keeps the bytes readers see (the page cache) and the bytes that are
durable (as of the file's last successful sync). Per directory it keeps the
names readers see and the names that are durable (as of the directory's last
`sync_dir`). `crash()` returns the file system a restarted machine would find:

* power loss (the default): every file holds only its synced bytes, and every
  create, rename and remove not followed by a `sync_dir` is undone;
* process crash (`power_loss=False`): everything written survives (the kernel
  still has it), as after `kill -9`.

A failed sync behaves as on Linux: the bytes stay readable (the pages are kept
but marked clean), they never become durable, and later syncs of that file
report success without persisting anything.

Tests can make any operation fail with an errno (`fail`) and can hold one open
until they release it (`hold`), for example an fsync, to look at the service
while its fsync is in progress. Each operation is atomic with respect to
`crash()`. Holds block the calling thread (the service's I/O thread), never the
event loop.
"""

from __future__ import annotations

import copy
import errno as errnos
import os
import threading
from dataclasses import dataclass, field

from tests.support import eventually

OPS = ("create", "read", "truncate", "replace", "remove", "listdir", "write", "sync", "sync_dir",
       "close")

HOLD_LIMIT = 30.0
"""Seconds a held operation waits at most, so a broken test cannot hang the suite."""


@dataclass
class Inode:
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    broken: bool = False
    """A sync failed: nothing written from now on becomes durable."""


@dataclass
class Fault:
    op: str
    errno: int
    match: str = ""
    times: int | None = None
    """How many calls fail; None: every call until cleared."""
    partial: bool = False
    """For writes: half the data lands before the error (a short write)."""
    hits: int = 0


class Hold:
    """Blocks matching operations until `release()`; counts how many are waiting."""

    def __init__(self, op: str, match: str) -> None:
        self.op = op
        self.match = match
        self.entered = 0
        self._released = threading.Event()
        self._lock = threading.Lock()

    def matches(self, op: str, path: str) -> bool:
        return op == self.op and self.match in path and not self._released.is_set()

    def block(self) -> None:
        with self._lock:
            self.entered += 1
        if not self._released.wait(HOLD_LIMIT):
            raise TimeoutError(f"held {self.op} was never released")

    def release(self) -> None:
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    async def wait_entered(self, count: int = 1) -> None:
        """Wait (without blocking the loop) until `count` operations are held."""
        await eventually(lambda: self.entered >= count, f"{count} held {self.op} calls")



class FakeFile:
    def __init__(self, files: FakeFiles, path: str, inode: Inode) -> None:
        self._files = files
        self._path = path
        self._inode = inode
        self._closed = False

    def write(self, data: bytes) -> None:
        self._files._file_op("write", self._path, self._inode, self._closed, data)

    def sync(self) -> None:
        self._files._file_op("sync", self._path, self._inode, self._closed, b"")

    def close(self) -> None:
        self._files._file_op("close", self._path, self._inode, self._closed, b"")
        self._closed = True


class FakeFiles:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._names: dict[str, dict[str, Inode]] = {}
        self._durable_names: dict[str, dict[str, Inode]] = {}
        self._faults: list[Fault] = []
        self._holds: list[Hold] = []
        self.calls: list[tuple[str, str]] = []
        """Every operation as (op, path), in order, including failed ones."""

    # -- test controls ---------------------------------------------------------

    def fail(self, op: str, errno: int, *, match: str = "", times: int | None = None,
             partial: bool = False) -> Fault:
        """Make `op` on paths containing `match` raise OSError(errno)."""
        assert op in OPS, op
        fault = Fault(op, errno, match, times, partial)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def hold(self, op: str, *, match: str = "") -> Hold:
        """Hold every `op` on paths containing `match` until the Hold is released."""
        assert op in OPS, op
        hold = Hold(op, match)
        with self._lock:
            self._holds.append(hold)
        return hold

    def release_all(self) -> None:
        with self._lock:
            holds, self._holds = self._holds, []
        for hold in holds:
            hold.release()

    def count(self, op: str, match: str = "") -> int:
        with self._lock:
            return sum(1 for done, path in self.calls if done == op and match in path)

    def crash(self, *, power_loss: bool = True) -> FakeFiles:
        """The file system a restart would find, as a new FakeFiles (this one lives on)."""
        with self._lock:
            survivor = FakeFiles()
            memo: dict[int, object] = {}
            if power_loss:
                survivor._names = copy.deepcopy(self._durable_names, memo)
                for names in survivor._names.values():
                    for inode in names.values():
                        inode.data = bytearray(inode.durable)
                survivor._durable_names = {d: dict(n) for d, n in survivor._names.items()}
            else:
                survivor._names = copy.deepcopy(self._names, memo)
                survivor._durable_names = copy.deepcopy(self._durable_names, memo)
            # Linux forgets a writeback error at reboot, and after a process crash the new
            # process opens fresh descriptors: syncs work again either way.
            for names in (*survivor._names.values(), *survivor._durable_names.values()):
                for inode in names.values():
                    inode.broken = False
            return survivor

    def durable(self, path: str) -> bytes | None:
        """What `path` would hold after a power loss (None: it would not exist)."""
        directory, name = _split(path)
        with self._lock:
            inode = self._durable_names.get(directory, {}).get(name)
            return None if inode is None else inode.durable

    def put(self, path: str, data: bytes) -> None:
        """Create or overwrite a file durably (for setting up damaged data dirs)."""
        directory, name = _split(path)
        with self._lock:
            inode = Inode(bytearray(data), data)
            self._names.setdefault(directory, {})[name] = inode
            self._durable_names.setdefault(directory, {})[name] = inode

    # -- Files -----------------------------------------------------------------

    def create(self, path: str) -> FakeFile:
        directory, name = _split(path)
        with self._gate("create", path):
            names = self._names.setdefault(directory, {})
            if name in names:
                raise FileExistsError(errnos.EEXIST, os.strerror(errnos.EEXIST), path)
            inode = names[name] = Inode()
            return FakeFile(self, path, inode)

    def read(self, path: str) -> bytes:
        with self._gate("read", path):
            return bytes(self._lookup(path).data)

    def truncate(self, path: str, size: int) -> None:
        with self._gate("truncate", path):
            inode = self._lookup(path)
            del inode.data[size:]
            if not inode.broken:  # OsFiles.truncate fsyncs
                inode.durable = bytes(inode.data)

    def replace(self, source: str, target: str) -> None:
        with self._gate("replace", source):
            inode = self._lookup(source)
            source_dir, source_name = _split(source)
            target_dir, target_name = _split(target)
            del self._names[source_dir][source_name]
            self._names.setdefault(target_dir, {})[target_name] = inode

    def remove(self, path: str) -> None:
        with self._gate("remove", path):
            self._lookup(path)
            directory, name = _split(path)
            del self._names[directory][name]

    def listdir(self, directory: str) -> list[str]:
        with self._gate("listdir", directory):
            return sorted(self._names.get(os.path.normpath(directory), {}))

    def sync_dir(self, directory: str) -> None:
        key = os.path.normpath(directory)
        with self._gate("sync_dir", key):
            self._durable_names[key] = dict(self._names.get(key, {}))

    # -- internals -------------------------------------------------------------

    def _file_op(self, op: str, path: str, inode: Inode, closed: bool, data: bytes) -> None:
        with self._gate(op, path, data=data, inode=inode):
            if closed:
                raise OSError(errnos.EBADF, f"{op} on a closed file", path)
            if op == "write":
                inode.data += data
            elif op == "sync" and not inode.broken:
                inode.durable = bytes(inode.data)

    def _lookup(self, path: str) -> Inode:
        directory, name = _split(path)
        inode = self._names.get(directory, {}).get(name)
        if inode is None:
            raise FileNotFoundError(errnos.ENOENT, os.strerror(errnos.ENOENT), path)
        return inode

    def _gate(self, op: str, path: str, *, data: bytes = b"",
              inode: Inode | None = None) -> _Locked:
        """Record the call, wait out any hold, raise any fault; then lock for the op."""
        with self._lock:
            self.calls.append((op, path))
            holds = [hold for hold in self._holds if hold.matches(op, path)]
        for hold in holds:
            hold.block()
        with self._lock:
            for fault in self._faults:
                if fault.op == op and fault.match in path and fault.times != 0:
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                    if op == "write" and fault.partial and inode is not None:
                        inode.data += data[: len(data) // 2]
                    if op == "sync" and inode is not None:
                        inode.broken = True
                    raise OSError(fault.errno, os.strerror(fault.errno), path)
        return _Locked(self._lock)


class _Locked:
    """Holds the FakeFiles lock for the body of one operation."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _split(path: str) -> tuple[str, str]:
    directory, name = os.path.split(os.path.normpath(path))
    return directory, name
