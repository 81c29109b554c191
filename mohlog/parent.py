"""Child processes that end with the process that started them.

A process killed with -9 cannot tell its children: the embedding child (a pool worker, which
holds both ends of its own call queue) would wait for ever with the model's memory, and the
agent started by ``mohlog run`` would keep capturing beside the next run's agent. Each
watches its parent's pid instead (a reparented process sees another ``getppid()``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

PARENT_ENV = "MOHLOG_PARENT_PID"


def watch(ppid: int, on_gone: Callable[[], None], every_s: float = 0.5) -> threading.Thread:
    """Call ``on_gone()`` once this process's parent is no longer ``ppid`` (checked every
    ``every_s`` seconds on a daemon thread, started here)."""
    def loop() -> None:
        while os.getppid() == ppid:
            time.sleep(every_s)
        on_gone()
    t = threading.Thread(target=loop, name="parent-watch", daemon=True)
    t.start()
    return t


def watch_from_env(on_gone: Callable[[], None]) -> bool:
    """``watch`` the pid named by ``MOHLOG_PARENT_PID`` when set (``mohlog run`` sets it for
    the agent); whether it is watched."""
    value = os.environ.get(PARENT_ENV, "")
    if not value.isdigit():
        return False
    watch(int(value), on_gone)
    return True
