"""Row groups skipped for phrases and regex literals (server.store.prune): the parameter
word filters, the template ids in the word filters, and the placements of a needle on a
template, each against brute force."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest

from server.store import filters, prune, words
from server.store.config import StoreConfig
from server.store.engine import Store
from server.store.query import LogQuery
from server.store.segments import file_digest
from tests.unit.test_store_search import T0, oracle

_WORD = re.compile(r"(?:[0-9A-Za-z]|[^\x00-\x7f])+")


def param_words(params: list[str]) -> set[str]:
    """What the parameter filter holds for these parameters (as words, not hashes)."""
    out = set()
    for p in params:
        for w in _WORD.findall(p):
            if w.isascii() and not any(c.isdigit() for c in w):
                out.add(w.lower())
    return out


def test_placements_hold_for_every_message_holding_the_needle() -> None:
    """Random templates (slots next to letters, spaces, other slots), random parameters
    and needles cut from the messages: whenever a message holds the needle, its
    parameters hold every word of one of the template's requirement sets. And the sets
    are not always empty (the check says something)."""
    rnd = random.Random(5)
    alphabet = ["ab", "ba", "for", "pass", "word", "x1", " ", " ", ":", "-", "."]

    def text(k: int) -> str:
        return "".join(rnd.choice(alphabet) for _ in range(k))
    checked = pruning = 0
    for _ in range(400):
        pieces = [text(rnd.randint(0, 3)) for _ in range(rnd.randint(1, 5))]
        for _ in range(30):
            params = [text(rnd.randint(0, 4)) for _ in range(len(pieces) - 1)]
            msg = "".join(p + v for p, v in zip(pieces, params + [""], strict=True)).lower()
            if not msg:
                continue
            a = rnd.randrange(len(msg))
            needle = msg[a:a + rnd.randint(1, 14)]
            sets = prune.Placements(needle).requirements([p.lower() for p in pieces])
            assert sets, (pieces, params, needle)
            have = param_words(params)
            assert any(s <= have for s in sets), (pieces, params, needle, sets)
            checked += 1
            pruning += bool(sets[0])
    assert checked > 5000 and pruning > 500


def test_placements_say_never_when_no_placement_fits() -> None:
    assert prune.Placements("abc").requirements(["no slot here"]) == []
    assert prune.Placements("abc").requirements(["xx abc yy"]) == [frozenset()]
    got = prune.Placements("accepted password for ").requirements(
        ["", " sshd: failed password for ", " from ", ""])
    assert got and all({"password", "for"} <= s or "accepted" in s or len(s) > 1
                       for s in got)


def random_params(rnd: random.Random, n: int) -> list[list[str]]:
    vocab = ["root", "Admin", "x42", "k\u212aey", "caf\u00e9", "for", "", "a b", "9", "\u00e94x",
             "pass word", "B\u00dcRO"]
    return [[rnd.choice(vocab) + rnd.choice(["", "-1", " z"]) for _ in range(rnd.randint(0, 3))]
            for _ in range(n)]


@pytest.mark.parametrize("rg_rows", [1, 7, 64])
def test_parameter_filters_native_equal_numpy_and_hold_every_word(rg_rows: int) -> None:
    rnd = random.Random(rg_rows)
    lists = random_params(rnd, 300)
    params = pa.array(lists, pa.list_(pa.string())).slice(11)
    lists = lists[11:]
    texts = [" ".join(rnd.choice(["disK", "ſun", "ok", "K", "xé"])
                      for _ in range(3)) for _ in lists]
    msgs = pa.array(texts)
    fields = pa.table({"template_id": pa.array(np.arange(len(texts)) % 5, pa.uint64())})
    a = words.build(msgs, rg_rows, params=params, fields=fields)
    b = words.build(msgs, rg_rows, native=False, params=params, fields=fields)
    assert not words.build(msgs, rg_rows, params=params).has_params   # no template ids
    assert a.has_params and a.params is not None and b.params is not None
    assert len(a.params) == len(a.blooms) == -(-len(lists) // rg_rows)
    assert all(np.array_equal(x, y) for x, y in zip(a.params, b.params, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(a.blooms, b.blooms, strict=True))
    folds = a.words_present(np.array([words.FOLDS], np.uint64))[:, 0]
    for r in range(len(a.blooms)):
        spelled = any(c in t for t in texts[r * rg_rows:(r + 1) * rg_rows]
                      for c in "Kſ")
        assert folds[r] or not spelled
    for r in range(len(a.blooms)):
        rows = lists[r * rg_rows:(r + 1) * rg_rows]
        have = param_words([v for row in rows for v in row])
        for w in have:
            h = words.query_hashes(w)
            assert h is not None and a.param_words_present(h)[r].all()
        non_ascii = any(not w.isascii() and not any(c.isdigit() for c in w)
                        for row in rows for v in row for w in _WORD.findall(v))
        marker = a.param_words_present(np.array([words.NON_ASCII], np.uint64))[r, 0]
        assert marker or not non_ascii
        assert not a.param_words_present(words.query_hashes("x42"))[r].all() or \
            rg_rows > 1          # words with digits are left out (but by chance)
    from server.store.params import pack
    packed = pack(params)
    assert packed is not None
    rows = np.minimum(np.arange(len(a.blooms) + 1) * rg_rows, len(lists))
    c = words.with_params(words.build(msgs, rg_rows, fields=fields), packed, rows)
    assert c.params is not None and all(
        np.array_equal(x, y) for x, y in zip(a.params, c.params, strict=True))
    back = words.WordIndex.from_table(a.to_table())
    assert back.has_params and all(np.array_equal(x, y)
                                   for x, y in zip(back.params or [], a.params, strict=True))
    old = words.WordIndex.from_table(a.to_table().drop_columns(["pbloom"]))
    assert not old.has_params


def ssh_records(n: int, rare_every: int = 997) -> list[dict[str, Any]]:
    rnd = random.Random(3)
    users = ["root", "admin", "oracle", "test", "guest", "ubuntu", "user", "pi"]
    out = []
    for i in range(n):
        ip = f"10.{i % 7}.{i % 13}.{i % 251}"
        if i % rare_every == 5:
            msg = f"Accepted password for fztu from {ip} port {i} ssh2"
        elif i % 3:
            msg = f"Failed password for {rnd.choice(users)} from {ip} port {i} ssh2"
        else:
            msg = f"Received block blk_{i * 7919} of size {i % 97} from {ip}"
        out.append({"id": f"s{i:06d}", "timestamp": T0 + i * 1000, "level": "INFO",
                    "component": "APPLICATION", "source": "t", "host": "h", "pid": 1,
                    "tid": 1, "process": "sshd", "message": msg, "metadata": {},
                    "context": {}})
    return out


def open_store(path: Path, recs: list[dict], complete: bool = True, **cfg: Any
               ) -> tuple[Store, Any]:
    """A store holding ``recs`` in several segments; ``complete``: their word indexes given
    their parameter filters at once (as the background does with CPU to spare)."""
    loop = asyncio.new_event_loop()
    st = Store(StoreConfig(data_dir=path, row_group_rows=256,
                           **{"flush_interval_s": 3600, **cfg}))
    loop.run_until_complete(st.open())
    for start in range(0, len(recs), 4000):
        body = b"\n".join(orjson.dumps(r) for r in recs[start:start + 4000])
        loop.run_until_complete(st.append(st.parse(body)))
        st.flush()
    if complete:
        st._complete_indexes(budget_s=600)
    return st, loop


def kept_row_groups(st: Store, q: LogQuery) -> tuple[int, int, int]:
    """(row groups, kept by the words alone, kept with the needles too)"""
    sel = filters.Selector(q, st.miner, None, st._class_cache())
    segs, _ = st._snapshot()
    every = st._row_groups(q, segs)
    return len(every), len(st._pruned(every, q)), len(st._pruned(every, q, sel))


def test_a_rare_phrase_or_regex_reads_only_the_row_groups_that_may_hold_it(
        tmp_path: Path) -> None:
    recs = ssh_records(12_000)
    st, loop = open_store(tmp_path, recs)
    try:
        by_id = {r["id"]: r for r in recs}
        for text in ("/Accepted password for \\w+ from/", '"accepted password for fztu"',
                     '"password for fztu"', "/password for root from/", '"Failed password"'):
            for sort, limit in (("desc", 5), ("asc", 100_000)):
                q = LogQuery(text=text, sort=sort, limit=limit)
                got = st.search(q).records
                assert [r["id"] for r in got] == oracle(recs, q), text
                # whole records, their text fields plain (read as dictionaries, decoded)
                for r in got[:50]:
                    want = by_id[r["id"]]
                    assert {k: r[k] for k in ("host", "level", "component", "source",
                                              "process", "message", "metadata")} == \
                        {k: want[k] for k in ("host", "level", "component", "source",
                                              "process", "message", "metadata")}
        every, by_words, by_needles = kept_row_groups(
            st, LogQuery(text="/Accepted password for \\w+ from/", limit=10))
        holding = len({(i // 256) for i, r in enumerate(recs)
                       if r["message"].startswith("Accepted")})
        assert by_words == every and holding <= by_needles < every // 2
        # a phrase inside the text of the common template prunes nothing
        assert kept_row_groups(st, LogQuery(text='"Failed password for"'))[2] == every
        # in the row groups read, only the rows of the template holding the needle are
        # looked at (the others cannot hold it: their parameters lack the words)
        q = LogQuery(text="/Accepted password for \\w+ from/", limit=10)
        sel = filters.Selector(q, st.miner, None, st._class_cache())
        looked = 0
        for g in st._pruned(st._row_groups(q, st._snapshot()[0]), q, sel):
            t = st._read(g, None)
            assert t is not None
            among = st._possible(sel, g, t)
            assert among is not None
            msgs = st.miner.render_many(t["template_id"].to_numpy(),
                                        t["params"].combine_chunks()).to_pylist()
            accepted = np.array([m.startswith("Accepted") for m in msgs])
            assert np.array_equal(among, accepted)
            looked += int(among.sum())
        assert looked == sum(r["message"].startswith("Accepted") for r in recs)
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_needles_inside_parameters_are_found_case_folded(tmp_path: Path) -> None:
    """Without templates every message is one parameter: a needle is found through the
    parameter filters, also where case folding maps a non-ASCII letter onto an ASCII one
    (the Kelvin sign onto k)."""
    recs = ssh_records(3000)
    recs[1700]["message"] = "then the \u212aernel panic came"
    recs[2900]["message"] = "the kernel panic again"
    st, loop = open_store(tmp_path, recs, templates=False)
    try:
        for text in ("/the kernel panic/", "/Accepted password for \\w+ from/",
                     '"password for fztu"', "kernel", '"the kernel"'):
            q = LogQuery(text=text, limit=100_000)
            got = [r["id"] for r in st.search(q).records]
            assert got == oracle(recs, q) and got, text
        every, _, by_needles = kept_row_groups(st, LogQuery(text='"password for fztu from"'))
        assert by_needles < every
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_parameter_filters_are_added_in_the_background(tmp_path: Path) -> None:
    """Word indexes as ingest writes them (no parameter filters), and one from before
    template ids: queries prune by words only; with CPU to spare the hub adds the filters
    (building the old index again whole), the same query then skips row groups, its pages
    stay the oracle's, and the stats say when it is done."""
    import time
    recs = ssh_records(9000)
    st, loop = open_store(tmp_path, recs, complete=False, flush_interval_s=0.2)
    try:
        q = LogQuery(text="/Accepted password for \\w+ from/", limit=100_000)
        segs, _ = st._snapshot()
        assert len(segs) >= 2
        st._compacted_at = time.monotonic() + 3600      # no upgrade while we set up
        for seg in segs:
            new = st.word_index(seg)
            assert new is not None and new.version == 2
            # as ingest writes it (no parameter filters), and one from before them
            old = words.WordIndex(new.blooms, version=2 if seg is not segs[0] else 1)
            seg.words_xxh64 = file_digest(words.write(old, st.seg_dir / seg.path))[0]
            st._words.pop(seg.path)
        st._indexed.clear()
        every, _, before = kept_row_groups(st, q)
        assert before == every
        assert [r["id"] for r in st.search(q).records] == oracle(recs, q)
        st._compacted_at = 0.0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                words.state(st.seg_dir / s.path) == (2, True) for s in segs):
            time.sleep(0.1)
        st._wait_compaction()
        assert all(words.state(st.seg_dir / s.path) == (2, True) for s in segs)
        deadline = time.monotonic() + 10
        while st.stats()["segments_indexing"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert st.stats()["segments_indexing"] == 0
        every, _, after = kept_row_groups(st, q)
        assert after < every
        assert [r["id"] for r in st.search(q).records] == oracle(recs, q)
    finally:
        loop.run_until_complete(st.close())
        loop.close()
    # the manifest names the new indexes' checksums: reopened, nothing is rebuilt
    st2 = Store(StoreConfig(data_dir=tmp_path, row_group_rows=256))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(st2.open())
    try:
        for s in st2._snapshot()[0]:
            index = st2.word_index(s)
            assert index is not None and index.has_params
    finally:
        loop.run_until_complete(st2.close())
        loop.close()


@pytest.mark.data
def test_loghub_phrases_and_regexes_match_brute_force(loghub: Path, tmp_path: Path) -> None:
    """8,000 lines of the nine loghub samples (their templates mined by the hub),
    searched for phrases and regexes cut from random lines: every page equals a brute-force
    scan of the records (no match lost to pruning), and pruning skips row groups for many
    of them (the check is not idle)."""
    rnd = random.Random(11)
    lines = []
    for f in sorted(loghub.glob("*/*_2k.log")):
        lines += [x for x in f.read_text(errors="replace").splitlines() if x.strip()]
    rnd.shuffle(lines)
    lines = lines[:8000]
    recs = [{"id": f"l{i:05d}", "timestamp": T0 + i * 1000, "level": "INFO",
             "component": "APPLICATION", "source": "t", "host": "h", "pid": 1, "tid": 1,
             "process": "p", "message": m, "metadata": {}, "context": {}}
            for i, m in enumerate(lines)]
    st, loop = open_store(tmp_path, recs)
    try:
        pruned = 0
        queries = []
        while len(queries) < 60:
            m = rnd.choice(lines)
            a = rnd.randrange(len(m))
            cut = m[a:a + rnd.randint(8, 30)].strip()
            if len(cut) < 6 or '"' in cut or "\\" in cut:
                continue
            if rnd.random() < 0.5:
                queries.append(f'"{cut}"')
            else:
                k = rnd.randint(2, len(cut) - 2)
                queries.append("/" + re.escape(cut[:k]) + ".{0,12}" + re.escape(cut[k:]) + "/")
        for text in queries:
            q = LogQuery(text=text, limit=100_000, sort="asc")
            want = oracle(recs, q)
            assert [r["id"] for r in st.search(q).records] == want, text
            every, _, kept = kept_row_groups(st, q)
            pruned += kept < every
        assert pruned >= 10
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_stats_text_says_how_many_segments_still_get_parameter_filters() -> None:
    from server.client_cli import stats_text
    st = {"records": 10, "records_in_memory": 0, "wal_bytes": 0, "oldest": None,
          "newest": None, "ingest_rate": 0.0, "stored_bytes": 1, "index_bytes": 1,
          "raw_bytes": 10, "compression_ratio": 5.0, "segments": 3, "partitions": ["p"],
          "templates": 1, "by_level": {}, "by_component": {}, "by_host": {},
          "segments_indexing": 2}
    line = next(x for x in stats_text(st).splitlines() if x.startswith("segments"))
    assert "2 still getting their parameter filters" in line
    st["segments_indexing"] = 0
    line = next(x for x in stats_text(st).splitlines() if x.startswith("segments"))
    assert line == "segments    3 in 1 partition(s), p .. p"


def test_stats_text_says_when_nothing_is_in_segments_yet() -> None:
    """Before the first flush, "stored 0 B + 0 B of indexes for 0 B" said nothing useful;
    the line says where the records are instead, and the bytes once segments exist."""
    from server.client_cli import stats_text
    st = {"records": 4000, "records_in_memory": 4000, "wal_bytes": 118_000, "oldest": None,
          "newest": None, "ingest_rate": 400.0, "stored_bytes": 0, "index_bytes": 0,
          "raw_bytes": 0, "compression_ratio": None, "segments": 0, "partitions": [],
          "templates": 0, "by_level": {}, "by_component": {}, "by_host": {},
          "segments_indexing": 0}
    line = next(x for x in stats_text(st).splitlines() if x.startswith("stored"))
    assert "nothing in segments yet" in line and "memory" in line
    st.update(segments=2, partitions=["p"], stored_bytes=2048, index_bytes=1024,
              raw_bytes=30_720, compression_ratio=10.0)
    line = next(x for x in stats_text(st).splitlines() if x.startswith("stored"))
    assert line.startswith("stored      2.0 KB + 1.0 KB of indexes for 30.0 KB as NDJSON"), line
