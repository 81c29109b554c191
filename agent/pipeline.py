"""Sources → early filter → bounded queue → enrichment → batches → sink.

``accept`` is the ``emit`` every source calls (thread-safe, never blocks). Entries below
their component's minimum level or matching a drop rule are counted and dropped at once
(CRITICAL and SECURITY are never dropped by rules). The queue is bounded: past
``queue_max_records`` new entries are dropped and counted, except CRITICAL/SECURITY ones.
One batcher thread takes entries, enriches them and cuts batches by records, bytes and age:
a batch is due once ``batch_cut_records`` are queued and takes up to ``batch_max_records``,
so full-size batches come only from a backlog (a storm) and fewer entries wait in memory.
"""

from __future__ import annotations

import operator
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import orjson

from agent import arrow_writer
from agent.config import AgentConfig
from agent.spool import Batch
from mohlog import log
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
        self.arrow_fallbacks = 0  # batches sent as NDJSON because a field did not fit
        # Called after a batch is handed on while the queue holds less than a batch (the
        # agent: tuning.trim, free heap back to the kernel); skipped in backlogs.
        self.after_batch: Callable[[], None] | None = None
        self.cut_records = min(cfg.batch_cut_records, cfg.batch_max_records)
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
                try:
                    self.submit(batch)
                except Exception:  # noqa: BLE001 - the thread must outlive one batch
                    log.agent.exception("pipeline: a batch of %d entries could not be "
                                        "handed to the spool; it is lost", batch.records)
                    self.dropped[("spool", "error")] += batch.records
                del batch
                if self.after_batch is not None and len(self._queue) < self.cut_records:
                    self.after_batch()
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
            due = force or n >= self.cut_records or \
                time.monotonic() - oldest >= self.cfg.batch_max_delay_s
            if not due:
                return None
            take = min(n, self.cfg.batch_max_records)
            entries = [self._queue.popleft() for _ in range(take)]
        return self._batch(entries)

    def _batch(self, entries: list[dict[str, Any]]) -> Batch:
        for e in entries:
            e.pop("_t", None)
        for enrich in self.enrichers:
            many = getattr(enrich, "many", None)
            if many is not None:  # whole batch at once (ProcCache: one look-up per pid)
                try:
                    many(entries)
                    continue
                except Exception:  # noqa: BLE001 - redone entry by entry below
                    pass
            for e in entries:
                try:
                    enrich(e)
                except Exception:  # noqa: BLE001 - enrichment is best effort, counted
                    self.enrich_errors += 1
        if self.cfg.batch_format == "arrow":
            batch = self._arrow(entries)
            if batch is not None:
                return batch
            self.arrow_fallbacks += 1
        return self._ndjson(entries)

    def _ndjson(self, entries: list[dict[str, Any]]) -> Batch:
        lines: list[bytes] = []
        levels: Counter[str] = Counter()
        size = 0
        rest: list[dict[str, Any]] = []
        for i, e in enumerate(entries):
            # orjson's bytes keep a 4 kB allocation however short: a copy of the right size
            line = memoryview(orjson.dumps(e, default=str)).tobytes()
            if size + len(line) > self.cfg.batch_max_bytes and lines:
                rest = entries[i:]
                break
            lines.append(line)
            levels[e.get("level", "INFO")] += 1
            size += len(line) + 1
        self._put_back(rest)
        return Batch(new_id(), lines, levels)

    def _put_back(self, rest: list[dict[str, Any]]) -> None:
        if rest:
            with self._lock:
                self._queue.extendleft(reversed(rest))

    def _arrow(self, entries: list[dict[str, Any]]) -> Batch | None:
        """The entries as one Arrow table (SCHEMA of server/store/batch.py: metadata and
        context as JSON text), or None when some field has a type the columns do not take
        (the NDJSON batch then lets the hub name the bad record).

        Built without a Python loop over the fields: one itemgetter per entry and zip()
        turn the entries into columns in C; a context shared by many entries (the proc
        cache's dict of one pid) is serialised once per batch; the IPC stream is written by
        agent/arrow_writer.py (no pyarrow in the agent: ~55 MB resident less)."""
        try:
            rows = list(map(_ROW, entries))
        except KeyError:  # some field missing: null
            rows = [tuple(e.get(k) for k in _NAMES) for e in entries]
        cols = [list(c) for c in zip(*rows, strict=True)]
        metas = list(map(_dumps, cols[-2]))
        ctxs = _contexts(cols[-1])
        n = len(rows)
        size = (sum(map(len, metas)) + sum(map(len, ctxs)) + 200 * n
                + sum(len(m) for m in cols[_MESSAGE] if m))
        if size > self.cfg.batch_max_bytes and n > 1:
            n, size = 0, 0
            for meta_b, ctx_b, msg in zip(metas, ctxs, cols[_MESSAGE], strict=True):
                size += len(meta_b) + len(ctx_b) + len(msg or "") + 200
                if size > self.cfg.batch_max_bytes and n:
                    break
                n += 1
            cols = [c[:n] for c in cols]
            metas, ctxs = metas[:n], ctxs[:n]
        try:
            ipc = arrow_writer.stream([*cols[:-2], _json_column(cols[-2], metas),
                                    _json_column(cols[-1], ctxs)])
        except (OverflowError, TypeError, ValueError):
            return None
        self._put_back(entries[n:])
        levels = Counter(cols[_LEVEL])
        if None in levels:
            levels["INFO"] += levels.pop(None)
        return Batch(new_id(), levels=levels, fmt="arrow", ipc=ipc, records=n)


def _dumps(obj: Any) -> str:
    """JSON text as str: orjson's bytes keep a 4 kB allocation however short the JSON
    (10,000 of them held 40 MB per batch); decoded, it takes its own size (+30 ns)."""
    return "null" if obj is None else orjson.dumps(obj, default=str).decode()


def _contexts(ctxs: list[Any]) -> list[str]:
    """Serialised contexts; {"proc": info} with the same info object serialised once."""
    memo: dict[int, str] = {}
    out: list[str] = []
    append = out.append
    for ctx in ctxs:
        if type(ctx) is dict and len(ctx) == 1 and "proc" in ctx:
            key = id(ctx["proc"])  # the objects live in ctxs: ids are not reused meanwhile
            data = memo.get(key)
            if data is None:
                data = memo[key] = orjson.dumps(ctx, default=str).decode()
            append(data)
        else:
            append(_dumps(ctx))
    return out


def _json_column(objs: list[Any], texts: list[str]) -> list[str | None]:
    """The JSON texts of metadata or context objects, None where the object is None;
    anything but a dict is refused (ValueError: the batch goes as NDJSON)."""
    kinds = set(map(type, objs))
    if not kinds <= _DICT_OR_NONE and not all(o is None or isinstance(o, dict) for o in objs):
        raise ValueError("metadata and context must be objects")
    if type(None) not in kinds:
        return texts  # type: ignore[return-value]
    return [None if o is None else t for o, t in zip(objs, texts, strict=True)]


_DICT_OR_NONE = frozenset({dict, type(None)})
# The hub's record schema (server/store/batch.py SCHEMA; agent/arrow_writer.py writes it).
_NAMES = tuple(name for name, _typ in arrow_writer.FIELDS)
_ROW = operator.itemgetter(*_NAMES)
_LEVEL, _MESSAGE = _NAMES.index("level"), _NAMES.index("message")
