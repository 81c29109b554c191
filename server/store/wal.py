"""Write-ahead log with group commit.

Files ``wal/<n>.log`` hold records ``MAGIC | u32 length | u64 xxh64(payload) | payload``;
a payload is ``u16 key length | key | Arrow IPC stream (zstd)``, or, for an Arrow body kept
as received (the key length's top bit set), ``u16 | u32 defaults length | key | defaults
(JSON) | the body``. One writer thread takes
every record queued while the previous fsync ran and writes them with one fsync, so
concurrent batches share it. A torn or corrupt tail (a crash mid-write) ends replay and is
cut off; everything before it was acknowledged and is kept.
"""

from __future__ import annotations

import errno
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import orjson
import pyarrow as pa
import xxhash

from mohlog import log
from mohlog.errors import StorageFull
from server.store.fsutil import fsync_dir

Buffer: TypeAlias = "bytes | bytearray | memoryview"   # anything with the buffer protocol

MAGIC = b"MWL1"
_HEAD = struct.Struct("<4sIQ")
_IPC = pa.ipc.IpcWriteOptions(compression="zstd")
_IPC_PLAIN = pa.ipc.IpcWriteOptions()


def _record(prefix: bytes, body: Buffer) -> tuple[bytes, Buffer]:
    """A record in two pieces written one after the other, ``MAGIC | length | xxh64 |
    prefix`` and the body itself: the body (~1 MB from a bulk sender) is not copied."""
    digest = xxhash.xxh64(prefix)
    digest.update(body)
    return _HEAD.pack(MAGIC, len(prefix) + len(body), digest.intdigest()) + prefix, body


def encode(key: str | None, table: pa.Table, compress: bool = True) -> tuple[bytes, Buffer]:
    """A WAL record of the table (Arrow IPC, zstd-compressed unless ``compress`` is False:
    the reader takes either)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC if compress else _IPC_PLAIN) as w:
        w.write_table(table)
    k = (key or "").encode()
    return _record(struct.pack("<H", len(k)) + k, memoryview(sink.getvalue()))


_RAW = 0x8000   # flag in the key length: the payload holds an Arrow body as received


def encode_raw(key: str | None, raw: Buffer, defaults: dict) -> tuple[bytes, Buffer]:
    """A record holding a validated Arrow body as received plus the defaults that rebuild
    the stored table from it (server.store.batch.rebuild): no re-encoding."""
    k = (key or "").encode()
    if len(k) >= _RAW:
        raise ValueError("key too long for a raw record")
    head = orjson.dumps(defaults)
    return _record(struct.pack("<HI", len(k) | _RAW, len(head)) + k + head, raw)


def decode(body: bytes) -> tuple[str | None, pa.Table]:
    (klen,) = struct.unpack_from("<H", body)
    if klen & _RAW:
        from server.store.batch import rebuild
        klen &= ~_RAW
        (hlen,) = struct.unpack_from("<I", body, 2)
        key = body[6:6 + klen].decode() or None
        defaults = orjson.loads(body[6 + klen:6 + klen + hlen])
        return key, rebuild(body[6 + klen + hlen:], defaults)
    key = body[2:2 + klen].decode() or None
    table = pa.ipc.open_stream(pa.py_buffer(body[2 + klen:])).read_all()
    return key, table


@dataclass
class Pending:
    record: tuple[Buffer, ...]     # the record's pieces, written in order
    future: Future
    # Called in the writer thread after the fsync, with the WAL file number.
    on_durable: Callable[[int], None]


class Wal:
    """The log files plus the group-commit writer thread."""

    def __init__(self, directory: Path, fsync_observer: Callable[[float], None]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()  # held while writing; rotate() takes it too
        self._observe = fsync_observer
        self._queue: queue.Queue[Pending | None] = queue.Queue()
        self._file: int | None = None
        self.number = 0
        self._thread: threading.Thread | None = None

    # ---- files ------------------------------------------------------------
    def files(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.log") if p.stem.isdigit())

    def path(self, n: int) -> Path:
        return self.dir / f"{n:012d}.log"

    def open_next(self) -> None:
        """Start a new log file (after replay, or when a segment flush rotates)."""
        existing = self.files()
        self.number = (existing[-1] + 1) if existing else 1
        if self._file is not None:
            os.close(self._file)
        self._file = os.open(self.path(self.number), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                             0o600)
        fsync_dir(self.dir)

    def rotate(self) -> int:
        """Switch to a new file; returns the number of the last closed one."""
        with self.lock:
            closed = self.number
            self.open_next()
            return closed

    def remove_upto(self, n: int) -> None:
        for f in self.files():
            if f <= n:
                self.path(f).unlink(missing_ok=True)
        fsync_dir(self.dir)

    def replay(self, after: int) -> Iterator[tuple[int, str | None, pa.Table]]:
        """Yield (file number, key, table) of every intact record in files > ``after``."""
        for n in self.files():
            if n <= after:
                self.path(n).unlink(missing_ok=True)
                continue
            yield from self._replay_file(n)

    def _replay_file(self, n: int) -> Iterator[tuple[int, str | None, pa.Table]]:
        path = self.path(n)
        data = path.read_bytes()
        pos = 0
        while pos + _HEAD.size <= len(data):
            magic, length, digest = _HEAD.unpack_from(data, pos)
            body = data[pos + _HEAD.size:pos + _HEAD.size + length]
            if magic != MAGIC or len(body) != length or xxhash.xxh64_intdigest(body) != digest:
                break
            key, table = decode(body)
            yield n, key, table
            pos += _HEAD.size + length
        if pos < len(data):
            log.store.warning("wal %s: cutting %d bytes of torn tail", path.name, len(data) - pos)
            with open(path, "r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())

    # ---- group commit -----------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wal-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def submit(self, item: Pending) -> None:
        self._queue.put(item)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                group.append(nxt)
            try:
                self._commit(group)
            except Exception as err:  # noqa: BLE001 - the writer must outlive one group
                log.store.exception("wal: a group commit failed")
                for p in group:         # their requests get an error, not a wait for ever
                    if not p.future.done():
                        p.future.set_exception(err)

    def _commit(self, group: list[Pending]) -> None:
        with self.lock:
            assert self._file is not None
            start = os.lseek(self._file, 0, os.SEEK_END)
            try:
                write_all(self._file, [piece for p in group for piece in p.record])
                t0 = time.perf_counter()
                os.fsync(self._file)
                self._observe(time.perf_counter() - t0)
            except OSError as err:
                self._rollback(start)
                exc = _translate(err)
                for p in group:
                    p.future.set_exception(exc)
                return
            number = self.number
            for p in group:
                try:
                    p.on_durable(number)
                    p.future.set_result(number)
                except Exception as err:  # noqa: BLE001 - reported to the waiting request
                    p.future.set_exception(err)

    def _rollback(self, size: int) -> None:
        try:
            os.ftruncate(self._file, size)  # type: ignore[arg-type]
            os.fsync(self._file)  # type: ignore[arg-type]
        except OSError as err:
            log.store.error("wal rollback to %d failed: %s", size, err)


_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def write_all(fd: int, pieces: list[Buffer]) -> None:
    """Write the pieces in order with as few system calls as the kernel allows (writev),
    resuming after a short write."""
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_MAX])
        while n and i < len(views):
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


def _translate(err: OSError) -> Exception:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull("disk full: batch not stored, retry later", reason="ENOSPC")
    return err
