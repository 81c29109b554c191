"""The real MiniLM model (offline), the FAISS template index and the semantic clusters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

from embeddings.index import TemplateIndex  # noqa: E402
from embeddings.model import DIM, Embedder, prepare  # noqa: E402
from embeddings.semantic_clusters import cluster  # noqa: E402
from embeddings.service import EmbeddingService  # noqa: E402

pytestmark = pytest.mark.embeddings

TEMPLATES = {
    1: "Connection refused to <*> port <*>",
    2: "Failed password for <*> from <*> port <*> ssh2",
    3: "Out of memory: Killed process <*> (<*>)",
    4: "Disk quota exceeded on volume <*>",
    5: "Received block blk_<*> of size <*> from <*>",
    6: "User <*> logged in successfully",
}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    e = Embedder()
    e.load()
    return e


def test_prepare_drops_placeholders_and_splits_words() -> None:
    assert prepare("addStoredBlock: blockMap <*> updated_at=<*>") == \
        "add Stored Block block Map updated at"


def test_model_embeds_normalised_vectors(embedder: Embedder) -> None:
    v = embedder.embed(["kernel panic", "kernel panic", "user logged in"])
    assert v.shape == (3, DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert v[0] @ v[1] > 0.99 > v[0] @ v[2]


def test_paraphrased_query_finds_expected_template(embedder: Embedder) -> None:
    idx = TemplateIndex()
    ids = np.array(list(TEMPLATES), np.uint64)
    idx.add(ids, embedder.embed(list(TEMPLATES.values())))
    for query, want in [("the remote host rejected the connection", 1),
                        ("wrong ssh password login attempt", 2),
                        ("process killed because the machine ran out of RAM", 3),
                        ("storage space limit reached", 4)]:
        _, got = idx.search(embedder.embed([query]), 1)
        assert int(got[0][0]) == want, query


def test_index_persists_and_reloads(tmp_path: Path, embedder: Embedder) -> None:
    idx = TemplateIndex()
    vecs = embedder.embed(list(TEMPLATES.values()))
    idx.add(np.array(list(TEMPLATES), np.uint64), vecs)
    idx.save(tmp_path)
    again = TemplateIndex()
    assert again.load(tmp_path) and len(again) == len(TEMPLATES)
    s1, i1 = idx.search(vecs[:2], 3)
    s2, i2 = again.search(vecs[:2], 3)
    assert (i1 == i2).all() and np.allclose(s1, s2)
    again.add(np.array([2], np.uint64), vecs[1:2])  # known id: not added twice
    assert len(again) == len(TEMPLATES)


def test_a_damaged_index_is_rebuilt_and_damaged_vectors_start_empty(
        tmp_path: Path) -> None:
    """A torn FAISS file: the index is rebuilt from the saved vectors (same answers);
    torn vectors: the index starts empty (the service embeds the templates again)."""
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(50, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    idx = TemplateIndex()
    idx.add(np.arange(1, 51, dtype=np.uint64), vecs)
    idx.save(tmp_path)
    want = idx.search(vecs[:3], 5)
    faiss_file = tmp_path / "index.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    again = TemplateIndex()
    assert again.load(tmp_path) and len(again) == 50
    got = again.search(vecs[:3], 5)
    assert (got[1] == want[1]).all() and np.allclose(got[0], want[0], atol=1e-5)
    npz = tmp_path / "vectors.npz"
    npz.write_bytes(npz.read_bytes()[:200])
    empty = TemplateIndex()
    assert not empty.load(tmp_path) and len(empty) == 0


def test_large_ids_and_switch_to_hnsw_keep_results() -> None:
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(600, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(600, dtype=np.uint64) + np.uint64(2**63 + 5)
    flat = TemplateIndex(hnsw_threshold=10**9)
    hnsw = TemplateIndex(hnsw_threshold=500)
    flat.add(ids[:400], vecs[:400])
    hnsw.add(ids[:400], vecs[:400])
    assert hnsw.kind == "flat"
    flat.add(ids[400:], vecs[400:])
    hnsw.add(ids[400:], vecs[400:])
    assert hnsw.kind == "hnsw"
    _, a = flat.search(vecs[:50], 1)
    _, b = hnsw.search(vecs[:50], 1)
    assert (a[:, 0] == ids[:50]).all()
    assert (b[:, 0] == ids[:50]).mean() >= 0.98


def test_clusters_group_similar_templates(embedder: Embedder) -> None:
    texts = {10: "Connection refused by <*>", 11: "connection reset by peer <*>",
             12: "Connection timed out to <*>", 20: "Out of memory: kill process <*>",
             21: "memory allocation failed: out of memory", 22: "OOM killer invoked for <*>"}
    ids = np.array(list(texts), np.uint64)
    cl = cluster(ids, embedder.embed(list(texts.values())), texts, k=2)
    groups = sorted(sorted(c.template_ids) for c in cl)
    assert groups == [[10, 11, 12], [20, 21, 22]]


def test_service_embeds_new_templates_and_ranks_hybrid(tmp_path: Path,
                                                       embedder: Embedder) -> None:
    live = dict(TEMPLATES)
    svc = EmbeddingService(tmp_path, lambda: live)
    svc.embedder = embedder
    assert svc.catch_up() == len(TEMPLATES)
    live[7] = "Connection refused by firewall rule <*>"
    assert svc.catch_up() == 1 and svc.catch_up() == 0
    hits = svc.search("firewall refused the connection", 3)
    assert hits[0].template_id == 7 and hits[0].lexical > 0
    svc.stop()
    assert (tmp_path / "index.faiss").exists()


def _until(cond, timeout: float = 120.0) -> float:  # noqa: ANN001 - a small poller
    import time
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_model_load_waits_while_ingest_is_heavy_until_a_query_asks(tmp_path: Path) -> None:
    import time

    from embeddings.model import ModelUnavailable
    svc = EmbeddingService(tmp_path, lambda: dict(TEMPLATES), heavy=lambda: True,
                           poll_s=0.2)
    svc.start()
    try:
        time.sleep(1.5)
        assert svc.status()["model_deferred"] and not svc.ready
        assert svc.embedder._model is None             # type: ignore[union-attr]
        with pytest.raises(ModelUnavailable):
            svc.search("disk quota exceeded")           # asks for the model
        _until(lambda: svc.ready and len(svc.index) == len(TEMPLATES))
        assert not svc.status()["model_deferred"]
        assert svc.search("disk quota exceeded on a volume", 1)[0].template_id == 4
    finally:
        svc.stop()


@pytest.mark.parametrize("ends", [True, False])
def test_deferred_model_load_starts_when_the_burst_ends_or_at_the_latest(
        tmp_path: Path, ends: bool) -> None:
    import time
    t0 = time.monotonic()
    svc = EmbeddingService(tmp_path, lambda: dict(TEMPLATES), poll_s=0.2,
                           heavy=lambda: not ends or time.monotonic() - t0 < 2.0,
                           defer_max_s=600 if ends else 3.0)
    svc.start()
    try:
        _until(lambda: svc.ready)
        assert time.monotonic() - t0 >= 2.0
    finally:
        svc.stop()
