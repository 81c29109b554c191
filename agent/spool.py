"""Bounded on-disk FIFO of batches waiting for the hub; survives restarts.

One file per batch, ``<seq>.batch``: a JSON header line (batch id, record count, count per
level, and ``format`` for an Arrow batch) then the zstd-compressed body: NDJSON, or one
Arrow IPC stream. The body is compressed once, when spooled; the sink sends those bytes.
Files are written to a temp name, fsync'd and
renamed. When the spool is full, entries of the lowest level present (TRACE first, by
``LEVEL_RANK``) are removed from the spooled batches and the incoming one until it fits;
CRITICAL and SECURITY entries are never dropped (the bound is exceeded for them, counted
as ``over_bound``). Every drop is counted by level.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zstandard

from mohlog import log
from mohlog.model import LEVEL_RANK, NEVER_DROP

ZSTD_LEVEL = 3


def _compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)  # one per call: threads


def _decompress(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(data)


class Batch:
    """A batch on its way: its stable id (the Idempotency-Key) and its records, either as
    NDJSON lines or as one Arrow IPC stream (``fmt="arrow"``, columns of
    ``server.store.batch.SCHEMA``, metadata and context as JSON text). A batch read back
    from the spool keeps its compressed body (``zbody``) so the sink sends it as it is; its
    lines or table are decoded only when asked for."""

    def __init__(self, id: str, lines: list[bytes] | None = None,  # noqa: A002 - the id
                 levels: Counter[str] | None = None, *, fmt: str = "ndjson",
                 ipc: bytes | None = None, records: int | None = None,
                 zbody: bytes | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown batch format {fmt!r}")
        self.id = id
        self.levels: Counter[str] = levels if levels is not None else Counter()
        self.fmt = fmt
        self._lines = lines
        self._ipc = ipc
        self.zbody = zbody
        if records is None:
            records = len(lines) if lines is not None else _ipc_rows(ipc or b"")
        self._records = records

    @property
    def records(self) -> int:
        return self._records

    @property
    def content_type(self) -> str:
        return ARROW_STREAM if self.fmt == "arrow" else NDJSON

    def body(self) -> bytes:
        """The uncompressed request body."""
        if self.fmt == "arrow":
            if self._ipc is None:
                self._ipc = _decompress(self.zbody or b"")
            return self._ipc
        return b"\n".join(self.lines) + b"\n"

    def compressed(self) -> bytes:
        """The zstd-compressed body (made once, then kept)."""
        if self.zbody is None:
            self.zbody = _compress(self.body())
        return self.zbody

    @property
    def lines(self) -> list[bytes]:
        """NDJSON lines (of an Arrow batch: converted, for tests and level drops)."""
        if self._lines is None:
            if self.fmt == "arrow":
                self._lines = _arrow_lines(self.body())
            else:
                body = _decompress(self.zbody or b"")
                self._lines = [ln for ln in body.split(b"\n") if ln]
        return self._lines

    def without(self, level: str) -> tuple[Batch, int]:
        levels = Counter(self.levels)
        levels.pop(level, None)
        if self.fmt == "arrow":
            import pyarrow as pa
            import pyarrow.compute as pc

            table = pa.ipc.open_stream(pa.py_buffer(self.body())).read_all()
            keep = table.filter(pc.fill_null(pc.not_equal(table["level"], level), True))
            return (Batch(self.id, levels=levels, fmt="arrow", ipc=arrow_ipc(keep),
                          records=keep.num_rows), table.num_rows - keep.num_rows)
        keep = [ln for ln in self.lines if _level(ln) != level]
        dropped = len(self.lines) - len(keep)
        return Batch(self.id, keep, levels), dropped


FORMATS = ("ndjson", "arrow")
NDJSON = "application/x-ndjson"
ARROW_STREAM = "application/vnd.apache.arrow.stream"


def arrow_ipc(table: Any) -> bytes:
    """A pyarrow Table as the bytes of one Arrow IPC stream."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _ipc_rows(ipc: bytes) -> int:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(ipc)).read_all().num_rows if ipc else 0


def _arrow_lines(ipc: bytes) -> list[bytes]:
    import pyarrow as pa

    rows = pa.ipc.open_stream(pa.py_buffer(ipc)).read_all().to_pylist()
    out = []
    for row in rows:
        for key in ("metadata", "context"):
            if isinstance(row.get(key), str):
                row[key] = orjson.loads(row[key])
        out.append(orjson.dumps({k: v for k, v in row.items() if v is not None}))
    return out


def _level(line: bytes) -> str:
    i = line.find(b'"level":"')
    if i < 0:
        return str(orjson.loads(line).get("level", "INFO"))
    j = line.find(b'"', i + 9)
    return line[i + 9:j].decode()


@dataclass
class _Entry:
    seq: int
    path: Path
    size: int
    levels: Counter[str]


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.dropped: Counter[str] = Counter()
        self.over_bound = 0
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []
        self._seq = 0
        # Batches the disk had no room for (ENOSPC, a quota, an I/O error), in order after
        # the spooled ones; written out once it has room again (see push).
        self._memory: deque[tuple[int, Batch, int]] = deque()      # (seq, batch, bytes)
        self.memory_bytes = 0
        self.disk_errors = 0
        self._disk_said = 0.0
        self._scan()

    def _scan(self) -> None:
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        for p in sorted(self.dir.glob("*.batch")):
            try:
                header = _read_header(p)
                levels = Counter(header["levels"])
                seq = int(p.stem)
            except _DAMAGED as err:
                _set_aside(p, err)
                continue
            self._entries.append(_Entry(seq, p, p.stat().st_size, levels))
        self._seq = self._entries[-1].seq if self._entries else 0
        if self._entries:
            log.agent.info("spool: %d batches waiting from a previous run", len(self._entries))

    @property
    def batches(self) -> int:
        return len(self._entries) + len(self._memory)

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self._entries)

    def push(self, batch: Batch) -> None:
        """Append a batch (making room by dropping the lowest levels first). When the disk
        refuses it (full: the spool is on a filesystem of its own, or shares one that
        filled), it waits in memory, written out in order once the disk takes it again, up
        to MEMORY_MAX bytes beyond which the lowest levels go (CRITICAL and SECURITY are
        kept)."""
        with self._lock:
            data = _encode(batch)
            while self.bytes + len(data) > self.max_bytes:
                level = self._lowest(batch)
                if level is None:
                    self.over_bound += batch.records
                    break
                batch = self._drop_level(level, batch)
                data = _encode(batch)
            if not batch.records:
                return
            self._seq += 1
            if not self._memory and self._written(self._seq, batch, data):
                return
            self._memory.append((self._seq, batch, len(data)))
            self.memory_bytes += len(data)
            self._bound_memory()

    def _written(self, seq: int, batch: Batch, data: bytes) -> bool:
        """Write one batch to disk (under the lock); False when the disk refuses it."""
        path = self.dir / f"{seq:016d}.batch"
        try:
            _write(path, data)
        except OSError as err:
            self.disk_errors += 1
            if time.monotonic() - self._disk_said > 60:     # once a minute
                self._disk_said = time.monotonic()
                log.agent.error("spool: cannot write to %s (%s); batches wait in memory "
                                "(%d), the lowest levels go first past %d MB", self.dir,
                                err, len(self._memory) + 1, MEMORY_MAX >> 20)
            return False
        self._entries.append(_Entry(seq, path, len(data), Counter(batch.levels)))
        return True

    def _spill(self) -> None:
        """Write the batches waiting in memory to disk, oldest first, while it takes them
        (under the lock). (Rewriting spooled files smaller would need room the disk has
        not: past MEMORY_MAX, levels go from the batches in memory.)"""
        while self._memory:
            seq, batch, size = self._memory[0]
            if not self._written(seq, batch, _encode(batch)):
                return
            self._memory.popleft()
            self.memory_bytes -= size

    def _bound_memory(self) -> None:
        """Past MEMORY_MAX bytes in memory, the lowest levels of the batches there go."""
        while self.memory_bytes > MEMORY_MAX:
            levels = {lv for _, b, _ in self._memory for lv, n in b.levels.items() if n}
            droppable = [lv for lv in levels if lv not in NEVER_DROP]
            if not droppable:
                return                          # CRITICAL and SECURITY only: kept
            level = min(droppable, key=lambda lv: LEVEL_RANK.get(lv, 0))
            kept: deque[tuple[int, Batch, int]] = deque()
            for seq, b, size in self._memory:
                if b.levels.get(level):
                    b, n = b.without(level)
                    self.dropped[level] += n
                    size = len(_encode(b))
                if b.records:
                    kept.append((seq, b, size))
            self._memory = kept
            self.memory_bytes = sum(size for _, _, size in kept)

    def _lowest(self, batch: Batch) -> str | None:
        present: set[str] = set(batch.levels)
        for e in self._entries:
            present.update(lv for lv, n in e.levels.items() if n)
        droppable = [lv for lv in present if lv not in NEVER_DROP]
        return min(droppable, key=lambda lv: LEVEL_RANK.get(lv, 0)) if droppable else None

    def _drop_level(self, level: str, batch: Batch) -> Batch:
        for e in list(self._entries):
            if not e.levels.get(level):
                continue
            try:
                old = read(e.path)
            except _DAMAGED as err:
                _set_aside(e.path, err)
                self._entries.remove(e)
                continue
            new, n = old.without(level)
            self.dropped[level] += n
            if new.records:
                data = _encode(new)
                _write(e.path, data)
                e.size, e.levels = len(data), Counter(new.levels)
            else:
                e.path.unlink(missing_ok=True)
                self._entries.remove(e)
        batch, n = batch.without(level)
        self.dropped[level] += n
        return batch

    def peek(self) -> tuple[int, Batch] | None:
        """The oldest batch (seq, batch), or None: on disk, then in memory. A file that
        cannot be read any more (a disk error, an edit by hand) is set aside, so the
        batches behind it still ship."""
        with self._lock:
            while self._entries:
                e = self._entries[0]
                try:
                    return e.seq, read(e.path)
                except _DAMAGED as err:
                    _set_aside(e.path, err)
                    self._entries.pop(0)
            return self._memory[0][:2] if self._memory else None

    def remove(self, seq: int) -> None:
        with self._lock:
            for e in self._entries:
                if e.seq == seq:
                    e.path.unlink(missing_ok=True)
                    self._entries.remove(e)
                    if self._memory:
                        self._spill()           # room again, maybe
                    return
            if self._memory and self._memory[0][0] == seq:
                self.memory_bytes -= self._memory.popleft()[2]


_DAMAGED = (OSError, ValueError, KeyError, TypeError, AttributeError)
MEMORY_MAX = 64 << 20   # bytes of batches kept in memory while the disk refuses them


def _set_aside(path: Path, err: BaseException) -> None:
    """Move a spool file that cannot be read to NAME.corrupt (kept for whoever looks)."""
    log.agent.error("spool file %s unreadable (%s): moved aside", path.name, err)
    try:
        path.rename(path.with_suffix(".corrupt"))
    except OSError:
        path.unlink(missing_ok=True)


def _encode(batch: Batch) -> bytes:
    meta: dict[str, Any] = {"id": batch.id, "records": batch.records,
                            "levels": dict(batch.levels)}
    if batch.fmt != "ndjson":
        meta["format"] = batch.fmt
    return orjson.dumps(meta) + b"\n" + batch.compressed()


def _read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        return orjson.loads(f.readline())


def read(path: Path) -> Batch:
    """A spooled batch; its body stays compressed until lines or a table are asked for."""
    data = path.read_bytes()
    nl = data.index(b"\n")
    header = orjson.loads(data[:nl])
    zbody = data[nl + 1:]
    fmt = header.get("format", "ndjson")
    records = header.get("records")
    if fmt not in FORMATS or not isinstance(records, int):
        raise ValueError(f"bad spool header {header}")
    return Batch(header["id"], levels=Counter(header["levels"]), fmt=fmt, records=records,
                 zbody=zbody)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                       "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)         # (a full disk: not a half file taking room)
        raise
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
