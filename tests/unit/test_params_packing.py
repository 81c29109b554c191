"""Segment parameters packed one string per row: C and numpy agree, round trips are exact,
and a store serves segments written either way."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from server.store import params
from server.store.config import StoreConfig
from server.store.engine import Store
from server.store.query import LogQuery


def _random_lists(seed: int, n: int) -> list[list[str] | None]:
    rng = random.Random(seed)
    alphabet = ["a", "Z", "0", " ", "é", "日", "\u212a", "\x00", "\n", ""]
    out: list[list[str] | None] = []
    for _ in range(n):
        if rng.random() < 0.05:
            out.append(None)
            continue
        out.append(["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6)))
                    for _ in range(rng.randrange(0, 5))])
    return out


@pytest.mark.parametrize("seed", range(4))
def test_pack_then_unpack_is_exact_and_c_equals_numpy(seed: int) -> None:
    lists = _random_lists(seed, 3000)
    arr = pa.array(lists, params.LIST_TYPE)
    for part in (arr, arr.slice(17, 2000), arr.slice(2999, 1), arr.slice(5, 0)):
        packed_c = params.pack(part, native=True)
        packed_np = params.pack(part, native=False)
        assert packed_c is not None and packed_np is not None
        assert packed_c.equals(packed_np)
        assert packed_c.null_count == part.null_count
        for native in (True, False):
            back = params.unpack(packed_c, native=native)
            assert back.type == params.LIST_TYPE
            assert back.to_pylist() == part.to_pylist()


def test_packed_form_puts_a_separator_after_every_parameter() -> None:
    arr = pa.array([["a", "b"], [], [""], None, ["x\u00e9", ""]], params.LIST_TYPE)
    for native in (True, False):
        got = params.pack(arr, native=native)
        assert got is not None
        # [] and [""] stay apart: every parameter, even empty, ends with the separator
        assert got.to_pylist() == ["a\x1fb\x1f", "", "\x1f", None, "x\u00e9\x1f\x1f"]


def test_parameters_that_cannot_be_packed_are_left_to_the_caller() -> None:
    for native in (True, False):
        assert params.pack(pa.array([["ok"], ["a\x1fb"]], params.LIST_TYPE), native) is None
        assert params.pack(pa.array([["ok", None]], params.LIST_TYPE), native) is None
    assert params.pack(pa.array([["x"]], pa.list_(pa.large_string()))) is None
    lists = pa.array([["x"]], params.LIST_TYPE)
    assert params.unpack(lists) is lists           # a list column is served as it is
    with pytest.raises(ValueError, match="unexpected type"):
        params.unpack(pa.array([1, 2]))


def test_chunked_columns_unpack_chunk_by_chunk() -> None:
    a = pa.array([["a"], ["b", "c"]], params.LIST_TYPE)
    b = pa.array([None, []], params.LIST_TYPE)
    chunked = pa.chunked_array([params.pack(a), params.pack(b)])
    got = params.unpack(chunked)
    assert got.num_chunks == 2 and got.to_pylist() == [["a"], ["b", "c"], None, []]


def _store_with(tmp: Path, messages: list[str], templates: bool, loop: asyncio.AbstractEventLoop
                ) -> tuple[Store, list[Path]]:
    st = Store(StoreConfig(data_dir=tmp, row_group_rows=64, flush_interval_s=3600,
                           templates=templates))
    loop.run_until_complete(st.open())
    recs = [{"id": f"r{i:04d}", "timestamp": 1_700_000_000_000_000_000 + i, "level": "INFO",
             "component": "APPLICATION", "source": "t", "host": "h", "pid": 1, "tid": 1,
             "process": "p", "message": m, "metadata": {}, "context": {}}
            for i, m in enumerate(messages)]
    loop.run_until_complete(st.append(st.parse(b"\n".join(orjson.dumps(r) for r in recs))))
    st.flush()
    return st, sorted(st.seg_dir.rglob("*.parquet"))


@pytest.mark.parametrize("templates", [True, False])
def test_store_packs_segments_and_falls_back_to_lists(tmp_path: Path, templates: bool) -> None:
    plain = [f"user u{i} logged in from 10.0.0.{i % 250} after {i} ms" for i in range(300)]
    odd = plain[:150] + ["id \x1f7 ended", "run \x1f it"] + plain[150:]
    loop = asyncio.new_event_loop()
    for name, msgs in (("plain", plain), ("odd", odd)):
        st, segs = _store_with(tmp_path / name, msgs, templates, loop)
        try:
            kinds = {pq.read_schema(p).field("params").type for p in segs}
            if name == "plain":
                assert kinds == {pa.string()}
            elif not templates:     # the whole message is the parameter: a list is kept
                assert len(kinds) == 1 and pa.types.is_list(kinds.pop())
            got = st.search(LogQuery(sort="asc", limit=1000)).records
            assert [r["message"] for r in got] == msgs
            hit = st.search(LogQuery(text='"logged in from 10.0.0.7 after"', limit=10)).records
            assert [r["message"] for r in hit] == [msgs[i] for i in range(len(msgs))
                                                   if "10.0.0.7 after" in msgs[i]][::-1]
        finally:
            loop.run_until_complete(st.close())
    loop.close()


def test_numpy_unpack_drops_bytes_after_the_last_separator_like_c() -> None:
    # never written by pack; both readers must still agree on foreign bytes
    arr = pa.array(["a\x1fbc", "\x1fd", "e"], pa.string())
    got = [params.unpack(arr, native=n).to_pylist() for n in (True, False)]
    assert got[0] == got[1] == [["a"], [""], []]
