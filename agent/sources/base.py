"""The contract every agent source follows (roles as in Vector: config, run, counters).

A source runs in its own thread (bcc's ring-buffer poll and socket reads block)
and hands lists of entry dicts (``mohlog.model.FIELDS``) to ``emit``. ``emit``
is thread-safe and never blocks for long: the pipeline behind it batches,
filters and spools.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

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
            target=self.run_forever, args=(emit,), name=f"source-{self.name}", daemon=True
        )
        self._thread.start()

    def run_forever(self, emit: Emit) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        return dict(self.counters)
