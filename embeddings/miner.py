"""Online log template miner: message -> (stable template id, parameters), losslessly.

Contract (docs/CONTRACTS "Template miner -> hub store"):

* ``TemplateMiner(state_path)``; ``mine(messages) -> MinedBatch`` with ``template_ids``
  (numpy uint64) and ``params`` (``list[list[str]]``); ``mine_arrow(arr)`` takes a pyarrow
  string array (string, large_string or chunked; nulls are mined as ``""``) and returns
  the parameters as a pyarrow ``list<string>`` array instead: ``params[i]`` holds line i's
  values, in the order of the ``<*>`` of its template (no per-line Python objects — the
  store's hot path; ``params.flatten()`` / ``params.offsets`` give the flat values).
* ``render(template_id, params)`` gives back the exact message (whitespace included);
  ``render_many(ids, params_list_array)`` does it for a batch, vectorised.
* ids are ``xxhash64`` (seed 0) of the UTF-8 template text, so the same text has the
  same id on every hub and after restarts (hubs fed the same lines in the same order
  build the same templates). When a template widens, the old id stays renderable and
  ``parent_of(old)`` gives the wider one (``resolve`` follows the chain to the live one,
  ``family`` lists every id that resolves to a given one, ``resolve_many`` maps arrays).
* ``save()`` / ``load()`` persist the state as JSON (atomic: temp file, fsync, rename).

Concurrency: single writer. ``mine``/``mine_arrow``/``save``/``load`` take an internal
lock, so calling them from several threads is safe but serialised; ``render``,
``templates`` and ``parent_of`` only read and may run beside them.

Fast path: masking runs vectorised over the whole batch (RE2 in pyarrow.compute), the
masked shapes are dictionary-encoded, and Python only runs once per *distinct* shape:
a cache maps a known shape to its template id and to a recipe that says how the
template's parameters are made of the shape's masked values; the per-line parameters
are then assembled with numpy/pyarrow take operations. Batches of PARALLEL_MIN_LINES
lines or more are cut into one chunk per worker thread for the vectorised steps. Lines
that contain a NUL character (the marker) are mined one by one in Python after the rest
of their batch, with the same regular expression (``re`` and RE2 agree on it).
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from embeddings import masking
from embeddings.clusters import (
    WILD,
    Cluster,
    ClusterConfig,
    ClusterIndex,
    KeyHashes,
    PreparedKeys,
    prepare_keys,
    tokenize,
)
from embeddings.masking import MARK
from mohlog.errors import CorruptData, InvalidInput, NotFound

STATE_VERSION = 1
# Distinct masked shapes remembered (shape -> template and recipe); past it the cache
# restarts empty. Shapes are not persisted: the cluster index finds them again by key.
SHAPE_CACHE_MAX = 1_000_000
# A recipe: for each template parameter, its pieces — an int is the index of a masked
# value of the line, a str is constant text of the shape.
Recipe = tuple[tuple[int | str, ...], ...]


@dataclass(slots=True)
class TemplateInfo:
    """One template ever produced (live or superseded)."""

    id: int  # xxhash64 of text
    text: str  # the template, ``<*>`` where a parameter goes
    count: int  # lines mined under this id
    parent: int | None = None  # the wider template that replaced it, if any


@dataclass
class MinedBatch:
    """Result of mining a batch, one entry per input message, in input order."""

    template_ids: np.ndarray  # uint64
    params: Any  # list[list[str]] from mine(); pyarrow ListArray<string> from mine_arrow()


@dataclass(slots=True)
class _Shape:
    """Cached decision for one masked shape."""

    cluster: Cluster
    tid: int
    recipe: Recipe
    identity: bool  # parameters are exactly the masked values, in order
    # the recipe for numpy: pieces (>=0 masked value index, <0 -1-constant id) and
    # the number of pieces of each parameter
    pieces: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def template_id(text: str) -> int:
    """Stable id of a template text."""
    return xxhash.xxh64_intdigest(text.encode("utf-8"))


def _recipe(shape_tokens: list[str], template: list[str]) -> Recipe:
    """How each template parameter is built from the shape's tokens and masked values."""
    out: list[tuple[int | str, ...]] = []
    var = 0
    for s, t in zip(shape_tokens, template, strict=True):
        if MARK not in s:
            if t != s:  # a wildcard over a constant token
                out.append((s,))
            continue
        marks = s.count(MARK)
        if s == MARK or t == s.replace(MARK, WILD):
            out.extend((var + k,) for k in range(marks))
        else:  # t is a whole-token wildcard covering s
            pieces: list[int | str] = []
            for k, lit in enumerate(s.split(MARK)):
                if k:
                    pieces.append(var + k - 1)
                if lit:
                    pieces.append(lit)
            out.append(tuple(pieces))
        var += marks
    return tuple(out)


class _IdentityRecipes(dict[int, Recipe]):
    """n -> the recipe whose parameters are the n masked values in order."""

    def __missing__(self, n: int) -> Recipe:
        recipe = self[n] = tuple((i,) for i in range(n))
        return recipe


_IDENTITY = _IdentityRecipes()
_IDENTITY_ARRAYS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _identity(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The encoded identity recipe of n values (shared read-only arrays)."""
    arrays = _IDENTITY_ARRAYS.get(n)
    if arrays is None:
        pieces, counts = np.arange(n, dtype=np.int64), np.ones(n, dtype=np.int64)
        pieces.flags.writeable = counts.flags.writeable = False
        arrays = _IDENTITY_ARRAYS[n] = (pieces, counts)
    return arrays


def _is_identity(recipe: Recipe) -> bool:
    return all(len(p) == 1 and p[0] == i for i, p in enumerate(recipe))


def _apply(recipe: Recipe, values: Sequence[str]) -> list[str]:
    """Per-line parameters from a recipe (used off the fast path)."""
    return ["".join(values[p] if isinstance(p, int) else p for p in param) for param in recipe]


class TemplateMiner:
    """Online template miner; see the module docstring for the contract."""

    def __init__(self, state_path: Path | None = None, cfg: ClusterConfig | None = None) -> None:
        self.state_path = Path(state_path) if state_path is not None else None
        self.cfg = cfg or ClusterConfig()
        self._lock = threading.RLock()
        self._reset()
        if self.state_path is not None and self.state_path.exists():
            self.load()

    def _reset(self) -> None:
        self._index = ClusterIndex(self.cfg)
        self._infos: dict[int, TemplateInfo] = {}
        self._pieces: dict[int, list[str]] = {}
        self._shapes: dict[str, _Shape] = {}
        self._consts = _Constants()

    # ---------------------------------------------------------------- reading
    def templates(self) -> dict[int, TemplateInfo]:
        """Every template ever produced, by id (superseded ones have ``parent`` set)."""
        return dict(self._infos)

    def parent_of(self, tid: int) -> int:
        """The template that replaced ``tid`` (``tid`` itself while it is live)."""
        info = self._info(tid)
        return info.parent if info.parent is not None else tid

    def resolve(self, tid: int) -> int:
        """The live template that ``tid`` has widened into (follows ``parent_of``)."""
        seen = 0
        while (parent := self.parent_of(tid)) != tid and seen < len(self._infos):
            tid, seen = parent, seen + 1
        return tid

    def resolve_many(self, ids: np.ndarray) -> np.ndarray:
        """``resolve`` over a uint64 array (Python runs once per distinct id)."""
        uniq, inverse = np.unique(np.asarray(ids, dtype=np.uint64), return_inverse=True)
        live = np.array([self.resolve(int(t)) for t in uniq.tolist()], dtype=np.uint64)
        return live[inverse.reshape(-1)] if len(uniq) else np.zeros(0, dtype=np.uint64)

    def family(self, tid: int) -> set[int]:
        """Every id whose lines are findable under ``tid`` (itself and its narrower ones)."""
        return {t for t in self._infos if self.resolve(t) == self.resolve(tid)} | {tid}

    def render(self, tid: int, params: Sequence[str]) -> str:
        """The exact original message of a line mined as ``(tid, params)``."""
        pieces = self._pieces.get(tid)
        if pieces is None:
            raise NotFound(f"unknown template id {tid}", template_id=tid)
        if len(params) != len(pieces) - 1:
            raise InvalidInput(
                f"template {tid} takes {len(pieces) - 1} parameters, got {len(params)}",
                template_id=tid,
            )
        out = [pieces[0]]
        for value, piece in zip(params, pieces[1:], strict=True):
            out.append(value)
            out.append(piece)
        return "".join(out)

    def render_many(self, template_ids: np.ndarray, params: pa.Array) -> pa.Array:
        """``render`` over a batch, vectorised: uint64 ids and a ``list<string>`` array of
        parameters (as ``mine_arrow`` returns them) -> a string array of the messages."""
        tids = np.asarray(template_ids, dtype=np.uint64)
        if isinstance(params, pa.ChunkedArray):
            params = params.combine_chunks()
        if len(params) != len(tids):
            raise InvalidInput(f"{len(tids)} template ids but {len(params)} parameter lists")
        uniq, inverse = np.unique(tids, return_inverse=True)
        inverse = inverse.reshape(-1)
        texts = [self._pieces.get(int(t)) for t in uniq.tolist()]
        missing = [int(t) for t, x in zip(uniq.tolist(), texts, strict=True) if x is None]
        if missing:
            raise NotFound(f"unknown template id {missing[0]}", template_id=missing[0])
        nparams = np.array([len(x) - 1 for x in texts], dtype=np.int64)
        offsets = params.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        line_k = nparams[inverse]
        if not np.array_equal(np.diff(offsets), line_k):
            raise InvalidInput("parameter counts do not match their templates")
        return _interleave(texts, inverse, line_k, offsets, params.flatten())

    def _info(self, tid: int) -> TemplateInfo:
        info = self._infos.get(tid)
        if info is None:
            raise NotFound(f"unknown template id {tid}", template_id=tid)
        return info

    # ----------------------------------------------------------------- mining
    def mine(self, messages: Sequence[str]) -> MinedBatch:
        """Mine a batch of messages; parameters as ``list[list[str]]``."""
        if len(messages) <= SMALL_BATCH:
            return self._mine_small(list(messages))
        batch = self.mine_arrow(pa.array(messages, type=pa.string()))
        return MinedBatch(batch.template_ids, batch.params.to_pylist())

    def _mine_small(self, messages: list[str | None]) -> MinedBatch:
        """A few lines: Python's ``re`` per line beats compiling the RE2 pattern."""
        for m in messages:
            if m is not None and not isinstance(m, str):
                raise InvalidInput(f"messages must be strings, got {type(m).__name__}")
        with self._lock, _no_gc():
            mined = [self._mine_one(m or "") for m in messages]
        tids = np.array([t for t, _ in mined], dtype=np.uint64)
        return MinedBatch(tids, [p for _, p in mined])

    def mine_arrow(self, arr: pa.Array | pa.ChunkedArray) -> MinedBatch:
        """Mine a pyarrow string array; parameters as a pyarrow ``list<string>`` array."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
        if pa.types.is_large_string(arr.type):
            arr = arr.cast(pa.string())
        if not pa.types.is_string(arr.type):
            raise InvalidInput(f"messages must be strings, got {arr.type}")
        if arr.null_count:
            arr = pc.fill_null(arr, "")
        if len(arr) <= SMALL_BATCH:
            small = self._mine_small(arr.to_pylist())
            return MinedBatch(small.template_ids, pa.array(small.params, pa.list_(pa.string())))
        with self._lock, _no_gc():
            if masking.any_mark(arr):
                return self._mine_mixed(arr, masking.has_mark(arr))
            return self._mine_fast(arr)

    def _mine_fast(self, arr: pa.Array) -> MinedBatch:
        """Vectorised mining: Python runs once per distinct masked shape only."""
        chunks = _chunks(arr)
        splits = list(_pool().map(_split, chunks)) if len(chunks) > 1 else [_split(arr)]
        parts = []
        for sp in splits:  # in input order: first appearances are learnt in order
            decisions = self._decide_many(sp.shapes.dictionary)
            self._count(decisions, sp.codes)
            parts.append((decisions, sp))
        if len(parts) == 1:
            return _output(*parts[0], self._consts.values)
        outs = list(_pool().map(lambda part: _output(*part, self._consts.values), parts))
        return MinedBatch(
            np.concatenate([o.template_ids for o in outs]),
            pa.concat_arrays([o.params for o in outs]),
        )

    def _mine_mixed(self, arr: pa.Array, special: pa.Array) -> MinedBatch:
        """Batch where some lines contain MARK: those go line by line in Python."""
        special_np = special.to_numpy(zero_copy_only=False)
        rest = np.flatnonzero(~special_np)
        odd = np.flatnonzero(special_np)
        fast = self._mine_fast(arr.take(pa.array(rest)))
        tids = np.zeros(len(arr), dtype=np.uint64)
        tids[rest] = fast.template_ids
        slow_params = []
        for i, msg in zip(odd, arr.take(pa.array(odd)).to_pylist(), strict=True):
            tids[i], p = self._mine_one(msg)
            slow_params.append(p)
        allp = pa.concat_arrays(
            [fast.params, pa.array(slow_params, type=pa.list_(pa.string()))]
        )
        order = np.empty(len(arr), dtype=np.int64)
        order[rest] = np.arange(len(rest))
        order[odd] = len(rest) + np.arange(len(odd))
        return MinedBatch(tids, allp.take(pa.array(order)))

    def _mine_one(self, message: str) -> tuple[int, list[str]]:
        """Mine one message in Python (same masking semantics as the vectorised path)."""
        found = list(masking.REGEX.finditer(message))
        values = [m.group(0) for m in found]
        lits, pos = [], 0
        for m in found:
            lits.append(message[pos : m.start()])
            pos = m.end()
        lits.append(message[pos:])
        d = self._decide(MARK.join(lits))
        self._infos[d.tid].count += 1
        return d.tid, _apply(d.recipe, values)

    def _count(self, decisions: list[_Shape], codes: np.ndarray) -> None:
        counts = np.bincount(codes, minlength=len(decisions))
        infos = self._infos
        for d, n in zip(decisions, counts.tolist(), strict=True):
            infos[d.tid].count += n

    def _decide_many(self, shapes: pa.Array) -> list[_Shape]:
        """``_decide`` for every distinct shape of a batch, in order. Shapes never seen
        are tokenised and their keys hashed for all of them at once (vectorised) first."""
        texts: list[str] = shapes.to_pylist()
        get = self._shapes.get
        found = [get(t) for t in texts]
        new = [k for k, d in enumerate(found) if d is None]
        prep = prepare_keys(shapes.take(pa.array(new, pa.int64()))) if new else None
        slot = dict(zip(new, range(len(new)), strict=True))
        out: list[_Shape] = []
        for k, d in enumerate(found):
            if d is not None and d.cluster.merged_into is None and d.tid == d.cluster.tid:
                out.append(d)
            elif d is None and prep is not None:
                out.append(self._decide_lone(texts[k], prep, slot[k]))
            else:
                out.append(self._decide(texts[k]))
        return out

    def _decide_lone(self, shape: str, prep: PreparedKeys, j: int) -> _Shape:
        """``_decide_new``, short when the shape makes a template with no sibling yet."""
        display = prep.display[prep.offsets[j] : prep.offsets[j + 1]]
        lone = prep.lone[prep.lone_offsets[j] : prep.lone_offsets[j + 1]]
        cluster = self._index.new_lone(
            display, tuple(display), prep.hashes[j], lone, prep.varlike.get(j, ())
        )
        if cluster is None:
            return self._decide_new(shape, prep, j)
        self._register(cluster, None)
        n = prep.marks[j]
        pieces, counts = _identity(n)
        decision = _Shape(cluster, cluster.tid, _IDENTITY[n], True, pieces, counts)
        self._cache(shape, decision)
        return decision

    def _decide_new(self, shape: str, prep: PreparedKeys, j: int) -> _Shape:
        """``_decide`` for a shape not in the cache, from its prepared key (``prep[j]``)."""
        display = prep.display[prep.offsets[j] : prep.offsets[j + 1]]
        cluster = self._learn_key(
            display, tuple(display), prep.hashes_of(j), prep.varlike.get(j, ())
        )
        if cluster.tokens == display:  # parameters are the masked values, as they are
            n = prep.marks[j]
            pieces, counts = _identity(n)
            decision = _Shape(cluster, cluster.tid, _IDENTITY[n], True, pieces, counts)
        else:
            recipe = _recipe(tokenize(shape), cluster.tokens)
            decision = _Shape(cluster, cluster.tid, recipe, _is_identity(recipe))
            decision.pieces, decision.counts = self._consts.encode(recipe)
        self._cache(shape, decision)
        return decision

    def _cache(self, shape: str, decision: _Shape) -> None:
        if len(self._shapes) >= SHAPE_CACHE_MAX:
            self._shapes.clear()  # only a cache: a shape's cluster is found again by key
            self._consts = _Constants()
        self._shapes[shape] = decision

    def _decide(self, shape: str) -> _Shape:
        """Template id and recipe for a masked shape (learning it when new)."""
        known = self._shapes.get(shape)
        if known is not None and known.cluster.merged_into is None:
            if known.tid == known.cluster.tid:
                return known
        tokens = tokenize(shape)
        cluster = known.cluster.live() if known is not None else self._learn(tokens)
        recipe = _recipe(tokens, cluster.tokens)
        decision = _Shape(cluster, cluster.tid, recipe, _is_identity(recipe))
        decision.pieces, decision.counts = self._consts.encode(recipe)
        self._cache(shape, decision)
        return decision

    def _learn(self, shape_tokens: list[str]) -> Cluster:
        display = [t.replace(MARK, WILD) for t in shape_tokens]
        return self._learn_key(display, tuple(display))

    def _learn_key(
        self,
        display: list[str],
        key: tuple[str, ...],
        hashes: KeyHashes | None = None,
        varlike: Sequence[int] | None = None,
    ) -> Cluster:
        cluster = self._index.assign_key(display, key, hashes, varlike)
        for old_text, changed in self._index.events:
            self._register(changed.live(), template_id(old_text))
        self._index.events.clear()
        if cluster.tid == 0 or cluster.tid != template_id(cluster.text):
            self._register(cluster, None)
        return cluster

    def _register(self, cluster: Cluster, old: int | None) -> None:
        """Record the cluster's current text; ``old`` (if known) now points to it."""
        text = cluster.text
        tid = template_id(text)
        info = self._infos.get(tid)
        if info is None:
            self._infos[tid] = TemplateInfo(tid, text, 0)
            self._pieces[tid] = text.split(WILD)
        else:
            info.parent = None
        cluster.tid = tid
        if old is not None and old != tid and old in self._infos:
            self._infos[old].parent = tid

    # ------------------------------------------------------------ persistence
    def save(self, path: Path | None = None) -> None:
        """Write the state atomically (temp file in the same directory, fsync, rename)."""
        path = Path(path) if path is not None else self.state_path
        if path is None:
            raise InvalidInput("no state path to save to")
        with self._lock:
            data = orjson.dumps(self._state())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def load(self, path: Path | None = None) -> None:
        """Replace the state with the one saved at ``path`` (default: state_path)."""
        path = Path(path) if path is not None else self.state_path
        if path is None:
            raise InvalidInput("no state path to load from")
        try:
            state = orjson.loads(path.read_bytes())
            with self._lock:
                self._restore(state)
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise CorruptData(f"cannot load miner state {path}: {err}", path=str(path)) from err

    def _state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "templates": [[i.id, i.text, i.count, i.parent] for i in self._infos.values()],
            "clusters": [
                [c.tokens, c.key, c.merged_into.index if c.merged_into else None]
                for c in self._index.clusters
            ],
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {state.get('version')}")
        self._reset()
        for tid, text, count, parent in state["templates"]:
            self._infos[tid] = TemplateInfo(tid, text, count, parent)
            self._pieces[tid] = text.split(WILD)
        self._index.restore(state["clusters"])
        for cluster in self._index.clusters:
            cluster.tid = template_id(cluster.text)


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic GC while mining: learning creates many small long-lived objects and
    the collector's passes over them halved the learning rate. Nothing mined is a cycle."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# Batches up to this many lines are mined line by line with Python's re (compiling the
# RE2 pattern costs about a millisecond per pyarrow call).
SMALL_BATCH = 32
# Batches at least this long are split across the worker threads (pyarrow releases the GIL).
PARALLEL_MIN_LINES = 65536
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), "mohlog-miner")
    return _POOL


def _chunks(arr: pa.Array) -> list[pa.Array]:
    workers = _pool()._max_workers
    if workers < 2 or len(arr) < PARALLEL_MIN_LINES:
        return [arr]
    step = -(-len(arr) // workers)
    return [arr.slice(i, step) for i in range(0, len(arr), step)]


@dataclass
class _Split:
    """The vectorised part of mining one chunk."""

    values: pa.Array  # every masked value of every line, flat
    val_offsets: np.ndarray  # line i's values are values[val_offsets[i]:val_offsets[i+1]]
    shapes: pa.DictionaryArray  # masked shape of each line
    codes: np.ndarray  # shapes.indices as numpy


def _split(arr: pa.Array) -> _Split:
    split = pc.split_pattern(masking.mark_arrow(arr), MARK)
    offsets = split.offsets.to_numpy()
    offsets = offsets - offsets[0]
    flat = split.flatten()
    lengths = np.diff(offsets)
    local = np.arange(len(flat), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    odd = (local & 1).astype(bool)
    nvals = (lengths - 1) // 2
    val_offsets = np.zeros(len(arr) + 1, dtype=np.int64)
    np.cumsum(nvals, out=val_offsets[1:])
    lits = pa.ListArray.from_arrays(
        pa.array(offsets - np.concatenate(([0], val_offsets[1:])), type=pa.int32()),
        flat.filter(pa.array(~odd)),
    )
    shapes = pc.binary_join(lits, MARK).dictionary_encode()
    codes = shapes.indices.to_numpy(zero_copy_only=False)
    return _Split(flat.filter(pa.array(odd)), val_offsets, shapes, codes)


def _output(decisions: list[_Shape], sp: _Split, consts: list[str]) -> MinedBatch:
    tids = np.array([d.tid for d in decisions], dtype=np.uint64)[sp.codes]
    if all(d.identity for d in decisions):
        params = pa.ListArray.from_arrays(pa.array(sp.val_offsets, type=pa.int32()), sp.values)
    else:
        params = _assemble(decisions, sp, consts)
    return MinedBatch(tids, params)


class _Constants:
    """Constant pieces of recipes, numbered once (so a batch needs no Python per piece)."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._ids: dict[str, int] = {}

    def encode(self, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
        pieces = [p if isinstance(p, int) else -1 - self._id(p) for param in recipe for p in param]
        counts = [len(param) for param in recipe]
        return np.array(pieces, dtype=np.int64), np.array(counts, dtype=np.int64)

    def _id(self, text: str) -> int:
        i = self._ids.get(text)
        if i is None:
            i = self._ids[text] = len(self.values)
            self.values.append(text)
        return i


def _assemble(decisions: list[_Shape], sp: _Split, consts: list[str]) -> pa.Array:
    """Per-line parameter lists from per-shape recipes, with numpy/pyarrow takes only."""
    codes, values, val_offsets = sp.codes, sp.values, sp.val_offsets
    encoded = [(d.pieces, d.counts) for d in decisions]
    rec_npieces = np.array([len(e[0]) for e in encoded], dtype=np.int64)
    rec_nparams = np.array([len(e[1]) for e in encoded], dtype=np.int64)
    pcodes = np.concatenate([e[0] for e in encoded] + [np.zeros(0, np.int64)])
    pcounts = np.concatenate([e[1] for e in encoded] + [np.zeros(0, np.int64)])
    rec_piece_start = np.concatenate(([0], np.cumsum(rec_npieces)[:-1]))
    rec_param_start = np.concatenate(([0], np.cumsum(rec_nparams)[:-1]))
    line_npieces = rec_npieces[codes]
    r = pcodes[_gather(rec_piece_start[codes], line_npieces)]
    owner = np.repeat(np.arange(len(codes)), line_npieces)
    is_const = r < 0
    used, local = np.unique(-1 - r[is_const], return_inverse=True)
    take = val_offsets[:-1][owner] + r
    take[is_const] = len(values) + local.reshape(-1)
    pool = pa.concat_arrays(
        [values.cast(pa.string()), pa.array([consts[i] for i in used.tolist()], pa.string())]
    )
    pieces = pool.take(pa.array(take, type=pa.int64()))
    counts = pcounts[_gather(rec_param_start[codes], rec_nparams[codes])]
    if np.all(counts == 1):
        flat = pieces
    else:
        poff = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=poff[1:])
        flat = pc.binary_join(pa.ListArray.from_arrays(pa.array(poff, pa.int32()), pieces), "")
    loff = np.zeros(len(codes) + 1, dtype=np.int64)
    np.cumsum(rec_nparams[codes], out=loff[1:])
    return pa.ListArray.from_arrays(pa.array(loff, type=pa.int32()), flat)


def _interleave(
    texts: list[list[str]], inverse: np.ndarray, line_k: np.ndarray, offsets: np.ndarray,
    values: pa.Array,
) -> pa.Array:
    """Messages as piece0 + value0 + piece1 + ... for every line, with takes only."""
    piece_start = np.concatenate(([0], np.cumsum([len(x) for x in texts])[:-1])).astype(np.int64)
    lengths = 2 * line_k + 1
    first = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=first[1:])
    owner = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(int(lengths.sum()), dtype=np.int64) - first[owner]
    j = pos >> 1
    idx = np.where(
        pos & 1, offsets[:-1][owner] + j, len(values) + piece_start[inverse][owner] + j
    )
    pool = pa.concat_arrays(
        [values.cast(pa.string()), pa.array([p for x in texts for p in x], pa.string())]
    )
    loff = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=loff[1:])
    pieces = pool.take(pa.array(idx, type=pa.int64()))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(loff, pa.int32()), pieces), "")


def _gather(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``range(s, s + c)`` for each (s, c), vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    return np.arange(total, dtype=np.int64) - np.repeat(first - starts, counts)
