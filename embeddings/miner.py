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

Fast path: lines are grouped in *classes* first — lines equal once every digit is made
"1" (masking treats all digits alike, but for the "0" of "0x", and a class is split again
by the digits of its literal text) — with numpy and a pyarrow dictionary encoding. The
regular expression (RE2 in pyarrow.compute) runs once per class never seen before (what
it found is remembered across batches), and Python once per distinct masked shape: a cache
maps a known shape to its template id and to a recipe for its parameters. With the C
helper (native/mine.c) the remembered keys are also in C hash tables, where each line of a
batch finds its class in one pass; only the lines whose keys are new go through the numpy
steps, and those alone of their key in the batch are masked each on its own. Every parameter
is one piece of its line, at the same place in every line of a class, so the parameters
of a batch are one take over its data buffer. Batches whose lines are mostly distinct
(more than GROUP_MAX_CLASSES classes per line) mask every line instead. Batches of
PARALLEL_MIN_LINES lines or more are cut into one chunk per worker thread for the
vectorised steps. Lines that contain a NUL character (the marker) are mined one by one in
Python after the rest of their batch, with the same regular expression (``re`` and RE2
agree on it).
"""

from __future__ import annotations

import ctypes
import gc
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
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
    LoneBatch,
    PreparedKeys,
    display_key,
    prepare_keys,
    tokenize,
)
from embeddings.masking import MARK
from mohlog import clib
from mohlog.errors import CorruptData, InvalidInput, NotFound

STATE_VERSION = 1
# Id of the template of a message stored whole as its one parameter (a store with template
# mining off): renders as that parameter. No template text hashes to 0 in practice.
RAW_TEMPLATE_ID = 0
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
    # where each parameter lies in the shape (see _bounds), computed on first use
    bx: np.ndarray | None = None
    bj: np.ndarray | None = None


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
        self._pieces: dict[int, list[str]] = {}  # template text split at WILD, on first use
        self._shapes: dict[str, _Shape] = {}
        self._ungrouped = -1  # batches mined without grouping lines in classes, -1: grouping
        self._known = _ClassCache()

    # ---------------------------------------------------------------- reading
    def templates(self) -> dict[int, TemplateInfo]:
        """Every template ever produced, by id (superseded ones have ``parent`` set)."""
        return dict(self._infos)

    def texts_of(self, tids: Sequence[int]) -> dict[int, str]:
        """The text of each known id of ``tids`` (a segment's templates, for its footer)."""
        infos = self._infos
        return {t: infos[t].text for t in tids if t in infos}

    def adopt(self, texts: dict[int, str]) -> int:
        """Make templates known by their text alone (a state file lost: the texts come
        back from the segments' footers), so their lines render again; an id that is not
        its text's hash is refused. Returns how many were new."""
        added = 0
        with self._lock:
            for tid, text in texts.items():
                if tid not in self._infos and template_id(text) == tid:
                    self._infos[tid] = TemplateInfo(tid, text, 0)
                    added += 1
        return added

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
        pieces = self._pieces_of(tid)
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
        texts = [self._pieces_of(int(t)) for t in uniq.tolist()]
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

    def _pieces_of(self, tid: int) -> list[str] | None:
        """The text of template ``tid`` split at its ``<*>`` (None for an unknown id)."""
        pieces = self._pieces.get(tid)
        if pieces is None and tid == RAW_TEMPLATE_ID:
            return ["", ""]
        if pieces is None:
            info = self._infos.get(tid)
            if info is None:
                return None
            pieces = self._pieces[tid] = info.text.split(WILD)
        return pieces

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
        group = self._ungrouped < 0 or self._ungrouped % GROUP_PROBE == GROUP_PROBE - 1
        known = _classify_known(arr, self._known) if group else None
        if known is not None:
            classes = [known]
        elif len(chunks) > 1:
            classes = list(_pool().map(lambda c: _classify(c, group, self._known), chunks))
        else:
            classes = [_classify(arr, group, self._known)]
        if group:  # group the next batches while it pays
            self._ungrouped = -1 if all(c.grouped for c in classes) else 0
        else:
            self._ungrouped += 1
        parts = []
        for cl in classes:  # in input order: first appearances are learnt in order
            texts: list[str] = cl.shapes.dictionary.to_pylist()
            decisions = self._decide_many(cl.shapes.dictionary, texts)
            for d, text in zip(decisions, texts, strict=True):
                if d.bx is None and not d.identity:
                    d.bx, d.bj = _bounds(text, d.recipe)
            self._count(decisions, cl.shape_codes, cl.class_counts())
            parts.append((decisions, cl))
        if len(parts) == 1:
            return _output(*parts[0])
        outs = list(_pool().map(lambda part: _output(*part), parts))
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

    def _count(
        self, decisions: list[_Shape], codes: np.ndarray, weights: np.ndarray | None = None
    ) -> None:
        counts = np.bincount(codes, weights, minlength=len(decisions)).astype(np.int64)
        infos = self._infos
        for d, n in zip(decisions, counts.tolist(), strict=True):
            infos[d.tid].count += n

    def _decide_many(self, shapes: pa.Array, texts: list[str] | None = None) -> list[_Shape]:
        """``_decide`` for every distinct shape of a batch, in order. Shapes never seen
        are tokenised and their keys hashed for all of them at once (vectorised) first."""
        if texts is None:
            texts = shapes.to_pylist()
        get = self._shapes.get
        found = [get(t) for t in texts]
        new = [k for k, d in enumerate(found) if d is None]
        lones = (
            LoneBatch(self._index, prepare_keys(shapes.take(pa.array(new, pa.int64()))))
            if new else None
        )
        out: list[_Shape] = []
        j = 0  # new shapes so far
        try:
            for k, d in enumerate(found):
                if d is not None and d.cluster.merged_into is None and d.tid == d.cluster.tid:
                    out.append(d)
                elif d is None and lones is not None:
                    out.append(self._decide_lone(texts[k], lones, j))
                    j += 1
                else:
                    out.append(self._decide(texts[k]))
        finally:
            if lones is not None:
                lones.flush()
        return out

    def _decide_lone(self, shape: str, lones: LoneBatch, j: int) -> _Shape:
        """``_decide_new``, short when the shape makes a template with no sibling yet."""
        prep = lones.prep
        display = prep.display[prep.offsets[j] : prep.offsets[j + 1]]
        cluster = lones.new(j, display, tuple(display), prep.varlike.get(j, ()))
        if cluster is None:
            return self._decide_new(shape, prep, j)
        self._register(cluster, None)
        n = prep.marks[j]
        decision = _Shape(cluster, cluster.tid, _IDENTITY[n], True)
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
            decision = _Shape(cluster, cluster.tid, _IDENTITY[n], True)
        else:
            recipe = _recipe(tokenize(shape), cluster.tokens)
            decision = _Shape(cluster, cluster.tid, recipe, _is_identity(recipe))
        self._cache(shape, decision)
        return decision

    def _cache(self, shape: str, decision: _Shape) -> None:
        if len(self._shapes) >= SHAPE_CACHE_MAX:
            self._shapes.clear()  # only a cache: a shape's cluster is found again by key
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
        self._cache(shape, decision)
        return decision

    def _learn(self, shape_tokens: list[str]) -> Cluster:
        return self._learn_key(*display_key(shape_tokens))

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


# Lines are grouped in classes (see _classify) while a batch has at most this many keys
# per line; past it the batch and the next ones mask every line, trying classes again
# every GROUP_PROBE-th batch.
GROUP_MAX_CLASSES = 0.5
# Keys of line classes remembered across batches (see _ClassCache).
CLASS_CACHE_MAX = 200_000
GROUP_PROBE = 8
# Batches whose lines are at least this much of known keys find them in the C tables
# (_classify_known); the others (learning) are classified whole, in chunks.
KNOWN_MIN = 0.5
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
    """Masking of a few lines (the representatives of the classes of a chunk)."""

    shapes: pa.DictionaryArray  # masked shape of each line
    codes: np.ndarray  # shapes.indices as numpy
    seg_lengths: np.ndarray  # byte lengths of [lit0, val0, lit1, ..., litN] of every line
    seg_offsets: np.ndarray  # line i's segments: seg_lengths[seg_offsets[i]:seg_offsets[i+1]]
    values: pa.Array | None = None  # the masked values, flat (when asked for)
    val_offsets: np.ndarray | None = None  # line i's: values[val_offsets[i]:val_offsets[i+1]]


def _split(arr: pa.Array, keep_values: bool = False) -> _Split:
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
    seg_lengths = pc.binary_length(flat).to_numpy(zero_copy_only=False).astype(np.int64)
    sp = _Split(shapes, codes, seg_lengths, offsets.astype(np.int64))
    if keep_values:
        sp.values, sp.val_offsets = flat.filter(pa.array(odd)), val_offsets
    return sp


# Masking looks at digits only through classes that hold all ten (\d, \w, hex...) and
# the literal "0" of "0x": lines equal with every digit made "1" mask at the same places,
# unless a digit is followed by "x"/"X" (such lines are grouped again with those digits
# kept). Lines equal under that mapping form a *class*; the regular expression runs once
# per class (on one line of it), and a class whose literal text holds digits is grouped
# again with those digits kept (its lines may differ in shape there).
_ZERO, _ONE = np.uint8(48), np.uint8(49)


def _normalise(data: np.ndarray, block: int = 1 << 18) -> np.ndarray:
    """``data`` (UTF-8 bytes) with every ASCII digit made "1" (in blocks that stay in the
    cache: twice as fast as whole-array passes)."""
    out = np.empty(len(data), dtype=np.uint8)
    t = np.empty(min(block, len(data)), dtype=np.uint8)
    digit = np.empty(len(t), dtype=bool)
    for i in range(0, len(data), block):
        src = data[i : i + block]
        k = len(src)
        tk, dk = t[:k], digit[:k]
        np.subtract(src, _ZERO, out=tk)
        np.less(tk, np.uint8(10), out=dk)
        tk -= np.uint8(1)
        tk *= dk
        np.subtract(src, tk, out=out[i : i + k])
    return out


def _firsts(codes: np.ndarray, n: int) -> np.ndarray:
    """Index of the first line of each of the ``n`` codes of a dictionary encoding (codes
    are numbered in order of first appearance)."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    top = np.maximum.accumulate(codes)
    first = np.flatnonzero(np.concatenate(([True], top[1:] != top[:-1])))
    if len(first) != n:  # not in first-appearance order: find them the slow way
        _, first = np.unique(codes, return_index=True)
    return first


def _lines(arr: pa.Array) -> tuple[np.ndarray, pa.Buffer | None]:
    """(the n + 1 byte offsets of a string array's lines in its data buffer, that
    buffer): the raw buffers, the array's slice taken into account."""
    _, obuf, dbuf = arr.buffers()
    return np.frombuffer(obuf, dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1], dbuf


def _string_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets relative to the first line, data bytes) of a string array."""
    offs, dbuf = _lines(arr)
    lo, hi = int(offs[0]), int(offs[-1])
    if dbuf is None or hi == lo:
        return offs - np.int32(lo), np.zeros(0, dtype=np.uint8)
    return offs - np.int32(lo), np.frombuffer(dbuf, dtype=np.uint8)[lo:hi]


def _digit_before_x(keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Byte positions (in its string) of each "1" followed by "x"/"X" in each key, flat,
    and how many each has."""
    offs, data = _string_parts(keys)
    count = np.zeros(len(keys), dtype=np.int64)
    if len(data) < 2:
        return np.zeros(0, dtype=np.int64), count
    at = np.flatnonzero((data[:-1] == _ONE) & ((data[1:] | np.uint8(32)) == np.uint8(120)))
    key = np.searchsorted(offs, at, side="right") - 1
    inside = at + 1 < offs[key + 1]
    at, key = at[inside], key[inside]
    count[:] = np.bincount(key, minlength=len(keys))
    return at - offs[key], count


@dataclass
class _Classes:
    """The vectorised part of mining one chunk: its lines grouped in classes."""

    codes: np.ndarray  # class of each line (classes in order of first appearance)
    reps: _Split  # one line of each class, masked
    starts: np.ndarray  # byte offsets of the lines in data (n + 1, absolute)
    data: pa.Buffer | None  # the chunk's data buffer
    grouped: bool = True  # False: every line is its own class (codes = 0..n-1)

    @property
    def shapes(self) -> pa.DictionaryArray:
        return self.reps.shapes

    @property
    def shape_codes(self) -> np.ndarray:
        """Shape of each class."""
        return self.reps.codes

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=len(self.reps.codes)).astype(np.float64)


class _Keys:
    """Lines made keys (digits made "1"), grouped by key; digits can be put back."""

    def __init__(self, arr: pa.Array) -> None:
        self.arr = arr
        rel, self.data = _string_parts(arr)
        self.rel = pa.py_buffer(rel)
        self.line_start = rel[:-1].astype(np.int64)
        self.norm = _normalise(self.data)
        self.encode()

    def encode(self) -> None:
        keys = pa.StringArray.from_buffers(len(self.arr), self.rel, pa.py_buffer(self.norm))
        enc = keys.dictionary_encode()
        self.dictionary = enc.dictionary
        self.codes = enc.indices.to_numpy(zero_copy_only=False)

    def firsts(self, which: list[int] | None = None) -> np.ndarray:
        """The first line of each group (or of the groups ``which``), in order."""
        first = _firsts(self.codes, len(self.dictionary))
        return first if which is None else first[which]

    def reps(self, which: list[int] | None = None) -> pa.Array:
        """One line (the first) of each group (or of the groups ``which``), in order."""
        return self.arr.take(pa.array(self.firsts(which)))

    def restore(self, pos: np.ndarray, count: np.ndarray) -> bool:
        """Put the original bytes back at ``pos`` (per group: ``count`` positions each, in
        its line) in every line of the group; regroup. False when there was none."""
        lines = np.flatnonzero(count[self.codes] > 0)
        if not len(lines):
            return False
        codes = self.codes[lines]
        cum = np.zeros(len(count) + 1, dtype=np.int64)
        np.cumsum(count, out=cum[1:])
        at = _gather(cum[codes], count[codes])
        where = np.repeat(self.line_start[lines], count[codes]) + pos[at]
        self.norm[where] = self.data[where]
        self._regroup(count > 0, lines)
        return True

    def _regroup(self, changed: np.ndarray, lines: np.ndarray) -> None:
        """Encode again the keys of ``lines`` (those of the groups ``changed``), keeping
        the other groups; groups renumbered in order of first appearance."""
        keys = pa.StringArray.from_buffers(len(self.arr), self.rel, pa.py_buffer(self.norm))
        enc = keys.take(pa.array(lines)).dictionary_encode()
        sub = enc.indices.to_numpy(zero_copy_only=False)
        kept = np.flatnonzero(~changed)
        first = np.concatenate((
            _firsts(self.codes, len(self.dictionary))[kept],
            lines[_firsts(sub, len(enc.dictionary))],
        ))
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        old = np.full(len(self.dictionary), -1, dtype=np.int64)
        old[kept] = rank[: len(kept)]
        codes = old[self.codes]
        codes[lines] = rank[len(kept) + sub]
        self.codes = codes
        self.dictionary = pa.concat_arrays(
            [self.dictionary.take(pa.array(kept)), enc.dictionary]
        ).take(pa.array(order))


class _ClassCache:
    """What masking found for the keys of earlier batches (so that the regular expression
    only runs for keys never seen): per first-level key, the byte positions of the digits
    of its literal text; per class key, its shape and segment lengths. Only keys of two
    lines or more of a batch are kept (a line with a hex id is seldom seen again).
    Bounded: restarts empty when full. Shared by the chunk threads (single dict
    operations only). With the C helper, the same keys are also in C tables
    (``_KnownKeys``) where the lines of a batch find their class in one pass; ``classes``
    then holds each class key's entry by the id the C table gives."""

    def __init__(self, max_entries: int = 0) -> None:
        self.max_entries = max_entries or CLASS_CACHE_MAX
        self.digits: dict[str, bytes] = {}  # int32 positions
        self.splits: dict[str, tuple[str, bytes]] = {}  # shape, int32 segment lengths
        self.classes: list[tuple[str, bytes]] = []
        lib = _native()
        self.native = _KnownKeys(lib) if lib is not None else None
        self._write = threading.Lock()

    def room(self) -> None:
        if len(self.digits) + len(self.splits) >= self.max_entries:
            self.digits, self.splits = {}, {}
            with self._write:
                self.classes = []  # a new list: ids of a lookup made before stay valid
                if self.native is not None:
                    self.native.clear()

    def keep_digits(self, key: str, pos: bytes) -> None:
        self.digits[key] = pos
        if self.native is not None:
            with self._write:
                self.native.add_digits(key, pos)

    def keep_split(self, key: str, entry: tuple[str, bytes]) -> None:
        self.splits[key] = entry
        if self.native is not None:
            with self._write:
                self.native.add_class(key, len(self.classes))
                self.classes.append(entry)


class _KnownKeys:
    """The C tables of a _ClassCache (see mohlog_known_* in native/mine.c)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.ptr = lib.mohlog_known_new()
        if not self.ptr:
            raise MemoryError("mohlog_known_new")

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self.lib.mohlog_known_free(self.ptr)
            self.ptr = None

    def clear(self) -> None:
        fresh = self.lib.mohlog_known_new()
        if not fresh:
            raise MemoryError("mohlog_known_new")
        self.lib.mohlog_known_free(self.ptr)
        self.ptr = fresh

    def add_digits(self, key: str, pos: bytes) -> None:
        raw = key.encode()
        if self.lib.mohlog_known_add_digits(self.ptr, raw, len(raw), pos, len(pos) // 4):
            raise MemoryError("mohlog_known_add_digits")

    def add_class(self, key: str, cls: int) -> None:
        raw = key.encode()
        if self.lib.mohlog_known_add_class(self.ptr, raw, len(raw), cls):
            raise MemoryError("mohlog_known_add_class")

    def lookup(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Class id of each line (int32), -1 for the lines whose keys are not known; and
        for those lines, the hash of their first-level key (uint64; 0 for the others)."""
        starts, dbuf = _lines(arr)
        starts = np.ascontiguousarray(starts)
        out = np.empty(len(arr), dtype=np.int32)
        key_hash = np.empty(len(arr), dtype=np.uint64)
        data = dbuf.address if dbuf is not None and dbuf.size else None  # None: all empty
        if self.lib.mohlog_known_lookup(self.ptr, data or ctypes.addressof(_ONE_BYTE),
                                        starts.ctypes.data, len(arr), out.ctypes.data,
                                        key_hash.ctypes.data) < 0:
            raise MemoryError("mohlog_known_lookup")
        return out, key_hash


_ONE_BYTE = ctypes.c_char()


def _classify(arr: pa.Array, group: bool = True, cache: _ClassCache | None = None) -> _Classes:
    starts, dbuf = _lines(arr)
    keys = _Keys(arr) if group else None
    if keys is None or len(keys.dictionary) > GROUP_MAX_CLASSES * len(arr):
        # lines mostly distinct: grouping them would not pay
        sp = _split(arr, keep_values=True)
        return _Classes(np.arange(len(arr), dtype=np.int64), sp, starts, dbuf, grouped=False)
    cache = cache if cache is not None else _ClassCache()
    cache.room()
    if len(keys.data):
        keys.restore(*_digit_before_x(keys.dictionary))
    names: list[str] = keys.dictionary.to_pylist()
    digits, splits = cache.digits, cache.splits  # (a full cache swaps them: keep these)
    found = [digits.get(k) for k in names]
    miss = [i for i, v in enumerate(found) if v is None]
    rep_lines = np.zeros(0, dtype=np.int64)
    rep_entries: list[tuple[str, bytes]] = []
    if miss:
        # keys of one line in the batch are not remembered (often a line with a hex id:
        # seldom seen again)
        again = (np.bincount(keys.codes, minlength=len(names)) > 1)[miss]
        rep_lines = keys.firsts(miss)
        reps = arr.take(pa.array(rep_lines))
        sp = _split(reps)
        shape_digits = pc.match_substring_regex(sp.shapes.dictionary, "[0-9]")
        pos, count = _literal_digits(reps, sp, shape_digits.to_numpy(zero_copy_only=False))
        cut = np.zeros(len(miss) + 1, dtype=np.int64)
        np.cumsum(count, out=cut[1:])
        pos32 = pos.astype(np.int32)
        for k, i in enumerate(miss):
            found[i] = pos32[cut[k] : cut[k + 1]].tobytes()
            if again[k]:
                cache.keep_digits(names[i], found[i])  # type: ignore[arg-type]
        # what masking found for each representative is the entry of its class (whose
        # key is known once the literal digits are put back)
        rep_entries = _split_entries(sp)
    count = np.array([len(v) for v in found], dtype=np.int64) // 4  # type: ignore[arg-type]
    if count.any() and keys.restore(np.frombuffer(b"".join(found), dtype=np.int32), count):  # type: ignore[arg-type]
        names = keys.dictionary.to_pylist()
    entries = [splits.get(k) for k in names]
    if rep_entries:
        again = np.bincount(keys.codes, minlength=len(names)) > 1
        for c, e in zip(keys.codes[rep_lines].tolist(), rep_entries, strict=True):
            if entries[c] is None:
                entries[c] = e
                if again[c]:
                    cache.keep_split(names[c], e)
    miss = [i for i, v in enumerate(entries) if v is None]
    if miss:
        again = (np.bincount(keys.codes, minlength=len(names)) > 1)[miss]
        sp = _split(keys.reps(miss))
        for i, e in zip(miss, _remember(cache, sp, [names[i] for i in miss], again), strict=True):
            entries[i] = e
    return _from_entries(entries, keys.codes.astype(np.int64), starts, dbuf)  # type: ignore[arg-type]


def _from_entries(entries: list[tuple[str, bytes]], codes: np.ndarray, starts: np.ndarray,
                  data: pa.Buffer | None) -> _Classes:
    """Classes from the (shape, segment lengths) of each class and the class of each line."""
    shapes = pa.array([e[0] for e in entries], pa.string()).dictionary_encode()
    seg_lengths = np.frombuffer(b"".join(e[1] for e in entries), dtype=np.int32)
    seg_offsets = np.zeros(len(entries) + 1, dtype=np.int64)
    np.cumsum([len(e[1]) // 4 for e in entries], out=seg_offsets[1:])
    sp = _Split(
        shapes, shapes.indices.to_numpy(zero_copy_only=False),
        seg_lengths.astype(np.int64), seg_offsets,
    )
    return _Classes(codes, sp, starts, data)


def _classify_known(arr: pa.Array, cache: _ClassCache) -> _Classes | None:
    """``_classify`` for a batch, the known keys looked up in C: the lines find their class
    in the C tables in one pass. Of the others, those whose first-level key is the only
    one of its kind in the batch (mostly lines with a hex id: never remembered) are masked
    each on its own, and the rest go through ``_classify`` (in chunks on the worker threads
    when many), which remembers their keys. None (for ``_classify`` on the whole batch)
    without the C helper or when fewer than KNOWN_MIN of the lines are known (learning)."""
    if cache.native is None:
        return None
    cache.room()
    known = cache.classes  # the entries of the ids the lookup gives (the list grows
    n_known = len(known)   # while the other lines are classified)
    found, key_hash = cache.native.lookup(arr)
    cls = found.astype(np.int64)
    miss = np.flatnonzero(found < 0)
    if len(miss) > (1 - KNOWN_MIN) * len(arr):
        return None
    more: list[tuple[str, bytes]] = []
    if len(miss):
        _, inv, counts = np.unique(key_hash[miss], return_inverse=True, return_counts=True)
        alone = counts[inv.reshape(-1)] == 1
        lone, rest = miss[alone], miss[~alone]
        if len(lone):
            cls[lone] = n_known + np.arange(len(lone))
            more += _split_entries(_split(_take(arr, lone)))
        if len(rest):
            parts = list(_pool().map(lambda c: _classify(c, True, cache),
                                     _chunks(_take(arr, rest))))
            at = 0
            for part in parts:
                cls[rest[at : at + len(part.codes)]] = n_known + len(more) + part.codes
                more += _split_entries(part.reps)
                at += len(part.codes)
    codes, first = _first_order(cls, n_known + len(more))
    entries = [known[c] if c < n_known else more[c - n_known]
               for c in cls[first].tolist()]
    out = _from_entries(entries, codes, *_lines(arr))
    out.grouped = len(entries) <= GROUP_MAX_CLASSES * len(arr)
    return out


def _take(arr: pa.Array, lines: np.ndarray) -> pa.Array:
    return arr if len(lines) == len(arr) else arr.take(pa.array(lines))


def _first_order(cls: np.ndarray, n_cls: int) -> tuple[np.ndarray, np.ndarray]:
    """``cls`` renumbered in order of first appearance, and the first line of each."""
    lib = _native()
    if lib is not None:
        cls = np.ascontiguousarray(cls, np.int64)
        out = np.empty(len(cls), np.int64)
        first = np.empty(len(cls), np.int64)
        scratch = np.empty(max(n_cls, 1), np.int64)
        r = lib.mohlog_first_order(cls.ctypes.data, len(cls), n_cls, scratch.ctypes.data,
                                   out.ctypes.data, first.ctypes.data)
        if r >= 0:
            return out, first[:r]
    _, idx, inv = np.unique(cls, return_index=True, return_inverse=True)
    order = np.argsort(idx, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank[inv.reshape(-1)], idx[order]


def _remember(
    cache: _ClassCache, sp: _Split, names: list[str], keep: np.ndarray
) -> list[tuple[str, bytes]]:
    """(shape, segment lengths) of the lines of a split; those with ``keep`` are cached
    under their key in ``names``."""
    out = _split_entries(sp)
    for name, entry, k in zip(names, out, keep.tolist(), strict=True):
        if k:
            cache.keep_split(name, entry)
    return out


def _split_entries(sp: _Split) -> list[tuple[str, bytes]]:
    """(shape, segment lengths) of each line of a split."""
    texts: list[str] = sp.shapes.dictionary.to_pylist()
    seg = sp.seg_lengths.astype(np.int32)
    cut = sp.seg_offsets.tolist()
    return [(texts[c], seg[cut[k] : cut[k + 1]].tobytes()) for k, c in enumerate(sp.codes.tolist())]


def _literal_digits(
    reps: pa.Array, sp: _Split, shape_digits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Byte positions (in its line) of the digits outside masked values of each
    representative, flat, and how many each has."""
    count = np.zeros(len(reps), dtype=np.int64)
    hit = np.flatnonzero(shape_digits[sp.codes])
    if not len(hit):
        return np.zeros(0, dtype=np.int64), count
    offs, data = _string_parts(reps.take(pa.array(hit)))
    nseg = np.diff(sp.seg_offsets)[hit]
    seg = _gather(sp.seg_offsets[hit], nseg)
    seg_lit = ((seg - np.repeat(sp.seg_offsets[hit], nseg)) & 1) == 0
    lit = np.repeat(seg_lit, sp.seg_lengths[seg])  # byte of a literal segment
    at = np.flatnonzero(lit & (np.subtract(data, _ZERO) < 10))
    line = np.searchsorted(offs, at, side="right") - 1
    count[hit] = np.bincount(line, minlength=len(hit))
    return at - offs[line], count


def _bounds(shape: str, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """Where each parameter of a recipe lies in its shape: every parameter is one piece
    of the line (a masked value, a constant token or a whole token), from byte x0 to x1
    of the shape (UTF-8, MARK one byte). For each bound: x, and j the number of masked
    values before it, so that in a line it is at ``x - j + (lengths of values < j)``."""
    xs: list[int] = []
    js: list[int] = []
    x = var = r = 0
    for tok in tokenize(shape):
        raw = tok.encode("utf-8")
        marks = tok.count(MARK)
        p = recipe[r] if r < len(recipe) else None
        if p is not None:
            if not marks:
                if p == (tok,):  # a wildcard over a constant token (the first such)
                    xs += [x, x + len(raw)]
                    js += [var, var]
                    r += 1
            elif p == (var,):  # each value its own parameter
                q = -1
                for k in range(marks):
                    q = raw.index(0, q + 1)
                    xs += [x + q, x + q + 1]
                    js += [var + k, var + k + 1]
                r += marks
            else:  # one parameter for the whole token
                xs += [x, x + len(raw)]
                js += [var, var + marks]
                r += 1
        var += marks
        x += len(raw) + 1
    if r != len(recipe):
        raise AssertionError(f"recipe {recipe!r} does not fit shape {shape!r}")
    return np.array(xs, dtype=np.int64), np.array(js, dtype=np.int64)


def _output(decisions: list[_Shape], cl: _Classes) -> MinedBatch:
    """Template ids and parameters of every line: each parameter is a piece of its line,
    at the same place in every line of a class (one take over the data buffer)."""
    sp, codes, starts = cl.reps, cl.codes, cl.starts
    shape_tids = np.array([d.tid for d in decisions], dtype=np.uint64)
    nparams = np.array([len(d.recipe) for d in decisions], dtype=np.int64)
    tids = shape_tids[sp.codes][codes]
    line_nparams = nparams[sp.codes][codes]
    loff = np.zeros(len(codes) + 1, dtype=np.int32)
    np.cumsum(line_nparams, out=loff[1:])
    if not int(loff[-1]):
        return MinedBatch(tids, pa.ListArray.from_arrays(pa.array(loff), pa.array([], pa.string())))
    if sp.values is not None and sp.val_offsets is not None and all(d.identity for d in decisions):
        params = pa.ListArray.from_arrays(pa.array(sp.val_offsets, type=pa.int32()), sp.values)
        return MinedBatch(tids, params)
    rel = _class_bounds(decisions, sp, 2 * nparams)
    cls_nb = 2 * nparams[sp.codes]
    cls_off = np.zeros(len(sp.codes) + 1, dtype=np.int32)
    np.cumsum(cls_nb, out=cls_off[1:])
    lib = _native()
    if lib is not None and cl.data is not None:
        values = _gather_params(lib, cl, codes, cls_off, rel.astype(np.int32), int(loff[-1]))
        if values is not None:
            return MinedBatch(tids, pa.ListArray.from_arrays(pa.array(loff), values))
    lists = pa.ListArray.from_arrays(pa.array(cls_off), pa.array(rel.astype(np.int32)))
    per_line = lists.take(pa.array(codes)).flatten().to_numpy(zero_copy_only=False)
    bounds = np.empty(len(per_line) + 2, dtype=np.int32)
    bounds[0], bounds[-1] = starts[0], starts[-1]
    np.add(per_line, np.repeat(starts[:-1], cls_nb[codes]), out=bounds[1:-1])
    segments = pa.StringArray.from_buffers(len(bounds) - 1, pa.py_buffer(bounds), cl.data)
    flat = segments.take(pa.array(np.arange(1, len(bounds) - 1, 2, dtype=np.int64)))
    return MinedBatch(tids, pa.ListArray.from_arrays(pa.array(loff), flat))


_SRC = Path(__file__).with_name("native") / "mine.c"


def _declare(lib: ctypes.CDLL) -> None:
    p = ctypes.c_void_p
    i64, i32 = ctypes.c_int64, ctypes.c_int32
    lib.mohlog_mine_gather.restype = i64
    lib.mohlog_mine_gather.argtypes = [p, p, p, i64, p, p, p, i64, p]
    lib.mohlog_known_new.restype = p
    lib.mohlog_known_new.argtypes = []
    lib.mohlog_known_free.restype = None
    lib.mohlog_known_free.argtypes = [p]
    lib.mohlog_known_add_digits.restype = ctypes.c_int
    lib.mohlog_known_add_digits.argtypes = [p, ctypes.c_char_p, i64, ctypes.c_char_p, i32]
    lib.mohlog_known_add_class.restype = ctypes.c_int
    lib.mohlog_known_add_class.argtypes = [p, ctypes.c_char_p, i64, i32]
    lib.mohlog_known_lookup.restype = i64
    lib.mohlog_known_lookup.argtypes = [p, p, p, i64, p, p]
    lib.mohlog_first_order.restype = i64
    lib.mohlog_first_order.argtypes = [p, i64, i64, p, p, p]


def _native() -> ctypes.CDLL | None:
    return clib.load(_SRC, _declare)


def _gather_params(lib: ctypes.CDLL, cl: _Classes, codes: np.ndarray, cls_off: np.ndarray,
                   rel: np.ndarray, n_params: int) -> pa.Array | None:
    """The parameters of every line, flat, copied from the lines in one C pass (the numpy
    path of ``_output`` does the same with two Arrow takes, ~3x slower); None when a bound
    falls outside its line or the pieces overlap (never expected: the caller then takes the
    Arrow path)."""
    starts = np.ascontiguousarray(cl.starts, np.int32)
    data = np.frombuffer(cl.data, np.uint8)  # type: ignore[arg-type]
    codes = np.ascontiguousarray(codes, np.int64)
    out = np.empty(max(int(starts[-1]) - int(starts[0]), 1), np.uint8)  # pieces never overlap
    voff = np.empty(n_params + 1, np.int32)
    size = lib.mohlog_mine_gather(data.ctypes.data, starts.ctypes.data, codes.ctypes.data,
                                  len(codes), cls_off.ctypes.data, rel.ctypes.data,
                                  out.ctypes.data, len(out), voff.ctypes.data)
    if size < 0:
        return None
    return pa.Array.from_buffers(pa.string(), n_params,
                                 [None, pa.py_buffer(voff), pa.py_buffer(out[:size])])


def _class_bounds(decisions: list[_Shape], sp: _Split, nb: np.ndarray) -> np.ndarray:
    """Start and end of every parameter of every class, in its line (flat, class by
    class). ``nb``: twice the number of parameters of each shape."""
    cls_nb = nb[sp.codes]
    rel = np.empty(int(cls_nb.sum()), dtype=np.int64)
    cls_off = np.zeros(len(cls_nb) + 1, dtype=np.int64)
    np.cumsum(cls_nb, out=cls_off[1:])
    segcum = np.zeros(len(sp.seg_lengths) + 1, dtype=np.int64)
    np.cumsum(sp.seg_lengths, out=segcum[1:])
    seg0 = sp.seg_offsets[:-1]
    ident = np.array([d.identity for d in decisions], dtype=bool)[sp.codes]
    # parameters = the values: their bounds are the first 2n segment ends
    ic = np.flatnonzero(ident & (cls_nb > 0))
    if len(ic):
        at = _gather(seg0[ic] + 1, cls_nb[ic])
        rel[_gather(cls_off[ic], cls_nb[ic])] = segcum[at] - np.repeat(segcum[seg0[ic]], cls_nb[ic])
    oc = np.flatnonzero(~ident & (cls_nb > 0))
    if len(oc):
        # bound (x, j) of the shape -> x - j + (lengths of the values before it)
        used = [k for k, d in enumerate(decisions) if not d.identity]
        bx = np.concatenate([decisions[k].bx for k in used])  # type: ignore[misc]
        bj = np.concatenate([decisions[k].bj for k in used])  # type: ignore[misc]
        start = np.full(len(decisions), -1, dtype=np.int64)
        start[used] = np.concatenate(([0], np.cumsum(nb[used])[:-1]))
        at = _gather(start[sp.codes[oc]], cls_nb[oc])
        j = bj[at]
        cls = np.repeat(oc, cls_nb[oc])
        # value lengths before each bound: the odd segments up to segment 2j
        vlen = sp.seg_lengths.copy()
        local = np.arange(len(vlen)) - np.repeat(seg0, np.diff(sp.seg_offsets))
        vlen[(local & 1) == 0] = 0
        vcum = np.zeros(len(vlen) + 1, dtype=np.int64)
        np.cumsum(vlen, out=vcum[1:])
        before = vcum[seg0[cls] + 2 * j] - vcum[seg0[cls]]
        rel[_gather(cls_off[oc], cls_nb[oc])] = bx[at] - j + before
    return rel


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
