"""The storage engine: durable append, memory tail, segments, queries, retention."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import shutil
import tarfile
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from embeddings.miner import TemplateMiner
from mohlog import log
from mohlog.dirlock import DirLock
from mohlog.errors import Busy, Conflict, CorruptData, InvalidInput, NotFound
from mohlog.memory import release_unused
from mohlog.model import iso_utc
from server.store import batch as batchmod
from server.store import filters, prune, words
from server.store import params as paramsmod
from server.store.cache import SizedLRU
from server.store.config import StoreConfig
from server.store.fsutil import fsync_dir
from server.store.metrics import StoreMetrics
from server.store.params import unpacked
from server.store.query import LogQuery, decode_cursor, encode_cursor
from server.store.scan import DICTIONARY, RowGroup, SegmentReader, batched
from server.store.segments import (
    ROLLUP_KEYS,
    SEG_COLUMNS,
    Manifest,
    SegmentInfo,
    file_digest,
    info_from_file,
    partition_name,
    read_rollup,
    rollup,
    rollup_path,
    sort_order,
    templates_of,
    verify,
    write_rollup,
    write_segment,
)
from server.store.wal import Pending, Wal, encode, encode_raw

COUNTED = ("level", "component", "host")  # fields counted in stats
# After a flush of this many records or a merge, once writing has been quiet for 5 s, the
# memory it freed goes back to the system (small flushes of a trickle leave little).
RELEASE_AFTER_ROWS = 100_000
FANOUT_MAX = 1000           # acknowledged batches waiting to be shown to the live tails
WARM_SEGMENTS = 2000  # footers read in the background at start (newest first)
MEM_SCHEMA = batchmod.SCHEMA.append(pa.field("template_id", pa.uint64())).append(
    pa.field("params", pa.list_(pa.string())))


@dataclass
class Batch:
    table: pa.Table          # MEM_SCHEMA
    raw_bytes: int
    record: bytes            # the encoded WAL record (no key yet: see Store.append)
    raw: bytes | None = None           # an Arrow body kept as received (batch.Batch)
    defaults: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)  # for the sender (batch.Batch)
    early: int = 0                     # records dated before 2000
    future: int = 0                    # records dated more than a day ahead

    @property
    def rows(self) -> int:
        return self.table.num_rows


@dataclass
class AppendResult:
    accepted: int
    duplicate: bool


@dataclass
class SearchPage:
    records: list[dict[str, Any]]
    next_cursor: str | None


@dataclass
class Chunk:
    wal: int
    key: str | None
    table: pa.Table
    raw_bytes: int
    added: float = field(default_factory=time.monotonic)


@dataclass
class Staged:
    """One time partition of a flush, mined and sorted, waiting for the segment writer."""
    partition: str
    table: pa.Table             # stored columns, in stored (time) order
    messages: pa.ChunkedArray   # this part's messages, or the flush's unsorted ones
    order: np.ndarray | None    # then messages.take(order) is this part's, stored order


class Subscription:
    """New records matching a query, as lists, for the live tail."""

    def __init__(self, store: Store, q: LogQuery, maxsize: int = 1000) -> None:
        self.store, self.query = store, q
        self.queue: asyncio.Queue[list[dict] | None] = asyncio.Queue(maxsize)  # None: ended
        self.loop = asyncio.get_running_loop()
        self.dropped = 0

    def offer(self, records: list[dict]) -> None:
        try:
            self.queue.put_nowait(records)
        except asyncio.QueueFull:
            self.dropped += len(records)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> list[dict]:
        recs = await self.queue.get()
        if recs is None:
            raise StopAsyncIteration
        return recs

    def close(self) -> None:
        self.store._subs.discard(self)

    def end(self) -> None:
        """Tell the reader the stream is over (``None`` on the queue: the hub stops)."""
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()      # a record list dropped to make room


class Store:
    """See server/store/__init__.py for the contract."""

    def __init__(self, cfg: StoreConfig, registry: Any = None) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.data_dir)
        self._dir_lock = DirLock(self.dir)
        self.seg_dir = self.dir / "segments"
        self.archive_dir = self.dir / "archive"
        self.metrics = StoreMetrics(registry)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)   # (dirlock.private)
        self.miner = TemplateMiner()              # its state is loaded by open(), locked
        self.miner.state_path = self.dir / "templates.json"
        self.wal = Wal(self.dir / "wal", self.metrics.fsync_seconds.observe)
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._restore_lock = threading.Lock()
        self._dates_said = -3600.0              # when wrongly dated records were logged
        # (the names of the archive's files, its readable archives): see _archives
        self._archived: tuple[int, list[dict[str, Any]]] | None = None
        self._chunks: list[Chunk] = []
        self._tail_n = 0                # rows in self._chunks
        self._segments: list[SegmentInfo] = []
        self._corrupt: list[dict] = []
        self._compacting: Future[int] | None = None
        self._compacted_at = time.monotonic()   # first look one flush interval after
        self._unmergeable: set[str] = set()     # a merge of theirs failed: left alone
        self._indexed: set[str] = set()     # word index with parameter filters (or none)
        self._doomed: list[tuple[float, list[str]]] = []   # merged away: (when, paths)
        self._manifest = Manifest([])
        self._keys: OrderedDict[str, int] = OrderedDict()
        self._inflight: dict[str, Future] = {}
        self._subs: set[Subscription] = set()
        self._fanout: asyncio.Task | None = None        # matches batches for the tails
        self._fanout_q: asyncio.Queue[pa.Table] | None = None
        self._counts: dict[str, Counter] = {name: Counter() for name in COUNTED}  # segments'
        self._rate: deque[tuple[float, int]] = deque()   # (time, rows), a minute
        self._stop = threading.Event()
        self._bg: threading.Thread | None = None
        self.reader = SegmentReader(self.seg_dir)
        # Per-segment indexes kept in memory, least recently used dropped past the budget
        # (they are read again from beside their segment when needed).
        self._rollups: SizedLRU[pa.Table] = SizedLRU(cfg.index_cache_bytes // 4,
                                                     lambda t: t.nbytes)
        self._words: SizedLRU[words.WordIndex] = SizedLRU(cfg.index_cache_bytes,
                                                          lambda w: w.nbytes)
        self._classes: dict[tuple, Any] = {}
        self._scan_pool = ThreadPoolExecutor(2, thread_name_prefix="scan")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="segment-writer")
        self._index_pool = ThreadPoolExecutor(1, thread_name_prefix="segment-index")
        self._writing: Future[int] | None = None
        self._taken = 0       # chunks of WAL files <= this are being (or were) written

    # ---- lifecycle ----------------------------------------------------------
    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._open_sync)

    def lock(self) -> None:
        """Take the data directory for this process (InUse if another one holds it)."""
        self._dir_lock.acquire()

    def _open_sync(self) -> None:
        self.lock()                     # first: nothing of the directory touched before
        for d in (self.dir, self.seg_dir, self.archive_dir):
            d.mkdir(parents=True, exist_ok=True)
        for tmp in self.seg_dir.rglob(".tmp-*"):
            tmp.unlink(missing_ok=True)
        lost = not self._load_templates()
        self._manifest = self._read_manifest()
        self._taken = self._manifest.wal_upto
        self._remove_orphans()
        self._load_segments()
        if self.cfg.templates and lost and self._segments:
            self._recover_templates()
        self._load_keys()
        replayed = 0
        for n, key, table in self.wal.replay(self._manifest.wal_upto):
            table = _untemplated(table)
            self._chunks.append(Chunk(n, key, table, _raw_estimate(table)))
            self._tail_n += table.num_rows
            self._remember(key, table.num_rows)
            replayed += table.num_rows
        self.wal.open_next()
        self.wal.start()
        self._bg = threading.Thread(target=self._background, name="store-bg", daemon=True)
        self._bg.start()
        threading.Thread(target=self.warm, name="store-warm", daemon=True).start()
        log.store.info("store open: %d segments, %d corrupt, %d records replayed from the WAL",
                       len(self._segments), len(self._corrupt), replayed)

    def warm(self) -> None:
        """Load, in the background once open, what the first queries would otherwise load
        themselves (~50-100 ms each on the bench store): the aggregation engine (DuckDB),
        the C helpers of searches, the footers of the newest WARM_SEGMENTS segments."""
        try:
            import server.store.aggregate  # noqa: F401 - imports DuckDB
            filters._native()
            words._native()
            paramsmod._lib(True)
            with self._lock:
                segs = sorted(self._segments, key=lambda s: s.max_ts, reverse=True)
            for s in segs[:WARM_SEGMENTS]:
                if self._stop.is_set():
                    return
                self.reader.metadata(s)
        except Exception:  # noqa: BLE001 - only a head start: queries load it anyway
            log.store.warning("warming the store up failed", exc_info=True)

    def _load_templates(self) -> bool:
        """Load the template state: False when there is none, or only a damaged one (moved
        aside as ``templates.json.damaged-TIME``); the segments' footers then give the
        texts back (``_recover_templates``)."""
        if not self.miner.state_path:
            return True
        path = Path(self.miner.state_path)
        if not path.exists():
            return False
        try:
            self.miner.load()
            return True
        except CorruptData as err:
            aside = _set_aside(path)
            log.store.error("%s: moved to %s; template texts taken back from the segments",
                            err.message, aside.name)
            return False

    def _recover_templates(self) -> None:
        """Template texts from the segments' footers (the state lost or damaged), so their
        messages render again; mining goes on from there."""
        texts: dict[int, str] = {}
        without = 0
        for s in self._segments:
            try:
                got = templates_of(self.seg_dir / s.path)
            except (OSError, pa.ArrowInvalid, ValueError, zstandard.ZstdError) as err:
                log.store.error("segment %s: its templates cannot be read: %s", s.path, err)
                got = None
            if got is None:
                without += 1
            else:
                texts.update(got)
        added = self.miner.adopt(texts)
        if self.miner.state_path:
            self.miner.save()
        log.store.warning("template state rebuilt: %d templates from %d segments' footers%s",
                          added, len(self._segments) - without,
                          f"; {without} segments from before footers held them cannot be "
                          "rendered" if without else "")

    def _read_manifest(self) -> Manifest:
        """The manifest; when it is missing though segment files exist, or damaged (moved
        aside as ``manifest.json.damaged-TIME``), one made anew from the segment files, so
        their records are served again. The WAL is then replayed whole: records flushed
        just before the loss may be served twice, none is lost."""
        path = self.dir / "manifest.json"
        if not path.exists():
            if any(self.seg_dir.glob("*/[0-9]*.parquet")):
                log.store.error("manifest %s is missing though segment files exist: "
                                "rebuilding it from them", path)
                return self._rebuilt_manifest()
            return Manifest([])
        try:
            return Manifest.load(path)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            aside = _set_aside(path)
            log.store.error("manifest %s is damaged (%s): moved to %s; rebuilding it from "
                            "the segment files", path, err, aside.name)
            return self._rebuilt_manifest()

    def _rebuilt_manifest(self) -> Manifest:
        segs, numbers = [], [0]
        for f in sorted(self.seg_dir.glob("*/[0-9]*.parquet")):
            rel = f"{f.parent.name}/{f.name}"
            numbers.append(int(f.name.split(".")[0]))
            try:
                segs.append(info_from_file(f, rel))
            except (OSError, pa.ArrowInvalid, ValueError) as err:
                aside = self.dir / "damaged" / rel          # (out of the orphans' way)
                aside.parent.mkdir(parents=True, exist_ok=True)
                f.replace(aside)
                log.store.error("segment file %s is unreadable (%s): left out, moved to %s",
                                rel, err, aside)
        man = Manifest(segs, wal_upto=0, next_segment=max(numbers) + 1)
        man.save(self.dir / "manifest.json")
        log.store.warning("manifest rebuilt from %d segment files (%d records); the WAL is "
                          "replayed whole", len(segs), sum(s.rows for s in segs))
        return man

    def _remove_orphans(self) -> None:
        """Delete the files of segments the manifest does not name though it numbered
        them (below its next number): those a merge replaced when the hub stopped before
        deleting them, or a restore cut short. Files numbered past it (a write cut short)
        are overwritten by the next segment of their number. (A manifest lost or damaged
        is first rebuilt from the files: see _read_manifest.)"""
        named = {s.path for s in self._manifest.segments}
        gone = 0
        for f in self.seg_dir.glob("*/*"):
            stem = f.name.split(".", 1)[0]
            if stem.isdigit() and int(stem) < self._manifest.next_segment and \
                    f"{f.parent.name}/{stem}.parquet" not in named:
                f.unlink(missing_ok=True)
                gone += 1
        if gone:
            log.store.info("removed %d files of segments the manifest no longer names", gone)

    def _load_segments(self) -> None:
        good = []
        for s in self._manifest.segments:
            path = self.seg_dir / s.path
            if verify(path, s.xxh64):
                good.append(s)
                self._count_segment(s)
            else:
                log.store.error("segment %s is corrupt or missing: skipped", s.path)
                self._corrupt.append({"path": s.path, "rows": s.rows})
                self.metrics.corrupt_segments.inc()
        self._segments = good

    def _count_segment(self, s: SegmentInfo) -> None:
        """Add a segment's records to the per level/component/host counts."""
        _add_counts(self._counts, self._segment_counts(s))

    def _segment_counts(self, s: SegmentInfo) -> dict[str, Counter]:
        """A segment's records per level/component/host, from its pre-aggregates (a small
        sidecar) rather than its columns."""
        agg = self.rollup_of(s)
        out: dict[str, Counter] = {}
        for name in COUNTED:
            out[name] = Counter({item[name]: item["n_sum"] for item in
                                 agg.group_by(name).aggregate([("n", "sum")]).to_pylist()})
        return out

    async def close(self) -> None:
        self._stop.set()
        if self._fanout is not None:
            self._fanout.cancel()
        if self._bg:
            await asyncio.get_running_loop().run_in_executor(None, self._bg.join, 30)
        self.wal.stop()
        self._scan_pool.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True)
        self._index_pool.shutdown(wait=True)
        with self._lock:
            if self.miner.state_path:
                self.miner.save()
        self._dir_lock.release()

    # ---- ingest -------------------------------------------------------------
    def parse(self, body: bytes, content_encoding: str | None = None,
              content_type: str | None = None) -> Batch:
        """Decode, validate and template one request body (CPU-heavy: run in an executor)."""
        try:
            b = batchmod.parse(body, content_encoding, content_type, self.cfg.max_batch_bytes)
        except InvalidInput:
            self.metrics.rejected.inc()
            raise
        return Batch(_untemplated(b.table), b.raw_bytes, b"", b.raw, b.defaults, b.warnings,
                     b.early, b.future)

    def _mine(self, table: pa.Table) -> pa.Table:
        msgs = table["message"].combine_chunks()
        # (kept combined: the word index reads the messages as one buffer too)
        table = table.set_column(table.schema.get_field_index("message"), "message", msgs)
        if self.cfg.templates:
            mined = self.miner.mine_arrow(msgs)
            ids = pa.array(mined.template_ids, pa.uint64())
            params = mined.params
        else:
            ids = pa.array(np.zeros(len(msgs), np.uint64))
            params = pa.ListArray.from_arrays(pa.array(np.arange(len(msgs) + 1, dtype=np.int32)),
                                              msgs)
        return table.append_column("template_id", ids).append_column("params", params)

    async def append(self, b: Batch, idempotency_key: str | None = None) -> AppendResult:
        key = idempotency_key or None
        if key and len(key.encode()) > 1024:
            raise InvalidInput("Idempotency-Key is longer than 1024 bytes")
        if key:
            if key in self._keys:
                if self._keys[key] != b.rows:
                    # Not a replay: a sender reusing keys (a counter restarted...) would
                    # have this batch acknowledged and never stored.
                    self.metrics.rejected.inc()
                    raise Conflict(f"Idempotency-Key {key!r} named a batch of "
                                   f"{self._keys[key]} records already; this one has "
                                   f"{b.rows}: a key names one batch (nothing of this one "
                                   "was stored)", key=key)
                self.metrics.deduplicated.inc(b.rows)
                return AppendResult(self._keys[key], True)
            if key in self._inflight:
                await asyncio.wrap_future(self._inflight[key])
                self.metrics.deduplicated.inc(b.rows)
                return AppendResult(b.rows, True)
        waited = 0.0
        while self._tail_rows() > self.cfg.max_tail_rows and not self._stop.is_set():
            if waited > 30.0:           # the flush is stuck (see the log): say so
                raise Busy("segment writing is behind; retry with the same Idempotency-Key",
                           retry_after_s=5)
            await asyncio.sleep(0.01)   # backpressure: the flush is behind
            waited += 0.01
        loop = asyncio.get_running_loop()
        if b.raw is not None and b.defaults is not None and len((key or "").encode()) < 0x8000:
            record = encode_raw(key, b.raw, b.defaults)
        elif b.rows <= 1000:        # small: at once (a thread hop costs more than it saves),
            # uncompressed (zstd in Arrow IPC costs ~0.3 ms a batch however small)
            record = encode(key, b.table.select(batchmod.SCHEMA.names), compress=False)
        else:
            record = await loop.run_in_executor(
                None, encode, key, b.table.select(batchmod.SCHEMA.names))
        fut: Future = Future()
        if key:
            self._inflight[key] = fut
        self.wal.submit(Pending(record, fut, lambda n: self._install(n, key, b)))
        try:
            await asyncio.wrap_future(fut)
        finally:
            if key:
                self._inflight.pop(key, None)
        self.metrics.received.inc(b.rows)
        self.metrics.raw_bytes.inc(b.raw_bytes)
        if b.early:
            self.metrics.early.inc(b.early)
        if b.future:
            self.metrics.future.inc(b.future)
        if (b.early or b.future) and time.monotonic() - self._dates_said > 60:
            self._dates_said = time.monotonic()             # once a minute at most
            log.store.warning("a sender's timestamps look wrong: %s", "; ".join(b.warnings))
        self._publish(b.table)
        return AppendResult(b.rows, False)

    def _install(self, wal_no: int, key: str | None, b: Batch) -> None:
        with self._lock:
            self._chunks.append(Chunk(wal_no, key, b.table, b.raw_bytes))
            self._tail_n += b.table.num_rows
            self._remember(key, b.rows)
            now = time.monotonic()
            self._rate.append((now, b.rows))
            while now - self._rate[0][0] >= 60:
                self._rate.popleft()

    def _tail_rows(self) -> int:
        return self._tail_n

    def _remember(self, key: str | None, rows: int) -> None:
        if not key:
            return
        self._keys[key] = rows
        while len(self._keys) > self.cfg.max_keys:
            self._keys.popitem(last=False)

    def _tail_counts(self, tables: list[pa.Table]) -> dict[str, Counter]:
        """Records per level/component/host of the memory tail's ``tables`` (counted when
        stats are asked, not on every append: ~5 % of the ingest CPU)."""
        out: dict[str, Counter] = {}
        for name in COUNTED:
            col = pa.chunked_array([t[name] for t in tables], pa.string())
            out[name] = Counter({item["values"]: item["counts"]
                                 for item in pc.value_counts(col).to_pylist()})
        return out

    def _load_keys(self) -> None:
        path = self.dir / "keys.log"
        if not path.exists():
            return
        for line in path.read_text(errors="replace").splitlines():
            key, _, n = line.rpartition("\t")
            if key and n.isdigit():
                self._remember(key, int(n))

    # ---- live tail ------------------------------------------------------------
    def subscribe(self, q: LogQuery) -> Subscription:
        sub = Subscription(self, q)
        self._subs.add(sub)
        return sub

    def end_subscriptions(self) -> None:
        """End every live tail (the hub is stopping: their readers return at once)."""
        if self._fanout is not None:
            self._fanout.cancel()
        for sub in list(self._subs):
            sub.end()

    def _publish(self, table: pa.Table) -> None:
        """Hand an acknowledged batch to the live tails. It is matched apart from the
        request that brought it (its answer waited for every tail's filter on the event
        loop: 72 ms with 300 tails), by one task in acknowledgment order, in a thread, once
        per distinct query. Past FANOUT_MAX batches waiting, a batch is not shown to the
        tails (counted in their ``dropped``)."""
        if not self._subs:
            return
        if self._fanout is None or self._fanout.done():
            self._fanout_q = asyncio.Queue(FANOUT_MAX)
            self._fanout = asyncio.get_running_loop().create_task(self._fan_out())
        try:
            self._fanout_q.put_nowait(table)
        except asyncio.QueueFull:
            for sub in list(self._subs):
                sub.dropped += table.num_rows

    async def _fan_out(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            table = await self._fanout_q.get()
            groups: dict[tuple, list[Subscription]] = {}
            for sub in list(self._subs):
                q = sub.query
                groups.setdefault((q.start, q.text, tuple(q.filters), q.case), []).append(sub)
            if not groups:
                continue
            try:
                found = await loop.run_in_executor(
                    None, self._match_tails, table, [g[0].query for g in groups.values()])
            except Exception:  # noqa: BLE001 - the tails miss this batch, said
                log.store.exception("live tail: matching a batch failed")
                continue
            for recs, members in zip(found, groups.values(), strict=True):
                if recs:
                    for sub in members:
                        sub.offer(recs)

    def _match_tails(self, table: pa.Table, queries: list[LogQuery]) -> list[list[dict]]:
        out = []
        for tq in queries:
            q = LogQuery(start=tq.start, end=None, text=tq.text, filters=tq.filters,
                         case=tq.case, limit=100_000, sort="asc")
            hit = filters.apply(table, q, self.miner)
            out.append(_records(hit) if hit.num_rows else [])
        return out

    # ---- background: flush + retention --------------------------------------
    # A flush runs in two stages so that both cores work on it: the flushing thread takes
    # the chunks the WAL closed, mines their templates and sorts them (``_stage``); the
    # segment writer thread writes them (Parquet beside the word index and pre-aggregates
    # on a third thread) and commits them to the manifest (``_commit``). While chunks are
    # written the next ones are mined. One write is in flight at most; records stay in the
    # memory tail (queryable, counted by the backpressure) until their commit.
    def _background(self) -> None:
        # The first retention pass at once: a hub (re)started with a new retention_age_s
        # or retention_bytes, or on a nearly full disk, applies it now, not a minute later.
        last_retention = time.monotonic() - self.cfg.retention_interval_s
        pause = 0.25
        worked = None           # when a flush or merge last ran, until memory is released
        while not self._stop.wait(pause):
            try:
                pause = 0.25
                if self._should_flush():
                    if self._tail_n >= RELEASE_AFTER_ROWS:
                        worked = time.monotonic()
                    self._start_flush()
                    pause = 0.0             # the next may be due already (a backlog)
                elif worked is not None and time.monotonic() - worked > 5.0 and \
                        self._quiet():
                    release_unused()        # the burst's memory back to the system
                    worked = None
                if time.monotonic() - last_retention > self.cfg.retention_interval_s:
                    last_retention = time.monotonic()
                    self._drain()           # retention never races a segment write
                    self._wait_compaction()  # nor a merge
                    self.enforce_retention()
                if self._start_compaction():
                    worked = time.monotonic()
                self._reap()
            except Exception:  # noqa: BLE001 - keep the loop alive, say why
                log.store.exception("background flush/retention failed; will retry")
                self._stop.wait(2.0)
        try:
            self.flush()
        except Exception:  # noqa: BLE001
            log.store.exception("final flush failed; records stay in the WAL")
        self._wait_compaction()
        self._reap(grace_s=0.0)             # no query is left to read them

    def _should_flush(self) -> bool:
        with self._lock:
            todo = [c for c in self._chunks if c.wal > self._taken]
            if not todo:
                return False
            rows = sum(c.table.num_rows for c in todo)
            age = time.monotonic() - todo[0].added
        return rows >= self.cfg.flush_rows or age >= self.cfg.flush_interval_s

    def flush(self) -> int:
        """Write buffered records as segments and wait until they are committed; returns
        the number of records this call wrote (earlier writes in flight are waited for)."""
        fut = self._start_flush()
        if fut is None:
            self._drain()
            return 0
        return fut.result()

    def _drain(self) -> None:
        """Wait for the segment write in flight, if any (raising its error)."""
        with self._flush_lock:
            fut, self._writing = self._writing, None
        if fut is not None:
            fut.result()

    # ---- merging small segments --------------------------------------------
    def _start_compaction(self) -> bool:
        """Hand a merge to the writer thread (after the segment writes queued before it:
        one writer, so merges never race them) when a partition has enough small
        segments and no merge is in flight; whether one was handed."""
        if self._compacting is not None and not self._compacting.done():
            return False
        if self._compacting is not None:
            self._wait_compaction()
        now = time.monotonic()
        if now - self._compacted_at < max(1.0, self.cfg.flush_interval_s):
            return False                    # looked at most once per flush interval
        self._compacted_at = now
        if self.cfg.compact_segments and self._mergeable():
            self._compacting = self._writer.submit(self.compact)
            return True
        if self.rate() < self.cfg.index_idle_rate and self._incomplete() is not None:
            # CPU to spare: segments get their parameter filters (ingest leaves them out)
            self._compacting = self._writer.submit(self._complete_indexes)
            return True
        return False

    def _quiet(self) -> bool:
        """No segment write nor merge in flight."""
        writing, merging = self._writing, self._compacting
        return (writing is None or writing.done()) and (merging is None or merging.done())

    def _wait_compaction(self) -> None:
        fut, self._compacting = self._compacting, None
        if fut is not None:
            try:
                fut.result()
            except Exception:  # noqa: BLE001 - said where it failed; tried again later
                log.store.exception("merging small segments failed; they stay as they are")

    def _mergeable(self) -> list[list[SegmentInfo]]:
        """Groups of small segments to merge: per partition with ``compact_segments`` of
        them or more, oldest first, up to ``flush_rows`` records a group."""
        small: dict[str, list[SegmentInfo]] = {}
        with self._lock:
            for seg in self._segments:
                if seg.rows < self.cfg.compact_small_rows and \
                        seg.path not in self._unmergeable:
                    small.setdefault(seg.partition, []).append(seg)
        groups = []
        for segs in small.values():
            if len(segs) < max(2, self.cfg.compact_segments):
                continue
            group: list[SegmentInfo] = []
            for seg in sorted(segs, key=lambda x: x.path):
                if group and sum(g.rows for g in group) + seg.rows > self.cfg.flush_rows:
                    break
                group.append(seg)
            if len(group) >= 2:
                groups.append(group)
        return groups

    def compact(self) -> int:
        """Merge the small segments of the partitions that have enough of them (see
        ``_mergeable``); the number of segments merged away. Runs on the writer thread."""
        merged = 0
        for group in self._mergeable():
            try:
                merged += self._merge(group)
            except Exception:  # noqa: BLE001 - said once; those segments stay apart
                log.store.exception("merging %d segments of %s failed; they stay as they are",
                                    len(group), group[0].partition)
                self._unmergeable.update(seg.path for seg in group)
        return merged

    def _merge(self, group: list[SegmentInfo]) -> int:
        """One segment from ``group`` (same partition): written beside them, then the
        manifest names it instead of them; their files go once no query can still be
        reading them (``_reap``). A crash before the manifest leaves the new files
        unnamed, after it the old ones: either is removed at the next open."""
        tables = []
        for seg in group:
            path = self.seg_dir / seg.path
            if not verify(path, seg.xxh64):
                log.store.error("segment %s is corrupt: not merged", seg.path)
                self._unmergeable.add(seg.path)
                return 0
            tables.append(unpacked(pq.read_table(path)).select(list(SEG_COLUMNS)))
        table = pa.concat_tables(tables)
        order = sort_order(table)
        if order is not None:
            table = table.take(pa.array(order))
        messages = self.miner.render_many(table["template_id"].to_numpy(),
                                          table["params"].combine_chunks())
        part = group[0].partition
        info = self._write_segment(Staged(part, table, pa.chunked_array([messages]), None),
                                   sum(seg.raw_bytes for seg in group))
        paths = {seg.path for seg in group}
        with self._lock:
            if not paths <= {seg.path for seg in self._segments}:
                gone = info                 # retention took some meanwhile: keep theirs
            else:
                gone = None
                self._segments = [x for x in self._segments if x.path not in paths] + [info]
                self._manifest.segments = [x for x in self._manifest.segments
                                           if x.path not in paths] + [info]
                self._manifest.save(self.dir / "manifest.json")
                self._doomed.append((time.monotonic(), sorted(paths)))
        if gone is not None:
            self._delete_files([gone.path])
            return 0
        for path in paths:
            self.reader.forget(path)
            self._rollups.pop(path)
            self._words.pop(path)
        self.metrics.segments.set(len(self._segments))
        self.metrics.stored_bytes.set(self.stored_bytes())
        log.store.info("merged %d small segments of %s into %s (%d records)", len(group),
                       part, info.path, info.rows)
        return len(group)

    def _reap(self, grace_s: float = 60.0) -> None:
        """Delete the files of merged-away segments once ``grace_s`` has passed (a query
        that took its segment list before the merge may still be reading them)."""
        now = time.monotonic()
        with self._lock:
            due = [paths for t, paths in self._doomed if now - t >= grace_s]
            self._doomed = [(t, paths) for t, paths in self._doomed if now - t < grace_s]
        for paths in due:
            self._delete_files(paths)

    def _delete_files(self, paths: list[str]) -> None:
        """Delete segments' files, then their partition directories left empty."""
        _unlink_all([f for rel in paths for seg in [self.seg_dir / rel]
                     for f in (seg, rollup_path(seg), words.path_for(seg))])

    def _start_flush(self) -> Future[int] | None:
        """Stage the chunks the WAL holds now (this thread) and hand them to the writer."""
        with self._flush_lock:
            closed = self.wal.rotate()
            with self._lock:
                chunks = [c for c in self._chunks if self._taken < c.wal <= closed]
            if not chunks:
                self.wal.remove_upto(min(closed, self._manifest.wal_upto))
                return None
            with self._lock:
                after, self._taken = self._taken, closed
            try:
                staged = self._stage(chunks)
                prev, self._writing = self._writing, None
                if prev is not None:        # one write in flight at most (a failed one
                    futures_wait([prev])    # said so; _commit keeps the order)
            except BaseException:
                with self._lock:            # retake them (and any failed write's) later
                    self._taken = self._manifest.wal_upto
                raise
            self._writing = self._writer.submit(self._commit, staged, chunks, after, closed)
            return self._writing

    def _stage(self, chunks: list[Chunk]) -> list[Staged]:
        """Mine the chunks' templates (in one large batch, the miner's vectorised fast
        path), sort them by time and cut them into time partitions; the miner's state is
        saved before any segment can name its new templates."""
        # Chunks in order of their first record: batches that arrive out of order but do
        # not overlap in time (each client's batches in turn) then need no sort below.
        parts = [c.table.select(batchmod.SCHEMA.names) for c in chunks]
        firsts = [pc.min(t["timestamp"]).as_py() for t in parts]
        parts = [parts[i] for i in sorted(range(len(parts)),
                                          key=lambda i: (firsts[i] is None, firsts[i] or 0))]
        table = self._mine(pa.concat_tables(parts))
        self.miner.save()
        # Sorted by time once: each time partition is then a contiguous slice of it. The
        # messages are not stored (template + parameters are): the word index reads them
        # through the permutation instead of a sorted copy.
        order = sort_order(table)
        messages = table["message"]
        table = table.drop_columns(["message"])
        if order is not None:
            table = table.take(pa.array(order))
        if not table.num_rows:
            return []
        span = self.cfg.partition_s
        part_keys = pc.divide(table["timestamp"], span * 1_000_000_000).to_numpy()
        cuts = [0, *(np.flatnonzero(np.diff(part_keys)) + 1).tolist(), len(part_keys)]
        return [Staged(partition_name(int(part_keys[a]) * span * 1_000_000_000, span),
                       table.slice(a, b - a),
                       messages.slice(a, b - a) if order is None else messages,
                       None if order is None else order[a:b])
                for a, b in zip(cuts[:-1], cuts[1:], strict=True)]

    def _commit(self, staged: list[Staged], chunks: list[Chunk], after: int,
                closed: int) -> int:
        """Writer thread: write the staged parts (chunks of WAL files after..closed) as
        segments and commit them, unless an earlier write failed (its records would be
        skipped by this commit's WAL mark: all of them are retaken together instead)."""
        try:
            if self._manifest.wal_upto != after:
                raise RuntimeError("an earlier segment write failed; retrying with it")
            raw = sum(c.raw_bytes for c in chunks)
            total = sum(p.table.num_rows for p in staged)
            new = [self._write_segment(p, raw * p.table.num_rows // max(1, total))
                   for p in staged]
            self._persist_keys(chunks)
            counted = [self._segment_counts(s) for s in new]
            with self._lock:
                for c in counted:   # the records leave the tail (counted when asked)
                    _add_counts(self._counts, c)
                ids = {id(c) for c in chunks}
                self._manifest.segments.extend(new)
                self._manifest.wal_upto = closed
                self._manifest.save(self.dir / "manifest.json")
                self._segments = self._segments + new
                self._chunks = [c for c in self._chunks if id(c) not in ids]
                self._tail_n -= sum(c.table.num_rows for c in chunks)
        except BaseException:
            with self._lock:
                self._taken = self._manifest.wal_upto
            log.store.exception("segment write failed; its records stay in the WAL and "
                                "memory and are written by the next flush")
            raise
        self.wal.remove_upto(closed)
        rows = sum(s.rows for s in new)
        self.metrics.stored.inc(rows)
        self.metrics.segments.set(len(self._segments))
        self.metrics.stored_bytes.set(self.stored_bytes())
        return rows

    def _write_segment(self, staged: Staged, raw: int) -> SegmentInfo:
        """One segment and its sidecars: the Parquet file on this thread, the word index
        and pre-aggregates meanwhile on the index thread (C and Arrow code: both cores)."""
        part, sub = staged.partition, staged.table
        n = self._manifest.next_segment
        self._manifest.next_segment += 1
        name = f"{n:010d}.parquet"
        directory = self.seg_dir / part

        def sidecars() -> tuple[pa.Table, words.WordIndex, str, str]:
            agg = rollup(sub)
            index = words.build(staged.messages, self.cfg.row_group_rows,
                                fields=sub.select(list(words.INDEXED)), order=staged.order)
            directory.mkdir(parents=True, exist_ok=True)
            return (agg, index, write_rollup(agg, directory / name),
                    _digest_of(words.write(index, directory / name)))

        side = self._index_pool.submit(sidecars)
        try:
            footer: list[pq.FileMetaData] = []
            used = pc.unique(sub["template_id"]).to_pylist()
            path, size, digest = write_segment(sub, directory, name, self.cfg.row_group_rows,
                                               self.cfg.zstd_level, presorted=True,
                                               params_level=self.cfg.params_zstd_level,
                                               footer=footer, raw_bytes=raw,
                                               templates=self.miner.texts_of(used))
            agg, index, rollup_digest, words_digest = side.result()
        except BaseException:
            futures_wait([side])
            for leftover in (directory / name, rollup_path(directory / name),
                             words.path_for(directory / name)):
                leftover.unlink(missing_ok=True)
            raise
        ts = sub["timestamp"]
        info = SegmentInfo(f"{part}/{path.name}", part, sub.num_rows, pc.min(ts).as_py(),
                           pc.max(ts).as_py(), size, raw, digest, rollup_digest, words_digest)
        self._rollups.put(info.path, agg)
        self._words.put(info.path, index)
        if footer:          # its footer, cached for the first query
            self.reader.remember(info, footer[0])
        return info

    def _persist_keys(self, chunks: list[Chunk]) -> None:
        lines = "".join(f"{c.key}\t{c.table.num_rows}\n" for c in chunks if c.key)
        if not lines:
            return
        path = self.dir / "keys.log"
        with open(path, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        if path.stat().st_size > 200 * self.cfg.max_keys:
            self._compact_keys(path)

    def _compact_keys(self, path: Path) -> None:
        with self._lock:
            text = "".join(f"{k}\t{n}\n" for k, n in self._keys.items())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    # ---- reading ------------------------------------------------------------
    def _snapshot(self) -> tuple[list[SegmentInfo], list[pa.Table]]:
        with self._lock:
            return list(self._segments), [c.table for c in self._chunks]

    def _row_groups(self, q: LogQuery, segs: list[SegmentInfo]) -> list[RowGroup]:
        """Row groups of the segments (of the query's snapshot: records move from the
        memory tail to a segment at once, so mixing two snapshots would show some twice or
        not at all) overlapping q's range, in q's order."""
        out: list[RowGroup] = []
        for s in segs:
            if _overlaps(s, q):
                out += self._seg_row_groups(s, q)
        desc = q.sort == "desc"
        out.sort(key=lambda g: g.max_ts if desc else g.min_ts, reverse=desc)
        return out

    def _seg_row_groups(self, s: SegmentInfo, q: LogQuery) -> list[RowGroup]:
        try:
            return self.reader.row_groups(s, q.start, q.end)
        except (OSError, pa.ArrowInvalid) as err:
            log.store.error("segment %s unreadable: %s", s.path, err)
            return []

    def _read(self, g: RowGroup, columns: list[str] | None, packed: bool = False,
              dictionary: tuple[str, ...] = ()) -> pa.Table | None:
        try:
            return self.reader.read(g, columns, packed, dictionary)
        except (OSError, pa.ArrowInvalid) as err:
            log.store.error("segment %s row group %d unreadable: %s", g.seg.path, g.index, err)
            return None

    def rollup_of(self, s: SegmentInfo) -> pa.Table:
        """The per-minute counts of a segment: cached, else read from beside it, else (missing,
        corrupt, or a segment from before pre-aggregates) rebuilt from the segment itself."""
        agg = self._rollups.get(s.path)
        if agg is not None:
            return agg
        path = self.seg_dir / s.path
        agg = read_rollup(path, s.rollup_xxh64)
        if agg is None or pc.sum(agg["n"]).as_py() != s.rows:
            if s.rollup_xxh64:
                log.store.warning("pre-aggregate of segment %s missing or corrupt: rebuilt",
                                  s.path)
            try:
                agg = rollup(pq.read_table(path, columns=["timestamp", *ROLLUP_KEYS]))
            except (OSError, pa.ArrowInvalid) as err:
                log.store.error("segment %s unreadable, left out of counts: %s", s.path, err)
                return rollup(filters.empty().select(["timestamp", *ROLLUP_KEYS]))
            digest = write_rollup(agg, path)
            with self._lock:
                s.rollup_xxh64 = digest
                self._manifest.save(self.dir / "manifest.json")
        self._rollups.put(s.path, agg)
        return agg

    def word_index(self, s: SegmentInfo) -> words.WordIndex | None:
        """The word index of a segment: cached, else read from beside it, else (missing,
        corrupt, or from before word indexes) rebuilt from the segment's messages."""
        index = self._words.get(s.path)
        if index is not None:
            return index
        index = None
        path = self.seg_dir / s.path
        if s.words_xxh64 and verify(words.path_for(path), s.words_xxh64):
            index = words.read(path)
        if index is None:
            if s.words_xxh64:
                log.store.warning("word index of segment %s missing or corrupt: rebuilt",
                                  s.path)
            index = self._index_segment(s)
            if index is None:
                return None
        self._words.put(s.path, index)
        return index

    def _index_segment(self, s: SegmentInfo) -> words.WordIndex | None:
        """Build a segment's word index from its rows and write it beside it (None: the
        segment cannot be read)."""
        path = self.seg_dir / s.path
        try:
            t = unpacked(pq.read_table(path, columns=["params", *words.INDEXED]))
            msgs = self.miner.render_many(t["template_id"].to_numpy(),
                                          t["params"].combine_chunks())
            rg_rows = pq.read_metadata(path).row_group(0).num_rows
        except (OSError, pa.ArrowInvalid, NotFound, InvalidInput) as err:
            log.store.error("word index of segment %s cannot be rebuilt: %s", s.path, err)
            return None
        index = words.build(msgs, max(rg_rows, 1), fields=t.select(list(words.INDEXED)),
                            params=t["params"])
        self._write_index(s, index)
        return index

    def _write_index(self, s: SegmentInfo, index: words.WordIndex) -> None:
        """Write a segment's word index beside it; the manifest names its checksum."""
        digest = _digest_of(words.write(index, self.seg_dir / s.path))
        with self._lock:
            s.words_xxh64 = digest
            self._manifest.save(self.dir / "manifest.json")

    def _incomplete(self, most: int = 1024) -> SegmentInfo | None:
        """A segment (newest first) whose word index lacks parameter filters (written
        without them at ingest, or from before them); each segment is looked at once,
        ``most`` of them a call (their indexes' schemas)."""
        with self._lock:
            segs = [x for x in self._segments if x.path not in self._indexed]
        for seg in sorted(segs, key=lambda x: x.max_ts, reverse=True)[:most]:
            cached = self._words.get(seg.path)      # (ingest leaves its new ones there)
            if cached is not None:
                lacks = not cached.has_params
            else:
                got = words.state(self.seg_dir / seg.path)
                lacks = got is not None and not got[1]  # (None: missing, rebuilt when read)
            if lacks:
                return seg
            self._indexed.add(seg.path)
        return None

    def _complete_indexes(self, budget_s: float = 2.0) -> int:
        """Give segments their parameter filters, newest first, for up to ``budget_s``
        and while ingest stays below ``index_idle_rate`` (on the writer thread: no merge
        or retention removes a segment meanwhile); how many."""
        t0 = time.monotonic()
        done = 0
        while time.monotonic() - t0 < budget_s and self.rate() < self.cfg.index_idle_rate:
            seg = self._incomplete()
            if seg is None:
                break
            with self._lock:
                if seg not in self._segments:
                    continue
            self._complete_index(seg)
            self._indexed.add(seg.path)
            done += 1
        if done:
            # (a low-rate agent's hub adds them to one new segment per flush: said at
            # debug level; a backlog, after a burst or an upgrade, at info level)
            log.store.log(logging.INFO if done >= 10 else logging.DEBUG,
                          "parameter filters added to the word indexes of %d segment(s) "
                          "(%.1f s)", done, time.monotonic() - t0)
        return done

    def _complete_index(self, s: SegmentInfo) -> None:
        """The parameter filters of a segment, added to its word index (read from its
        parameters alone); an index from before template ids is built again whole."""
        path = self.seg_dir / s.path
        index = self.word_index(s)          # (rebuilt whole when missing or corrupt)
        if index is None or index.has_params:   # (None: the segment is unreadable, said)
            return
        if index.version < 2:
            index = self._index_segment(s)
        else:
            try:
                rows = np.concatenate(([0], np.cumsum(self.reader.sizes(s))))
                params = pq.read_table(path, columns=["params"])["params"]
            except (OSError, pa.ArrowInvalid) as err:
                log.store.error("segment %s unreadable: %s", s.path, err)
                return
            index = words.with_params(index, params, rows)
            self._write_index(s, index)
        if index is not None:
            self._words.put(s.path, index)

    def _class_cache(self) -> dict[tuple, Any]:
        """Template decisions shared by queries (bounded: emptied past 1M decisions, an
        entry holding an array counting one per element)."""
        if sum(len(v[0]) if isinstance(v, tuple) and isinstance(v[0], np.ndarray) else 1
               for v in self._classes.values()) > 1_000_000:
            self._classes = {}
        return self._classes

    def _pruned(self, groups: list[RowGroup], q: LogQuery,
                sel: filters.Selector | None = None) -> list[RowGroup]:
        """Row groups whose word index may hold every word the query's terms require and
        every field value its equality filters name, and (with ``sel``) a match of each of
        its phrases and regex literals (:mod:`server.store.prune`)."""
        # A word with a k or an s may be spelled with a Kelvin sign or a long s where case
        # is folded (regexes may fold whatever the flag says): row groups whose filter
        # says it holds such spellings are kept for those words.
        folding = not q.case or any(t.kind == "regex" for t in q.terms)
        hashes, folded = [], []
        for w in filters.required_words(q):
            h = words.query_hashes(w)
            if h is not None and len(h):
                (folded if folding and set(w.lower()) & {"k", "s"} else hashes).append(h)
        for f in q.filters:
            if f.op == "=" and f.field in words.FIELDS:
                value = np.array([f.int_value()]) if f.field == "pid" else [f.value]
                hashes.append(words.field_hashes(f.field, value))
        needles = sel is not None and any(t.kind != "word" for t in q.terms)
        if not hashes and not folded and not needles:
            return groups
        allh = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        foldh = np.concatenate(folded) if folded else np.zeros(0, np.uint64)
        out = []
        verdict: dict[str, np.ndarray | None] = {}
        for g in groups:
            if g.seg.path not in verdict:
                index = self.word_index(g.seg)
                ok = None if index is None else index.row_groups_with(allh)
                if ok is not None and len(foldh):
                    spelled = index.words_present(_FOLDS)[:, 0] if index.version >= 2 \
                        else False
                    ok &= index.row_groups_with(foldh) | spelled
                if ok is not None and needles and ok.any():
                    more = prune.row_groups(sel, index, g.seg.path)
                    if more is not None:
                        ok &= more
                verdict[g.seg.path] = ok
            ok = verdict[g.seg.path]
            if ok is None or g.index >= len(ok) or ok[g.index]:
                out.append(g)
        return out

    def _possible(self, sel: filters.Selector, g: RowGroup, t: pa.Table
                  ) -> np.ndarray | None:
        """Rows of ``t`` (read from ``g``) whose template may hold the query's phrases and
        regex literals in their row group (``prune.rows``); None: any row."""
        if g.seg.path not in sel.allowed or "template_id" not in t.column_names:
            return None
        which = g.indices or (g.index,)
        runs = list(zip(which, self.reader.sizes(g.seg, which).tolist(), strict=True))
        if sum(n for _, n in runs) != t.num_rows:
            return None
        return prune.rows(sel, g.seg.path, runs, t["template_id"])

    def rollups(self, q: LogQuery) -> list[pa.Table]:
        """Per-minute counts of every record in q's time range (q's filters not applied):
        pre-aggregates of the segments inside the range, counted from the rows themselves
        for the memory tail and segments the range cuts."""
        segs, mem = self._snapshot()
        out = []
        inside = [s for s in segs if (q.start is None or s.min_ts >= q.start)
                  and (q.end is None or s.max_ts < q.end)]
        cut = LogQuery(start=q.start, end=q.end, sort=q.sort)
        out += [self.rollup_of(s) for s in inside]
        done = {s.path for s in inside}
        part = [g for s in segs if s.path not in done and _overlaps(s, cut)
                for g in self._seg_row_groups(s, cut)]
        cols = ["timestamp", *ROLLUP_KEYS]
        tables = [t for t in (self._read(g, cols) for g in part) if t is not None]
        tables += [m.select(cols) for m in mem]
        if tables:
            t = pa.concat_tables(tables)
            mask = filters._cheap_mask(t, cut, None)
            out.append(rollup(t.filter(mask) if mask is not None else t))
        return out

    def search(self, q: LogQuery) -> SearchPage:
        t0 = time.perf_counter()
        cur = decode_cursor(q.cursor)
        q = _narrowed(q, cur)
        segs, mem = self._snapshot()
        found: list[pa.Table] = []
        if mem:
            hit = filters.apply(pa.concat_tables(mem), q, self.miner, cur, top=q.limit)
            if hit.num_rows:
                found.append(_order(hit, q.sort).slice(0, q.limit))
        sel = filters.Selector(q, self.miner, cur, self._class_cache())
        cols = need = filters.scan_columns(q, cursor=cur is not None)
        desc = q.sort == "desc"
        every = self._row_groups(q, segs)
        kept = self._pruned(every, q, sel)
        groups = batched(kept, desc)
        if len(kept) < len(every):
            # The word index kept these row groups for the query's words: they most
            # likely hold matches, so every column is read at once (one read of a row
            # group costs ~1 ms less than two).
            cols = list(SEG_COLUMNS)

        # columns only fetched (not filtered on) stay dictionaries until the rows are taken
        lazy = tuple(c for c in DICTIONARY if c in cols and c not in need)

        def work(g: RowGroup) -> pa.Table | None:
            t = self._read(g, cols, packed=sel.takes_packed, dictionary=lazy)
            if t is None:
                return None
            idx = sel.select(t, q.limit, self._possible(sel, g, t))
            if not len(idx):
                return None
            try:
                rows = self.reader.fetch(g, t, pa.array(idx))
            except (OSError, pa.ArrowInvalid) as err:
                log.store.error("segment %s unreadable: %s", g.seg.path, err)
                return None
            return filters.with_message(rows, self.miner)

        # The next row group is read on the other core from the first on when the word
        # index left few (their matches are sparse: the page needs them all); else from
        # the second (the first often completes a page alone).
        results = self._prefetched(groups, work, skip_first=len(kept) == len(every))
        try:
            for g in groups:
                if sum(f.num_rows for f in found) >= q.limit and \
                        _can_stop(found, q, g.max_ts if desc else g.min_ts):
                    break
                hit = next(results)
                if hit is not None:
                    found.append(hit)
                if len(found) > 8:
                    found = [_order(pa.concat_tables(found), q.sort).slice(0, q.limit)]
        finally:
            results.close()
        page = self._page(found, q)
        self.metrics.query_seconds.observe(time.perf_counter() - t0)
        return page

    def _prefetched(self, groups: list[RowGroup], work: Any, skip_first: bool = False
                    ) -> Generator[Any, None, None]:
        """work(g) for each g in order, the next one computed on the other core meanwhile
        (from the second on with ``skip_first``: the first often completes a page alone).
        Closing the generator cancels what is pending."""
        ahead: Future | None = None
        try:
            for k, g in enumerate(groups):
                fut, ahead = ahead, None
                if k + 1 < len(groups) and (k >= 1 or not skip_first):
                    ahead = self._scan_pool.submit(work, groups[k + 1])
                yield fut.result() if fut is not None else work(g)
        finally:
            if ahead is not None:
                ahead.cancel()

    def _page(self, found: list[pa.Table], q: LogQuery) -> SearchPage:
        if not found:
            return SearchPage([], None)
        t = _order(pa.concat_tables(found), q.sort).slice(0, q.limit)
        recs = _records(filters.with_message(t, self.miner))
        nxt = None
        if len(recs) == q.limit:
            last = recs[-1]
            nxt = encode_cursor(last["timestamp"], last["id"])
        return SearchPage(recs, nxt)

    def matching(self, q: LogQuery, columns: list[str] | None = None) -> pa.Table:
        """Every record matching q (no limit), as one table of ``columns`` (default: every
        output column); messages are rendered only when asked for."""
        out_cols = list(columns or filters.OUT_COLUMNS)
        message = "message" in out_cols
        parts: list[pa.Table] = []
        segs, mem = self._snapshot()
        if mem:
            hit = filters.apply(pa.concat_tables(mem), q, self.miner, message=message)
            if hit.num_rows:
                parts.append(hit.select(out_cols))
        sel = filters.Selector(q, self.miner, None, self._class_cache())
        need = filters.scan_columns(q)
        read = [c for c in filters.OUT_COLUMNS if c != "message" and
                (c in out_cols or c in need or (message and c in ("template_id", "params")))]

        def work(g: RowGroup) -> pa.Table | None:
            t = self._read(g, read)
            if t is None:
                return None
            idx = sel.select(t, None, self._possible(sel, g, t))
            if not len(idx):
                return None
            t = t.take(pa.array(idx))
            if message:
                t = t.append_column("message", self.miner.render_many(
                    t["template_id"].to_numpy(), t["params"].combine_chunks()))
            return t.select(out_cols)

        groups = batched(self._pruned(self._row_groups(q, segs), q, sel), q.sort == "desc", 32)
        parts += [t for t in self._prefetched(groups, work) if t is not None]
        if not parts:
            return filters.empty(self.miner).select(out_cols)
        return pa.concat_tables(parts)

    def query(self, spec: dict[str, Any]) -> dict[str, Any]:
        from server.store.aggregate import run_query
        t0 = time.perf_counter()
        try:
            return run_query(self, spec)
        finally:
            self.metrics.query_seconds.observe(time.perf_counter() - t0)

    def export(self, q: LogQuery, fmt: str) -> Iterator[bytes]:
        from server.store.export import export
        return export(self, q, fmt)

    def template_stats(self, q: LogQuery) -> list[dict[str, Any]]:
        from server.store.aggregate import template_stats
        return template_stats(self, q)

    def rate(self, within_s: float = 5.0) -> float:
        """Records acknowledged per second over the last ``within_s`` seconds."""
        now = time.monotonic()
        with self._lock:
            recent = sum(n for _, n in itertools.takewhile(
                lambda e: now - e[0] < within_s, reversed(self._rate)))
        return recent / within_s

    def busy(self, within_s: float = 2.0) -> bool:
        """Were records acknowledged within the last ``within_s`` seconds?"""
        with self._lock:
            return bool(self._rate) and time.monotonic() - self._rate[-1][0] < within_s

    # ---- stats ---------------------------------------------------------------
    def cache_sizes(self) -> dict[str, Callable[[], float]]:
        """Bytes held in memory, by what holds them (read when metrics are scraped)."""
        return {"word_index": lambda: self._words.used,
                "rollups": lambda: self._rollups.used,
                "footers": self.reader.footer_bytes,
                "memory_tail": lambda: sum(c.table.nbytes for c in list(self._chunks))}

    def stored_bytes(self) -> int:
        with self._lock:
            return sum(s.bytes for s in self._segments)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            segs = list(self._segments)
            mem_rows = self._tail_n
            counts = {k: Counter(v) for k, v in self._counts.items()}
            tail = [c.table for c in self._chunks]
        _add_counts(counts, self._tail_counts(tail))
        wal_bytes = sum(p.stat().st_size for p in (self.dir / "wal").glob("*.log"))
        archives = self._archives()
        raw = sum(s.raw_bytes for s in segs)
        stored = sum(s.bytes for s in segs)
        index = _file_bytes([self.dir / "templates.json"] + [
            side for s in segs for side in (rollup_path(self.seg_dir / s.path),
                                            words.path_for(self.seg_dir / s.path))])
        spans = [(s.min_ts, s.max_ts) for s in segs] + [
            (mm["min"].as_py(), mm["max"].as_py()) for mm in (
                pc.min_max(t["timestamp"]) for t in tail if t.num_rows)]
        return {
            "records": sum(s.rows for s in segs) + mem_rows,
            "records_in_memory": mem_rows,
            "by_level": dict(counts["level"]), "by_component": dict(counts["component"]),
            "by_host": dict(counts["host"]),
            "raw_bytes": raw, "stored_bytes": stored,
            "index_bytes": index,
            "wal_bytes": wal_bytes,
            # NDJSON bytes of the records in segments / their segments with their indexes
            "compression_ratio": round(raw / (stored + index), 2) if stored else None,
            "ingest_rate": self.rate(10.0),
            "segments": len(segs), "corrupt_segments": list(self._corrupt),
            # segments whose word index may still lack parameter filters (added when
            # ingest leaves CPU to spare: ``index_idle_rate``)
            "segments_indexing": sum(s.path not in self._indexed for s in segs),
            "archive": {"archives": len(archives), "bytes": sum(a["bytes"] for a in archives),
                        "records": sum(a["records"] for a in archives)},
            "partitions": sorted({s.partition for s in segs}),
            "templates": len(self.miner.templates()),
            "oldest": min((a for a, _ in spans), default=None),
            "newest": max((b for _, b in spans), default=None),
        }

    # ---- retention and archive -----------------------------------------------
    def enforce_retention(self) -> dict[str, Any]:
        archived = []
        now = time.time_ns()
        while True:
            with self._lock:
                parts = _partitions(self._segments)
                total = sum(s.bytes for s in self._segments)
                kept = self._kept()
            candidates = [p for p in parts if p not in kept]   # restored ones wait
            if not candidates:
                break
            oldest = min(candidates)
            newest_ts = max(s.max_ts for s in parts[oldest])
            too_old = (self.cfg.retention_age_s is not None
                       and newest_ts < now - self.cfg.retention_age_s * 1_000_000_000)
            too_big = (self.cfg.retention_bytes is not None and total > self.cfg.retention_bytes
                       and oldest != max(parts))    # never the newest partition
            if not (too_old or too_big):
                break
            archived.append(self._archive(oldest, parts[oldest]))
        return {"archived": archived, "deleted": self._prune_archive(now)}

    def _prune_archive(self, now: int) -> list[str]:
        """Delete the archives past ``archive_age_s`` (by their newest record) and, oldest
        first, those beyond ``archive_bytes``: the end of a record's life."""
        age, budget = self.cfg.archive_age_s, self.cfg.archive_bytes
        if age is None and budget is None:
            return []
        deleted = []
        with self._restore_lock:                    # never under a restore
            archives = [a for a in self.archive_list() if "error" not in a]
            archives.sort(key=lambda a: (a["max_ts"], _archive_order(Path(a["name"]))))
            total = sum(a["bytes"] for a in archives)
            for a in archives:
                too_old = age is not None and a["max_ts"] < now - age * 1_000_000_000
                too_big = budget is not None and total > budget
                if not (too_old or too_big):
                    continue
                (self.archive_dir / a["name"]).unlink(missing_ok=True)
                total -= a["bytes"]
                deleted.append(a["name"])
                log.store.info("archive %s deleted (%d records up to %s): %s", a["name"],
                               a["records"], iso_utc(a["max_ts"]),
                               "older than archive_age_s" if too_old else
                               "the archive exceeds archive_bytes")
            if deleted:
                fsync_dir(self.archive_dir)
        return deleted

    def _archive(self, part: str, segs: list[SegmentInfo]) -> str:
        dest = self._archive_dest(part, {s.path for s in segs})
        name = dest.name
        tmp = dest.with_suffix(".tmp")
        try:
            tmp.unlink(missing_ok=True)     # (one left by a crash: made anew, 0600)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
                info = orjson.dumps([s.__dict__ for s in segs])
                _tar_bytes(tar, "segments.json", info)
                for s in segs:
                    tar.add(self.seg_dir / s.path, arcname=Path(s.path).name)
                    for side in (rollup_path(self.seg_dir / s.path),
                                 words.path_for(self.seg_dir / s.path)):
                        if side.exists():
                            tar.add(side, arcname=side.name)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)     # (a full disk: not a half archive taking room)
            raise
        tmp.replace(dest)
        fsync_dir(self.archive_dir)
        with self._lock:
            paths = {s.path for s in segs}
            for path in paths:
                self.reader.forget(path)
                self._rollups.pop(path)
                self._words.pop(path)
            self._segments = [s for s in self._segments if s.path not in paths]
            self._manifest.segments = [s for s in self._manifest.segments if s.path not in paths]
            self._manifest.save(self.dir / "manifest.json")
        # The files of these segments only: a restore of the same partition may have put
        # others beside them meanwhile.
        self._delete_files([s.path for s in segs])
        log.store.info("partition %s archived to %s (%d records)", part, dest,
                       sum(s.rows for s in segs))
        return name

    def _archive_dest(self, part: str, paths: set[str]) -> Path:
        """The archive file for segments ``paths`` of partition ``part``: ``PART.tar``, or
        ``PART.N.tar`` when the partition was archived before (records of its hour came
        later): an archive is never replaced, but by one of the same segments (a retention
        pass cut short after writing it)."""
        dest = self.archive_dir / f"{part}.tar"
        n = 2
        while dest.exists():
            try:
                if {s["path"] for s in _archived_segments(dest)} == paths:
                    return dest
            except (OSError, tarfile.TarError, KeyError, ValueError):
                pass                                  # unreadable: kept as it is
            dest = self.archive_dir / f"{part}.{n}.tar"
            n += 1
        return dest

    def archive_list(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.archive_dir.glob("*.tar"), key=_archive_order):
            try:
                segs = _archived_segments(p)
            except (OSError, tarfile.TarError, KeyError, ValueError) as err:
                if p.exists():                      # (not restored or deleted meanwhile)
                    out.append({"name": p.name, "partition": p.name.split(".")[0],
                                "bytes": _file_bytes([p]), "error": f"unreadable: {err}"})
                continue
            out.append({"name": p.name, "partition": p.name.split(".")[0],
                        "bytes": p.stat().st_size,
                        "records": sum(s["rows"] for s in segs),
                        "min_ts": min(s["min_ts"] for s in segs),
                        "max_ts": max(s["max_ts"] for s in segs)})
        return out

    def archived_overlapping(self, start: int | None, end: int | None) -> list[str]:
        """Partitions in the archive with records in [start, end): a search there finds
        none of them until they are restored."""
        return sorted({a["partition"] for a in self._archives()
                       if (start is None or a["max_ts"] >= start)
                       and (end is None or a["min_ts"] < end)})

    def _archives(self) -> list[dict[str, Any]]:
        """``archive_list`` (the readable archives), read again only when the archive
        changed: archived, restored or deleted by the hub, or files added or removed by
        hand (the names in the directory)."""
        try:
            stamp = hash(tuple(sorted(n for n in os.listdir(self.archive_dir)
                                      if n.endswith(".tar"))))
        except OSError:
            return []
        cached = self._archived                 # (one reference: no lock needed)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        listed = [a for a in self.archive_list() if "error" not in a]
        self._archived = (stamp, listed)        # (changed while read: its names differ)
        return listed

    def _archives_named(self, name: str) -> list[Path]:
        """The archives ``name`` means: an archive's file name, or a partition (all of its
        archives, oldest first)."""
        base = Path(name).name
        if base.endswith(".tar"):
            path = self.archive_dir / base
            return [path] if path.is_file() else []
        return sorted((p for p in self.archive_dir.glob(f"{base}*.tar")
                       if p.name.split(".")[0] == base), key=_archive_order)

    def archive_restore(self, name: str) -> dict[str, Any]:
        """Bring back the archives ``name`` means (one archive, or every archive of a
        partition): their segments are written (fsynced, checksums verified) before the
        manifest names them, and an archive is removed only after that."""
        with self._restore_lock:
            paths = self._archives_named(name)
            if not paths:
                listed = self.archive_list()
                raise NotFound(f"no archive {name!r}", valid=sorted(
                    {a["partition"] for a in listed} | {a["name"] for a in listed}))
            records, names = 0, []
            for path in paths:
                records += self._restore_one(path)
                names.append(path.name)
        return {"restored": names[0] if len(names) == 1 else name, "archives": names,
                "records": records,
                "kept_until": iso_utc(time.time_ns() + int(self.cfg.restore_keep_s * 1e9))}

    def _restore_one(self, path: Path) -> int:
        try:
            segs = [SegmentInfo(**s) for s in _archived_segments(path)]
        except (OSError, tarfile.TarError, KeyError, ValueError, TypeError) as err:
            raise InvalidInput(f"archive {path.name} is unreadable: {err}") from err
        with self._lock:
            known = {s.path for s in self._segments}
        new = [s for s in segs if s.path not in known]     # (restored before a crash)
        written: list[Path] = []
        try:
            with tarfile.open(path) as tar:
                names = set(tar.getnames())
                for s in new:
                    dest = self.seg_dir / s.path
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    sides = [side for side in (rollup_path(dest), words.path_for(dest))
                             if side.name in names]
                    for member, out in ((Path(s.path).name, dest),
                                        *((side.name, side) for side in sides)):
                        written.append(out)
                        _extract_durably(tar, member, out)
                    if not verify(dest, s.xxh64):
                        raise InvalidInput(f"archive {path.name}: segment {s.path} fails "
                                           "its checksum")
                for d in {(self.seg_dir / s.path).parent for s in new}:
                    fsync_dir(d)
        except (OSError, tarfile.TarError, KeyError) as err:
            _unlink_all(written)
            raise InvalidInput(f"archive {path.name} cannot be restored: {err}") from err
        except BaseException:
            _unlink_all(written)
            raise
        until = time.time() + self.cfg.restore_keep_s
        with self._lock:
            known = {s.path for s in self._segments}
            new = [s for s in new if s.path not in known]
            self._segments = self._segments + new
            self._manifest.segments.extend(new)
            self._kept()
            for part in {s.partition for s in segs}:   # not archived again at once
                self._manifest.kept[part] = until
            self._manifest.save(self.dir / "manifest.json")
        path.unlink()
        fsync_dir(self.archive_dir)
        log.store.info("archive %s restored (%d records)", path.name, sum(s.rows for s in segs))
        return sum(s.rows for s in segs)

    def _kept(self) -> set[str]:
        """Restored partitions retention still leaves alone (under the lock; the ones
        whose time is up are forgotten)."""
        now = time.time()
        self._manifest.kept = {p: t for p, t in self._manifest.kept.items() if t > now}
        return set(self._manifest.kept)


_FOLDS = np.array([words.FOLDS], np.uint64)


def _set_aside(path: Path) -> Path:
    """Move a damaged state file to NAME.damaged-TIME (kept for whoever looks); where."""
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    path.replace(aside)
    return aside


def _archived_segments(path: Path) -> list[dict[str, Any]]:
    """The segments an archive holds (its ``segments.json``)."""
    with tarfile.open(path) as tar:
        member = tar.extractfile("segments.json")
        if member is None:
            raise KeyError("segments.json")
        return orjson.loads(member.read())


def _archive_order(path: Path) -> tuple[str, int]:
    """``PART.tar`` before ``PART.2.tar`` before ``PART.10.tar``."""
    parts = path.name.split(".")
    return parts[0], int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 1


def _extract_durably(tar: tarfile.TarFile, member: str, out: Path) -> None:
    """Write a member of ``tar`` to ``out`` and fsync it."""
    src = tar.extractfile(member)
    if src is None:
        raise KeyError(member)
    with src, open(out, "wb") as f:
        shutil.copyfileobj(src, f)
        f.flush()
        os.fsync(f.fileno())


def _unlink_all(paths: list[Path]) -> None:
    """Delete files, then their directories left empty."""
    for p in paths:
        p.unlink(missing_ok=True)
    for d in {p.parent for p in paths}:
        try:
            d.rmdir()
        except OSError:
            pass                                    # not empty


def _file_bytes(paths: list[Path]) -> int:
    """Total size of the files of ``paths`` that exist."""
    total = 0
    for p in paths:
        try:
            total += p.stat().st_size
        except OSError:
            pass
    return total


def _add_counts(into: dict[str, Counter], more: dict[str, Counter]) -> None:
    for name, c in more.items():
        into[name].update(c)


def _digest_of(path: Path) -> str:
    return file_digest(path)[0]


def _tar_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _partitions(segs: list[SegmentInfo]) -> dict[str, list[SegmentInfo]]:
    out: dict[str, list[SegmentInfo]] = {}
    for s in segs:
        out.setdefault(s.partition, []).append(s)
    return out


def _narrowed(q: LogQuery, cur: tuple[int, str] | None) -> LogQuery:
    """q with its time range cut at the cursor, so later pages skip segments and row groups
    the cursor has passed (paging stays linear, not quadratic)."""
    if cur is None:
        return q
    ts = cur[0]
    start, end = q.start, q.end
    if q.sort == "desc":
        end = ts + 1 if end is None else min(end, ts + 1)
    else:
        start = ts if start is None else max(start, ts)
    return dataclasses.replace(q, start=start, end=end)


def _overlaps(s: SegmentInfo, q: LogQuery) -> bool:
    return (q.start is None or s.max_ts >= q.start) and (q.end is None or s.min_ts < q.end)


def _order(t: pa.Table, sort: str) -> pa.Table:
    order = "descending" if sort == "desc" else "ascending"
    return t.take(pc.sort_indices(t, [("timestamp", order), ("id", order)]))


def _can_stop(found: list[pa.Table], q: LogQuery, next_bound: int | None) -> bool:
    if next_bound is None:
        return True
    ts = np.concatenate([f["timestamp"].to_numpy() for f in found])
    if q.sort == "desc":
        kth = np.sort(ts)[::-1][q.limit - 1]
        return next_bound < kth
    kth = np.sort(ts)[q.limit - 1]
    return next_bound > kth


def _untemplated(table: pa.Table) -> pa.Table:
    """SCHEMA columns + null template_id/params (filled when the segment is written)."""
    n = table.num_rows
    return table.append_column("template_id", pa.nulls(n, pa.uint64())).append_column(
        "params", pa.nulls(n, pa.list_(pa.string())))


def _raw_estimate(table: pa.Table) -> int:
    return int(table.select(batchmod.SCHEMA.names).nbytes)


def _records(t: pa.Table) -> list[dict[str, Any]]:
    rows = t.select([*batchmod.SCHEMA.names, "template_id"]).to_pylist()
    for r in rows:
        r["metadata"] = orjson.loads(r["metadata"] or "{}")
        r["context"] = orjson.loads(r["context"] or "{}")
    return rows
