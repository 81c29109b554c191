"""Search over segments read row group by row group, against a brute-force oracle."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.store.config import StoreConfig
from server.store.engine import Store
from server.store.filters import regex_literals
from server.store.query import LogQuery, parse_filter

HOSTS = ["web-1", "web-2", "db-1"]
T0 = 1_700_000_000_000_000_000


def entries(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            msg = f"Received block blk_{i * 7919} of size {i % 97} from 10.0.{i % 7}.{i % 251}"
        elif kind == 1:
            msg = f"Accepted password for user{i % 13} from 10.1.{i % 5}.{i % 9} port {i}"
        elif kind == 2:
            msg = f"request {i} from client{i % 11} took {i % 50} ms"
        elif kind == 3:
            msg = f"Failed password for invalid user admin{i % 3} from 192.168.0.{i % 200}"
        else:
            msg = f"disk sda{i % 4} usage {i % 100} percent"
        out.append({"id": f"e{i:06d}", "timestamp": T0 + (i * 7 % n) * 1_000_000 + i,
                    "level": ["INFO", "WARNING", "ERROR"][i % 3], "component": "APPLICATION",
                    "source": "test", "host": HOSTS[i % 3], "pid": 100 + i % 17, "tid": 1,
                    "process": "svc", "message": msg,
                    "metadata": {"n": i % 10} if i % 4 == 0 else {}, "context": {}})
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data: Path = tmp_path_factory.mktemp("store")
    recs = entries(6000)
    loop = asyncio.new_event_loop()
    st = Store(StoreConfig(data_dir=data, row_group_rows=400, flush_interval_s=3600))
    loop.run_until_complete(st.open())
    for start in range(0, len(recs), 1500):
        body = b"\n".join(orjson.dumps(r) for r in recs[start:start + 1500])
        loop.run_until_complete(st.append(st.parse(body), f"k{start}"))
        st.flush()  # several segments, each of many row groups
    tail = [dict(r, id=f"m{i}", timestamp=T0 + 10**12 + i) for i, r in enumerate(recs[:50])]
    loop.run_until_complete(st.append(st.parse(b"\n".join(orjson.dumps(r) for r in tail))))
    yield st, recs + tail
    loop.run_until_complete(st.close())
    loop.close()


def oracle(recs: list[dict], q: LogQuery) -> list[str]:
    def ok(r: dict) -> bool:
        if q.start is not None and r["timestamp"] < q.start:
            return False
        if q.end is not None and r["timestamp"] >= q.end:
            return False
        flags = 0 if q.case else re.I
        for t in q.terms:
            pat = t.text if t.kind == "regex" else re.escape(t.text)
            if t.kind == "word":  # whole words: not touching another letter or digit
                wc = r"0-9A-Za-z\x80-\U0010ffff"
                pat = (rf"(?<![{wc}])" if t.text[0].isalnum() else "") + pat + (
                    rf"(?![{wc}])" if t.text[-1].isalnum() else "")
            if not re.search(pat, r["message"], flags):
                return False
        for f in q.filters:
            v = r["metadata"].get(f.field[9:]) if f.field.startswith("metadata.") else r[f.field]
            if v is None or not {"=": lambda a, b: str(a) == b,
                                 "contains": lambda a, b: b.lower() in str(a).lower(),
                                 "regex": lambda a, b: re.search(b, str(a), flags)}[f.op](
                                     v, f.value):
                return False
        return True
    hits = sorted((r for r in recs if ok(r)), key=lambda r: (r["timestamp"], r["id"]),
                  reverse=q.sort == "desc")
    return [r["id"] for r in hits[: q.limit]]


CASES = [
    ("", []), ('"Received block"', []), ("blk_79190", []), ("79190", []), ("7919", []),
    ("sda1", []), ("10.0.3", []), ('"took 4 ms"', []), ("usage 5", []),
    ("/Accepted password for \\w+ from/", []),
    ('"user3 from"', []), ('"of size 9 from"', []), ("admin1 192.168.0.7", []),
    ("ms", ["host=db-1"]), ("", ["message contains took 4"]), ("", ["metadata.n=3"]),
    ("/usage [0-9]+ percent$/", ["level=ERROR"]), ("PASSWORD", []), ("", ["pid=105"]),
    ("/^(Accepted|Failed)/", ["host=web-2"]),
]


@pytest.mark.parametrize("text,flt", CASES)
@pytest.mark.parametrize("sort,limit", [("desc", 7), ("asc", 50), ("desc", 100_000)])
def test_search_matches_oracle(store: Any, text: str, flt: list[str], sort: str,
                               limit: int) -> None:
    st, recs = store
    q = LogQuery(text=text or None, filters=[parse_filter(f) for f in flt], sort=sort,
                 limit=limit)
    assert [r["id"] for r in st.search(q).records] == oracle(recs, q)


@pytest.mark.parametrize("text,flt", CASES)
def test_search_without_a_c_compiler_matches_oracle(store: Any, text: str, flt: list[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the C helpers (no compiler) the numpy paths give the same pages."""
    from server.store import filters
    monkeypatch.setattr(filters, "_native", lambda: None)
    st, recs = store
    for sort, limit in (("desc", 7), ("asc", 100_000)):
        q = LogQuery(text=text or None, filters=[parse_filter(f) for f in flt], sort=sort,
                     limit=limit)
        assert [r["id"] for r in st.search(q).records] == oracle(recs, q)


def test_paging_with_range_matches_oracle(store: Any) -> None:
    st, recs = store
    q = LogQuery(text="from", start=T0 + 1_000_000_000, end=T0 + 5_000_000_000, limit=333)
    want = oracle(recs, LogQuery(text="from", start=q.start, end=q.end, limit=10**6))
    got: list[str] = []
    while True:
        page = st.search(q)
        got += [r["id"] for r in page.records]
        if not page.next_cursor:
            break
        q.cursor = page.next_cursor
    assert got == want and len(want) > 1000


def test_matching_columns_and_messages(store: Any) -> None:
    st, recs = store
    q = LogQuery(text='"took 4"', filters=[parse_filter("host=web-1")])
    t = st.matching(q, ["id", "message"])
    assert t.column_names == ["id", "message"]
    assert sorted(t["id"].to_pylist()) == sorted(oracle(recs, LogQuery(
        text='"took 4"', filters=q.filters, limit=10**6)))
    assert all("took 4" in m for m in t["message"].to_pylist())


def test_phrase_inside_template_text_renders_nothing(store: Any) -> None:
    from server.store.filters import Selector, scan_columns
    st, _ = store
    q = LogQuery(text='"Received block"', limit=10)
    sel = Selector(q, st.miner, None)
    g = st._row_groups(q, st._snapshot()[0])[0]
    idx = sel.select(st.reader.read(g, scan_columns(q)), q.limit)
    assert len(idx) == 10 and sel.rendered == 0


def test_regex_literals() -> None:
    assert regex_literals(r"Accepted password for \w+ from") == ["Accepted password for ",
                                                                 " from"]
    assert regex_literals(r"a|b") == []
    assert regex_literals(r"ab*c") == ["a", "c"]
    assert regex_literals(r"(unclosed") == []


@pytest.mark.parametrize("text", ["PASSWORD", "Password", '"password for user1"',
                                  "/Accepted PASSWORD/", "/accepted password/"])
def test_case_sensitive_matches_oracle(store: Any, text: str) -> None:
    st, recs = store
    q = LogQuery(text=text, case=True, limit=20)
    assert [r["id"] for r in st.search(q).records] == oracle(recs, q)


@pytest.mark.parametrize("spec", [
    {"type": "time_series", "interval": "1m", "group_by": ["level"]},
    {"type": "time_series", "interval": "2m", "group_by": ["host", "level"],
     "filters": ["host!=db-1", "level>=WARNING"]},
    {"type": "aggregation", "group_by": ["host"], "start": T0 + 1_234_567_891,
     "end": T0 + 10**12 + 20},
    {"type": "aggregation"},
    {"type": "aggregation", "filters": {"host": "nowhere"}},
])
def test_counts_from_pre_aggregates_match_oracle(store: Any, spec: dict) -> None:
    from mohlog.model import LEVEL_RANK
    st, recs = store
    got = st.query(spec)["rows"]
    interval = {"1m": 60 * 10**9, "2m": 120 * 10**9}.get(spec.get("interval", ""))
    want: dict[tuple, int] = {}
    for r in recs:
        if not spec.get("start", 0) <= r["timestamp"] < spec.get("end", 2**63):
            continue
        if "host!=db-1" in spec.get("filters", []) and r["host"] == "db-1":
            continue
        if "level>=WARNING" in spec.get("filters", []) and \
                LEVEL_RANK[r["level"]] < LEVEL_RANK["WARNING"]:
            continue
        if isinstance(spec.get("filters"), dict) and r["host"] != "nowhere":
            continue
        key = tuple([r["timestamp"] // interval * interval] if interval else []) + tuple(
            r[g] for g in spec.get("group_by", []))
        want[key] = want.get(key, 0) + 1
    names = (["bucket"] if interval else []) + spec.get("group_by", [])
    got_map = {tuple(row[n] for n in names): row["count"] for row in got}
    if not names:
        assert got_map == {(): sum(want.values())}
    else:
        assert got_map == want


def test_pre_aggregate_rebuilt_when_corrupt(store: Any) -> None:
    from server.store.segments import rollup_path
    st, _ = store
    spec = {"type": "time_series", "interval": "1m", "group_by": ["level"]}
    before = st.query(spec)["rows"]
    seg = st._segments[0]
    path = rollup_path(st.seg_dir / seg.path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    st._rollups.clear()
    assert st.query(spec)["rows"] == before
    path.unlink()
    st._rollups.clear()
    assert st.query(spec)["rows"] == before and path.exists()


def test_word_index_skips_row_groups_and_matches_whole_words(store: Any) -> None:
    st, recs = store
    q = LogQuery(text="blk_79190", limit=100)   # record 10 only: blk_79190, not blk_791900
    groups = st._row_groups(q, st._snapshot()[0])
    kept = st._pruned(groups, q)
    assert len(groups) >= 15 and 1 <= len(kept) <= 3
    assert [r["id"] for r in st.search(q).records] == ["m10", "e000010"] == oracle(recs, q)
    # every word of every record is found through the index (no false negatives)
    for i in range(0, 6000, 97):
        w = f"port {i}" if i % 5 == 1 else None
        if w:
            assert f"e{i:06d}" in [r["id"] for r in st.search(LogQuery(text=w, limit=10**5)
                                                               ).records]


def test_word_index_rebuilt_when_missing_or_corrupt(store: Any) -> None:
    from server.store import words
    st, recs = store
    q = LogQuery(text="user7", limit=10**5)
    before = [r["id"] for r in st.search(q).records]
    seg = st._segments[1]
    path = words.path_for(st.seg_dir / seg.path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    st._words.clear()
    assert [r["id"] for r in st.search(q).records] == before == oracle(recs, q)
    path.unlink()
    st._words.clear()
    assert [r["id"] for r in st.search(q).records] == before and path.exists()


def test_word_index_native_equals_numpy_and_query_hashes() -> None:
    import numpy as np
    import pyarrow as pa

    from server.store import words
    recs = entries(3000)
    msgs = pa.array([r["message"] for r in recs] + ["", "ÉTÉ x_y-Z", None])
    fields = pa.table({"host": [r["host"] for r in recs] + ["a", "b", None],
                       "pid": [r["pid"] for r in recs] + [1, 2, 3]})
    a = words.build(msgs, 700, fields=fields)
    b = words.build(msgs, 700, native=False, fields=fields)
    assert a.may_contain(4, words.field_hashes("pid", np.array([2])))
    assert not a.row_groups_with(words.field_hashes("host", ["nowhere"])).any()
    assert len(a.blooms) == len(b.blooms) == 5
    assert all(np.array_equal(x, y) for x, y in zip(a.blooms, b.blooms, strict=True))
    assert a.may_contain(4, words.query_hashes("x y z"))
    assert not a.may_contain(4, words.query_hashes("nowhere"))
    assert a.may_contain(0, words.query_hashes("RECEIVED Block"))
    assert words.query_hashes("été") is None
    # Stored order given as a permutation (a part of it): same index as a sorted copy.
    perm = np.random.default_rng(5).permutation(len(msgs))[:2500]
    want = words.build(msgs.take(pa.array(perm)), 700, fields=fields.take(pa.array(perm)))
    for native in (True, False):
        got = words.build(msgs, 700, native=native, fields=fields.take(pa.array(perm)),
                          order=perm)
        assert len(got.blooms) == len(want.blooms) == 4
        assert all(np.array_equal(x, y) for x, y in zip(got.blooms, want.blooms, strict=True))


def test_slot_needs_shortcut_gives_what_the_loops_give() -> None:
    """_slot_needs decides most slots without its loops (no start of the needle before
    the slot, none of its later characters after it): the same needs as the loops on
    random pieces and needles, digits, spaces and repeated characters included."""
    import random

    from server.store.filters import _slot_needs

    rnd = random.Random(4)
    alphabet = "ab1 :x"
    for _ in range(20000):
        needle = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 6)))
        pieces = ["".join(rnd.choice(alphabet) for _ in range(rnd.choice([0, 0, 1, 2, 5])))
                  for _ in range(rnd.randint(1, 5))]
        assert _slot_needs(pieces, needle) == _slot_needs(pieces, needle, shortcut=False), \
            (pieces, needle)


def test_word_index_field_values_per_row_group() -> None:
    """The field values a row group's filter holds: those of its rows, nulls left out."""
    import numpy as np
    import pyarrow as pa

    from server.store import words
    rnd = np.random.default_rng(2)
    n = 5000
    hosts = [None if x == 0 else f"h{x}" for x in rnd.integers(0, 40, n)]
    pids = [None if x == 7 else int(x) for x in rnd.integers(0, 3000, n)]  # many values
    fields = pa.table({"host": hosts, "pid": pa.array(pids, pa.int64()),
                       "level": ["INFO"] * n})
    for rg in (1, 333, 5000, 8000):
        extra, off = words._extra(fields, n, rg)
        assert len(off) == max(1, -(-n // rg)) + 1
        for r in range(len(off) - 1):
            want = set()
            for name, col in (("host", hosts), ("pid", pids), ("level", ["INFO"] * n)):
                vals = {v for v in col[r * rg:(r + 1) * rg] if v is not None}
                arr = np.array(sorted(vals), np.int64) if name == "pid" else sorted(vals)
                want |= set(words.field_hashes(name, arr).tolist())
            got = extra[off[r]:off[r + 1]].tolist()
            assert len(got) == len(set(got)) and set(got) == want
    extra, off = words._extra(None, 10, 4)
    assert len(extra) == 0 and off.tolist() == [0, 0, 0, 0]


def test_word_index_native_equals_numpy_on_random_strings() -> None:
    """The C builder takes P**i from a table for a word's first 64 bytes: words of 63,
    64, 65 bytes and longer, at the very end of a string or of the buffer, next to
    non-ASCII bytes and to the ASCII neighbours of letters and digits ('/', ':', '@', '[',
    '`', '{', DEL) give the same filters as the numpy builder."""
    import random

    import numpy as np
    import pyarrow as pa

    from server.store import words
    rnd = random.Random(11)
    alphabet = "aZz09AM/:@[`{\x7f _-é€\x00\t"
    msgs = []
    for _ in range(3000):
        n = rnd.choice([0, 1, 5, 63, 64, 65, 127, 128, 129, rnd.randrange(400)])
        if rnd.random() < 0.3:  # long words
            msgs.append(" ".join("".join(rnd.choice("abXY09") for _ in range(rnd.randrange(1, 150)))
                                 for _ in range(rnd.randrange(1, 4)))[:n or None])
        else:
            msgs.append("".join(rnd.choice(alphabet) for _ in range(n)))
    arr = pa.array(msgs)
    for rg in (1, 7, 500):
        a = words.build(arr, rg)
        b = words.build(arr, rg, native=False)
        assert len(a.blooms) == len(b.blooms)
        assert all(np.array_equal(x, y) for x, y in zip(a.blooms, b.blooms, strict=True))
    # each row group's filter holds its string's words (one string per row group)
    one = words.build(arr, 1)
    for i in rnd.sample(range(len(msgs)), 300):
        h = words.query_hashes(msgs[i])
        if h is not None:
            assert one.may_contain(i, h)


def test_word_index_native_equals_numpy_with_marks_and_a_set_that_grows() -> None:
    """The C builder's options (words without digits only; the NON_ASCII and FOLDS marks)
    give numpy's bits. A row group with more distinct words than the C set's first size
    holds (49,152) grows it; the row groups after it, in that set cleared, still get
    exactly their own words."""
    import random

    import numpy as np
    import pyarrow as pa

    from server.store import words
    rnd = random.Random(12)
    alphabet = "aZk09sS/:@ _-\u00e9\u212a\u017f"
    msgs = ["".join(rnd.choice(alphabet) for _ in range(rnd.randrange(60)))
            for _ in range(2000)]
    many = [f"w{i} x{i}y{'ab' * (i % 40)}" for i in range(40_000)]    # 80,000 words
    arr = pa.array(msgs[:1000] + many + msgs[1000:])
    bounds = np.array([0, 1000, 41_000, 41_500, 43_000])
    for letters_only in (False, True):
        kw = {"letters_only": letters_only, "non_ascii": words.NON_ASCII,
              "folds": words.FOLDS}
        a = words._filters(arr, bounds, True, **kw)
        b = words._filters(arr, bounds, False, **kw)
        assert len(a) == len(b) == 4
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        if not letters_only:
            assert len(a[1]) > 20 * len(a[2])       # the big row group's filter, and after
    whole = words._filters(arr, bounds, True)
    for r, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        alone = words._filters(arr.slice(int(lo), int(hi - lo)), np.array([0, hi - lo]), True)
        assert np.array_equal(whole[r], alone[0])


def test_word_index_all_row_groups_at_once_equals_one_by_one() -> None:
    import numpy as np
    import pyarrow as pa

    from server.store import words
    idx = words.build(pa.array([r["message"] for r in entries(5000)]), 300)
    for text in ["received", "blk_79190", "port 4001", "nowhere at all", "user3 10"]:
        h = words.query_hashes(text)
        assert idx.row_groups_with(h).tolist() == [idx.may_contain(i, h)
                                                  for i in range(len(idx.blooms))]
    assert idx.row_groups_with(words.query_hashes("received")).all()
    assert not np.any(idx.row_groups_with(words.query_hashes("nowhere")))


@pytest.mark.parametrize("flt", ["pid=105", "host=db-1", "level=ERROR", "pid=99999",
                                 "component=KERNEL", "source=test"])
def test_field_values_in_the_index_prune_and_match_oracle(store: Any, flt: str) -> None:
    st, recs = store
    q = LogQuery(filters=[parse_filter(flt)], limit=10**5)
    groups = st._row_groups(q, st._snapshot()[0])
    kept = st._pruned(groups, q)
    if flt in ("pid=99999", "component=KERNEL"):
        assert len(kept) <= 1          # absent values: (nearly) every row group skipped
    assert [r["id"] for r in st.search(q).records] == oracle(recs, q)


def test_index_caches_are_bounded_and_reload(store: Any) -> None:
    from server.store.cache import SizedLRU
    lru: SizedLRU[bytes] = SizedLRU(10, len)
    for k in "abcd":
        lru.put(k, b"xxxx")
    assert len(lru) == 2 and lru.get("a") is None and lru.get("d") == b"xxxx"
    st, recs = store
    q = LogQuery(text="user7 port", limit=10**5)
    want = oracle(recs, q)
    budget = st._words.budget
    try:
        st._words.budget = 1               # keep one segment's index at a time
        st._words.clear()
        assert [r["id"] for r in st.search(q).records] == want
        assert len(st._words) == 1
        assert [r["id"] for r in st.search(q).records] == want
    finally:
        st._words.budget = budget


def test_segment_order_is_time_then_id() -> None:
    import numpy as np
    import pyarrow as pa

    from server.store.segments import sort_for_segment
    rng = np.random.default_rng(3)
    ts = rng.integers(0, 50, 500)
    t = pa.table({"timestamp": ts, "id": [f"i{v:04d}" for v in rng.permutation(500)]})
    want = sorted(zip(ts.tolist(), t["id"].to_pylist(), strict=True))
    got = sort_for_segment(t)
    assert list(zip(got["timestamp"].to_pylist(), got["id"].to_pylist(), strict=True)) == want
    distinct = pa.table({"timestamp": [5, 1, 3], "id": ["a", "b", "c"]})
    assert sort_for_segment(distinct)["timestamp"].to_pylist() == [1, 3, 5]
    ordered = pa.table({"timestamp": [1, 2, 3], "id": ["c", "b", "a"]})
    assert sort_for_segment(ordered) is ordered
    tie_in_order = pa.table({"timestamp": [1, 2, 2, 3], "id": ["d", "a", "b", "c"]})
    assert sort_for_segment(tie_in_order) is tie_in_order
    tie = pa.table({"timestamp": [1, 2, 2, 3], "id": ["d", "b", "a", "c"]})
    assert sort_for_segment(tie)["id"].to_pylist() == ["d", "a", "b", "c"]
    many = rng.integers(0, 3000, 10_000)          # > 4096 equal neighbours: one full sort
    t = pa.table({"timestamp": many, "id": [f"i{v:05d}" for v in rng.permutation(10_000)]})
    want = sorted(zip(many.tolist(), t["id"].to_pylist(), strict=True))
    got = sort_for_segment(t)
    assert list(zip(got["timestamp"].to_pylist(), got["id"].to_pylist(), strict=True)) == want


def test_busy_says_whether_records_arrived_lately(store: Any, tmp_path: Path) -> None:
    st, _ = store
    assert st.busy(within_s=3600)
    fresh = Store(StoreConfig(data_dir=tmp_path / "fresh"))
    assert not fresh.busy(within_s=3600)


def test_a_flush_during_a_query_shows_each_record_once(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Records move from the memory tail to a segment while a query runs: the query reads
    one snapshot of both, so none appears twice (nor goes missing)."""
    from server.store import engine, filters
    recs = entries(900)
    loop = asyncio.new_event_loop()
    st = Store(StoreConfig(data_dir=tmp_path, row_group_rows=200, flush_interval_s=3600))
    loop.run_until_complete(st.open())
    try:
        body = b"\n".join(orjson.dumps(r) for r in recs[:300])
        loop.run_until_complete(st.append(st.parse(body), "a"))
        st.flush()
        body = b"\n".join(orjson.dumps(r) for r in recs[300:])
        loop.run_until_complete(st.append(st.parse(body), "b"))
        real_apply = filters.apply

        def apply_then_flush(*args: Any, **kw: Any) -> Any:
            out = real_apply(*args, **kw)   # the memory tail is read: now it is flushed
            assert st.flush() == 600
            return out
        monkeypatch.setattr(engine.filters, "apply", apply_then_flush)
        ids = [r["id"] for r in st.search(LogQuery(limit=2000)).records]
        assert sorted(ids) == sorted(r["id"] for r in recs)
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_stats_count_the_tail_and_segments_alike(tmp_path: Path) -> None:
    """Counts per level/component/host: the memory tail's are counted when stats are asked,
    a segment's when written (from its pre-aggregate) and when the store opens; records
    moving from one to the other, or replayed from the WAL, are counted once."""
    from collections import Counter
    recs = entries(1200)

    def want(rs: list[dict]) -> dict[str, dict[str, int]]:
        return {name: dict(Counter(r[name] for r in rs))
                for name in ("level", "component", "host")}

    def counts(st: Store) -> dict[str, dict[str, int]]:
        s = st.stats()
        return {"level": s["by_level"], "component": s["by_component"], "host": s["by_host"]}

    cfg = StoreConfig(data_dir=tmp_path, row_group_rows=200, flush_interval_s=3600)
    loop = asyncio.new_event_loop()
    st = Store(cfg)
    loop.run_until_complete(st.open())
    try:
        for a, b in ((0, 300), (300, 700)):
            body = b"\n".join(orjson.dumps(r) for r in recs[a:b])
            loop.run_until_complete(st.append(st.parse(body), f"k{a}"))
        assert counts(st) == want(recs[:700]) and st.stats()["records_in_memory"] == 700
        assert st.flush() == 700
        assert counts(st) == want(recs[:700]) and st.stats()["records_in_memory"] == 0
        body = b"\n".join(orjson.dumps(r) for r in recs[700:])
        loop.run_until_complete(st.append(st.parse(body), "k700"))
        assert counts(st) == want(recs)
    finally:
        loop.run_until_complete(st.close())
    st = Store(cfg)  # segments counted on open, the rest replayed from the WAL
    loop.run_until_complete(st.open())
    try:
        assert counts(st) == want(recs)
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_footers_cached_when_written_and_warmed_at_open(tmp_path: Path) -> None:
    """A segment's footer is cached when it is written; at open, a background warm-up
    reads the newest segments' footers and imports the aggregation engine."""
    import sys
    import time

    from server.store import engine
    recs = entries(900)
    cfg = StoreConfig(data_dir=tmp_path, row_group_rows=200, flush_interval_s=3600)
    loop = asyncio.new_event_loop()
    st = Store(cfg)
    loop.run_until_complete(st.open())
    try:
        for a in (0, 300, 600):
            body = b"\n".join(orjson.dumps(r) for r in recs[a:a + 300])
            loop.run_until_complete(st.append(st.parse(body), f"k{a}"))
            st.flush()
        paths = {s.path for s in st._segments}
        assert len(paths) == 3 and set(st.reader._meta) == paths
    finally:
        loop.run_until_complete(st.close())
    sys.modules.pop("server.store.aggregate", None)
    st = Store(cfg)
    real = engine.WARM_SEGMENTS
    engine.WARM_SEGMENTS = 2
    try:
        loop.run_until_complete(st.open())
        deadline = time.monotonic() + 10
        while len(st.reader._meta) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        newest = sorted(st._segments, key=lambda s: s.max_ts)[1:]
        assert set(st.reader._meta) == {s.path for s in newest}
        assert "server.store.aggregate" in sys.modules
    finally:
        engine.WARM_SEGMENTS = real
        loop.run_until_complete(st.close())
        loop.close()


def test_a_failed_segment_write_keeps_its_records_and_is_retried(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment write that fails (here: disk full) leaves its records in the memory tail
    and the WAL, no partial files, and the next flush writes them with the newer ones."""
    import errno

    from server.store import engine
    recs = entries(600)
    loop = asyncio.new_event_loop()
    st = Store(StoreConfig(data_dir=tmp_path, row_group_rows=200, flush_interval_s=3600))
    loop.run_until_complete(st.open())
    real_write = engine.write_segment

    def full(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")
    try:
        body = b"\n".join(orjson.dumps(r) for r in recs[:300])
        loop.run_until_complete(st.append(st.parse(body), "a"))
        monkeypatch.setattr(engine, "write_segment", full)
        with pytest.raises(OSError):
            st.flush()
        assert not list((tmp_path / "segments").rglob("*.*"))   # no segment, no sidecar
        assert len(st.search(LogQuery(limit=1000)).records) == 300
        body = b"\n".join(orjson.dumps(r) for r in recs[300:])
        loop.run_until_complete(st.append(st.parse(body), "b"))
        monkeypatch.setattr(engine, "write_segment", real_write)
        assert st.flush() == 600
        ids = [r["id"] for r in st.search(LogQuery(limit=1000)).records]
        assert sorted(ids) == sorted(r["id"] for r in recs)
    finally:
        loop.run_until_complete(st.close())
    st = Store(StoreConfig(data_dir=tmp_path, row_group_rows=200, flush_interval_s=3600))
    loop.run_until_complete(st.open())      # nothing replayed twice from the WAL
    try:
        assert sorted(r["id"] for r in st.search(LogQuery(limit=1000)).records) == \
            sorted(r["id"] for r in recs)
    finally:
        loop.run_until_complete(st.close())
        loop.close()


@pytest.mark.parametrize("in_order", [False, True])   # sorted by the flush, or already
def test_one_flush_spanning_partitions_writes_one_segment_per_partition(
        tmp_path: Path, in_order: bool) -> None:
    from server.store.segments import partition_name
    hour = 3600 * 10**9
    recs = [dict(r, timestamp=T0 - T0 % hour + (i % 3) * hour + i)
            for i, r in enumerate(entries(900))]
    if in_order:
        recs.sort(key=lambda r: r["timestamp"])
    loop = asyncio.new_event_loop()
    st = Store(StoreConfig(data_dir=tmp_path, row_group_rows=100, flush_interval_s=3600,
                           partition_s=3600))
    loop.run_until_complete(st.open())
    try:
        body = b"\n".join(orjson.dumps(r) for r in recs)
        loop.run_until_complete(st.append(st.parse(body), "a"))
        assert st.flush() == 900
        segs = st._snapshot()[0]
        assert len(segs) == 3 and len({s.partition for s in segs}) == 3
        for s in segs:
            assert s.rows == 300 and s.max_ts - s.min_ts < hour
            assert partition_name(s.min_ts, 3600) == partition_name(s.max_ts, 3600) \
                == s.partition
        got = [r["id"] for r in st.search(LogQuery(limit=1000, sort="asc")).records]
        assert got == [r["id"] for r in sorted(recs, key=lambda r: (r["timestamp"], r["id"]))]
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_buffer_search_equals_arrow_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C search (strings with non-ASCII bytes left to Arrow when folding), the
    buffer search without C and Arrow's match agree."""
    import random

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from server.store import filters
    from server.store.filters import _contains
    lib = filters._native()
    assert lib is not None
    rnd = random.Random(3)
    alpha = "abAB7 4é_\u212a"                        # \u212a folds to k
    for _ in range(1500):
        vals = [None if rnd.random() < 0.05 else
                "".join(rnd.choice(alpha) for _ in range(rnd.randint(0, 8)))
                for _ in range(rnd.randint(0, 30))]
        arr: Any = pa.array(vals, pa.string())
        if rnd.random() < 0.3 and len(arr) > 2:
            arr = arr.slice(1, len(arr) - 2)
        if rnd.random() < 0.3:
            arr = pa.chunked_array([arr, arr])
        needle = "".join(rnd.choice("abAB7 4ék") for _ in range(rnd.randint(1, 3)))
        case = rnd.random() < 0.5
        want = pc.fill_null(pc.match_substring(arr, needle, ignore_case=not case), False)
        if isinstance(want, pa.ChunkedArray):
            want = want.combine_chunks()
        for c_lib, most in ((lib, 4096), (None, 0), (None, 4096)):  # C, Arrow, buffer
            monkeypatch.setattr(filters, "_native", lambda c_lib=c_lib: c_lib)
            got = _contains(arr, needle, case, most)
            assert np.array_equal(got, want.to_numpy(zero_copy_only=False)), (vals, needle)


def test_word_edges_flag_every_parameter_a_whole_word_crosses() -> None:
    """Brute force: a parameter between two pieces of fixed text; whenever a whole-word
    match of the needle in the message touches the parameter without lying inside it,
    the parameter must be flagged (rows of it are then rendered and checked)."""
    import random

    import numpy as np
    import pyarrow as pa

    from server.store import words
    from server.store.filters import _word_edges, is_word_char, word_regex
    rnd = random.Random(7)
    alpha = "ab7 4-_:.Ab9ék\u212a"                 # \u212a (Kelvin sign) folds to k

    def text(k: int) -> str:
        return "".join(rnd.choice(alpha) for _ in range(rnd.randint(0, k)))
    flagged = 0
    for _ in range(1500):
        needle = "".join(rnd.choice("ab749k") for _ in range(rnd.randint(1, 6)))
        needle = needle.upper() if rnd.random() < 0.3 else needle
        case = rnd.random() < 0.5
        left, param, right = text(5), text(6), text(5)
        if rnd.random() < 0.4:                       # plant a crossing
            k = rnd.randint(0, len(needle))
            param = text(3) + needle[:k] if rnd.random() < 0.5 else needle[k:] + text(3)
        elif rnd.random() < 0.3:                     # the needle through the parameter
            i = rnd.randint(0, len(needle) - 1)
            j = rnd.randint(i + 1, len(needle))
            left, param, right = text(2) + " " + needle[:i], needle[i:j], \
                needle[j:] + " " + text(2)
        if rnd.random() < 0.2:                       # k written as the Kelvin sign
            param = param.replace("k", "\u212a")
        msg, a0, a1 = left + param + right, len(left), len(left) + len(param)
        pattern = word_regex(needle).replace("\\x{80}-\\x{10FFFF}", "\\x80-\\U0010FFFF")
        crosses = False
        for m in re.finditer(f"(?=({pattern}))", msg, 0 if case else re.I):
            inner = m.group(1)
            i = m.start(1) + (inner.find(needle) if case else inner.lower().find(
                needle.lower()))
            j = i + len(needle)
            inside = a0 <= i and j <= a1 and param != ""
            touches = (i < a1 and j > a0) or (param == "" and i <= a0 <= j)
            crosses |= touches and not inside
        n = len(needle)
        subs = {needle[i:j] for i in range(n) for j in range(i + 1, n + 1) if j - i < n}
        inner_hashes = np.concatenate([words.query_hashes(x) for x in subs]) if subs else \
            np.zeros(0, np.uint64)
        got = _word_edges(pa.array([param]), needle, case,
                          np.array([bool(left) and is_word_char(left[-1])]),
                          np.array([bool(right) and is_word_char(right[0])]),
                          inner_hashes)[0]
        assert got or not crosses, (needle, case, left, param, right)
        flagged += bool(got)
    assert 0 < flagged < 750           # it prunes


def test_template_decision_cache_is_bounded(store: Any) -> None:
    """Decisions are kept per needle as arrays: the cache counts their elements and is
    emptied past a million, however few needles hold them."""
    import numpy as np
    st, _ = store
    saved = st._classes
    try:
        st._classes = {("sorted", "x", False, True): (np.zeros(1_000_001, np.uint64),
                                                       np.zeros(1_000_001, np.int8))}
        assert st._class_cache() == {}
        st._classes = {("sorted", "x", False, True): (np.zeros(10, np.uint64),
                                                       np.zeros(10, np.int8))}
        assert len(st._class_cache()) == 1
    finally:
        st._classes = saved


@pytest.mark.parametrize("lose_rollups", [False, True])
def test_counts_after_restart_match_the_records(tmp_path: Path, lose_rollups: bool) -> None:
    """At open, per level/component/host counts come from each segment's pre-aggregates
    (rebuilt from the segment when a sidecar is gone)."""
    from collections import Counter
    recs = entries(700)
    loop = asyncio.new_event_loop()
    st = Store(StoreConfig(data_dir=tmp_path, row_group_rows=100, flush_interval_s=3600))
    loop.run_until_complete(st.open())
    for start in (0, 350):
        body = b"\n".join(orjson.dumps(r) for r in recs[start:start + 350])
        loop.run_until_complete(st.append(st.parse(body), f"k{start}"))
        st.flush()
    loop.run_until_complete(st.close())
    if lose_rollups:
        for side in tmp_path.rglob("*.rollup.arrow"):
            side.unlink()
    st = Store(StoreConfig(data_dir=tmp_path, row_group_rows=100, flush_interval_s=3600))
    loop.run_until_complete(st.open())
    try:
        stats = st.stats()
        for name in ("level", "component", "host"):
            assert stats[f"by_{name}"] == dict(Counter(r[name] for r in recs))
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_slot_needs_flag_every_parameter_a_match_crosses() -> None:
    """Brute force: templates of fixed pieces and parameters; whenever a match of the
    needle in the rendered message touches a parameter without lying inside it, some
    parameter of the row must be flagged (its row is then rendered and checked)."""
    import random

    import numpy as np
    import pyarrow as pa

    from server.store.filters import _needs_met, _slot_needs
    rnd = random.Random(11)
    alpha = "ab7 -:Aék\u212a"                     # \u212a (Kelvin sign) folds to k

    def text(k: int) -> str:
        return "".join(rnd.choice(alpha) for _ in range(rnd.randint(0, k)))
    flagged = rows = 0
    for _ in range(3000):
        needle = "".join(rnd.choice("ab7 -Ak") for _ in range(rnd.randint(1, 6)))
        case = rnd.random() < 0.5
        k = rnd.randint(1, 3)
        pieces = [text(4) for _ in range(k + 1)]
        params = [text(5) for _ in range(k)]
        i, cut = rnd.randrange(k), rnd.randint(0, len(needle))
        if rnd.random() < 0.2:                       # the needle through a parameter
            end = rnd.randint(cut, len(needle))
            params[i] = needle[cut:end]
            pieces[i] += needle[:cut]
            pieces[i + 1] = needle[end:] + pieces[i + 1]
            if rnd.random() < 0.3 and i + 1 < k:     # and on into the next one
                pieces[i + 1] = needle[end:end + 1]
                params[i + 1] = needle[end + 1:] + params[i + 1]
        elif rnd.random() < 0.5:                     # plant a crossing
            if rnd.random() < 0.5:
                params[i] += needle[:cut]
                pieces[i + 1] = needle[cut:] + pieces[i + 1]
            else:
                params[i] = needle[cut:] + params[i]
                pieces[i] += needle[:cut]
        if rnd.random() < 0.2:                       # k written as the Kelvin sign
            params = [p.replace("k", "\u212a") for p in params]
        msg = pieces[0] + "".join(p + t for p, t in zip(params, pieces[1:], strict=True))
        spans, at = [], len(pieces[0])
        for p, t in zip(params, pieces[1:], strict=True):
            spans.append((at, at + len(p)))
            at += len(p) + len(t)
        hay, ndl = (msg, needle) if case else (msg.lower(), needle.lower())
        crosses = any(
            (i < b and i + len(ndl) > a or a == b and i < a < i + len(ndl)) and
            not (a <= i and i + len(ndl) <= b)
            for i in range(len(hay)) if hay.startswith(ndl, i) for a, b in spans)
        low = [p if case else p.lower() for p in pieces]
        needs = _slot_needs(low, ndl)
        values: list = [None]
        codes = []
        for v in needs:
            if v not in values:
                values.append(v)
            codes.append(values.index(v))
        got = _needs_met(pa.array(params), np.array(codes), values, case)
        assert got.any() or not crosses, (needle, case, pieces, params)
        rows += 1
        flagged += bool(got.any())
    assert 0 < flagged < rows * 0.7        # it prunes


def test_fetch_reads_only_the_row_groups_holding_the_rows(tmp_path: Path) -> None:
    """Rows fetched from a long run of row groups come from the row groups holding them
    (fewer read), the same rows as from reading the whole run."""
    import numpy as np
    import pyarrow as pa

    from server.store.scan import batched
    loop = asyncio.new_event_loop()
    st = Store(StoreConfig(data_dir=tmp_path, row_group_rows=100, flush_interval_s=3600))
    try:
        loop.run_until_complete(st.open())
        recs = entries(3000)
        loop.run_until_complete(st.append(st.parse(b"\n".join(orjson.dumps(r) for r in recs))))
        assert st.flush() == 3000
        groups = st._row_groups(LogQuery(), st._snapshot()[0])
        run = batched(groups, True, first=32)[0]
        assert len(run.indices) == 30
        whole = st.reader.read(run)
        for idx in ([0, 5, 99], [150, 2999], [1234], list(range(0, 3000, 97)), [100, 299]):
            part, local = st.reader._holding(run, np.array(idx))
            got = st.reader.read(part).take(pa.array(local))
            assert got.equals(whole.take(pa.array(idx)))
            used = {i // 100 for i in idx}
            assert len(part.indices or (part.index,)) == len(used) and part.rows == 100 * len(used)
        q = LogQuery(text="blk_79190", limit=10)
        assert [r["id"] for r in st.search(q).records] == oracle(recs, q)
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_field_hashes_of_each_row_group_are_its_distinct_values() -> None:
    import numpy as np
    import pyarrow as pa

    from server.store import words
    rows, rg_rows = 1000, 64
    t = pa.table({"host": pa.chunked_array([[f"h{i % 7}" if i % 11 else None
                                             for i in range(500)],
                                            [f"h{i % 5}" for i in range(500)]]),
                  "pid": [i // 90 for i in range(rows)]})
    h, off = words._extra(t, rows, rg_rows)
    assert len(off) == -(-rows // rg_rows) + 1
    for r in range(len(off) - 1):
        sub = t.slice(r * rg_rows, rg_rows)
        want = set(words.field_hashes("host", [v for v in set(sub["host"].to_pylist())
                                               if v is not None]).tolist())
        want |= set(words.field_hashes("pid", np.unique(sub["pid"].to_numpy())).tolist())
        got = h[off[r]:off[r + 1]].tolist()
        assert len(got) == len(set(got)) and set(got) == want


@pytest.mark.parametrize("overlap", [False, True])
def test_a_flush_of_batches_out_of_order_writes_rows_in_time_order(tmp_path: Path,
                                                                   overlap: bool) -> None:
    """Batches whose time ranges arrive out of order (taken in order of their first
    record), disjoint or overlapping, with ties in time: the segment is in (time, id)
    order and holds every record once."""
    import pyarrow.parquet as pq
    loop = asyncio.new_event_loop()
    st = Store(StoreConfig(data_dir=tmp_path, row_group_rows=64, flush_interval_s=3600))
    try:
        loop.run_until_complete(st.open())
        recs = []
        for k in (2, 0, 3, 1):                          # batch k covers [k, k+1) seconds
            part = [{"id": f"b{k}-{i:03d}", "level": "INFO", "component": "KERNEL",
                     "message": f"m {i}",
                     "timestamp": T0 + (k * 10**9 if not overlap else 0) + (i // 2) * 1000}
                    for i in range(150)]
            recs += part
            body = b"\n".join(orjson.dumps(r) for r in part)
            loop.run_until_complete(st.append(st.parse(body), f"k{k}"))
        assert st.flush() == 600
        [seg] = st._snapshot()[0]
        t = pq.read_table(st.seg_dir / seg.path, columns=["timestamp", "id"])
        got = list(zip(t["timestamp"].to_pylist(), t["id"].to_pylist(), strict=True))
        assert got == sorted((r["timestamp"], r["id"]) for r in recs)
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_ingest_rate_counts_the_last_seconds(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    st = Store(StoreConfig(data_dir=tmp_path, flush_interval_s=3600))
    try:
        loop.run_until_complete(st.open())
        assert st.rate(5.0) == 0 and not st.busy()
        for k in range(3):
            body = b"\n".join(orjson.dumps(r) for r in entries(40))
            loop.run_until_complete(st.append(st.parse(body), f"r{k}"))
        assert st.rate(5.0) == 120 / 5 and st.busy()
        assert st.stats()["ingest_rate"] == 120 / 10
        st._rate[0] = (st._rate[0][0] - 7.0, st._rate[0][1])     # one batch 7 s ago
        assert st.rate(5.0) == 80 / 5 and st.rate(10.0) == 120 / 10
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_slot_table_codes_of_known_unknown_and_null_templates() -> None:
    """Codes per (template, slot): known templates from the sorted table, templates the
    miner does not know (yet) and null ids code 0, slots past a template's count code 0;
    a template learnt later gets its codes then."""
    from types import SimpleNamespace

    import numpy as np
    import pyarrow as pa

    from server.store.filters import _SlotTable
    infos = {7: SimpleNamespace(text="a <*> b <*>"), 3: SimpleNamespace(text="<*>")}
    table = _SlotTable(lambda pieces: [f"{i}:{pieces[i]}" for i in range(len(pieces) - 1)],
                       "unknown")

    def codes(tids: list, rows: list, slots: list) -> list:
        got = table.codes_of(pa.array(tids, pa.uint64()), np.array(rows), np.array(slots),
                             infos)
        return [table.values[c] for c in got]
    assert codes([99], [0], [0]) == ["unknown"]                       # nothing known yet
    assert codes([7, 99, 3], [0, 0, 1, 2, 2], [0, 1, 0, 0, 1]) == \
        ["0:a ", "1: b ", "unknown", "0:", "unknown"]
    assert codes([3, 7], [1, 1, 0], [1, 0, 0]) == ["1: b ", "0:a ", "0:"]
    assert codes([None, 7], [0, 1], [0, 1]) == ["unknown", "1: b "]     # null ids
    infos[99] = SimpleNamespace(text="<*>x<*>")
    assert codes([99, 7], [0, 0, 1], [0, 1, 0]) == ["0:", "1:x", "0:a "]


def test_slot_needs_checked_in_c_equal_numpy() -> None:
    """The C check of slot needs (one pass over the parameters, slot codes looked up per
    row) flags exactly the parameters the numpy ``_needs_met`` flags: random templates,
    parameters (planted crossings, empty ones, the Kelvin sign, more parameters than
    slots, unknown templates), needles, case, and a random subset looked at."""
    import random
    from types import SimpleNamespace

    import numpy as np
    import pyarrow as pa

    from server.store import filters
    from server.store import params as paramsmod
    lib = filters._native()
    assert lib is not None                          # a compiler is part of the set-up
    rnd = random.Random(5)
    alpha = "ab7 -:Aék\u212a"

    def text(k: int) -> str:
        return "".join(rnd.choice(alpha) for _ in range(rnd.randint(0, k)))
    flagged = 0
    for _ in range(400):
        needle = "".join(rnd.choice("ab7 -Ak") for _ in range(rnd.randint(1, 6)))
        case = rnd.random() < 0.5
        ndl = needle if case else needle.lower()
        templates = [[text(4) for _ in range(rnd.randint(1, 4))] for _ in range(3)]
        for pieces in templates:                    # pieces that hold parts of the needle
            if rnd.random() < 0.6:
                i = rnd.randrange(len(pieces))
                pieces[i] += ndl[:rnd.randint(0, len(ndl))]
        infos = {1000 + i: SimpleNamespace(text="<*>".join(p)) for i, p in enumerate(templates)}
        tids, params = [], []
        for _ in range(40):
            t = rnd.choice([*infos, 7])             # 7: an unknown template
            k = len(infos[t].text.split("<*>")) - 1 if t in infos else 2
            k = max(0, k + rnd.choice([0, 0, 0, 1, -1]))
            row = [text(5) for _ in range(k)]
            if row and rnd.random() < 0.5:
                j, cut = rnd.randrange(k), rnd.randint(0, len(ndl))
                row[j] = rnd.choice([row[j] + ndl[:cut], ndl[cut:] + row[j], ndl[cut:]])
            if rnd.random() < 0.2:
                row = [p.replace("k", "\u212a") for p in row]
            tids.append(t)
            params.append(row)
        part = pa.table({"template_id": pa.array(tids, pa.uint64()),
                         "params": pa.array(params, pa.list_(pa.string()))})
        table = filters._SlotTable(lambda pieces, c=case, n=ndl: filters._slot_needs(
            [p if c else p.lower() for p in pieces], n), None)
        flat = part["params"].combine_chunks().flatten()
        rows = np.repeat(np.arange(len(params)), [len(p) for p in params])
        slot = np.concatenate([np.arange(len(p)) for p in params] + [np.zeros(0, int)])
        packed = part.set_column(1, "params", paramsmod.pack(part["params"]))
        for mine_rows in (np.ones(len(params), bool),
                          np.array([rnd.random() < 0.5 for _ in params])):
            mine = mine_rows[rows]
            codes = table.codes_of(part["template_id"].combine_chunks(), rows, slot, infos)
            want = filters._needs_met(flat, codes, table.values, case) & mine
            got = filters._needs_met_c(lib, table, part, mine, flat, case, infos)
            assert np.array_equal(got, want), (needle, case, templates, params)
            flagged += int(got.sum())
            want_rows = np.zeros(len(params), bool)
            want_rows[rows[want]] = True              # the packed form, row by row
            got_rows = filters._needs_met_rows_c(lib, table, packed, mine_rows, case, infos)
            assert np.array_equal(got_rows, want_rows), (needle, case, templates, params)
    assert flagged > 100


def test_packed_rows_searched_like_their_parameters() -> None:
    """``_contains_rows`` on packed parameters: a row matches when one of its parameters
    contains the needle (as ``_contains`` says of each), non-ASCII rows and null rows
    included."""
    import random

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from server.store import params as paramsmod
    from server.store.filters import _contains, _contains_rows
    rnd = random.Random(8)
    alpha = "abAB7 4é_\u212a"
    for _ in range(600):
        rows = [None if rnd.random() < 0.05 else
                ["".join(rnd.choice(alpha) for _ in range(rnd.randint(0, 6)))
                 for _ in range(rnd.randint(0, 4))] for _ in range(rnd.randint(0, 25))]
        lists = pa.array(rows, pa.list_(pa.string()))
        needle = "".join(rnd.choice("abAB7 4ék") for _ in range(rnd.randint(1, 3)))
        case = rnd.random() < 0.5
        want = np.zeros(len(rows), bool)
        if len(lists):
            found = _contains(pc.list_flatten(lists), needle, case)
            want[pc.list_parent_indices(lists).to_numpy()[found]] = True
        got = _contains_rows(paramsmod.pack(lists), needle, case)
        assert np.array_equal(got, want), (rows, needle, case)


def test_random_words_across_parameter_edges_match_oracle(tmp_path: Path) -> None:
    """Messages whose variables touch letters and other variables (``id7x``, ``a12b34``,
    ``7-8``), searched for words, numbers and pieces of them: the pages equal the oracle's
    (no match lost by the edge checks on packed parameters, none invented)."""
    import random
    rnd = random.Random(21)

    def token() -> str:
        kind = rnd.randrange(6)
        n = str(rnd.randrange(10 ** rnd.randint(1, 6)))
        return [f"id{n}", f"{n}ms", f"a{n}b{rnd.randrange(99)}", f"{n}-{rnd.randrange(9)}",
                f"x{n}{n[::-1]}", n][kind]
    recs = []
    for i in range(3000):
        words = [rnd.choice(["user", "took", "blk", "port", "at"]), token(), token()]
        recs.append({"id": f"r{i:05d}", "timestamp": T0 + i * 1000, "level": "INFO",
                     "component": "APPLICATION", "source": "t", "host": "h", "pid": 1,
                     "tid": 1, "process": "p", "message": " ".join(words), "metadata": {},
                     "context": {}})
    loop = asyncio.new_event_loop()
    st = Store(StoreConfig(data_dir=tmp_path, row_group_rows=256, flush_interval_s=3600))
    loop.run_until_complete(st.open())
    try:
        loop.run_until_complete(st.append(st.parse(b"\n".join(orjson.dumps(r) for r in recs))))
        st.flush()
        queries = set()
        for r in rnd.sample(recs, 60):
            w = rnd.choice(r["message"].split(" "))
            queries.add(w)
            for m in re.findall(r"[0-9]+|[a-z]+", w):
                queries.add(m)
            if len(w) > 3:
                queries.add(w[1:-1])
        for text in sorted(queries):
            for case in (False, True):
                q = LogQuery(text=text, limit=100_000, case=case)
                assert [r["id"] for r in st.search(q).records] == oracle(recs, q), text
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_terms_across_parameter_edges_on_packed_rows_match_brute_force() -> None:
    """Templates whose slots touch letters, digits and other slots (which the miner makes
    rarely), parameters planted to complete words and phrases across their edges: the
    rows selected from packed parameters (C checks, then rendering) are exactly those
    whose rendered message matches, for words, phrases and regexes, in either case."""
    import random
    from types import SimpleNamespace

    import numpy as np
    import pyarrow as pa

    from server.store import filters
    from server.store import params as paramsmod
    rnd = random.Random(4)
    alpha = ["ab", "7", "x", "-", " ", "", "Kb", "9z", ".", "_"]

    class Miner:
        def __init__(self, texts: dict[int, str]) -> None:
            self.infos = {t: SimpleNamespace(text=x) for t, x in texts.items()}

        def templates(self) -> dict[int, Any]:
            return self.infos

        def render_many(self, tids: Any, params: Any) -> pa.Array:
            out = []
            for t, ps in zip(tids.tolist(), params.to_pylist(), strict=True):
                pieces = self.infos[t].text.split("<*>")
                out.append(pieces[0] + "".join(p + x for p, x in zip(ps, pieces[1:],
                                                                       strict=True)))
            return pa.array(out, pa.string())
    checked = 0
    for _ in range(60):
        texts = {}
        for t in range(1, 6):
            k = rnd.randint(1, 3)
            texts[t] = "<*>".join("".join(rnd.choice(alpha) for _ in range(rnd.randint(0, 2)))
                                  for _ in range(k + 1))
        miner = Miner(texts)
        tids, rows, msgs = [], [], []
        for _ in range(200):
            t = rnd.randrange(1, 6)
            k = texts[t].count("<*>")
            ps = ["".join(rnd.choice(alpha[:4] + ["12", "K"]) for _ in range(rnd.randint(0, 2)))
                  for _ in range(k)]
            tids.append(t)
            rows.append(ps)
            msgs.append(miner.render_many(np.array([t]), pa.array([ps])).to_pylist()[0])
        table = pa.table({"timestamp": pa.array(np.arange(len(rows)), pa.int64()),
                          "template_id": pa.array(tids, pa.uint64()),
                          "params": paramsmod.pack(pa.array(rows, pa.list_(pa.string())))})
        for _ in range(8):
            m = rnd.choice(msgs)
            a = rnd.randrange(len(m) + 1)
            piece = m[a:a + rnd.randint(1, 5)].strip(" ")
            if not piece:
                continue
            case = rnd.random() < 0.5
            for text in ({piece, f'"{piece}"', "/" + re.escape(piece) + "/"}):
                q = LogQuery(text=text, case=case, limit=100_000)
                sel = filters.Selector(q, miner, None)
                assert sel.takes_packed
                got = sel.select(table, None).tolist()
                recs = [{"timestamp": i, "id": str(i), "message": x} for i, x in enumerate(msgs)]
                want = sorted(int(i) for i in oracle(recs, q))
                assert sorted(got) == want, (texts, text, case)
                checked += 1
    assert checked > 500


def test_times_without_an_offset_are_utc_whatever_the_hubs_zone(monkeypatch: Any) -> None:
    import calendar

    from server.store.query import parse_time
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        at = calendar.timegm((2026, 11, 30, 21, 14, 0)) * 10**9
        assert parse_time("2026-11-30T21:14:00") == at
        assert parse_time("2026-11-30 21:14:00") == at
        assert parse_time("2026-12-01T06:14:00+09:00") == at
        assert parse_time("2026-11-30T21:14:00Z") == at
        assert parse_time("2026-11-30") == calendar.timegm((2026, 11, 30, 0, 0, 0)) * 10**9
        assert parse_time(str(at)) == at and parse_time("-1m", now=at) == at - 60 * 10**9
    finally:
        monkeypatch.undo()
        time.tzset()
