"""Batch learning path of the miner: vectorised tokenising and key hashing agree with the
per-line Python path, and hash collisions never change what is learnt."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from embeddings import clusters
from embeddings.clusters import key_hash, key_hashes, prepare_keys, split_tokens, tokenize
from embeddings.masking import MARK
from embeddings.miner import TemplateMiner

WORDS = ["a", "foo", "bar", "(1)", "x=2", "id:3", "<*>", "", "é", "(", ")", "user",
         "start", "stop", "blk_12", "0x1f", "10.0.0.1", "k=v", "[5]", "done.", MARK]


def _lines(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rnd.choice(WORDS) for _ in range(rnd.randint(0, 9))]
        seps = [rnd.choice([" ", " ", " ", "  ", "   "]) for _ in parts]
        line = "".join(p + s for p, s in zip(parts, seps, strict=True))
        out.append(line if rnd.random() < 0.5 else line.rstrip(" "))
    return out


def _messages(n: int, seed: int) -> list[str]:
    return [m.replace(MARK, "") for m in _lines(n, seed)]


@pytest.mark.parametrize("seed", range(4))
def test_split_tokens_matches_tokenize(seed: int) -> None:
    shapes = _lines(500, seed) + ["", " ", "  ", "a ", " a", "a  b  ", "   x"]
    tokens, offsets = split_tokens(pa.array(shapes, pa.string()))
    flat = tokens.to_pylist()
    got = [flat[offsets[k] : offsets[k + 1]] for k in range(len(shapes))]
    assert got == [tokenize(s) for s in shapes]


def test_prepared_hashes_match_python() -> None:
    shapes = _lines(300, 7)
    prep = prepare_keys(pa.array(shapes, pa.string()))
    for k, shape in enumerate(shapes):
        key = tuple(t.replace(MARK, clusters.WILD) for t in tokenize(shape))
        a, b = prep.offsets[k], prep.offsets[k + 1]
        assert tuple(prep.display[a:b]) == key
        h, sibs = key_hashes(key)
        assert prep.hashes[k] == h == key_hash(key)
        assert prep.sibs[a:b].tolist() == sibs
        for i in range(len(key)):
            assert sibs[i] == key_hash((*key[:i], clusters.WILD, *key[i + 1 :]))
        assert prep.marks[k] == shape.count(MARK)


def _run(messages: list[str], batch: int) -> tuple[list[int], list[list[str]], dict]:
    """(ids, parameters, state) of mining ``messages`` in batches of ``batch`` lines."""
    miner = TemplateMiner(None)
    ids: list[int] = []
    params: list[list[str]] = []
    for i in range(0, len(messages), batch):
        mined = miner.mine_arrow(pa.array(messages[i : i + batch], pa.string()))
        ids += mined.template_ids.tolist()
        params += mined.params.to_pylist()
    return ids, params, miner._state()


def _corpus() -> list[str]:
    rnd = random.Random(3)
    verbs = ["started", "stopped", "failed", "retried", "opened", "closed"]
    users = [f"user{c}" for c in "abcdefgh"] + ["root", "admin", "guest", "nobody"]
    lines = [
        f"session {rnd.choice(verbs)} for {rnd.choice(users)} from 10.0.0.{rnd.randrange(9)}"
        f" after {rnd.randrange(900)} ms ({rnd.choice(['ok', 'retry', '', 'n=3'])})"
        for _ in range(3000)
    ]
    return lines + _messages(3000, 5)


def _learnt(state: dict) -> tuple[list, list]:
    """The templates (without line counts) and clusters of a state."""
    return [t[:2] + t[3:] for t in state["templates"]], state["clusters"]


def test_batches_learn_what_lines_learn() -> None:
    """A batch decides each distinct shape once, at its first line, so its ids may be
    narrower than one line at a time; what is learnt and where ids resolve are the same."""
    messages = _corpus()
    one_by_one = TemplateMiner(None)
    ids = [int(one_by_one.mine([m]).template_ids[0]) for m in messages]
    final = [one_by_one.resolve(t) for t in ids]
    for batch in (100, 4096, len(messages)):
        got_ids, got_params, state = _run(messages, batch)
        assert [one_by_one.resolve(t) for t in got_ids] == final
        assert _learnt(state) == _learnt(one_by_one._state())
        assert [one_by_one.render(t, p) for t, p in zip(got_ids, got_params, strict=True)] == (
            messages
        )


def _word_lines(n: int, seed: int) -> list[str]:
    """Lines of random words: mostly new templates, some siblings of earlier ones (by
    chance, or an earlier line with one word changed)."""
    rnd = random.Random(seed)
    vocab = ["".join(rnd.choice("abcdefgh") for _ in range(rnd.randint(2, 4))) for _ in range(200)]
    values = vocab + ["(1)", "[7]", "x=3", "0x1f", "12", "a.b"]
    lines: list[str] = []
    for _ in range(n):
        if lines and rnd.random() < 0.02:
            words = rnd.choice(lines).split(" ")
            words[rnd.randrange(len(words))] = rnd.choice(values)
        else:
            words = [rnd.choice(vocab) for _ in range(rnd.randint(1, 7))]
        lines.append(" ".join(words))
    return lines


@pytest.mark.parametrize("batch", [700, 8000])
def test_new_templates_in_bulk_learn_what_lines_learn(batch: int) -> None:
    """Batches with many new templates enter them in the sibling table at once."""
    messages = _word_lines(8000, 11)
    one_by_one = TemplateMiner(None)
    ids = [int(one_by_one.mine([m]).template_ids[0]) for m in messages]
    got_ids, got_params, state = _run(messages, batch)
    assert [one_by_one.resolve(t) for t in got_ids] == [one_by_one.resolve(t) for t in ids]
    assert _learnt(state) == _learnt(one_by_one._state())
    assert [one_by_one.render(t, p) for t, p in zip(got_ids, got_params, strict=True)] == (
        messages
    )


@pytest.mark.parametrize("buckets", [1, 3])
def test_hash_collisions_change_nothing(monkeypatch: pytest.MonkeyPatch, buckets: int) -> None:
    messages = _corpus()
    expected = _run(messages, 500)
    real = clusters._tv
    monkeypatch.setattr(clusters, "_tv", lambda t: real(t) % buckets)
    assert _run(messages, 500) == expected


def test_parameters_gathered_in_c_equal_the_arrow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """_output copies the parameters out of the lines in C when a compiler is there; the
    Arrow takes it replaces give the same ids and parameters."""
    from embeddings import miner as miner_mod
    assert miner_mod._native() is not None            # a compiler is part of the set-up
    messages = _corpus() + _word_lines(3000, 2) + [
        "été 12 à 0x1F fin", "日本 7 語", "", "  ", "x=1 y=\u212a2", "blk_-123 ok"] * 50
    rnd = random.Random(9)
    rnd.shuffle(messages)
    native = _run(messages, 2048)
    monkeypatch.setattr(miner_mod, "_native", lambda: None)
    arrow = _run(messages, 2048)
    assert native[0] == arrow[0] and native[1] == arrow[1]
    assert sum(len(p) for p in native[1]) > len(messages)  # parameters were gathered
