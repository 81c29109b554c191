"""FAISS index of template vectors keyed by template id (exact while small, HNSW past a size)."""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

import faiss
import numpy as np

from embeddings.model import DIM
from mohlog import log


class TemplateIndex:
    """Inner-product search over normalised vectors; ids are uint64 template ids."""

    def __init__(self, hnsw_threshold: int = 50_000, hnsw_m: int = 32, ef_search: int = 128
                 ) -> None:
        self.hnsw_threshold = hnsw_threshold
        self.hnsw_m, self.ef_search = hnsw_m, ef_search
        self._lock = threading.RLock()
        self.ids = np.zeros(0, np.uint64)
        self.vectors = np.zeros((0, DIM), np.float32)
        self._index: faiss.Index = self._flat()
        self.kind = "flat"

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, tid: int) -> bool:
        return tid in self._known

    def _flat(self) -> faiss.Index:
        self._known: dict[int, int] = {}    # template id -> row in self.vectors
        return faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, np.uint64)
        _, first = np.unique(ids, return_index=True)
        keep = np.zeros(len(ids), bool)
        keep[first] = True
        keep &= np.array([int(i) not in self._known for i in ids], bool)
        ids, vectors = ids[keep], np.ascontiguousarray(vectors[keep], np.float32)
        if not len(ids):
            return
        with self._lock:
            base = len(self.ids)
            self.ids = np.concatenate([self.ids, ids])
            self.vectors = np.concatenate([self.vectors, vectors])
            self._known.update((int(t), base + n) for n, t in enumerate(ids))
            if self.kind == "flat" and len(self.ids) >= self.hnsw_threshold:
                self._rebuild_hnsw()
            else:
                self._index.add_with_ids(vectors, ids.view(np.int64))

    def _rebuild_hnsw(self) -> None:
        hnsw = faiss.IndexHNSWFlat(DIM, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = self.ef_search
        hnsw.hnsw.efConstruction = 80
        idx = faiss.IndexIDMap2(hnsw)
        idx.add_with_ids(self.vectors, self.ids.view(np.int64))
        self._index, self.kind = idx, "hnsw"

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, template ids) of shape (len(vectors), k); missing slots have id 0."""
        with self._lock:
            if not len(self.ids):
                n = len(vectors)
                return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.uint64)
            scores, ids = self._index.search(np.ascontiguousarray(vectors, np.float32),
                                             min(k, len(self.ids)))
        # -1 marks an empty slot (ids >= 2**63 are negative as int64 and valid).
        ids = np.where(ids == -1, 0, ids).astype(np.int64).view(np.uint64)
        return scores, ids

    def vector(self, tid: int) -> np.ndarray | None:
        row = self._known.get(int(tid))
        return None if row is None else self.vectors[row]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            ids, vecs, idx = self.ids.copy(), self.vectors.copy(), self._index
            tmp = directory / "vectors.npz.tmp"
            with open(tmp, "wb") as f:
                np.savez(f, ids=ids, vectors=vecs)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, directory / "vectors.npz")
            faiss.write_index(idx, str(directory / "index.faiss.tmp"))
            os.replace(directory / "index.faiss.tmp", directory / "index.faiss")

    def load(self, directory: Path) -> bool:
        """The saved vectors and index; False (start empty: the templates are embedded
        again) when there are none or they are damaged. A damaged FAISS file alone is
        rebuilt from the vectors."""
        path = directory / "vectors.npz"
        if not path.exists():
            return False
        try:
            with np.load(path) as data:
                ids = data["ids"].astype(np.uint64)
                vecs = data["vectors"].astype(np.float32)
            if vecs.ndim != 2 or vecs.shape != (len(ids), DIM):
                raise ValueError(f"vectors of shape {vecs.shape} for {len(ids)} ids")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.embeddings.error("embedding vectors %s are damaged (%s): the templates "
                                 "are embedded again", path, err)
            return False
        with self._lock:
            self.ids = np.zeros(0, np.uint64)
            self.vectors = np.zeros((0, DIM), np.float32)
            self._index, self.kind = self._flat(), "flat"
            index_file = directory / "index.faiss"
            try:
                idx = faiss.read_index(str(index_file)) if index_file.exists() else None
            except RuntimeError as err:
                log.embeddings.error("FAISS index %s is damaged (%s): rebuilt from the "
                                     "vectors", index_file, err)
                idx = None
            if idx is not None and idx.ntotal == len(ids):
                self.ids, self.vectors = ids, vecs
                self._known = {int(t): n for n, t in enumerate(ids)}
                self._index = idx
                self.kind = "hnsw" if len(ids) >= self.hnsw_threshold else "flat"
                return True
            self.add(ids, vecs)
        return True
