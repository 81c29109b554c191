"""Online grouping of masked message shapes into templates (one global configuration).

A *shape* is a message whose masked values are replaced by ``MARK``; its tokens are the
pieces between spaces, extra spaces leading the next token (see :func:`tokenize`), so
joining them with one space gives the shape back exactly.

Grouping, all by hashing (no scan over the known templates):

1. **Key.** A shape's key is its tokens with the masked values shown as ``<*>``; shapes
   with the same key share a template. A *value-like* token (a masked value with no
   letters around it: ``" <*>"``, ``"(<*>)"``) also matches a plain ``<*>`` there.
2. **Sibling merge.** Templates of the same length that differ at one single position
   are siblings. When a value there is value-like they merge at once ("()" next to
   "(<*>)"). Otherwise they are words: constant words take few values at a position
   ("startup" / "shutdown"), variables (user names) many, so plain words merge once
   ``merge_values`` siblings exist and the merged template keeps ``min_literals``
   literal tokens. Later shapes are looked up with the merged positions wild too.

Widening and merging are reported to the miner as (old text, cluster) events so that
old ids stay renderable and point to the new template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from embeddings.masking import MARK, PLACEHOLDER

WILD = PLACEHOLDER


@dataclass
class ClusterConfig:
    """Global clustering settings (the same for every kind of log)."""

    # distinct words at one position (other tokens equal) that make it a variable
    merge_values: int = 4
    # literal tokens a template must keep for a merge of plain words to happen
    min_literals: int = 3


@dataclass(slots=True)
class Cluster:
    """One template: its display tokens (``<*>`` where wild) and its lookup key."""

    tokens: list[str]
    key: tuple[str, ...]
    index: int = 0
    tid: int = 0  # id of the current text (kept by the miner)
    merged_into: Cluster | None = None  # set when this template merged into another
    groups: list[_Siblings] = field(default_factory=list)  # sibling groups it belongs to

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def live(self) -> Cluster:
        """The cluster that now holds this one's lines."""
        c = self
        while c.merged_into is not None:
            c = c.merged_into
        return c


_SPLIT = re.compile(r"(?<=[^ ]) ")


def tokenize(shape: str) -> list[str]:
    """Tokens of a shape: split at single spaces that follow a non-space, so extra spaces
    lead the next token (``"a  b"`` -> ``["a", " b"]``); ``" ".join`` gives it back."""
    return _SPLIT.split(shape)


def variable_like(token: str) -> bool:
    """A token that is mostly a value: it holds a masked value and no letters besides."""
    if WILD not in token:
        return False
    rest = token.replace(WILD, "")
    return not any(c.isalpha() for c in rest)


def widened(template: list[str], tokens: list[str]) -> list[str] | None:
    """The template generalised to also cover ``tokens``; None when it already does."""
    out = [t if (t == s or t == WILD) else WILD for t, s in zip(template, tokens, strict=True)]
    return None if out == template else out


def _with_wild(key: tuple[str, ...], positions: frozenset[int]) -> tuple[str, ...]:
    return tuple(WILD if i in positions else t for i, t in enumerate(key))


class _Siblings:
    """Clusters that differ only at one position (their shared key has it wild)."""

    __slots__ = ("key", "literals", "members", "varlike")

    def __init__(self, key: tuple[str, ...], literals: int) -> None:
        self.key = key  # the shared key
        self.literals = literals  # literal tokens of the shared key
        self.members: list[Cluster] = []
        self.varlike = False  # some member's value there is variable-like


@dataclass
class ClusterIndex:
    """Clusters by key; see the module docstring."""

    cfg: ClusterConfig
    clusters: list[Cluster] = field(default_factory=list)
    # key -> live cluster
    _by_key: dict[tuple[str, ...], Cluster] = field(default_factory=dict)
    # length -> sets of merged wild positions, most specific first
    _wildsets: dict[int, list[frozenset[int]]] = field(default_factory=dict)
    # sibling key (one more position wild) -> clusters differing only there
    _siblings: dict[tuple[str, ...], _Siblings | Cluster] = field(default_factory=dict)
    # (old text, cluster) for every widening/merge since the miner last drained them
    events: list[tuple[str, Cluster]] = field(default_factory=list)

    def assign(self, shape_tokens: list[str]) -> Cluster:
        """The cluster for a shape, creating, widening or merging as needed."""
        display = [t.replace(MARK, WILD) for t in shape_tokens]
        key = tuple(display)
        cluster = self._find(key)
        if cluster is None:
            cluster = self._new(display, key)
            self._absorb_narrower(cluster)
            return self._maybe_merge(cluster.live()).live()
        wider = widened(cluster.tokens, display)
        if wider is not None:
            self.events.append((cluster.text, cluster))
            cluster.tokens = wider
        return cluster

    def _find(self, key: tuple[str, ...]) -> Cluster | None:
        found = self._by_key.get(key)
        if found is not None:
            return found
        for wild in self._wildsets.get(len(key), ()):
            found = self._by_key.get(_with_wild(key, wild))
            if found is not None:
                return found
        # a value-like token (" <*>", "(<*>)") where a known template has a plain <*>
        for i, t in enumerate(key):
            if t != WILD and variable_like(t):
                found = self._by_key.get((*key[:i], WILD, *key[i + 1 :]))
                if found is not None:
                    return found
        return None

    def _absorb_narrower(self, cluster: Cluster) -> None:
        """Merge into a new cluster the ones that differ from it only by having a
        value-like token where it has a plain ``<*>``."""
        group = self._siblings.get(cluster.key)
        members = [group] if isinstance(group, Cluster) else group.members if group else []
        narrower = [
            m for m in members
            if m.merged_into is None and m is not cluster and any(
                a != b and b == WILD and variable_like(a)
                for a, b in zip(m.key, cluster.key, strict=True)
            )
        ]
        if narrower:
            self._merge(narrower, cluster.key)

    def _new(self, tokens: list[str], key: tuple[str, ...]) -> Cluster:
        cluster = Cluster(tokens=tokens, key=key, index=len(self.clusters))
        self.clusters.append(cluster)
        self._by_key[key] = cluster
        literals = len(key) - key.count(WILD) - 1
        siblings = self._siblings
        for i, t in enumerate(key):
            if t == WILD:
                continue
            sib = (*key[:i], WILD, *key[i + 1 :])
            group = siblings.get(sib)
            if group is None:  # a lone cluster is stored as itself (fewer objects)
                siblings[sib] = cluster
                continue
            if isinstance(group, Cluster):
                first = group
                group = siblings[sib] = _Siblings(sib, literals)
                group.members.append(first)
                group.varlike = variable_like(first.key[i])
            group.members.append(cluster)
            if not group.varlike and variable_like(t):
                group.varlike = True
            cluster.groups.append(group)
        return cluster

    def _maybe_merge(self, cluster: Cluster) -> Cluster:
        """Merge ``cluster`` with its siblings at a position that has enough values."""
        for group in cluster.groups:
            if not self._may_merge(group):
                continue
            live = [c for c in group.members if c.merged_into is None]
            group.members = live
            if len(live) >= 2 and self._may_merge(group):
                return self._merge(live, group.key)
        return cluster

    def _may_merge(self, group: _Siblings) -> bool:
        """Enough distinct values (counting members that may have merged elsewhere)."""
        n = len(group.members)
        if group.varlike:
            return n >= 2
        return n >= self.cfg.merge_values and group.literals >= self.cfg.min_literals

    def _merge(self, members: list[Cluster], key: tuple[str, ...]) -> Cluster:
        """Merge ``members`` into the cluster of ``key`` (made when there is none)."""
        into = self._by_key.get(key)
        tokens = list(into.tokens if into is not None else members[0].tokens)
        for m in members:
            tokens = widened(tokens, m.tokens) or tokens
        if into is None:
            into = self._new(tokens, key)
        elif tokens != into.tokens:
            self.events.append((into.text, into))
            into.tokens = tokens
        for m in members:
            m.merged_into = into
            self._by_key.pop(m.key, None)
            self.events.append((m.text, into))
        self._add_wildset(key)
        return self._maybe_merge(into)

    def _add_wildset(self, key: tuple[str, ...]) -> None:
        wild = frozenset(i for i, t in enumerate(key) if t == WILD)
        sets = self._wildsets.setdefault(len(key), [])
        if wild not in sets:
            sets.append(wild)
            sets.sort(key=len)

    def restore(self, saved: list[tuple[list[str], list[str], int | None]]) -> None:
        """Re-add saved clusters: (tokens, key, index merged into or None), in order."""
        for tokens, key, _ in saved:
            self._new(list(tokens), tuple(key))
        targets = set()
        for cluster, (_, _, into) in zip(self.clusters, saved, strict=True):
            if into is not None:
                cluster.merged_into = self.clusters[into]
                targets.add(into)
        self._by_key = {c.key: c for c in self.clusters if c.merged_into is None}
        for i in sorted(targets):
            self._add_wildset(self.clusters[i].key)
