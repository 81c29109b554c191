"""Merging small segments: the records, their counts and their word index are the same
after a merge; the old files go after the grace period; a crash on either side of the
manifest leaves every record exactly once; the background merges on its own; a corrupt
segment is left alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from server.store.config import StoreConfig
from server.store.engine import Store
from server.store.query import LogQuery, parse_filter
from tests.unit.test_store_search import entries, oracle

QUERIES = [LogQuery(limit=100_000),
           LogQuery(text="password", limit=100_000),
           LogQuery(text='"took 7 ms"', limit=100_000),
           LogQuery(text="/user1[0-2] from/", filters=[parse_filter("level=WARNING")],
                    limit=100_000),
           LogQuery(filters=[parse_filter("host=db-1")], limit=100_000)]


def _store(data: Path, **kw: Any) -> Store:
    cfg = {"row_group_rows": 100, "flush_interval_s": 3600, "compact_segments": 4,
           "compact_small_rows": 1000, **kw}
    return Store(StoreConfig(data_dir=data, **cfg))


def _fill(st: Store, loop: asyncio.AbstractEventLoop, recs: list[dict], parts: int) -> None:
    size = len(recs) // parts
    for k in range(parts):
        body = b"\n".join(orjson.dumps(r) for r in recs[k * size:(k + 1) * size])
        loop.run_until_complete(st.append(st.parse(body), f"batch{k}"))
        st.flush()                                  # one small segment each


def _answers(st: Store, recs: list[dict]) -> None:
    for q in QUERIES:
        got = sorted(r["id"] for r in st.search(q).records)
        assert got == sorted(oracle(recs, q)), q


def _files(data: Path) -> set[str]:
    return {f"{f.parent.name}/{f.name}" for f in (data / "segments").glob("*/*")}


def _own_files(seg: Any) -> set[str]:
    """A segment's file and the two beside it."""
    return {seg.path, seg.path.replace(".parquet", ".rollup.arrow"),
            seg.path.replace(".parquet", ".words.arrow")}


def _filled(data: Path, recs: list[dict], parts: int, **kw: Any
            ) -> tuple[Store, asyncio.AbstractEventLoop]:
    """An open store holding ``recs`` as ``parts`` small segments."""
    loop = asyncio.new_event_loop()
    st = _store(data, **kw)
    loop.run_until_complete(st.open())
    _fill(st, loop, recs, parts)
    return st, loop


def test_merge_keeps_records_counts_and_index(tmp_path: Path) -> None:
    recs = entries(1200)
    st, loop = _filled(tmp_path, recs, 6)
    try:
        assert len(st._segments) == 6
        before_stats, before_files = st.stats(), _files(tmp_path)
        _answers(st, recs)
        assert st._writer.submit(st.compact).result() == 6
        assert len(st._segments) == 1 and st._segments[0].rows == 1200
        after = st.stats()
        for key in ("records", "by_level", "by_host", "by_component", "raw_bytes"):
            assert after[key] == before_stats[key], key
        _answers(st, recs)
        # a rare word: the merged segment's word index keeps only its row groups
        q = LogQuery(text="blk_39595", limit=10)           # i = 5 only
        assert sorted(r["id"] for r in st.search(q).records) == sorted(oracle(recs, q)) != []
        groups = st._row_groups(q, st._segments)
        assert 0 < len(st._pruned(groups, q)) < len(groups)
        assert before_files <= _files(tmp_path)     # the old files wait for the grace
        st._reap(grace_s=0.0)
        assert _files(tmp_path) == _own_files(st._segments[0])
        assert st._writer.submit(st.compact).result() == 0   # nothing left to merge
    finally:
        loop.run_until_complete(st.close())
    again = _store(tmp_path)
    loop.run_until_complete(again.open())
    try:
        assert len(again._segments) == 1 and not again._corrupt
        _answers(again, recs)
    finally:
        loop.run_until_complete(again.close())
        loop.close()


def test_a_crash_on_either_side_of_the_manifest_keeps_every_record_once(tmp_path: Path
                                                                       ) -> None:
    recs = entries(800)
    st, loop = _filled(tmp_path, recs, 4)
    old = _files(tmp_path)
    assert st._writer.submit(st.compact).result() == 4
    st.wal.stop()
    st._dir_lock.release()                          # crashed: merged, old files not deleted
    assert old < _files(tmp_path)
    part = st._segments[0].partition
    stray = tmp_path / "segments" / part / "0000099999.parquet"
    stray.write_bytes(b"a write cut short: numbered past the manifest, overwritten later")
    again = _store(tmp_path)
    loop.run_until_complete(again.open())
    try:
        assert _files(tmp_path) == _own_files(again._segments[0]) | {f"{part}/{stray.name}"}
        assert not again._corrupt
        _answers(again, recs)
        assert again.stats()["records"] == 800
    finally:
        loop.run_until_complete(again.close())
        loop.close()


def test_without_a_manifest_no_segment_file_is_removed(tmp_path: Path) -> None:
    st, loop = _filled(tmp_path, entries(400), 2)
    loop.run_until_complete(st.close())
    files = _files(tmp_path)
    (tmp_path / "manifest.json").unlink()           # lost: the files are all there is
    again = _store(tmp_path)
    loop.run_until_complete(again.open())
    loop.run_until_complete(again.close())
    loop.close()
    assert _files(tmp_path) == files and len(files) == 6


def test_background_merges_small_segments(tmp_path: Path) -> None:
    recs = entries(900)
    loop = asyncio.new_event_loop()
    st = _store(tmp_path, flush_interval_s=0.2, compact_segments=3)
    loop.run_until_complete(st.open())
    try:
        for k in range(9):
            body = b"\n".join(orjson.dumps(r) for r in recs[k * 100:(k + 1) * 100])
            loop.run_until_complete(st.append(st.parse(body), f"b{k}"))
            time.sleep(0.3)                         # a flush each: a small segment each
        deadline = time.monotonic() + 30
        while len(st._segments) > 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(st._segments) <= 2, [s.path for s in st._segments]
        _answers(st, recs)
    finally:
        loop.run_until_complete(st.close())
    assert len(_files(tmp_path)) == 3 * len(st._segments)   # closing deleted the old ones
    loop.close()


def test_a_corrupt_segment_is_not_merged(tmp_path: Path) -> None:
    st, loop = _filled(tmp_path, entries(800), 4)
    try:
        victim = st._segments[1]
        path = tmp_path / "segments" / victim.path
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        assert st._writer.submit(st.compact).result() == 0
        assert len(st._segments) == 4 and victim.path in st._unmergeable
        assert st._writer.submit(st.compact).result() == 0   # and not tried again
    finally:
        loop.run_until_complete(st.close())
        loop.close()
