"""Semantic search: quality on Loghub (P@10) and latency with 100,000 templates indexed.

    .venv/bin/python bench/semantic.py [--scale 100000] [--queries 300]

Quality, per Loghub system: the system's lines are mined by embeddings.miner.TemplateMiner;
its templates (after widening) are embedded and indexed. For every ground-truth template
(EventTemplate of the structured CSV) its text is the query; the template scores the
fraction of its lines whose mined template is among the top 10 results. P@10 of a system is
the mean over its templates. Two rankers in the same run:
  * baseline: plain MiniLM on the raw template text, exact flat index, cosine only;
  * mohlog:   EmbeddingService.search (text prepared: <*> dropped, camel/snake split;
              hybrid score = cosine + 0.3 x fraction of query words found in the template).

Scale: real MiniLM vectors of every mined Loghub template (a few hundred to a thousand)
are the seeds; 100,000 vectors are seed + Gaussian noise (sigma 0.02 per dimension,
renormalised: cosine to the seed ~0.93) — i.e. perturbed copies of real vectors, with the
seed template's text plus a copy number as their text for the lexical index. They are
cached in /var/tmp/mohlog-bench/. The timed call is the full EmbeddingService.search
(query embedding by the real model with 1 torch thread + HNSW search + hybrid rerank).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from embeddings.index import TemplateIndex  # noqa: E402
from embeddings.miner import TemplateMiner  # noqa: E402
from embeddings.model import Embedder  # noqa: E402
from embeddings.service import EmbeddingService  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from hub_common import save  # noqa: E402

LOGHUB = Path("/work/shared/data/loghub")
CACHE = Path("/var/tmp/mohlog-bench")


def read_system(d: Path) -> tuple[list[str], list[str]]:
    f = next(d.glob("*_structured.csv"))
    with open(f, newline="", encoding="utf-8", errors="replace") as fh:
        rows = list(csv.DictReader(fh))
    return [r["Content"] for r in rows], [r["EventTemplate"] for r in rows]


def mine(lines: list[str]) -> tuple[np.ndarray, dict[int, str]]:
    m = TemplateMiner(None)
    tids = m.resolve_many(m.mine(lines).template_ids)
    texts = {int(t): m.templates()[int(t)].text for t in np.unique(tids)}
    return tids.astype(np.uint64), texts


def p_at_10(truth: list[str], line_tids: np.ndarray, top: dict[str, set[int]]) -> float:
    scores = []
    for gt in sorted(set(truth)):
        rows = [i for i, t in enumerate(truth) if t == gt]
        got = top[gt]
        scores.append(sum(int(line_tids[i]) in got for i in rows) / len(rows))
    return statistics.fmean(scores)


def rank(emb: Embedder, texts: dict[int, str], queries: list[str]
         ) -> tuple[dict[str, set[int]], dict[str, set[int]], np.ndarray]:
    """Top-10 template ids per query: (baseline, mohlog, mohlog's vectors)."""
    ids = np.array(list(texts), np.uint64)
    flat = TemplateIndex(hnsw_threshold=10**9)  # baseline: raw text, flat, cosine only
    flat.add(ids, raw_embed(emb, list(texts.values())))
    _, got = flat.search(raw_embed(emb, queries), 10)
    base = {q: {int(i) for i in got[n]} for n, q in enumerate(queries)}
    with tempfile.TemporaryDirectory() as tmp:
        svc = EmbeddingService(Path(tmp), lambda: texts, batch=10**6)
        svc.embedder = emb
        svc.catch_up()
        ours = {q: {h.template_id for h in svc.search(q, 10)} for q in queries}
        order = np.array([list(texts).index(int(t)) for t in svc.index.ids])
        return base, ours, svc.index.vectors[np.argsort(order)]


def quality(emb: Embedder) -> tuple[dict, np.ndarray, list[str]]:
    out: dict[str, dict] = {}
    systems = []
    pooled: dict[int, str] = {}
    for d in sorted(p for p in LOGHUB.iterdir() if p.is_dir()):
        lines, truth = read_system(d)
        tids, texts = mine(lines)
        queries = sorted(set(truth))
        base, ours, _ = rank(emb, texts, queries)
        systems.append((d.name, truth, tids, queries))
        pooled.update(texts)
        out[d.name] = {"templates_true": len(queries), "templates_mined": len(texts),
                       "baseline": p_at_10(truth, tids, base), "mohlog": p_at_10(truth, tids, ours)}
    all_q = sorted({q for s in systems for q in s[3]})
    pbase, pours, vecs = rank(emb, pooled, all_q)
    for name, truth, tids, _ in systems:
        r = out[name]
        r["pooled_baseline"] = p_at_10(truth, tids, pbase)
        r["pooled_mohlog"] = p_at_10(truth, tids, pours)
        print(f"  {name:10s} true {r['templates_true']:4d} mined {r['templates_mined']:4d}  "
              f"own index: baseline {r['baseline']:.3f} mohlog {r['mohlog']:.3f}   "
              f"pooled index: baseline {r['pooled_baseline']:.3f} "
              f"mohlog {r['pooled_mohlog']:.3f}", flush=True)
    return out, vecs, list(pooled.values())


def raw_embed(emb: Embedder, texts: list[str]) -> np.ndarray:
    emb.load()
    with emb._lock:  # plain MiniLM: no text preparation
        v = emb._model.encode(texts, batch_size=64, normalize_embeddings=True,  # type: ignore[union-attr]
                              convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(v, np.float32)


def scale_vectors(seeds: np.ndarray, texts: list[str], n: int) -> tuple[np.ndarray, list[str]]:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"semantic-{n}-{len(seeds)}.npy"
    pick = np.arange(n) % len(seeds)
    if path.exists():
        vecs = np.load(path)
    else:
        rng = np.random.default_rng(42)
        vecs = seeds[pick] + rng.normal(0, 0.02, (n, seeds.shape[1])).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        np.save(path, vecs.astype(np.float32))
    return vecs.astype(np.float32), [f"{texts[p]} copy{i}" for i, p in enumerate(pick)]


def latency(emb: Embedder, vecs: np.ndarray, texts: list[str], queries: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        svc = EmbeddingService(Path(tmp), dict)
        svc.embedder = emb
        ids = np.arange(1, len(vecs) + 1, dtype=np.uint64) * np.uint64(2654435761)
        t0 = time.perf_counter()
        svc.index.add(ids, vecs)
        build = time.perf_counter() - t0
        svc._refresh_words({int(t): s for t, s in zip(ids, texts, strict=True)})
        svc.search(queries[0], 10)
        times = []
        for q in queries:
            t = time.perf_counter()
            svc.search(q, 10)
            times.append((time.perf_counter() - t) * 1000)
        emb_times = []
        for q in queries[:100]:
            t = time.perf_counter()
            emb.embed([q])
            emb_times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"n": len(vecs), "kind": svc.index.kind, "build_s": build,
            "p50_ms": times[len(times) // 2], "p95_ms": times[int(len(times) * 0.95)],
            "embed_p50_ms": statistics.median(emb_times)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scale", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=300)
    args = p.parse_args()
    emb = Embedder(threads=1)
    t0 = time.perf_counter()
    emb.load()
    print(f"model loaded in {time.perf_counter() - t0:.1f}s; quality (P@10 per system):")
    q, seeds, seed_texts = quality(emb)
    avg = {k: statistics.fmean(r[k] for r in q.values())
           for k in ("baseline", "mohlog", "pooled_baseline", "pooled_mohlog")}
    print(f"  {'average':10s} own index: baseline {avg['baseline']:.3f} mohlog "
          f"{avg['mohlog']:.3f}   pooled index: baseline {avg['pooled_baseline']:.3f} "
          f"mohlog {avg['pooled_mohlog']:.3f}   (bar >= 0.97)")
    vecs, texts = scale_vectors(seeds, seed_texts, args.scale)
    rng = np.random.default_rng(1)
    queries = [seed_texts[i] for i in rng.integers(0, len(seed_texts), args.queries)]
    lat = latency(emb, vecs, texts, queries)
    print(f"scale: {lat['n']:,} templates ({len(seed_texts)} real MiniLM seeds + perturbed "
          f"copies), index {lat['kind']} built in {lat['build_s']:.1f}s; full semantic search "
          f"p50 {lat['p50_ms']:.1f} ms p95 {lat['p95_ms']:.1f} ms (bar p95 < 50 ms); "
          f"of which query embedding p50 {lat['embed_p50_ms']:.1f} ms")
    print(f"saved {save('semantic', {'quality': q, 'average': avg, 'scale': lat})}")


if __name__ == "__main__":
    main()
