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

Sibling keys are looked up by a 64-bit hash of the key (linear in per-token hashes, so
the key with any one position made wild is one multiply-add away, and
:func:`prepare_keys` computes them for a whole batch of new shapes with numpy); a hit is
checked against the real key, and the rare colliding key is kept in an exact table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

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


def display_key(shape_tokens: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """A shape's tokens as displayed in templates (MARK → WILD) and as a cluster key."""
    display = [t.replace(MARK, WILD) for t in shape_tokens]
    return display, tuple(display)


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


# ------------------------------------------------------------------ key hashing
# H(key) = sum(tv(key[j]) * P**(j + 1)) + len(key) * Q  (mod 2**64), tv = xxh64 of the
# token. Making position i wild adds (tv(WILD) - tv(key[i])) * P**(i + 1).
_M64 = (1 << 64) - 1
_P = 0x9E3779B97F4A7C15
_Q = 0xC2B2AE3D27D4EB4F
_POW: list[int] = [1]
_TV: dict[str, int] = {}
_TV_MAX = 1 << 20  # token hash cache entries (values are recomputable: cleared when full)


def _pow(n: int) -> list[int]:
    """P**0 .. P**n (mod 2**64), cached."""
    while len(_POW) <= n:
        _POW.append(_POW[-1] * _P & _M64)
    return _POW


def _tv(token: str) -> int:
    v = _TV.get(token)
    if v is None:
        if len(_TV) >= _TV_MAX:
            _TV.clear()
        v = _TV[token] = xxhash.xxh64_intdigest(token.encode("utf-8", "surrogatepass"))
    return v


def key_hash(key: tuple[str, ...]) -> int:
    """64-bit hash of a key (or sibling key)."""
    pw = _pow(len(key))
    h = len(key) * _Q
    for j, t in enumerate(key):
        h += _tv(t) * pw[j + 1]
    return h & _M64


def key_hashes(key: tuple[str, ...]) -> tuple[int, list[int]]:
    """The key's hash and, for each position, the hash of the key with it made wild."""
    pw = _pow(len(key))
    tvs = [_tv(t) for t in key]
    h = len(key) * _Q
    for j, v in enumerate(tvs):
        h += v * pw[j + 1]
    h &= _M64
    w = _tv(WILD)
    return h, [(h + (w - v) * pw[j + 1]) & _M64 for j, v in enumerate(tvs)]


# a key's hash, its sibling hashes by position and (when known) the sibling hashes of
# its positions that are not wild
KeyHashes = tuple[int, list[int], list[int] | None]


@dataclass(slots=True)
class PreparedKeys:
    """Keys of a batch of new shapes, computed vectorised (see :func:`prepare_keys`)."""

    display: list[str]  # every shape's display tokens, flat (equal tokens are one object)
    offsets: list[int]  # shape k's tokens are display[offsets[k]:offsets[k + 1]]
    hashes: list[int]  # key hash of each shape
    sibs: np.ndarray  # flat uint64, per token: hash of its shape's key with it wild
    varlike: dict[int, list[int]]  # shape -> positions of its variable-like tokens
    marks: list[int]  # masked values (MARKs) in each shape
    lone: list[int]  # flat: the sibling hashes of the tokens that are not wild
    lone_offsets: list[int]  # shape k's are lone[lone_offsets[k]:lone_offsets[k + 1]]

    def hashes_of(self, k: int) -> KeyHashes:
        """Shape k's key hashes, as ``ClusterIndex.assign_key`` takes them."""
        sibs = self.sibs[self.offsets[k] : self.offsets[k + 1]].tolist()
        return self.hashes[k], sibs, self.lone[self.lone_offsets[k] : self.lone_offsets[k + 1]]


def split_tokens(shapes: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """:func:`tokenize` over a string array, vectorised: (flat tokens, per-shape offsets)."""
    pieces = pc.split_pattern(shapes, " ")
    offsets = pieces.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    flat = pieces.flatten()
    empty = pc.equal(pc.binary_length(flat), 0).to_numpy(zero_copy_only=False)
    if not empty.any():
        return flat, offsets
    # a space splits only after a non-empty piece: a token is a run of empty pieces and
    # the non-empty piece that ends it (or the run that ends the shape), joined by " "
    ends = ~empty
    ends[offsets[1:] - 1] = True
    token_end = np.flatnonzero(ends)
    starts = np.concatenate(([0], token_end + 1)).astype(np.int32)
    tokens = pc.binary_join(pa.ListArray.from_arrays(pa.array(starts, pa.int32()), flat), " ")
    tok_offsets = np.concatenate(([0], np.cumsum(ends)[offsets[1:] - 1])).astype(np.int64)
    return tokens, tok_offsets


def prepare_keys(shapes: pa.Array) -> PreparedKeys:
    """Display tokens, key hashes and sibling hashes of many shapes, vectorised; Python
    runs once per distinct token only."""
    tokens, offsets = split_tokens(shapes)
    encoded = tokens.dictionary_encode()
    uniq = [t.replace(MARK, WILD) for t in encoded.dictionary.to_pylist()]
    idx = encoded.indices.to_numpy(zero_copy_only=False)
    uniq_tv = np.array([_tv(t) for t in uniq], dtype=np.uint64)
    uniq_var = np.array([t != WILD and variable_like(t) for t in uniq], dtype=bool)
    uniq_wild = np.array([t == WILD for t in uniq], dtype=bool)
    lengths = np.diff(offsets)
    pw = np.array(_pow(int(lengths.max()) + 1 if len(lengths) else 1), dtype=np.uint64)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(idx), dtype=np.int64) - offsets[:-1][owner] + 1
    tv = uniq_tv[idx]
    ppos = pw[pos]
    hashes = lengths.astype(np.uint64) * np.uint64(_Q)
    if len(idx):
        hashes += np.add.reduceat(tv * ppos, offsets[:-1])
    sibs = hashes[owner] + (np.uint64(_tv(WILD)) - tv) * ppos
    varlike: dict[int, list[int]] = {}
    for t in np.flatnonzero(uniq_var[idx]).tolist():
        k = int(owner[t])
        varlike.setdefault(k, []).append(t - int(offsets[k]))
    wild = uniq_wild[idx]
    lone_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner[~wild], minlength=len(lengths)), out=lone_offsets[1:])
    marks = pc.count_substring(shapes, MARK).to_numpy(zero_copy_only=False)
    return PreparedKeys(
        list(map(uniq.__getitem__, idx.tolist())),
        offsets.tolist(),
        hashes.tolist(),
        sibs,
        varlike,
        marks.tolist(),
        sibs[~wild].tolist(),
        lone_offsets.tolist(),
    )


class _Lone:
    """A lone cluster stored with its sibling key: used where two sibling keys of the
    same cluster have the same hash (a bare cluster would match both)."""

    __slots__ = ("cluster", "key")

    def __init__(self, cluster: Cluster, key: tuple[str, ...]) -> None:
        self.cluster = cluster
        self.key = key


def _sib_key_is(entry: Cluster | _Siblings | _Lone, sib: tuple[str, ...]) -> bool:
    """Whether ``entry`` is stored under sibling key ``sib`` (its shared key, or for a
    bare lone cluster: its key with one more position wild)."""
    if not isinstance(entry, Cluster):
        return entry.key == sib
    key = entry.key
    if len(key) != len(sib):
        return False
    diff = [i for i, (a, b) in enumerate(zip(key, sib, strict=True)) if a != b]
    return len(diff) == 1 and sib[diff[0]] == WILD


class _Siblings:
    """Clusters that differ only at one position (their shared key has it wild)."""

    __slots__ = ("key", "literals", "members", "varlike")

    def __init__(self, key: tuple[str, ...], literals: int) -> None:
        self.key = key  # the shared key
        self.literals = literals  # literal tokens of the shared key
        self.members: list[Cluster] = []
        self.varlike = False  # some member's value there is variable-like


_Entry = Cluster | _Siblings | _Lone


@dataclass
class ClusterIndex:
    """Clusters by key; see the module docstring."""

    cfg: ClusterConfig
    clusters: list[Cluster] = field(default_factory=list)
    # key -> live cluster
    _by_key: dict[tuple[str, ...], Cluster] = field(default_factory=dict)
    # length -> sets of merged wild positions, most specific first
    _wildsets: dict[int, list[frozenset[int]]] = field(default_factory=dict)
    # hash of a sibling key (one more position wild) -> clusters differing only there
    _siblings: dict[int, _Entry] = field(default_factory=dict)
    # sibling key -> its entry, for the keys whose hash another key holds in _siblings
    _siblings_exact: dict[tuple[str, ...], _Entry] = field(default_factory=dict)
    # (old text, cluster) for every widening/merge since the miner last drained them
    events: list[tuple[str, Cluster]] = field(default_factory=list)

    def assign(self, shape_tokens: list[str]) -> Cluster:
        """The cluster for a shape, creating, widening or merging as needed."""
        return self.assign_key(*display_key(shape_tokens))

    def assign_key(
        self,
        display: list[str],
        key: tuple[str, ...],
        hashes: KeyHashes | None = None,
        varlike: Sequence[int] | None = None,
    ) -> Cluster:
        """``assign`` for a shape already turned into display tokens and key, with the
        key's hashes (``PreparedKeys.hashes_of``) and variable-like positions when known."""
        cluster = self._find(key, varlike)
        if cluster is None:
            if hashes is None:
                h, sibs = key_hashes(key)
                lone = None
            else:
                h, sibs, lone = hashes
            cluster = self._new(display, key, sibs, lone)
            self._absorb_narrower(cluster, h)
            return self._maybe_merge(cluster.live()).live()
        wider = widened(cluster.tokens, display)
        if wider is not None:
            self.events.append((cluster.text, cluster))
            cluster.tokens = wider
        return cluster

    def new_lone(
        self, display: list[str], key: tuple[str, ...], h: int, lone: list[int],
        varlike: Sequence[int] = (),
    ) -> Cluster | None:
        """The new cluster of a key that ``assign_key`` would simply add: nothing known
        finds it, no merged template has its length, and it has no sibling yet (so
        nothing can merge). None (and nothing done) for any other key."""
        by_key, siblings = self._by_key, self._siblings
        if key in by_key or len(key) in self._wildsets or h in siblings:
            return None
        for i in varlike:
            if (*key[:i], WILD, *key[i + 1 :]) in by_key:
                return None
        cluster = Cluster(tokens=display, key=key, index=len(self.clusters))
        mine = dict.fromkeys(lone, cluster)
        if len(mine) != len(lone) or not siblings.keys().isdisjoint(mine):
            return None
        self.clusters.append(cluster)
        by_key[key] = cluster
        siblings.update(mine)
        return cluster

    def _find(
        self, key: tuple[str, ...], varlike: Sequence[int] | None = None
    ) -> Cluster | None:
        found = self._by_key.get(key)
        if found is not None:
            return found
        for wild in self._wildsets.get(len(key), ()):
            found = self._by_key.get(_with_wild(key, wild))
            if found is not None:
                return found
        # a value-like token (" <*>", "(<*>)") where a known template has a plain <*>
        if varlike is None:
            varlike = [i for i, t in enumerate(key) if t != WILD and variable_like(t)]
        for i in varlike:
            found = self._by_key.get((*key[:i], WILD, *key[i + 1 :]))
            if found is not None:
                return found
        return None

    # -------------------------------------------------------- sibling table
    def _sib_get(self, h: int, sib: tuple[str, ...]) -> _Entry | None:
        """The entry of sibling key ``sib`` (hash ``h``)."""
        entry = self._siblings.get(h)
        if entry is None or _sib_key_is(entry, sib):
            return entry
        return self._siblings_exact.get(sib)

    def _sib_set(self, h: int, sib: tuple[str, ...], entry: _Entry) -> None:
        """Store (or replace) the entry of sibling key ``sib`` (hash ``h``)."""
        held = self._siblings.get(h)
        if held is None or _sib_key_is(held, sib):
            self._siblings[h] = entry
        else:
            self._siblings_exact[sib] = entry

    def _placed_sibling(
        self, key: tuple[str, ...], sibs: list[int], i: int
    ) -> tuple[str, ...]:
        """The sibling key (position before ``i``, same hash as position ``i``) under which
        the cluster of ``key`` holds the slot of that hash; the others went to the exact
        table, and a slot once held never changes key."""
        for p in range(i):
            if key[p] != WILD and sibs[p] == sibs[i]:
                sib = (*key[:p], WILD, *key[p + 1 :])
                if sib not in self._siblings_exact:
                    return sib
        raise AssertionError("sibling slot without its key")

    def _absorb_narrower(self, cluster: Cluster, h: int) -> None:
        """Merge into a new cluster the ones that differ from it only by having a
        value-like token where it has a plain ``<*>``."""
        group = self._sib_get(h, cluster.key)
        if isinstance(group, _Lone):
            group = group.cluster
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

    def _new(
        self, tokens: list[str], key: tuple[str, ...], sibs: list[int] | None = None,
        lone: list[int] | None = None,
    ) -> Cluster:
        """A new cluster, entered in the sibling table under each of its sibling keys.
        ``lone``: its non-wild sibling hashes, when known (see ``KeyHashes``)."""
        if sibs is None:
            _, sibs = key_hashes(key)
        cluster = Cluster(tokens=tokens, key=key, index=len(self.clusters))
        self.clusters.append(cluster)
        self._by_key[key] = cluster
        siblings = self._siblings
        if lone is not None:
            mine = dict.fromkeys(lone, cluster)
            if len(mine) == len(lone) and siblings.keys().isdisjoint(mine):
                siblings.update(mine)  # no sibling yet, no two hashes alike: all lone
                return cluster
        literals = len(key) - key.count(WILD) - 1
        for i, t in enumerate(key):
            if t == WILD:
                continue
            hs = sibs[i]
            group = siblings.get(hs)
            if group is None:  # a lone cluster is stored as itself (fewer objects)
                siblings[hs] = cluster
                continue
            sib = (*key[:i], WILD, *key[i + 1 :])
            if group is cluster:  # two of its sibling keys share a hash: store both exactly
                siblings[hs] = _Lone(cluster, self._placed_sibling(key, sibs, i))
            group = self._sib_get(hs, sib)
            if group is None:
                self._sib_set(hs, sib, cluster)
                continue
            if not isinstance(group, _Siblings):
                first = group.cluster if isinstance(group, _Lone) else group
                group = _Siblings(sib, literals)
                self._sib_set(hs, sib, group)
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
