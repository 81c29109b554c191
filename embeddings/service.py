"""The embedding service of a hub: new templates embedded in the background, searched
semantically (hybrid with exact words), and grouped into clusters.

Ranking: ``score = cosine(query, template) + LEXICAL_WEIGHT * matched`` where ``matched``
is the fraction of the query's words (3+ letters, not stop words) found in the template
text; candidates are FAISS's top ``max(4k, 50)`` plus templates holding every query word.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embeddings.index import TemplateIndex
from embeddings.model import Embedder, ModelUnavailable, ProcessEmbedder
from embeddings.semantic_clusters import Cluster, cluster
from mohlog import log

LEXICAL_WEIGHT = 0.3
_STOP = frozenset("the and for from with that this was were are has have not but".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]{2,}")


def words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP}


@dataclass
class Hit:
    template_id: int
    score: float
    semantic: float
    lexical: float


class EmbeddingService:
    """Owns the model, the index and the clusters of one hub (state under DATA/embeddings)."""

    def __init__(self, directory: Path, templates: Callable[[], dict[int, str]],
                 batch: int = 256, poll_s: float = 2.0, threads: int = 1,
                 in_process: bool = True, duty: float = 1.0,
                 busy: Callable[[], bool] | None = None,
                 heavy: Callable[[], bool] | None = None, defer_max_s: float = 600.0,
                 idle_load_s: float = 60.0) -> None:
        self.dir = directory
        self.templates = templates          # live template id -> text
        self.batch, self.poll_s = batch, poll_s
        # Share of the time spent embedding while templates wait and ``busy()`` says the
        # host has other work (1.0: back to back); idle, the backlog is embedded at once.
        self.duty = min(1.0, max(0.05, duty))
        self.busy = busy or (lambda: True)
        # Loading the model costs seconds of CPU (torch, the weights): while ``heavy()``
        # says ingest is pressing, the load waits, at most ``defer_max_s`` seconds or
        # until a semantic query asks for the model.
        self.heavy = heavy or (lambda: False)
        self.defer_max_s = defer_max_s
        self._wanted = threading.Event()
        self.deferred = False
        # in_process=False: the model runs in a niced child process (the hub's choice).
        self.embedder: Embedder | ProcessEmbedder = (
            Embedder(threads) if in_process else ProcessEmbedder(threads,
                                                                 idle_load_s=idle_load_s))
        self.index = TemplateIndex()
        self.index.load(directory)
        self._clusters: list[Cluster] = []
        self._clustered_n = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._words: dict[str, set[int]] = {}
        self._texts: dict[int, str] = {}
        self.embedded = 0

    @property
    def ready(self) -> bool:
        return self.embedder.ready

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="embeddings", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if not self.embedder.ready:
            self.embedder.close()       # a load under way is abandoned, not waited for
        if self._thread:
            self._thread.join(30)
        self.embedder.close()
        self.index.save(self.dir)

    def _defer_load(self) -> None:
        """Wait for a reason to load the model: templates exist (new ones to embed, or
        a restarted hub's) and ingest is not heavy, a semantic query, or ``defer_max_s``."""
        t0 = time.monotonic()
        while not self._stop.is_set() and not self._wanted.is_set() and \
                time.monotonic() - t0 < self.defer_max_s:
            if self.templates():
                if not self.heavy():
                    break
                if not self.deferred:
                    self.deferred = True
                    log.embeddings.info("model load deferred while ingest is heavy (at "
                                        "most %.0f s, or until a semantic query)",
                                        self.defer_max_s)
            self._wanted.wait(1.0)
        self.deferred = False

    def _run(self) -> None:
        self._defer_load()
        if self._stop.is_set():
            return
        try:
            self.embedder.load()
        except ModelUnavailable as err:
            if not self._stop.is_set():
                log.embeddings.error("semantic search off: %s", err)
            return
        while not self._stop.is_set():
            try:
                t0 = time.monotonic()
                if not self.catch_up():
                    self._stop.wait(self.poll_s)
                elif self.duty < 1.0 and self.busy():
                    # Back-fill at most ``duty`` of the time: new templates wait a little
                    # longer for semantic search, ingest keeps the cores.
                    spent = time.monotonic() - t0
                    self._stop.wait(spent * (1.0 / self.duty - 1.0))
            except Exception:  # noqa: BLE001 - keep the service alive and say why
                log.embeddings.exception("embedding pass failed; retrying")
                self._stop.wait(5)

    def catch_up(self) -> int:
        """Embed templates not yet indexed (one batch); returns how many were added."""
        texts = self.templates()
        self._refresh_words(texts)
        new = [tid for tid in texts if tid not in self.index][: self.batch]
        if not new:
            self._maybe_cluster()
            return 0
        vecs = self.embedder.embed([texts[t] for t in new],
                                   background=self.duty < 1.0 and self.busy())
        self.index.add(np.array(new, np.uint64), vecs)
        self.embedded += len(new)
        if self.embedded % (self.batch * 8) < len(new):
            self.index.save(self.dir)
        return len(new)

    def _refresh_words(self, texts: dict[int, str]) -> None:
        for tid, text in texts.items():
            if tid in self._texts:
                continue
            self._texts[tid] = text
            for w in words(text):
                self._words.setdefault(w, set()).add(tid)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        if not self.embedder.ready:
            self._wanted.set()          # (a deferred load starts now)
            self.embedder.hurry()       # (a load waiting for idle CPU goes on)
            raise ModelUnavailable("the embedding model is still loading; retry shortly",
                                   retry_after_s=5)
        qv = self.embedder.embed([query])
        scores, ids = self.index.search(qv, max(4 * k, 50))
        cand = {int(i): float(s) for i, s in zip(ids[0], scores[0], strict=True) if i}
        qwords = words(query)
        if qwords:
            both = set.intersection(*(self._words.get(w, set()) for w in qwords))
            for tid in list(both)[:500]:
                if tid not in cand:
                    v = self.index.vector(tid)
                    if v is not None:
                        cand[tid] = float(v @ qv[0])
        hits = []
        for tid, sem in cand.items():
            lex = (len(qwords & words(self._texts.get(tid, ""))) / len(qwords)) if qwords else 0
            hits.append(Hit(tid, sem + LEXICAL_WEIGHT * lex, sem, lex))
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    def _maybe_cluster(self) -> None:
        n = len(self.index)
        if n and (not self._clusters or n > self._clustered_n * 1.2):
            self.recluster()

    def recluster(self) -> list[Cluster]:
        t0 = time.perf_counter()
        self._clusters = cluster(self.index.ids, self.index.vectors, self._texts)
        self._clustered_n = len(self.index)
        log.embeddings.info("%d templates in %d clusters (%.2fs)", self._clustered_n,
                            len(self._clusters), time.perf_counter() - t0)
        return self._clusters

    def clusters(self) -> list[Cluster]:
        return self._clusters

    def status(self) -> dict[str, Any]:
        return {"model_ready": self.ready, "model_deferred": self.deferred,
                "indexed": len(self.index),
                "index_kind": self.index.kind, "clusters": len(self._clusters),
                "error": self.embedder.error}
