"""Helpers for tests about process lifetimes."""

from __future__ import annotations

import time
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
