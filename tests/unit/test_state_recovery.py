"""The store's state files lost or damaged: a manifest is rebuilt from the segment files
(every record served again, the WAL replayed whole, the damaged manifest kept aside, an
unreadable segment file moved out of the way, NDJSON byte counts from the footers); a
template state is rebuilt from the template texts the segments' footers hold."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson

from server.store.query import LogQuery
from tests.unit.test_compaction import _files, _store
from tests.unit.test_store_search import entries

HOUR = 3600 * 10**9


def _records() -> list[dict]:
    recs = entries(900)
    for r in recs[600:]:                 # a second partition
        r["timestamp"] += 2 * HOUR
    return recs


def _open(data: Path, loop: asyncio.AbstractEventLoop, recs: list[dict], flushed: int
          ) -> tuple:
    """A store holding ``recs``: the first ``flushed`` in segments (three batches), the
    rest in the WAL only; the store is then left as a crash leaves it."""
    st = _store(data, compact_segments=0)
    loop.run_until_complete(st.open())
    for k, part in enumerate((recs[:300], recs[300:flushed])):
        body = b"\n".join(orjson.dumps(r) for r in part)
        loop.run_until_complete(st.append(st.parse(body), f"b{k}"))
        st.flush()
    if recs[flushed:]:
        body = b"\n".join(orjson.dumps(r) for r in recs[flushed:])
        loop.run_until_complete(st.append(st.parse(body), "wal-only"))
    stats = st.stats()
    st.wal.stop()
    st._dir_lock.release()
    return st, stats


def _ids(st) -> list[str]:
    return sorted(r["id"] for r in st.search(LogQuery(limit=100_000)).records)


def test_a_lost_manifest_is_rebuilt_from_the_segments(tmp_path: Path) -> None:
    recs, loop = _records(), asyncio.new_event_loop()
    before, stats = _open(tmp_path, loop, recs, 800)
    assert len(before._segments) == 3 and stats["records_in_memory"] == 100
    files = _files(tmp_path)
    (tmp_path / "manifest.json").unlink()
    again = _store(tmp_path, compact_segments=0)
    loop.run_until_complete(again.open())
    try:
        assert _ids(again) == sorted(r["id"] for r in recs)           # each once
        assert [(s.path, s.rows, s.min_ts, s.max_ts, s.raw_bytes, s.xxh64)
                for s in sorted(again._segments, key=lambda s: s.path)] == [
            (s.path, s.rows, s.min_ts, s.max_ts, s.raw_bytes, s.xxh64)
            for s in sorted(before._segments, key=lambda s: s.path)]
        assert again._manifest.next_segment == before._manifest.next_segment
        assert again.stats()["raw_bytes"] == stats["raw_bytes"]
        assert (tmp_path / "manifest.json").exists() and _files(tmp_path) >= files
        assert again.search(LogQuery(text="password", limit=100_000)).records   # words too
    finally:
        loop.run_until_complete(again.close())
        loop.close()


def test_a_damaged_manifest_is_kept_aside_and_rebuilt(tmp_path: Path) -> None:
    recs, loop = _records(), asyncio.new_event_loop()
    before, _ = _open(tmp_path, loop, recs, 900)
    (tmp_path / "manifest.json").write_bytes(b'{"segments": [{"path": 3')   # torn
    victim = tmp_path / "segments" / before._segments[0].path
    victim.write_bytes(b"not parquet at all")                            # and one file bad
    again = _store(tmp_path, compact_segments=0)
    loop.run_until_complete(again.open())
    try:
        aside = list(tmp_path.glob("manifest.json.damaged-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == b'{"segments": [{"path": 3'
        lost = {r["id"] for r in recs[:300]}                             # the bad file's
        assert _ids(again) == sorted(r["id"] for r in recs if r["id"] not in lost)
        assert (tmp_path / "damaged" / before._segments[0].path).exists()
        assert not victim.exists()
        assert {s.path for s in again._segments} == {s.path for s in before._segments[1:]}
    finally:
        loop.run_until_complete(again.close())
        loop.close()


def _messages(st) -> dict[str, str]:
    return {r["id"]: r["message"] for r in st.search(LogQuery(limit=100_000)).records}


def test_lost_or_damaged_template_state_comes_back_from_the_segments(tmp_path: Path
                                                                      ) -> None:
    """Segments hold (template id, parameters); their footers also hold the texts of the
    templates they use, so a template state deleted, then one damaged, costs nothing: every
    message renders as it was sent, and mining goes on."""
    recs, loop = _records(), asyncio.new_event_loop()
    st, _ = _open(tmp_path, loop, recs, 800)
    want = {r["id"]: r["message"] for r in recs}
    state = tmp_path / "templates.json"
    for damage in (None, b'{"version": 1, "templates": [[1, "x"'):
        if damage is None:
            state.unlink()
        else:
            state.write_bytes(damage)
        again = _store(tmp_path, compact_segments=0)
        loop.run_until_complete(again.open())
        try:
            assert _messages(again) == want
            assert again.search(LogQuery(text='"Accepted password for user3"',
                                         limit=100_000)).records
            assert state.exists()
        finally:
            again.wal.stop()
            again._dir_lock.release()
    assert len(list(tmp_path.glob("templates.json.damaged-*"))) == 1
    again = _store(tmp_path, compact_segments=0)
    loop.run_until_complete(again.open())
    try:
        more = [dict(r, id=f"n{i}", timestamp=r["timestamp"] + 1) for i, r in
                enumerate(recs[:50])]
        body = b"\n".join(orjson.dumps(r) for r in more)
        loop.run_until_complete(again.append(again.parse(body), "more"))
        again.flush()
        want.update({r["id"]: r["message"] for r in more})
        assert _messages(again) == want
    finally:
        loop.run_until_complete(again.close())
        loop.close()


def test_a_state_without_templates_is_not_rebuilt_at_each_start(tmp_path: Path,
                                                                caplog: Any) -> None:
    """A hub that stored messages whole (templates off) and then mines them: its state
    file holds no template, and that is not a lost state to rebuild at every start."""
    recs, loop = _records()[:300], asyncio.new_event_loop()
    st = _store(tmp_path, templates=False)
    loop.run_until_complete(st.open())
    loop.run_until_complete(st.append(st.parse(b"\n".join(orjson.dumps(r) for r in recs)),
                                      "raw"))
    st.flush()
    loop.run_until_complete(st.close())
    caplog.set_level(logging.INFO, logger="mohlog.store")
    for _ in range(2):
        again = _store(tmp_path)
        loop.run_until_complete(again.open())
        try:
            assert _messages(again) == {r["id"]: r["message"] for r in recs}
        finally:
            loop.run_until_complete(again.close())
    assert not [r for r in caplog.records if "template state rebuilt" in r.getMessage()]
    loop.close()
