"""Online grouping of masked message shapes into templates (one global configuration).

A *shape* is a message whose masked values are replaced by ``MARK``; its tokens are the
pieces between single spaces (so runs of spaces give empty tokens and nothing is lost).
Shapes with the same number of tokens are compared position by position with the
templates already known; the best one above a similarity threshold takes the shape and
widens (differing positions become ``<*>``), otherwise the shape starts a new template.
"""

from __future__ import annotations

from dataclasses import dataclass

from embeddings.masking import MARK, PLACEHOLDER

WILD = PLACEHOLDER


@dataclass
class ClusterConfig:
    """Global clustering settings (the same for every kind of log)."""

    # fraction of a template's literal positions a shape must share to join it
    similarity: float = 0.5
    # a token counts as variable-like when it holds a masked value or a digit
    variable_digits: bool = True


@dataclass
class Cluster:
    """One live template: its tokens (``<*>`` where the template is wild)."""

    tokens: list[str]
    index: int = 0
    merged_into: Cluster | None = None  # set when another cluster reached the same text

    def live(self) -> Cluster:
        """The cluster that now holds this one's lines."""
        c = self
        while c.merged_into is not None:
            c = c.merged_into
        return c

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


def display_tokens(shape: str) -> list[str]:
    """Tokens of a shape as they appear in a template (MARK shown as ``<*>``)."""
    return shape.replace(MARK, WILD).split(" ")


def similarity(template: list[str], tokens: list[str]) -> float:
    """Share of the template's positions that the tokens match (a wild one always does)."""
    same = 0
    for t, s in zip(template, tokens, strict=True):
        if t == s or t == WILD:
            same += 1
    return same / len(template)


def widened(template: list[str], tokens: list[str]) -> list[str] | None:
    """The template generalised to also cover ``tokens``; None when it already does."""
    out = [t if (t == s or t == WILD) else WILD for t, s in zip(template, tokens, strict=True)]
    return None if out == template else out


class ClusterIndex:
    """Clusters grouped by token count; picks the best match for a new shape."""

    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        self.clusters: list[Cluster] = []
        self._by_len: dict[int, list[Cluster]] = {}

    def add(self, tokens: list[str]) -> Cluster:
        cluster = Cluster(tokens=tokens, index=len(self.clusters))
        self.clusters.append(cluster)
        self._by_len.setdefault(len(tokens), []).append(cluster)
        return cluster

    def merge(self, gone: Cluster, into: Cluster) -> None:
        """``gone`` reached the same text as ``into``: it stops matching new shapes."""
        gone.merged_into = into
        self._by_len[len(gone.tokens)].remove(gone)

    def best(self, tokens: list[str]) -> Cluster | None:
        """The most similar cluster of the same length above the threshold."""
        best: Cluster | None = None
        best_sim = self.cfg.similarity
        for cluster in self._by_len.get(len(tokens), ()):
            sim = similarity(cluster.tokens, tokens)
            if sim > best_sim or (best is None and sim >= best_sim):
                best, best_sim = cluster, sim
        return best
