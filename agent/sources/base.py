"""The contract every agent source follows (roles as in Vector: config, run, counters).

A source runs in its own thread (bcc's ring-buffer poll and socket reads block)
and hands lists of entry dicts (``mohlog.model.FIELDS``) to ``emit``. ``emit``
is thread-safe and never blocks for long: the pipeline behind it batches,
filters and spools.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from mohlog import log

Emit = Callable[[list[dict[str, Any]]], None]


class Source:
    """Base class: subclasses implement ``run_forever`` and check ``self.stopping``."""

    name: str = "source"

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, emit: Emit) -> None:
        self._thread = threading.Thread(
            target=self._supervised, args=(emit,), name=f"source-{self.name}", daemon=True
        )
        self._thread.start()

    def _supervised(self, emit: Emit) -> None:
        """``run_forever``, started again after an error it did not expect (a file turned
        unreadable, a full disk), 1 s later doubling to 60 s: a source whose thread died
        left an agent running that collected nothing more from it. Said in the log (once
        a minute at most) and counted (``restarts``)."""
        wait, said = 1.0, 0.0
        while not self.stopping.is_set():
            try:
                self.run_forever(emit)
                return
            except Exception:  # noqa: BLE001 - logged; the source starts again
                self.counters["restarts"] += 1
                if time.monotonic() - said > 60:
                    said = time.monotonic()
                    log.agent.exception("source %s failed; starting it again in %.0f s",
                                        self.name, wait)
                self.stopping.wait(wait)
                wait = min(60.0, wait * 2)

    def run_forever(self, emit: Emit) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        return dict(self.counters)
