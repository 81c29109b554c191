"""Semantic clusters of templates: FAISS k-means over the template vectors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass
class Cluster:
    id: int
    name: str              # text of the template nearest the centroid
    template_ids: list[int]

    def to_dict(self, limit: int = 50) -> dict:
        return {"id": self.id, "name": self.name, "size": len(self.template_ids),
                "template_ids": self.template_ids[:limit]}


def cluster(ids: np.ndarray, vectors: np.ndarray, texts: dict[int, str],
            k: int | None = None, seed: int = 1234) -> list[Cluster]:
    """k ~ sqrt(n/2) clusters (at least 1); deterministic for a given input and seed."""
    n = len(ids)
    if n == 0:
        return []
    k = k or max(1, min(n, round(math.sqrt(n / 2))))
    vecs = np.ascontiguousarray(vectors, np.float32)
    if k == 1:
        labels = np.zeros(n, np.int64)
        centroids = vecs.mean(axis=0, keepdims=True)
    else:
        km = faiss.Kmeans(vecs.shape[1], k, niter=20, seed=seed, spherical=True,
                          min_points_per_centroid=1, max_points_per_centroid=10_000)
        km.train(vecs)
        _, labels = km.index.search(vecs, 1)
        labels, centroids = labels[:, 0], km.centroids
    out = []
    for c in range(k):
        members = np.nonzero(labels == c)[0]
        if not len(members):
            continue
        best = members[np.argmax(vecs[members] @ centroids[c])]
        order = members[np.argsort(-(vecs[members] @ centroids[c]))]
        out.append(Cluster(c, texts.get(int(ids[best]), ""), [int(ids[i]) for i in order]))
    out.sort(key=lambda cl: -len(cl.template_ids))
    for i, cl in enumerate(out):
        cl.id = i
    return out
