"""Bounded on-disk FIFO of batches waiting for the hub; survives restarts.

One file per batch, ``<seq>.batch``: a JSON header line (batch id, record count, count per
level) then the zstd-compressed NDJSON body. Files are written to a temp name, fsync'd and
renamed. When the spool is full, entries of the lowest level present (TRACE first, by
``LEVEL_RANK``) are removed from the spooled batches and the incoming one until it fits;
CRITICAL and SECURITY entries are never dropped (the bound is exceeded for them, counted
as ``over_bound``). Every drop is counted by level.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import zstandard

from mohlog import log
from mohlog.model import LEVEL_RANK, NEVER_DROP

_Z = zstandard.ZstdCompressor(level=3)
_DZ = zstandard.ZstdDecompressor()


@dataclass
class Batch:
    """A batch on its way: its stable id (the Idempotency-Key) and its NDJSON lines."""

    id: str
    lines: list[bytes]
    levels: Counter[str] = field(default_factory=Counter)

    @property
    def records(self) -> int:
        return len(self.lines)

    def body(self) -> bytes:
        return b"\n".join(self.lines) + b"\n"

    def without(self, level: str) -> tuple[Batch, int]:
        keep = [ln for ln in self.lines if _level(ln) != level]
        dropped = len(self.lines) - len(keep)
        levels = Counter(self.levels)
        levels.pop(level, None)
        return Batch(self.id, keep, levels), dropped


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
        self._scan()

    def _scan(self) -> None:
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        for p in sorted(self.dir.glob("*.batch")):
            try:
                header = _read_header(p)
            except (OSError, ValueError) as err:
                log.agent.error("spool file %s unreadable (%s): moved aside", p.name, err)
                p.rename(p.with_suffix(".corrupt"))
                continue
            self._entries.append(_Entry(int(p.stem), p, p.stat().st_size,
                                        Counter(header["levels"])))
        self._seq = self._entries[-1].seq if self._entries else 0
        if self._entries:
            log.agent.info("spool: %d batches waiting from a previous run", len(self._entries))

    @property
    def batches(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self._entries)

    def push(self, batch: Batch) -> None:
        """Append a batch (making room by dropping the lowest levels first)."""
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
            path = self.dir / f"{self._seq:016d}.batch"
            _write(path, data)
            self._entries.append(_Entry(self._seq, path, len(data), Counter(batch.levels)))

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
            old = read(e.path)
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
        """The oldest batch (seq, batch), or None."""
        with self._lock:
            if not self._entries:
                return None
            e = self._entries[0]
            return e.seq, read(e.path)

    def remove(self, seq: int) -> None:
        with self._lock:
            for e in self._entries:
                if e.seq == seq:
                    e.path.unlink(missing_ok=True)
                    self._entries.remove(e)
                    return


def _encode(batch: Batch) -> bytes:
    header = orjson.dumps({"id": batch.id, "records": batch.records,
                           "levels": dict(batch.levels)})
    return header + b"\n" + _Z.compress(batch.body())


def _read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        return orjson.loads(f.readline())


def read(path: Path) -> Batch:
    data = path.read_bytes()
    nl = data.index(b"\n")
    header = orjson.loads(data[:nl])
    body = _DZ.decompress(data[nl + 1:])
    lines = [ln for ln in body.split(b"\n") if ln]
    return Batch(header["id"], lines, Counter(header["levels"]))


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
