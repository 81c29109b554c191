"""Sources → early filter → bounded queue → enrichment → batches → sink.

``accept`` is the ``emit`` every source calls (thread-safe, never blocks). Entries below
their component's minimum level or matching a drop rule are counted and dropped at once
(CRITICAL and SECURITY are never dropped by rules). The queue is bounded: past
``queue_max_records`` new entries are dropped and counted, except CRITICAL/SECURITY ones.
One batcher thread takes entries, enriches them and cuts batches by records, bytes and age.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import orjson

from agent.config import AgentConfig
from agent.spool import Batch
from mohlog.model import LEVEL_RANK, NEVER_DROP, new_id

Enricher = Callable[[dict[str, Any]], None]


class Filter:
    def __init__(self, cfg: AgentConfig) -> None:
        default = cfg.min_level.get("*")
        self.min_rank = {c: LEVEL_RANK[lv] for c, lv in cfg.min_level.items() if c != "*"}
        self.default_rank = LEVEL_RANK[default] if default else None
        self.rules = [(r.field, re.compile(r.regex)) for r in cfg.drop]

    def reason(self, e: dict[str, Any]) -> str | None:
        """Why the entry is dropped ("level", "rule"), or None to keep it."""
        level = e.get("level", "INFO")
        if level in NEVER_DROP:
            return None
        rank = LEVEL_RANK.get(level, 0)
        need = self.min_rank.get(e.get("component", ""), self.default_rank)
        if need is not None and rank < need:
            return "level"
        for fld, rx in self.rules:
            if rx.search(_text(e, fld)):
                return "rule"
        return None


def _text(e: dict[str, Any], fld: str) -> str:
    if fld.startswith("metadata."):
        v: Any = e.get("metadata") or {}
        for part in fld.split(".")[1:]:
            v = v.get(part) if isinstance(v, dict) else None
        return "" if v is None else str(v)
    v = e.get(fld)
    return "" if v is None else str(v)


class Pipeline:
    def __init__(self, cfg: AgentConfig, submit: Callable[[Batch], None],
                 enrichers: list[Enricher]) -> None:
        self.cfg = cfg
        self.submit = submit
        self.enrichers = enrichers
        self.filter = Filter(cfg)
        self.events: Counter[tuple[str, str]] = Counter()     # (source, probe/event)
        self.dropped: Counter[tuple[str, str]] = Counter()    # (stage, reason)
        self.enrich_errors = 0
        self._queue: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def accept(self, entries: list[dict[str, Any]]) -> None:
        keep = []
        filt = self.filter
        check = bool(filt.rules or filt.min_rank or filt.default_rank is not None)
        for e in entries:
            src = e.get("source", "")
            ev = (e.get("metadata") or {}).get("event", "") if src == "ebpf" else ""
            self.events[(src, ev)] += 1
            if check:
                why = filt.reason(e)
                if why:
                    self.dropped[("filter", why)] += 1
                    continue
            keep.append(e)
        with self._lock:
            room = self.cfg.queue_max_records - len(self._queue)
            if room < len(keep):
                keep = self._shed(keep, room)
            self._queue.extend(keep)
        if keep and not self._ready.is_set():  # set() takes a lock and notifies
            self._ready.set()

    def _shed(self, keep: list[dict[str, Any]], room: int) -> list[dict[str, Any]]:
        """Keep order; CRITICAL/SECURITY always, the others while there is room."""
        allowed = max(0, room - sum(1 for e in keep if e.get("level") in NEVER_DROP))
        out = []
        for e in keep:
            if e.get("level") in NEVER_DROP:
                out.append(e)
            elif allowed > 0:
                out.append(e)
                allowed -= 1
        self.dropped[("queue", "full")] += len(keep) - len(out)
        return out

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after cutting a last batch of what is queued."""
        self._stop.set()
        self._ready.set()
        if self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            batch = self._cut(stopping)
            if batch is not None:
                self.submit(batch)
                continue
            if stopping:
                return
            self._ready.wait(0.05)
            self._ready.clear()

    def _cut(self, force: bool) -> Batch | None:
        """A batch when one is full or its oldest entry waited batch_max_delay_s."""
        with self._lock:
            n = len(self._queue)
            if not n:
                return None
            oldest = self._queue[0].get("_t", 0.0)
            if not oldest:
                self._queue[0]["_t"] = oldest = time.monotonic()
            due = force or n >= self.cfg.batch_max_records or \
                time.monotonic() - oldest >= self.cfg.batch_max_delay_s
            if not due:
                return None
            take = min(n, self.cfg.batch_max_records)
            entries = [self._queue.popleft() for _ in range(take)]
        return self._batch(entries)

    def _batch(self, entries: list[dict[str, Any]]) -> Batch:
        lines: list[bytes] = []
        levels: Counter[str] = Counter()
        size = 0
        rest: list[dict[str, Any]] = []
        for i, e in enumerate(entries):
            e.pop("_t", None)
            for enrich in self.enrichers:
                try:
                    enrich(e)
                except Exception:  # noqa: BLE001 - enrichment is best effort, counted
                    self.enrich_errors += 1
            line = orjson.dumps(e, default=str)
            if size + len(line) > self.cfg.batch_max_bytes and lines:
                rest = entries[i:]
                break
            lines.append(line)
            levels[e.get("level", "INFO")] += 1
            size += len(line) + 1
        if rest:
            with self._lock:
                self._queue.extendleft(reversed(rest))
        return Batch(new_id(), lines, levels)
