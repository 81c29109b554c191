"""An Arrow body kept as received in the WAL replays to the very table that was stored."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pytest

from mohlog.errors import InvalidInput
from server.store import batch as batchmod
from server.store.config import StoreConfig
from server.store.engine import Store
from server.store.wal import decode, encode_raw

ARROW = "application/vnd.apache.arrow.stream"


def body(n: int, with_ids: bool, compressed: bool = True) -> bytes:
    cols = {"timestamp": pa.array([None if i % 3 == 0 else 1_700_000_000_000_000_000 + i
                                   for i in range(n)], pa.int64()),
            "level": ["INFO"] * n, "component": ["APPLICATION"] * n,
            "message": [f"request {i} took {i % 7} ms" for i in range(n)]}
    if with_ids:
        cols["id"] = [None if i % 2 else f"given-{i}" for i in range(n)]
    t = pa.table(cols)
    sink = pa.BufferOutputStream()
    opts = pa.ipc.IpcWriteOptions(compression="zstd" if compressed else None)
    with pa.ipc.new_stream(sink, t.schema, options=opts) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("with_ids", [False, True])
def test_raw_record_rebuilds_the_same_table(with_ids: bool) -> None:
    b = batchmod.parse(body(5000, with_ids), None, ARROW, 1 << 30)
    assert b.raw is not None and b.defaults is not None
    key, table = decode(b"".join(encode_raw("k1", b.raw, b.defaults))[16:])
    assert key == "k1" and table.equals(b.table)
    assert table["id"].null_count == 0 and table["timestamp"].null_count == 0


def test_uncompressed_body_is_encoded_anew() -> None:
    b = batchmod.parse(body(5000, False, compressed=False), None, ARROW, 1 << 30)
    assert b.raw is None


def test_store_replays_raw_records_after_a_crash(tmp_path: Path) -> None:
    async def run() -> list[str]:
        st = Store(StoreConfig(data_dir=tmp_path, flush_interval_s=3600))
        await st.open()
        b = st.parse(body(3000, True), None, ARROW)
        await st.append(b, "once")
        ids = sorted(b.table["id"].to_pylist())
        st.wal.stop()                     # no flush: the records live only in the WAL
        st._dir_lock.release()            # and the crash: the kernel drops its lock
        again = Store(StoreConfig(data_dir=tmp_path, flush_interval_s=3600))
        await again.open()
        got = sorted(again.matching(again_q())["id"].to_pylist())
        dup = await again.append(again.parse(body(3000, True), None, ARROW), "once")
        await again.close()
        assert dup.duplicate
        return [ids == got]

    from server.store.query import LogQuery

    def again_q() -> LogQuery:
        return LogQuery(limit=100_000)
    assert asyncio.run(run()) == [True]


def test_overlong_idempotency_key_is_refused(tmp_path: Path) -> None:
    async def run() -> None:
        st = Store(StoreConfig(data_dir=tmp_path))
        await st.open()
        try:
            with pytest.raises(InvalidInput):
                await st.append(st.parse(body(10, False), None, ARROW), "k" * 2000)
        finally:
            await st.close()
    asyncio.run(run())


def test_ingest_waits_for_the_flush_past_the_memory_bound(tmp_path: Path) -> None:
    async def run() -> list[int]:
        st = Store(StoreConfig(data_dir=tmp_path, flush_rows=1000, max_tail_rows=1500,
                               flush_interval_s=3600))
        await st.open()
        seen = []
        for k in range(8):
            await st.append(st.parse(body(1000, False), None, ARROW), f"b{k}")
            seen.append(st.stats()["records_in_memory"])
        total = st.stats()["records"]
        await st.close()
        return [max(seen), total]
    most, total = asyncio.run(run())
    assert total == 8000 and most <= 2500


def test_small_and_large_ndjson_bodies_parse_alike() -> None:
    """Bodies under batch._SMALL_LINES lines are parsed with orjson, larger ones with
    Arrow's reader: the same lines give the same table either way (defaults aside), and
    a bad line is named by both."""
    import orjson

    lines = [orjson.dumps({"id": f"r{i}", "timestamp": 1_700_000_000_000_000_000 + i,
                           "level": "INFO", "component": "KERNEL", "host": f"h{i % 3}",
                           "pid": i, "message": f"m {i} \u00e9", "metadata": {}})
             for i in range(batchmod._SMALL_LINES + 200)]
    big = batchmod.parse(b"\n".join(lines), None, None, 1 << 30).table
    small = pa.concat_tables(
        batchmod.parse(b"\n".join(lines[i:i + 300]), None, None, 1 << 30).table
        for i in range(0, len(lines), 300))
    assert big.num_rows == len(lines) and big.equals(small)
    assert batchmod._parse_fast(b"\n".join(lines).rstrip()) is not None   # (both ways)
    for part in (lines, lines[:10]):
        bad = [*part[:5], b'{"level": "INFO", "component": "NOPE", "message": "x"}', *part[5:]]
        with pytest.raises(InvalidInput, match="line 6: unknown component"):
            batchmod.parse(b"\n".join(bad), None, None, 1 << 30)


@pytest.mark.parametrize("compress", [True, False])
def test_wal_records_compressed_or_not_decode_alike(compress: bool) -> None:
    from server.store.wal import encode
    b = batchmod.parse(b'{"level": "INFO", "component": "KERNEL", "message": "hi 1"}\n'
                       b'{"level": "ERROR", "component": "PLUGIN", "message": "hi 2"}',
                       None, None, 1 << 20)
    table = b.table.select(batchmod.SCHEMA.names)
    key, got = decode(b"".join(encode("k", table, compress=compress))[16:])
    assert key == "k" and got.equals(table)


def test_the_wal_writer_outlives_a_group_that_fails(tmp_path: Path) -> None:
    """An error the group commit does not expect (here its file descriptor closed under
    it) gives that group's requests an error instead of a wait for ever, and the writer
    goes on with the next groups."""
    import errno
    import os
    from concurrent.futures import Future

    from server.store.wal import Pending, Wal
    wal = Wal(tmp_path / "wal", lambda s: None)
    wal.open_next()
    wal.start()
    try:
        assert wal._file is not None
        os.close(wal._file)                          # EBADF for lseek and write
        first: Future = Future()
        wal.submit(Pending((b"x" * 100,), first, lambda n: None))
        err = first.exception(timeout=10)           # (a TimeoutError if it hung)
        assert isinstance(err, OSError) and err.errno == errno.EBADF, err
        wal._file = None
        wal.open_next()
        second: Future = Future()
        wal.submit(Pending((b"y" * 100,), second, lambda n: None))
        assert second.result(timeout=10) == wal.number
    finally:
        wal.stop()


def test_write_all_writes_every_piece_in_order(tmp_path: Path, monkeypatch) -> None:
    """Records go to the WAL as pieces with writev: more pieces than one call takes
    (IOV_MAX), empty ones, memoryviews, and short writes (the kernel may write less than
    asked: simulated by a writev that takes at most 777 bytes) all land whole, in order."""
    import os
    import random

    from server.store import wal
    rnd = random.Random(3)
    pieces: list = [rnd.randbytes(rnd.choice([0, 1, 5, 300, 4000])) for _ in range(3000)]
    pieces[7] = bytearray(b"a bytearray")
    pieces[8] = memoryview(b"0123456789")[2:6]
    want = b"".join(bytes(p) for p in pieces)
    assert sum(1 for p in pieces if len(p)) > wal._IOV_MAX
    real = os.writev
    for short in (False, True):
        if short:
            monkeypatch.setattr(wal.os, "writev", lambda fd, bufs: real(
                fd, [memoryview(b"".join(bytes(b) for b in bufs))[:777]]))
        path = tmp_path / f"out-{short}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        try:
            wal.write_all(fd, pieces)
        finally:
            os.close(fd)
        assert path.read_bytes() == want
