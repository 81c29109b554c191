"""Spool bounds and order, level-priority dropping, early filters, batching."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

import orjson
import pytest

from agent.config import AgentConfig, DropRule
from agent.pipeline import Filter, Pipeline
from agent.spool import Batch, Spool


def _batch(bid: str, levels: list[str]) -> Batch:
    lines = [orjson.dumps({"id": f"{bid}-{i}", "level": lv, "component": "KERNEL",
                           "message": os.urandom(100).hex() + f"{bid}-{i}"})
             for i, lv in enumerate(levels)]
    return Batch(bid, lines, Counter(levels))


def test_spool_keeps_order_across_restart(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 10 << 20)
    for k in range(5):
        sp.push(_batch(f"b{k}", ["INFO"] * 10))
    again = Spool(tmp_path, 10 << 20)
    seen = []
    while (item := again.peek()) is not None:
        seq, b = item
        seen.append(b.id)
        assert b.records == 10
        again.remove(seq)
    assert seen == ["b0", "b1", "b2", "b3", "b4"]
    assert again.batches == 0 and list(tmp_path.glob("*.batch")) == []
    sp.push(_batch("b5", ["INFO"]))
    assert {p.stat().st_mode & 0o777 for p in tmp_path.glob("*.batch")} == {0o600}


def test_damaged_spool_files_are_set_aside_and_the_rest_ships(tmp_path: Path) -> None:
    """A batch file whose header is of another shape (at start), or that became
    unreadable while waiting (at peek): set aside as .corrupt, the others ship in order."""
    sp = Spool(tmp_path, 10 << 20)
    for k in range(4):
        sp.push(_batch(f"b{k}", ["INFO"] * 10))
    files = sorted(tmp_path.glob("*.batch"))
    files[1].write_bytes(b'{"id": "b1", "records": 10}\n')         # no levels: at start
    again = Spool(tmp_path, 10 << 20)
    assert again.batches == 3
    files[2].write_bytes(b"not a spool file")                        # after the scan
    seen = []
    while (item := again.peek()) is not None:
        seen.append(item[1].id)
        again.remove(item[0])
    assert seen == ["b0", "b3"]
    assert sorted(p.name for p in tmp_path.glob("*.corrupt")) == [
        files[1].with_suffix(".corrupt").name, files[2].with_suffix(".corrupt").name]


def test_full_spool_drops_lowest_levels_first_never_critical(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 3000)
    sp.push(_batch("a", ["DEBUG"] * 5 + ["INFO"] * 5 + ["CRITICAL"] * 2))
    sp.push(_batch("b", ["INFO"] * 5 + ["SECURITY"] * 2 + ["WARNING"] * 3))
    sp.push(_batch("c", ["ERROR"] * 5 + ["CRITICAL"] * 3))
    kept = Counter()
    while (item := sp.peek()) is not None:
        seq, b = item
        for ln in b.lines:
            kept[orjson.loads(ln)["level"]] += 1
        sp.remove(seq)
    assert kept["CRITICAL"] == 5 and kept["SECURITY"] == 2
    assert sp.dropped["DEBUG"] == 5
    assert sum(sp.dropped.values()) + sum(kept.values()) == 30
    # drops go strictly by rank: nothing above a dropped level was dropped while it remained
    dropped_ranks = [lv for lv in ("DEBUG", "INFO", "WARNING", "ERROR") if sp.dropped[lv]]
    for lv in dropped_ranks[:-1]:
        assert kept[lv] == 0


def test_only_never_drop_levels_exceed_the_bound(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 500)
    sp.push(_batch("a", ["CRITICAL"] * 5))
    assert sp.batches == 1 and sp.over_bound == 5


def test_filters_min_level_and_rules() -> None:
    cfg = AgentConfig(min_level={"KERNEL": "WARNING", "*": "DEBUG"},
                      drop=[DropRule("message", "^healthcheck"),
                            DropRule("metadata.path", r"\.png$")])
    f = Filter(cfg)
    assert f.reason({"level": "INFO", "component": "KERNEL", "message": ""}) == "level"
    assert f.reason({"level": "TRACE", "component": "AI_ENGINE", "message": ""}) == "level"
    assert f.reason({"level": "INFO", "component": "AI_ENGINE", "message": "ok"}) is None
    assert f.reason({"level": "ERROR", "component": "WEB_RUNTIME",
                     "message": "healthcheck ok"}) == "rule"
    assert f.reason({"level": "INFO", "component": "WEB_RUNTIME", "message": "get",
                     "metadata": {"path": "/a.png"}}) == "rule"
    assert f.reason({"level": "SECURITY", "component": "KERNEL",
                     "message": "healthcheck"}) is None


def test_pipeline_batches_by_records_and_counts() -> None:
    out: list[Batch] = []
    cfg = AgentConfig(batch_max_records=100, batch_max_delay_s=0.05, queue_max_records=250,
                      min_level={"KERNEL": "WARNING"})
    p = Pipeline(cfg, out.append, [])
    entries = [{"level": "INFO", "component": "APPLICATION", "source": "test",
                "message": f"m{i}"} for i in range(300)]
    entries += [{"level": "INFO", "component": "KERNEL", "source": "test", "message": "k"}]
    entries += [{"level": "CRITICAL", "component": "APPLICATION", "source": "test",
                 "message": "must stay"}]
    p.accept(entries)
    p.start()
    p.stop()
    got = [orjson.loads(ln)["message"] for b in out for ln in b.lines]
    assert len(got) == 250 and got[-1] == "must stay" and got[0] == "m0"
    assert p.dropped[("queue", "full")] == 51 and p.dropped[("filter", "level")] == 1
    assert all(b.records <= 100 for b in out) and len({b.id for b in out}) == len(out)
    assert p.events[("test", "")] == 302


def test_a_batch_the_spool_refuses_does_not_stop_the_pipeline() -> None:
    """Whatever the hand-over raises (a disk error the spool did not expect), the
    pipeline thread goes on with the next batches; the lost ones are counted."""
    out: list[Batch] = []
    calls = []

    def submit(b: Batch) -> None:
        calls.append(b.records)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        out.append(b)
    p = Pipeline(AgentConfig(batch_max_records=10, batch_max_delay_s=0.0), submit, [])
    p.accept([{"level": "INFO", "component": "APPLICATION", "source": "test",
               "message": f"m{i}"} for i in range(30)])
    p.start()
    p.stop()
    assert calls == [10, 10, 10] and sum(b.records for b in out) == 20
    assert p.dropped[("spool", "error")] == 10


def _entries(n: int, level: str = "WARNING") -> list[dict]:
    return [{"id": f"{i:032x}", "timestamp": 1_700_000_000_000_000_000 + i, "level": level,
             "source": "ebpf", "component": "KERNEL", "host": "h", "pid": 7, "tid": 7,
             "process": "cat", "message": f"open /x{i} failed",
             "metadata": {"event": "open_fail", "filename": f"/x{i}", "errno": 2},
             "context": {"proc": {"exe": "/bin/cat", "parents": [1]}}} for i in range(n)]


def test_pipeline_arrow_batches_keep_every_field_and_parse_in_the_hub(tmp_path: Path) -> None:
    from server.store import batch as hub_batch

    out: list[Batch] = []
    p = Pipeline(AgentConfig(batch_max_delay_s=0.0), out.append, [])
    entries = _entries(50)
    p.accept([dict(e) for e in entries])
    p.start()
    p.stop()
    assert len(out) == 1 and out[0].fmt == "arrow" and out[0].records == 50
    assert out[0].levels == Counter({"WARNING": 50})
    sp = Spool(tmp_path, 10 << 20)
    sp.push(out[0])
    seq, back = Spool(tmp_path, 10 << 20).peek()  # type: ignore[misc]
    assert back.content_type == "application/vnd.apache.arrow.stream"
    table = hub_batch.parse(back.compressed(), "zstd", back.content_type, 1 << 30).table
    rows = table.to_pylist()
    assert [orjson.loads(r["metadata"]) for r in rows] == [e["metadata"] for e in entries]
    assert [orjson.loads(r["context"]) for r in rows] == [e["context"] for e in entries]
    for field in ("id", "timestamp", "level", "source", "component", "host", "pid", "tid",
                  "process", "message"):
        assert [r[field] for r in rows] == [e[field] for e in entries]
    assert [orjson.loads(ln) for ln in back.lines] == entries


def test_pipeline_falls_back_to_ndjson_for_fields_arrow_does_not_take() -> None:
    out: list[Batch] = []
    p = Pipeline(AgentConfig(batch_max_delay_s=0.0), out.append, [])
    bad = _entries(3)
    bad[1]["pid"] = "not a number"
    p.accept(bad)
    p.start()
    p.stop()
    assert [b.fmt for b in out] == ["ndjson"] and p.arrow_fallbacks == 1
    assert [orjson.loads(ln)["pid"] for ln in out[0].lines] == [7, "not a number", 7]


def test_arrow_batch_cut_by_bytes_and_null_metadata() -> None:
    out: list[Batch] = []
    p = Pipeline(AgentConfig(batch_max_delay_s=0.0, batch_max_bytes=4096), out.append, [])
    entries = _entries(40)
    entries[3]["metadata"] = None
    p.accept(entries)
    p.start()
    p.stop()
    assert len(out) > 1 and all(b.fmt == "arrow" for b in out)
    assert sum(b.records for b in out) == 40
    lines = [orjson.loads(ln) for b in out for ln in b.lines]
    assert [x["id"] for x in lines] == [e["id"] for e in entries]
    assert "metadata" not in lines[3]


def test_full_spool_drops_levels_from_arrow_batches(tmp_path: Path) -> None:
    out: list[Batch] = []
    p = Pipeline(AgentConfig(batch_max_delay_s=0.0), out.append, [])
    p.accept(_entries(20, "DEBUG") + _entries(5, "CRITICAL"))
    p.start()
    p.stop()
    sp = Spool(tmp_path, 1200)
    sp.push(out[0])
    seq, back = sp.peek()  # type: ignore[misc]
    assert back.fmt == "arrow" and back.records == 5 and sp.dropped["DEBUG"] == 20
    assert {orjson.loads(ln)["level"] for ln in back.lines} == {"CRITICAL"}


def test_runtime_tuning() -> None:
    import gc

    from agent import tuning

    before = gc.get_threshold()
    try:
        tuning.tune_gc()
        assert gc.get_threshold() == tuning.GC_THRESHOLDS and gc.get_freeze_count() > 0
        assert tuning.tune_malloc() in (True, False)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.privileged
def test_a_full_disk_keeps_batches_in_memory_in_order(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The spool's disk fills (a 256 KB tmpfs) while the hub is away: pushing never
    raises (it killed the agent's pipeline thread), the batches the disk refuses wait in
    memory and ship in order after the spooled ones, are written out once there is room
    again, and past the memory bound the lowest levels go while CRITICAL stays."""
    from agent import spool as spoolmod
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        sp = Spool(mnt / "spool", 1 << 30)
        for k in range(40):                          # ~40 x 25 KB: more than the disk
            sp.push(_batch(f"b{k:02d}", ["INFO"] * 100))
        assert sp.disk_errors > 0 and sp.memory_bytes > 0
        on_disk = len(list((mnt / "spool").glob("*.batch")))
        assert 0 < on_disk < 40 and sp.batches == 40
        assert list((mnt / "spool").glob("*.tmp")) == []          # no half file left
        seq, first = sp.peek()                       # shipping frees room: it spills
        sp.remove(seq)
        assert len(list((mnt / "spool").glob("*.batch"))) >= on_disk - 1
        seen = [first.id]
        while (item := sp.peek()) is not None:
            seq, b = item
            seen.append(b.id)
            sp.remove(seq)
        assert seen == [f"b{k:02d}" for k in range(40)] and sp.batches == 0
        # past the memory bound: INFO goes, CRITICAL stays
        monkeypatch.setattr(spoolmod, "MEMORY_MAX", 60_000)
        for k in range(40):
            sp.push(_batch(f"c{k:02d}", ["INFO"] * 90 + ["CRITICAL"] * 10))
        assert sp.dropped["INFO"] > 0
        crit = 0
        while (item := sp.peek()) is not None:
            seq, b = item
            crit += b.levels["CRITICAL"]
            sp.remove(seq)
        assert crit == 400
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_an_answer_that_is_not_the_hubs_does_not_stop_shipping(tmp_path: Path) -> None:
    """A proxy in the way answers 200 with an HTML page: that send is retried (the batch
    stays in the spool) and the shipping thread goes on; it used to end there."""
    import time

    from agent.sinks.hub import HubSink
    from tests.fake_http import answering
    spool = Spool(tmp_path / "spool", 10 << 20)
    with answering([b"<html>proxy says hi</html>",
                    b'{"accepted": 3, "duplicate": false}']) as server:
        sink = HubSink(f"http://127.0.0.1:{server.server_port}", "t", spool)
        sink.submit(_batch("b0", ["INFO"] * 3))
        sink.start()
        try:
            deadline = time.monotonic() + 15
            while spool.batches and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            sink.stop()
    assert spool.batches == 0 and sink.counters["records_shipped"] == 3
    assert sink.counters["retries"] >= 1
