"""An exclusive lock of a data or state directory, for the life of its holder."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from mohlog.errors import MohlogError


class InUse(MohlogError):
    """The directory is held by another process."""
    status = 409
    code = "in_use"


class DirLock:
    """An exclusive lock of a directory (``flock`` on ``DIR/lock``, the holder's pid
    written in it), held from ``acquire`` to ``release``: two hubs on one data directory
    would each replay and remove the other's write-ahead log and segment files, two
    agents on one state directory would both replay its spool and tail from its
    positions. The kernel drops it when the holder ends, even by kill -9, so a crash
    never leaves it stale."""

    def __init__(self, directory: Path, holder: str = "hub") -> None:
        self.path = directory / "lock"
        self.holder = holder
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        private(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            what = "data" if self.holder == "hub" else "state"
            raise InUse(f"{what} directory {self.path.parent} is in use by another "
                        f"{self.holder} (pid {holder})", pid=holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)               # closing drops the flock
            self._fd = None


def private(directory: Path) -> None:
    """Logs hold what programs were run with (their arguments), who logged in and from
    where: a data or state directory is not for every user. One made by mohlog is 0700;
    an existing one readable by every user loses those rights (its group's are kept),
    and the log says so."""
    mode = directory.stat().st_mode & 0o777
    if mode & 0o007:
        os.chmod(directory, mode & ~0o007)
        logging.getLogger("mohlog").warning(
            "%s was open to every user (%o): now %o", directory, mode, mode & ~0o007)
