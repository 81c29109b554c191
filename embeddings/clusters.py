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
Most new templates have no sibling yet (*lone*): a batch checks their sibling hashes and
enters them in a numpy hash table at once (:class:`LoneBatch`); the rest of the sibling
table is a dict.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice

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
    groups: tuple[_Siblings, ...] = ()  # sibling groups it belongs to

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
    hashes: np.ndarray  # uint64 key hash of each shape
    sibs: np.ndarray  # flat uint64, per token: hash of its shape's key with it wild
    varlike: dict[int, list[int]]  # shape -> positions of its variable-like tokens
    marks: list[int]  # masked values (MARKs) in each shape
    lone: np.ndarray  # flat uint64: the sibling hashes of the tokens that are not wild
    lone_offsets: np.ndarray  # shape k's are lone[lone_offsets[k]:lone_offsets[k + 1]]

    def lone_of(self, k: int) -> list[int]:
        """Shape k's sibling hashes of the tokens that are not wild."""
        return self.lone[self.lone_offsets[k] : self.lone_offsets[k + 1]].tolist()

    def hashes_of(self, k: int) -> KeyHashes:
        """Shape k's key hashes, as ``ClusterIndex.assign_key`` takes them."""
        sibs = self.sibs[self.offsets[k] : self.offsets[k + 1]].tolist()
        return int(self.hashes[k]), sibs, self.lone_of(k)


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
        np.array(uniq, dtype=object)[idx].tolist(),
        offsets.tolist(),
        hashes,
        sibs,
        varlike,
        marks.tolist(),
        sibs[~wild],
        lone_offsets,
    )


class _HashTable:
    """uint64 keys -> int32 values (not -1) in numpy arrays, open addressing with linear
    probing from the top bits of the key: lookups and inserts of many keys at once are
    vectorised, ``get`` reads one key from Python."""

    def __init__(self, bits: int = 12) -> None:
        self.size = 0
        self._alloc(bits)

    def _alloc(self, bits: int) -> None:
        self.shift = 64 - bits
        self.mask = (1 << bits) - 1
        self.keys = np.zeros(1 << bits, dtype=np.uint64)
        self.vals = np.full(1 << bits, -1, dtype=np.int32)  # -1: empty slot
        self._keys = memoryview(self.keys)  # for get: indexing gives Python ints
        self._vals = memoryview(self.vals)

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return (keys >> np.uint64(self.shift)).astype(np.int64)

    def get(self, key: int) -> int:
        """The value of ``key``, -1 when absent."""
        keys, vals, mask = self._keys, self._vals, self.mask
        i = key >> self.shift
        while (v := vals[i]) != -1:
            if keys[i] == key:
                return v
            i = (i + 1) & mask
        return -1

    def find(self, keys: np.ndarray) -> np.ndarray:
        """``get`` for each of ``keys`` (uint64), vectorised: int32 values, -1 if absent."""
        out = np.full(len(keys), -1, dtype=np.int32)
        slot = self._slots(keys)
        at = np.flatnonzero(self.vals[slot] != -1)  # the others are absent
        keys, slot = keys[at], slot[at]
        while len(at):
            hit = self.keys[slot] == keys
            out[at[hit]] = self.vals[slot[hit]]
            slot = (slot + 1) & self.mask
            more = ~hit & (self.vals[slot] != -1)
            keys, at, slot = keys[more], at[more], slot[more]
        return out

    def insert(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """Add ``keys`` (uint64, distinct, none in the table yet) with ``vals`` (int32)."""
        if 2 * (self.size + len(keys)) > len(self.keys):  # keep the load under a half
            used = self.vals != -1
            keys = np.concatenate((self.keys[used], keys))
            vals = np.concatenate((self.vals[used], vals))
            self._alloc(max(12, (4 * len(keys)).bit_length()))
            self.size = 0
        self.size += len(keys)
        slot = self._slots(keys)
        while len(keys):
            # the keys at a free slot write it; of several, the one whose key stayed wins
            free = np.flatnonzero(self.vals[slot] == -1)
            at, mine = slot[free], keys[free]
            self.keys[at] = mine
            won = self.keys[at] == mine
            self.vals[at[won]] = vals[free[won]]
            rest = np.ones(len(keys), dtype=bool)
            rest[free[won]] = False
            keys, vals, slot = keys[rest], vals[rest], (slot[rest] + 1) & self.mask


# a batch holding at most this many lone clusters not yet entered enters them in the
# dict (a Python loop), more at once in the numpy table
_LONE_DICT_MAX = 16


class LoneBatch:
    """``new`` decides, in batch order, whether each new shape of ``prep`` makes a lone
    cluster (a template with no sibling yet: nothing known finds its key, no merged
    template has its length, neither its key hash nor any of its sibling hashes is held in
    the sibling table, and no two of these are alike) and makes it then. The hashes are
    checked against the sibling table for the whole batch at once when it starts, against
    those of the batch's earlier lone clusters through the hashes the batch holds more
    than once, and against those entered in the dict since (by the other shapes' learning)
    one by one. The new lone clusters are entered in the sibling table at once, before
    any other learning (``flush``, which returns None) and at the end of the batch."""

    def __init__(self, index: ClusterIndex, prep: PreparedKeys) -> None:
        self.index, self.prep = index, prep
        siblings, table = index._siblings, index._table
        if len(siblings) > index._synced:  # dict keys are in the table too (as -2)
            keys = np.fromiter(
                islice(reversed(siblings.keys()), len(siblings) - index._synced),
                dtype=np.uint64, count=len(siblings) - index._synced,
            )
            keys = keys[table.find(keys) == -1]
            table.insert(keys, np.full(len(keys), -2, dtype=np.int32))
            index._synced = len(siblings)
        n = len(prep.hashes)
        owner = np.repeat(np.arange(n), np.diff(prep.lone_offsets))
        clash = table.find(prep.hashes) != -1
        clash[owner[table.find(prep.lone) != -1]] = True
        # shape -> its hashes that other hashes of the batch equal; its sibling hashes
        # among them are claimed when it makes a lone cluster
        self.shared: dict[int, list[int]] = {}
        self.claims: dict[int, list[int]] = {}
        self.claimed: set[int] = set()
        hashes = np.concatenate((prep.hashes, prep.lone))
        ordered = np.sort(hashes)
        dup = ordered[1:][ordered[1:] == ordered[:-1]]
        if len(dup):
            dup = np.unique(dup)
            near = np.minimum(np.searchsorted(dup, hashes), len(dup) - 1)
            at = np.flatnonzero(dup[near] == hashes)
            who = np.concatenate((np.arange(n), owner))[at]
            for i, h, k in zip(at.tolist(), hashes[at].tolist(), who.tolist(), strict=True):
                self.shared.setdefault(k, []).append(h)
                if i >= n:
                    claims = self.claims.setdefault(k, [])
                    if h in claims:  # two of its sibling hashes alike
                        clash[k] = True
                    claims.append(h)
        self.clash: list[bool] = clash.tolist()
        # shapes whose lone clusters are not entered yet; their clusters are consecutive
        # (other learning flushes first), from index first
        self.pending: list[int] = []
        self.first = 0
        self.seen = len(siblings)  # keys of the dict checked, the later ones in fresh
        self.fresh: set[int] = set()

    def new(
        self, k: int, display: list[str], key: tuple[str, ...], varlike: Sequence[int] = ()
    ) -> Cluster | None:
        """The lone cluster made for shape ``k``, or None (after ``flush``) when it does not
        make one (``ClusterIndex.assign_key`` decides then)."""
        index = self.index
        siblings, by_key = index._siblings, index._by_key
        if len(siblings) != self.seen:  # the other shapes' learning entered these
            self.fresh.update(islice(reversed(siblings.keys()), len(siblings) - self.seen))
            self.seen = len(siblings)
        if self.clash[k] or key in by_key or len(key) in index._wildsets:
            return self.flush()
        for i in varlike:
            if (*key[:i], WILD, *key[i + 1 :]) in by_key:
                return self.flush()
        shared = self.shared.get(k)
        if shared is not None and not self.claimed.isdisjoint(shared):
            return self.flush()
        if self.fresh and (
            int(self.prep.hashes[k]) in self.fresh
            or not self.fresh.isdisjoint(self.prep.lone_of(k))
        ):
            return self.flush()
        if not self.pending:
            self.first = len(index.clusters)
        cluster = Cluster(display, key, len(index.clusters))
        index.clusters.append(cluster)
        by_key[key] = cluster
        claims = self.claims.get(k)
        if claims is not None:
            self.claimed.update(claims)
        self.pending.append(k)
        return cluster

    def flush(self) -> None:
        """Enter the lone clusters made since the last flush in the sibling table."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        index, prep = self.index, self.prep
        if len(pending) <= _LONE_DICT_MAX:
            for c, k in enumerate(pending, self.first):
                index._siblings.update(dict.fromkeys(prep.lone_of(k), index.clusters[c]))
            self.seen = len(index._siblings)  # claimed already
            return
        shapes = np.array(pending, dtype=np.int64)
        cut = prep.lone_offsets
        counts = cut[shapes + 1] - cut[shapes]
        first = np.zeros(len(counts), dtype=np.int64)
        np.cumsum(counts[:-1], out=first[1:])
        at = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first - cut[shapes], counts)
        clusters = np.arange(self.first, self.first + len(shapes), dtype=np.int32)
        index._table.insert(prep.lone[at], np.repeat(clusters, counts))


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
    # hash of a sibling key (one more position wild) -> clusters differing only there;
    # lone clusters entered by a LoneBatch are in _table instead (index in clusters)
    _siblings: dict[int, _Entry] = field(default_factory=dict)
    # _table also holds the keys of _siblings (value -2) up to the first _synced ones
    _table: _HashTable = field(default_factory=_HashTable)
    _synced: int = 0
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
    def _sib_held(self, h: int) -> _Entry | None:
        """The entry held under hash ``h`` (in the dict, or a lone cluster in the table)."""
        entry = self._siblings.get(h)
        if entry is None and (i := self._table.get(h)) >= 0:
            return self.clusters[i]
        return entry

    def _sib_free(self, hashes: Iterable[int]) -> bool:
        """Whether no entry is held under any of ``hashes``."""
        siblings, table = self._siblings, self._table
        return not any(h in siblings or table.get(h) != -1 for h in hashes)

    def _sib_get(self, h: int, sib: tuple[str, ...]) -> _Entry | None:
        """The entry of sibling key ``sib`` (hash ``h``)."""
        entry = self._sib_held(h)
        if entry is None or _sib_key_is(entry, sib):
            return entry
        return self._siblings_exact.get(sib)

    def _sib_set(self, h: int, sib: tuple[str, ...], entry: _Entry) -> None:
        """Store (or replace) the entry of sibling key ``sib`` (hash ``h``)."""
        held = self._sib_held(h)
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
            if len(mine) == len(lone) and self._sib_free(mine):
                siblings.update(mine)  # no sibling yet, no two hashes alike: all lone
                return cluster
        literals = len(key) - key.count(WILD) - 1
        for i, t in enumerate(key):
            if t == WILD:
                continue
            hs = sibs[i]
            group = self._sib_held(hs)
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
            cluster.groups += (group,)
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
