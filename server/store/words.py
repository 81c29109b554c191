"""The word index of a segment: one Bloom filter per row group over the words of its
messages.

A word is a run of ASCII letters and digits (any non-ASCII byte counts as a letter),
lower-cased, hashed with a polynomial hash (sum of byte * P**i modulo 2**64, xor the length
times a constant). The distinct words of a row group are set in a Bloom filter of 20 bits
each (k = 10, ~0.009 % false positives). Until 2026-12 it was 15 bits (~0.08 %): a rare word
then kept a second row group in about a third of the 10M-record bench stores, ~9 ms more.
Filters of either size are read alike (their size gives m). A query whose words are missing
from a row group's filter skips that row group unread.

The same filters hold the values of the fields host, level, component, source and pid
(hashed apart from words: ``field_hashes``), so an equality filter on them skips the row
groups that do not hold the value, and the row group's template ids.

A second filter per row group (since 2026-12-02) holds the words of its messages'
parameters that have no digit (a few hundred per row group, ~1 KB: the words with digits,
~30,000 per row group, are left out), and the hash ``NON_ASCII`` when such a word holds a
non-ASCII byte. With both, a phrase or a regex literal is looked for only in the row groups
holding a template whose text may hold it, or parameters with the words it needs
(:mod:`server.store.prune`). Ingest writes indexes without it (``with_params`` adds it
later, from the parameters column alone, when the hub has CPU to spare); indexes from
before template ids (version 1 in their schema) are built again whole then.

Building runs in C (native/words.c, compiled with the system's C compiler at first use and
cached beside it or in ~/.cache/mohlog): ~0.27 s per million messages here. Without a
compiler the same filters are built with numpy, ~20x slower (said once in the log); both
give the same bits (tested).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from mohlog import clib, log
from server.store.fsutil import fsync_dir

_P = 0x100000001B3                      # odd, so invertible modulo 2**64
_PINV = pow(_P, -1, 1 << 64)
_K = 10
_BITS_PER_WORD = 20
_LUT = np.zeros(256, np.uint8)
for _c in range(256):
    _ch = chr(_c)
    if _c >= 0x80 or _ch.isascii() and _ch.isalnum():
        _LUT[_c] = ord(_ch.lower()) if _c < 0x80 else _c
# Set in a parameter filter when one of its words holds a non-ASCII byte: case folding
# may then map it onto an ASCII word (the Kelvin sign onto k), so the filter cannot say no.
NON_ASCII = 0x6D6F686C6F674E41
# Set in a word filter (since parameter filters came) when one of its words holds a
# Kelvin sign or a long s, the non-ASCII letters whose case folds are ASCII (k, s): a
# case-insensitive word with a k or an s may then be there spelled with them.
FOLDS = 0x6D6F686C6F67464B
_pow_cache: list[np.ndarray] = [np.ones(1, np.uint64), np.ones(1, np.uint64)]


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P**i and P**-i modulo 2**64 for i < n (cached, grown on demand)."""
    if len(_pow_cache[0]) < n:
        m = max(n, 2 * len(_pow_cache[0]))
        with np.errstate(over="ignore"):
            for slot, base in ((0, _P), (1, _PINV)):
                p = np.empty(m, np.uint64)
                p[0] = 1
                p[1:] = np.cumprod(np.full(m - 1, base, np.uint64))
                _pow_cache[slot] = p
    return _pow_cache[0][:n], _pow_cache[1][:n]


def word_hashes(data: np.ndarray, offsets: np.ndarray, letters_only: bool = False,
                non_ascii: int = 0, folds: int = 0) -> np.ndarray:
    """Hashes (uint64) of every word of the strings ``data[offsets[i]:offsets[i+1]]``
    (``letters_only``: of the words without a digit), and the hash ``non_ascii`` if one of
    those holds a non-ASCII byte, ``folds`` if one holds a Kelvin sign or a long s (0:
    never)."""
    n = len(data)
    if n == 0:
        return np.zeros(0, np.uint64)
    b = _LUT[data]
    word = b != 0
    edge = np.zeros(n + 1, bool)
    edge[offsets[(offsets >= 0) & (offsets <= n)]] = True     # strings never join
    prev = np.empty(n, bool)
    prev[0] = False
    prev[1:] = word[:-1]
    nxt = np.empty(n, bool)
    nxt[-1] = False
    nxt[:-1] = word[1:]
    starts = np.flatnonzero(word & (~prev | edge[:-1]))
    ends = np.flatnonzero(word & (~nxt | edge[1:])) + 1
    pw, inv = _powers(n + 1)
    with np.errstate(over="ignore"):
        c = np.zeros(n + 1, np.uint64)
        np.cumsum(b.astype(np.uint64) * pw[:n], out=c[1:])
        h = (c[ends] - c[starts]) * inv[starts]
        h ^= (ends - starts).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h[h == 0] = 1
    def within(flag: np.ndarray) -> np.ndarray:
        upto = np.concatenate(([0], np.cumsum(flag)))
        return upto[ends] > upto[starts]
    kept = ~within((b >= ord("0")) & (b <= ord("9"))) if letters_only else \
        np.ones(len(h), bool)
    marks = []
    if non_ascii and (within(b >= 0x80) & kept).any():
        marks.append(non_ascii)
    if folds:
        at = np.zeros(n, bool)
        at[2:] |= (data[2:] == 0xAA) & (data[1:-1] == 0x84) & (data[:-2] == 0xE2)
        at[1:] |= (data[1:] == 0xBF) & (data[:-1] == 0xC5)
        if (within(at) & kept).any():
            marks.append(folds)
    h = h[kept]
    return np.append(h, np.array(marks, np.uint64)) if marks else h


def query_hashes(text: str) -> np.ndarray | None:
    """Hashes of the words of a query string; None when the index cannot decide for it
    (non-ASCII letters, whose case folding the index does not model)."""
    if not text.isascii():
        return None
    raw = np.frombuffer(text.encode(), np.uint8)
    return word_hashes(raw, np.array([0, len(raw)], np.int64))


def _positions(h: np.ndarray, m: int) -> np.ndarray:
    h1 = h & np.uint64(0xFFFFFFFF)
    h2 = (h >> np.uint64(32)) | np.uint64(1)
    i = np.arange(_K, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return ((h1[:, None] + i[None, :] * h2[:, None]) % np.uint64(m)).ravel()


class _Filters:
    """One packed Bloom filter per row group, probed for all of them at once."""

    def __init__(self, blooms: list[np.ndarray]) -> None:
        sizes = np.array([len(b) for b in blooms], np.int64)
        self.count = len(blooms)
        self._bits = np.concatenate(blooms) if blooms else np.zeros(0, np.uint8)
        self._start = (np.cumsum(sizes) - sizes) * 8        # bit offset of each filter
        self._m = (sizes * 8).astype(np.uint64)

    @property
    def nbytes(self) -> int:
        return int(self._bits.nbytes + self._start.nbytes + self._m.nbytes)

    def present(self, hashes: np.ndarray) -> np.ndarray:
        """[row group, hash]: may the row group's filter hold the hash?"""
        h = np.asarray(hashes, np.uint64)
        if not self.count or not len(h):
            return np.ones((self.count, len(h)), bool)
        h1 = (h & np.uint64(0xFFFFFFFF))[None, :, None]
        h2 = ((h >> np.uint64(32)) | np.uint64(1))[None, :, None]
        i = np.arange(_K, dtype=np.uint64)[None, None, :]
        with np.errstate(over="ignore"):
            pos = (h1 + i * h2) % self._m[:, None, None]
        bit = pos.astype(np.int64) + self._start[:, None, None]
        got = (self._bits[bit >> 3] >> (7 - (bit & 7)).astype(np.uint8)) & 1
        return got.all(axis=2).astype(bool)


@dataclass
class WordIndex:
    blooms: list[np.ndarray]        # one packed bit array per row group
    # per row group, the words without digits of its parameters (None: not built yet,
    # see ``with_params``, or an index from before them)
    params: list[np.ndarray] | None = None
    # 2: the word filters also hold the template ids and ``FOLDS``; 1: from before
    version: int = 2

    def __post_init__(self) -> None:
        self._words = _Filters(self.blooms)
        self._params = None if self.params is None else _Filters(self.params)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blooms) + self._words.nbytes + (
            0 if self.params is None or self._params is None
            else sum(b.nbytes for b in self.params) + self._params.nbytes)

    @property
    def has_params(self) -> bool:
        """Can ``server.store.prune`` use it (template ids and parameter filters)?"""
        return self.version >= 2 and self._params is not None and \
            self._params.count == self._words.count

    def row_groups_with(self, hashes: np.ndarray) -> np.ndarray:
        """For every row group at once: may it hold all these words?"""
        return self._words.present(hashes).all(axis=1)

    def words_present(self, hashes: np.ndarray) -> np.ndarray:
        """[row group, hash] of the word filters (words, field values, template ids)."""
        return self._words.present(hashes)

    def param_words_present(self, hashes: np.ndarray) -> np.ndarray:
        """[row group, hash] of the parameter filters (``has_params`` only)."""
        assert self._params is not None
        return self._params.present(hashes)

    def may_contain(self, rg: int, hashes: np.ndarray) -> bool:
        bits = self.blooms[rg]
        m = len(bits) * 8
        pos = _positions(hashes, m)
        return bool(np.all((bits[pos >> np.uint64(3)] >> (7 - (pos & np.uint64(7)))
                            .astype(np.uint8)) & 1))

    def to_table(self) -> pa.Table:
        cols = {"bloom": pa.array([b.tobytes() for b in self.blooms], pa.binary())}
        if self.params is not None:
            cols["pbloom"] = pa.array([b.tobytes() for b in self.params], pa.binary())
        return pa.table(cols).replace_schema_metadata({_VERSION: str(self.version)})

    @classmethod
    def from_table(cls, t: pa.Table) -> WordIndex:
        def filters(name: str) -> list[np.ndarray]:
            return [np.frombuffer(b, np.uint8) for b in t[name].to_pylist()]
        return cls(filters("bloom"),
                   filters("pbloom") if "pbloom" in t.column_names else None,
                   _version_of(t.schema))


_VERSION = "mohlog.words.version"


def _version_of(schema: pa.Schema) -> int:
    raw = (schema.metadata or {}).get(_VERSION.encode())
    return int(raw) if raw is not None and raw.isdigit() else 1


_SRC = Path(__file__).with_name("native") / "words.c"


def _declare(lib: ctypes.CDLL) -> None:
    fn = lib.mohlog_word_blooms
    fn.restype = ctypes.c_int64
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [p, p, i64, i64, ctypes.c_int, ctypes.c_int, p, i64, p, p, p, p, p, i64,
                   ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64]


def _native() -> ctypes.CDLL | None:
    """The compiled builder, or None without a compiler."""
    return clib.load(_SRC, _declare)


def string_buffers(strings: pa.Array | pa.ChunkedArray
                   ) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(the strings as one array (string or large_string), their bytes, int64 offsets into
    those bytes starting at 0): the raw buffers, no copy of the bytes of a single chunk."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.chunk(0) if strings.num_chunks == 1 else strings.combine_chunks()
    if strings.type not in (pa.large_string(), pa.string()):
        strings = pc.cast(strings, pa.large_string())
    n = len(strings)
    width = np.int64 if strings.type == pa.large_string() else np.int32
    offsets = np.frombuffer(strings.buffers()[1], width)[strings.offset:
                                                         strings.offset + n + 1]
    offsets = offsets.astype(np.int64)
    buf = strings.buffers()[2]
    data = np.frombuffer(buf, np.uint8) if buf is not None else np.zeros(0, np.uint8)
    lo, hi = int(offsets[0]), int(offsets[-1])
    return strings, np.ascontiguousarray(data[lo:hi]), np.ascontiguousarray(offsets - lo)


FIELDS = ("host", "level", "component", "source", "pid")
INDEXED = (*FIELDS, "template_id")          # the columns ``build`` takes as ``fields``


def field_hashes(field: str, values: Any) -> np.ndarray:
    """Hashes of field=value tokens (never equal to a word's hash but by chance): xxh64 of
    "field NUL value" for strings, a 64-bit mix of the value and the field for integers."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        salt = np.uint64(xxhash.xxh64_intdigest(field.encode()))
        with np.errstate(over="ignore"):
            z = values.astype(np.uint64) ^ salt
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
    else:
        z = np.array([xxhash.xxh64_intdigest(f"{field}\x00{v}".encode()) for v in values],
                     np.uint64)
    z[z == 0] = 1
    return z


def _extra(fields: pa.Table | None, n: int, rg_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct field-value hashes of each row group, concatenated, with offsets."""
    n_rg = max(1, -(-n // rg_rows))
    parts = []
    for r in range(n_rg):
        hs = [np.zeros(0, np.uint64)]
        if fields is not None:
            sub = fields.slice(r * rg_rows, rg_rows)
            for name in fields.column_names:
                vals = pc.unique(sub[name]).drop_null()
                arr = vals.to_numpy(zero_copy_only=False) if pa.types.is_integer(vals.type) \
                    else vals.to_pylist()
                hs.append(field_hashes(name, arr))
        parts.append(np.concatenate(hs))
    off = np.zeros(n_rg + 1, np.int64)
    off[1:] = np.cumsum([len(p) for p in parts])
    return np.ascontiguousarray(np.concatenate(parts)), off


def build(messages: pa.Array | pa.ChunkedArray, rg_rows: int, native: bool = True,
          fields: pa.Table | None = None, order: np.ndarray | None = None,
          params: pa.Array | pa.ChunkedArray | None = None) -> WordIndex:
    """The index of a segment whose messages, in stored order, are ``messages`` (or
    ``messages.take(order)``, not copied), the ``fields`` columns (stored order: those of
    ``INDEXED``; without template ids, a version 1 index) and the parameters ``params``
    (stored order, lists or packed; None: no parameter filters, see ``with_params``), and
    whose row groups hold ``rg_rows`` rows each."""
    n = len(messages) if order is None else len(order)
    n_rg = max(1, -(-n // rg_rows))
    extra, extra_off = _extra(fields, n, rg_rows)
    bounds = np.minimum(np.arange(n_rg + 1) * rg_rows, n)
    index = WordIndex(_filters(messages, bounds, native, extra, extra_off, order, folds=FOLDS),
                      version=2 if fields is not None and
                      "template_id" in fields.column_names else 1)
    return index if params is None else with_params(index, params, bounds, native)


def with_params(index: WordIndex, params: pa.Array | pa.ChunkedArray, rows: np.ndarray,
                native: bool = True) -> WordIndex:
    """``index`` with the parameter filters of its row groups, whose rows are
    [rows[r], rows[r+1]) of the segment's parameters ``params`` (lists or packed)."""
    values, bounds = _param_strings(params, rows)
    return WordIndex(index.blooms, _filters(values, bounds, native, letters_only=True,
                                            non_ascii=NON_ASCII), index.version)


def _param_strings(params: pa.Array | pa.ChunkedArray, rows: np.ndarray
                   ) -> tuple[pa.Array, np.ndarray]:
    """The parameters as strings (packed rows, or the lists' values) and where each row
    group's (rows ``rows[r]`` to ``rows[r+1]``) begin and end among them."""
    if isinstance(params, pa.ChunkedArray):
        params = params.combine_chunks()
    rows = np.asarray(rows, np.int64)
    if not (pa.types.is_list(params.type) or pa.types.is_large_list(params.type)):
        return params, rows
    loff = params.offsets.to_numpy().astype(np.int64)
    first = int(loff[0])
    return params.values.slice(first, int(loff[-1]) - first), loff[rows] - first


def _filters(strings: pa.Array | pa.ChunkedArray, bounds: np.ndarray, native: bool,
             extra: np.ndarray | None = None, extra_off: np.ndarray | None = None,
             order: np.ndarray | None = None, letters_only: bool = False,
             non_ascii: int = 0, folds: int = 0) -> list[np.ndarray]:
    """One filter per row group r over the words of strings [bounds[r], bounds[r+1]) (of
    ``strings.take(order)``) and the hashes ``extra[extra_off[r]:extra_off[r+1]]``
    (``word_hashes`` says what the other arguments do)."""
    n_rg = len(bounds) - 1
    if extra is None or extra_off is None:
        extra, extra_off = np.zeros(0, np.uint64), np.zeros(n_rg + 1, np.int64)
    n = len(strings) if order is None else len(order)
    bounds = np.ascontiguousarray(bounds, np.int64)
    lib = _native() if native else None
    if lib is not None:
        _, data, offsets = string_buffers(strings)
        perm = None if order is None else np.ascontiguousarray(order, np.int64)
        cap = (len(data) // 2 + n + 1 + len(extra)) * _BITS_PER_WORD // 8 + 64 * n_rg
        out = np.empty(cap, np.uint8)
        sizes = np.zeros(n_rg, np.int64)
        got = lib.mohlog_word_blooms(data.ctypes.data, offsets.ctypes.data, n, 1,
                                     _BITS_PER_WORD, _K, out.ctypes.data, cap,
                                     sizes.ctypes.data, extra.ctypes.data,
                                     extra_off.ctypes.data,
                                     None if perm is None else perm.ctypes.data,
                                     bounds.ctypes.data, len(bounds), int(letters_only),
                                     non_ascii, folds)
        if got == n_rg:
            ends = np.cumsum(sizes)
            return [out[e - s:e].copy() for s, e in zip(sizes, ends, strict=True)]
        log.store.warning("word index: C helper failed (%d); using numpy", got)
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    if order is not None:
        strings = strings.take(pa.array(order))
    blooms = []
    for r in range(n_rg):
        part = strings.slice(int(bounds[r]), int(bounds[r + 1] - bounds[r]))
        if part.type != pa.large_string():
            part = pc.cast(part, pa.large_string())
        offsets = np.frombuffer(part.buffers()[1], np.int64)[part.offset:
                                                             part.offset + len(part) + 1]
        data = np.frombuffer(part.buffers()[2], np.uint8) if part.buffers()[2] else \
            np.zeros(0, np.uint8)
        lo, hi = int(offsets[0]), int(offsets[-1])
        h = np.concatenate([word_hashes(data[lo:hi], offsets - lo, letters_only, non_ascii,
                                        folds),
                            extra[extra_off[r]:extra_off[r + 1]]])
        h = pc.unique(pa.array(h)).to_numpy()
        m = max(64, (len(h) * _BITS_PER_WORD + 63) // 64 * 64)
        bits = np.zeros(m, bool)
        bits[_positions(h, m)] = True
        blooms.append(np.packbits(bits))
    return blooms


def path_for(seg_path: Path) -> Path:
    return seg_path.with_suffix(".words.arrow")


def write(index: WordIndex, seg_path: Path) -> Path:
    import pyarrow.ipc as ipc
    path = path_for(seg_path)
    tmp = path.with_name(".tmp-" + path.name)
    t = index.to_table()
    with pa.OSFile(str(tmp), "wb") as f, ipc.new_file(f, t.schema) as w:
        w.write_table(t)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def state(seg_path: Path) -> tuple[int, bool] | None:
    """(version, has parameter filters) of the segment's index, from its schema; None: no
    readable index."""
    import pyarrow.ipc as ipc
    try:
        with pa.memory_map(str(path_for(seg_path))) as src:
            schema = ipc.open_file(src).schema
    except (OSError, pa.ArrowInvalid):
        return None
    return _version_of(schema), "pbloom" in schema.names


def read(seg_path: Path) -> WordIndex | None:
    import pyarrow.ipc as ipc
    try:
        with pa.memory_map(str(path_for(seg_path))) as src:
            return WordIndex.from_table(ipc.open_file(src).read_all())
    except (OSError, pa.ArrowInvalid):
        return None
