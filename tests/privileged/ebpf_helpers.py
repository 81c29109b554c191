"""Shared pieces of the eBPF privileged tests: a running EbpfSource collecting entries."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.sources.ebpf import EbpfConfig, EbpfSource, cgroup2_root

Entry = dict[str, Any]


class Collector:
    """Entries emitted by a source, searchable while it runs."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[Entry]) -> None:
        with self.lock:
            self.entries.extend(batch)

    def find(self, pred: Callable[[Entry], bool]) -> list[Entry]:
        with self.lock:
            return [e for e in self.entries if pred(e)]

    def wait(self, pred: Callable[[Entry], bool], timeout: float = 10.0,
             count: int = 1) -> list[Entry]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(pred)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@contextmanager
def running(cfg: EbpfConfig) -> Iterator[tuple[EbpfSource, Collector]]:
    src = EbpfSource(cfg)
    src.load()
    sink = Collector()
    src.start(sink)
    try:
        yield src, sink
    finally:
        src.stop(timeout=15)


def event(name: str, **meta: Any) -> Callable[[Entry], bool]:
    """A predicate: metadata.event == name and each metadata key equal."""
    def pred(e: Entry) -> bool:
        m = e["metadata"]
        return m.get("event") == name and all(m.get(k) == v for k, v in meta.items())
    return pred


def own_cgroup_id() -> int:
    rel = [ln for ln in Path("/proc/self/cgroup").read_text().splitlines()
           if ln.startswith("0::")][0][3:]
    return os.stat(f"{cgroup2_root()}{rel}").st_ino
