"""Helpers for tests about process lifetimes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def running(pid: int) -> bool:
    """Is the process there and not a zombie (ended, not yet reaped by its parent)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def ends(pid: int, within_s: float) -> bool:
    """Wait up to ``within_s`` seconds for ``pid`` to end; whether it did."""
    deadline = time.monotonic() + within_s
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


def ends_after_killing(owner: subprocess.Popen, pid: int, within_s: float) -> bool:
    """Kill ``owner`` with -9; whether ``pid`` (its child) then ends within ``within_s``
    seconds. A ``pid`` still running is killed here: a failing test leaves nothing behind."""
    owner.kill()
    owner.wait()
    ok = ends(pid, within_s)
    if not ok and running(pid):
        os.kill(pid, signal.SIGKILL)
    return ok


@contextmanager
def killed_on_error(owner: subprocess.Popen) -> Iterator[None]:
    """``owner`` killed (and waited for) when the block raises: a failing set-up leaves
    nothing running."""
    try:
        yield
    except BaseException:
        owner.kill()
        owner.wait()
        raise
