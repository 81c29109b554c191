"""Small durable-file helpers shared by the WAL and the segments."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mohlog.errors import MohlogError


class InUse(MohlogError):
    """The data directory is held by another process."""
    status = 409
    code = "in_use"


class DirLock:
    """An exclusive lock of a data directory (``flock`` on ``DIR/lock``, the holder's pid
    written in it), held from ``acquire`` to ``release``: two hubs on one directory would
    each replay and remove the other's write-ahead log and segment files. The kernel drops
    it when the holder ends, even by kill -9, so a crash never leaves it stale."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise InUse(f"data directory {self.path.parent} is in use by another hub "
                        f"(pid {holder})", pid=holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)               # closing drops the flock
            self._fd = None


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or unlink in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
