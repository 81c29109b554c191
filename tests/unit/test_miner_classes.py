"""Lines grouped in classes (equal up to digits) before masking: the miner gives the same
ids and parameters as masking every line, whatever the batch and the cache state."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from embeddings import masking
from embeddings import miner as miner_mod
from embeddings.masking import MARK
from embeddings.miner import TemplateMiner

# digits in literal text, 0x next to other digits before x, non-ASCII, placeholders,
# values glued together, runs of spaces
WORDS = [
    "jk2_init()", "jk3_init()", "ssh1", "ssh2", "R02-M1-N9", "R01-M1-N9", "0x1f", "1x1f",
    "5x2", "0xZZ", "0X0", "x0x", "node-17", "blk_-123", "é1", "ü2ü", "<*>", "", "  ", "\t3",
    "v1.2.3", "12ab", "ab12", "09:12:33", "Dec 12 09:12:33", "/a/1/b", "10.0.0.1:80", "user",
    "from",
]


def _corpus(n: int, seed: int) -> list[str | None]:
    rnd = random.Random(seed)
    out: list[str | None] = []
    for _ in range(n):
        toks = [
            rnd.choice(WORDS) if rnd.random() < 0.6 else str(rnd.randrange(10 ** rnd.randint(1, 7)))
            for _ in range(rnd.randint(0, 8))
        ]
        out.append(" ".join(toks))
    return out + [None, "", "0x", "1x"]


def _mine(
    lines: list[str | None], batch: int, monkeypatch: pytest.MonkeyPatch, group: bool,
    native: bool = True,
) -> tuple[list[int], list[list[str]], TemplateMiner]:
    # grouping on every batch, or never (every line masked on its own); known keys looked
    # up in the C tables, or (native=False) by the numpy path
    monkeypatch.setattr(miner_mod, "GROUP_MAX_CLASSES", 2.0 if group else -1.0)
    # the C tables on every batch, however few of its lines they know
    monkeypatch.setattr(miner_mod, "KNOWN_MIN", 0.0)
    miner = TemplateMiner(None)
    if not native:
        miner._known.native = None
    ids: list[int] = []
    params: list[list[str]] = []
    arr = pa.array(lines, pa.string())
    for i in range(0, len(arr), batch):
        mined = miner.mine_arrow(arr.slice(i, batch))
        ids += mined.template_ids.tolist()
        params += mined.params.to_pylist()
    return ids, params, miner


@pytest.mark.parametrize("native", [True, False], ids=["C", "numpy"])
@pytest.mark.parametrize("batch", [64, 1000, 100_000])
def test_classes_give_what_lines_give(
    monkeypatch: pytest.MonkeyPatch, batch: int, native: bool
) -> None:
    if native and miner_mod._native() is None:
        pytest.skip("no C compiler")
    lines = _corpus(6000, 1) * 2  # lines seen again: classes known from the cache
    want = _mine(lines, batch, monkeypatch, group=False)
    got = _mine(lines, batch, monkeypatch, group=True, native=native)
    assert got[:2] == want[:2]
    assert got[2]._state() == want[2]._state()
    miner = got[2]
    assert [miner.render(t, p) for t, p in zip(got[0], got[1], strict=True)] == [
        m or "" for m in lines
    ]


def test_small_class_cache_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _corpus(3000, 2) * 3
    want = _mine(lines, 500, monkeypatch, group=True, native=False)[:2]
    assert _mine(lines, 500, monkeypatch, group=True)[:2] == want
    monkeypatch.setattr(miner_mod, "CLASS_CACHE_MAX", 50)  # emptied every few batches
    assert _mine(lines, 500, monkeypatch, group=True)[:2] == want
    assert _mine(lines, 500, monkeypatch, group=True, native=False)[:2] == want


def _native_cache() -> miner_mod._ClassCache:
    cache = miner_mod._ClassCache()
    if cache.native is None:
        pytest.skip("no C compiler")
    return cache


def test_c_tables_find_the_class_of_each_line() -> None:
    cache = _native_cache()
    known = cache.native
    assert known is not None
    # first-level key: digits made 1 but before x; "ssh2" keeps its literal digit
    known.add_digits("job 1 took 1ms via ssh1 at 0x1f", np.array([22], np.int32).tobytes())
    known.add_class("job 1 took 1ms via ssh2 at 0x1f", 7)
    known.add_digits("empty", b"")
    known.add_class("empty", 3)
    known.add_digits("", b"")
    known.add_class("", 4)
    lines = ["job 4 took 9ms via ssh2 at 0x1f", "job 4 took 9ms via ssh3 at 0x1f",
             "job 4 took 9ms via ssh2 at 5x1f", "empty", "emptx", "", "job 44 took 9ms"]
    found, key_hash = known.lookup(pa.array(lines))
    assert found.tolist() == [7, -1, -1, 3, -1, 4, -1]
    assert (key_hash[found < 0] != 0).all() and (key_hash[found >= 0] == 0).all()
    # a line known only at the first level, and an unknown one, hash as their keys
    again, again_hash = known.lookup(pa.array(["job 5 took 2ms via ssh3 at 0x1f", "emptx"]))
    assert again.tolist() == [-1, -1]
    assert again_hash.tolist() == [key_hash[1], key_hash[4]]
    # sliced arrays read from their offset; only empty lines
    assert known.lookup(pa.array(lines).slice(3, 3))[0].tolist() == [3, -1, 4]
    assert known.lookup(pa.array(["", ""]))[0].tolist() == [4, 4]
    # many keys (the tables grow), then cleared
    keys = ["k" + "".join(chr(97 + int(d)) for d in str(i)) for i in range(5000)]  # no digit
    for i, key in enumerate(keys):
        known.add_digits(key, b"")
        known.add_class(key, i)
    assert known.lookup(pa.array(keys))[0].tolist() == list(range(5000))
    known.clear()
    assert known.lookup(pa.array(["empty", "k3"]))[0].tolist() == [-1, -1]


def test_lines_alone_of_their_key_are_not_remembered() -> None:
    miner = TemplateMiner(None)
    if miner._known.native is None:
        pytest.skip("no C compiler")
    rnd = random.Random(5)

    def sessions(n: int) -> list[str]:  # each line its own key
        hexes = {"".join(rnd.choice("abcdef") for _ in range(12)) for _ in range(n)}
        return [f"session 0x{h} closed" for h in sorted(hexes)]

    jobs = [f"job {i % 10} done" for i in range(600)]  # one key
    first = sessions(200) + jobs
    mined = miner.mine_arrow(pa.array(first))  # nothing known yet: classified whole
    assert miner.render_many(mined.template_ids, mined.params).to_pylist() == first
    assert list(miner._known.digits) == ["job 1 done"] == list(miner._known.splits)
    # known keys now: looked up in C; the new lone lines are masked alone, not remembered
    calls: list[int] = []
    real = miner_mod._classify_known
    miner_mod._classify_known = lambda arr, cache: calls.append(1) or real(arr, cache)
    try:
        second = jobs + sessions(200)
        again = miner.mine_arrow(pa.array(second))
    finally:
        miner_mod._classify_known = real
    assert calls == [1]
    assert miner.render_many(again.template_ids, again.params).to_pylist() == second
    assert list(miner._known.digits) == ["job 1 done"] == list(miner._known.splits)


def test_first_order_c_and_numpy_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = np.random.default_rng(3)
    for n, k in [(0, 1), (1, 1), (1000, 7), (5000, 4000)]:
        cls = rnd.integers(0, k, n).astype(np.int64)
        got = miner_mod._first_order(cls, k)
        with monkeypatch.context() as m:
            m.setattr(miner_mod, "_native", lambda: None)
            want = miner_mod._first_order(cls, k)
        assert [a.tolist() for a in got] == [a.tolist() for a in want]
        codes, first = got
        assert (cls[first][codes] == cls).all() and (np.diff(first) > 0).all()


def test_literal_digits_and_0x_keep_their_lines_apart() -> None:
    miner = TemplateMiner(None)
    lines = ["jk2_init() found child 12 in slot 3", "jk3_init() found child 45 in slot 6",
             "value 0x1f", "value 1x1f", "value 5x1f", "value 0x2e"] * 20
    mined = miner.mine_arrow(pa.array(lines, pa.string()))
    for tid, params, line in zip(
        mined.template_ids.tolist(), mined.params.to_pylist(), lines, strict=True
    ):
        assert miner.render(tid, params) == line
    first = {line: p for line, p in zip(lines, mined.params.to_pylist(), strict=False)}
    assert "0x1f" in first["value 0x1f"]  # a hex value
    assert "0x2e" in first["value 0x2e"]
    assert "1x1f" not in first["value 1x1f"]  # not one


def test_normalise_makes_digits_one() -> None:
    data = np.frombuffer("a0 19x é9\x00".encode(), dtype=np.uint8)
    got = miner_mod._normalise(data, block=3).tobytes().decode()
    assert got == "a1 11x é1\x00"


def test_known_batch_decides_nothing_again(monkeypatch: pytest.MonkeyPatch) -> None:
    miner = TemplateMiner(None)
    arr = pa.array([f"job {i} took {i * 7} ms on node-{i % 5}" for i in range(5000)])
    first = miner.mine_arrow(arr)
    calls: list[str] = []
    for name in ("_decide_lone", "_decide_new", "_decide"):
        real = getattr(miner, name)
        monkeypatch.setattr(
            miner, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a)
        )
    again = miner.mine_arrow(arr)
    assert calls == []
    assert np.array_equal(first.template_ids, again.template_ids)
    assert first.params.equals(again.params)


def test_lines_with_the_marker_still_mined_one_by_one() -> None:
    miner = TemplateMiner(None)
    lines = [f"a {i} b" for i in range(100)] + [f"a {MARK}{i} b" for i in range(3)]
    mined = miner.mine_arrow(pa.array(lines, pa.string()))
    assert miner.render_many(mined.template_ids, mined.params).to_pylist() == lines


def test_masking_sees_digits_alike_but_the_zero_of_0x() -> None:
    """What grouping lines in classes relies on (see embeddings/masking.py)."""
    rnd = random.Random(9)
    lines = [m for m in _corpus(3000, 4) if m] + [
        "0x1f 1x1f", "at 09:12:33.123 on 2024-01-02", "ip 10.0.0.1:80 mac 00:1a:2b:3c:4d:5e",
        "uuid 123e4567-e89b-12d3-a456-426614174000", "12 KB in 3 sec", "0xdeadbeef 0X12",
    ]
    for line in lines:
        digits = [
            rnd.choice("0123456789")
            if c.isdigit() and not (k + 1 < len(line) and line[k + 1] in "xX") else c
            for k, c in enumerate(line)
        ]
        other = "".join(digits)
        assert masking.spans(other) == masking.spans(line), (line, other)


def test_any_mark_looks_at_the_slice_only() -> None:
    arr = pa.array(["a\x00", "b", "c", "d\x00e"])
    assert masking.any_mark(arr) and masking.any_mark(arr.slice(3))
    assert not masking.any_mark(arr.slice(1, 2))
    assert not masking.any_mark(pa.array(["", ""]))
    assert not masking.any_mark(pa.array([], pa.string()))
