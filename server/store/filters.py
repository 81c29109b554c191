"""Vectorised filtering of record tables (memory tail or segment) by a LogQuery."""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from mohlog import clib
from mohlog.errors import InvalidInput
from mohlog.model import LEVEL_RANK
from server.store import batch as batchmod
from server.store import params as paramsmod
from server.store import words
from server.store.query import Filter, LogQuery

OUT_COLUMNS = [*batchmod.SCHEMA.names, "template_id", "params"]
_CHEAP = ("id", "timestamp", "level", "component", "source", "host", "pid", "tid", "process",
          "template_id")
# Identifiers compared exactly whatever the case flag (process and message follow it).
_EXACT = ("host", "component", "source", "id", "level")
_RANKS = pa.array(list(LEVEL_RANK.keys())), pa.array(list(LEVEL_RANK.values()), pa.int64())


def empty(miner: Any = None) -> pa.Table:
    from server.store.engine import MEM_SCHEMA
    return MEM_SCHEMA.empty_table()


def apply(t: pa.Table, q: LogQuery, miner: Any, cursor: tuple[int, str] | None = None,
          message: bool = True, top: int | None = None) -> pa.Table:
    """Rows of t matching q (and after cursor), OUT_COLUMNS.

    Messages are rendered from their template only when needed: for text terms and
    message/metadata filters (on the rows left by the cheap filters), or for the output
    (``message=False`` leaves it null, for aggregations). With ``top``, rows are ordered by
    q.sort and cut to ``top`` before rendering when no filter needs the message.
    """
    mask = _cheap_mask(t, q, cursor)
    if mask is not None:
        t = t.filter(mask)
    needs = needs_message(q)
    if not needs and top is not None and t.num_rows > top:
        order = "descending" if q.sort == "desc" else "ascending"
        idx = pc.select_k_unstable(t, top, [("timestamp", order), ("id", order)])
        t = t.take(idx)
    if not needs and not message:
        return _null_message(t)
    if not t.num_rows:
        return with_message(t.slice(0, 0), miner)
    t = with_message(t, miner)
    mask = _message_mask(t, q)
    return t.filter(mask) if mask is not None else t


def _may_hold(template: str, needle: str) -> bool:
    pieces = template.split("<*>")
    if any(needle in p for p in pieces) or "<*><*>" in template:
        return True
    for i, p in enumerate(pieces):
        if not p:
            continue
        if len(pieces) > 1 and (p in needle or _overlap(p, needle, i > 0,
                                                          i < len(pieces) - 1)):
            return True
    return False


def _overlap(piece: str, needle: str, param_before: bool, param_after: bool) -> bool:
    """The needle could start inside this fixed piece and run into the next parameter,
    or start in the previous parameter and end inside this piece."""
    n = min(len(piece), len(needle) - 1)
    if param_after and any(piece.endswith(needle[:k]) for k in range(1, n + 1)):
        return True
    return param_before and any(piece.startswith(needle[-k:]) for k in range(1, n + 1))


def needs_message(q: LogQuery) -> bool:
    return bool(q.terms) or any(f.field == "message" or f.field.startswith("metadata.")
                                for f in q.filters)


def _null_message(t: pa.Table) -> pa.Table:
    if "message" not in t.column_names:
        t = t.append_column("message", pa.nulls(t.num_rows, pa.string()))
    return t.select(OUT_COLUMNS)


def with_message(t: pa.Table, miner: Any) -> pa.Table:
    if "message" not in t.column_names:
        if t.num_rows:
            msg = miner.render_many(t["template_id"].to_numpy(), t["params"].combine_chunks())
        else:
            msg = pa.array([], pa.string())
        t = t.append_column("message", msg)
    return t.select(OUT_COLUMNS)


def _and(a: pa.Array | None, b: pa.Array | None) -> pa.Array | None:
    if a is None:
        return b
    if b is None:
        return a
    return pc.and_(a, b)


def _cheap_mask(t: pa.Table, q: LogQuery, cursor: tuple[int, str] | None) -> pa.Array | None:
    m = None
    ts = t["timestamp"]
    if q.start is not None:
        m = _and(m, pc.greater_equal(ts, q.start))
    if q.end is not None:
        m = _and(m, pc.less(ts, q.end))
    if cursor is not None:
        m = _and(m, _after(t, q, cursor))
    for f in q.filters:
        if f.field in _CHEAP:
            m = _and(m, field_mask(t[f.field], f, q.case))
    return m


def _after(t: pa.Table, q: LogQuery, cursor: tuple[int, str]) -> pa.Array:
    cts, cid = cursor
    ts, ids = t["timestamp"], t["id"]
    if q.sort == "desc":
        return pc.or_(pc.less(ts, cts), pc.and_(pc.equal(ts, cts), pc.less(ids, cid)))
    return pc.or_(pc.greater(ts, cts), pc.and_(pc.equal(ts, cts), pc.greater(ids, cid)))


def _message_mask(t: pa.Table, q: LogQuery) -> pa.Array | None:
    m = None
    for f in q.filters:
        if f.field == "message":
            m = _and(m, field_mask(t["message"], f, q.case))
        elif f.field.startswith("metadata."):
            m = _and(m, _metadata_mask(t["metadata"], f, q.case))
    for term in q.terms:
        msg = t["message"]
        if term.kind == "regex":
            m = _and(m, pc.match_substring_regex(msg, term.text, ignore_case=not q.case))
        elif term.kind == "word":
            m = _and(m, pc.match_substring_regex(msg, word_regex(term.text),
                                                 ignore_case=not q.case))
        else:
            m = _and(m, pc.match_substring(msg, term.text, ignore_case=not q.case))
    return m


# A word is a run of ASCII letters/digits and non-ASCII characters (as in the word index).
_WORD_RE2 = "0-9A-Za-z\\x{80}-\\x{10FFFF}"
_WORD_PY = re.compile(r"(?:[0-9A-Za-z]|[^\x00-\x7f])+")


def is_word_char(c: str) -> bool:
    return not c.isascii() or c.isalnum()


def word_regex(w: str) -> str:
    """RE2 pattern: w not preceded or followed by a word character (a bare word of ``q``
    matches whole words: ``7493702076`` finds ``blk_7493702076`` but not ``17493702076``)."""
    pre = f"(?:^|[^{_WORD_RE2}])" if w and is_word_char(w[0]) else ""
    post = f"(?:$|[^{_WORD_RE2}])" if w and is_word_char(w[-1]) else ""
    return pre + re.escape(w) + post


def required_words(q: LogQuery) -> list[str]:
    """Words every matching message holds as whole words (for the word index): all the
    words of a bare word term, and the words inside phrases and regex literals that do not
    touch their ends (those may be parts of longer words)."""
    out: list[str] = []
    for t in q.terms:
        if t.kind == "word":
            out += _WORD_PY.findall(t.text)
        elif t.kind == "phrase":
            out += _interior(t.text)
        else:
            for lit in regex_literals(t.text):
                out += _interior(lit)
    return out


def _interior(s: str) -> list[str]:
    return [m.group() for m in _WORD_PY.finditer(s) if m.start() > 0 and m.end() < len(s)]


def field_mask(col: pa.ChunkedArray | pa.Array, f: Filter, case: bool) -> pa.Array:
    if f.field == "level" and f.op in ("<", "<=", ">", ">="):
        ranks = pc.take(_RANKS[1], pc.index_in(col, value_set=_RANKS[0]))
        return _cmp(ranks, f.op, f.int_value())
    if pa.types.is_integer(col.type):
        return _cmp(col, f.op, _scalar(f, col.type)) if f.op not in ("contains", "regex") else \
            _text(pc.cast(col, pa.string()), f, case)
    return _text(col, f, case)


def _scalar(f: Filter, typ: pa.DataType) -> pa.Scalar:
    try:
        return pa.scalar(f.int_value(), typ)
    except (OverflowError, pa.ArrowInvalid) as err:
        raise InvalidInput(f"filter {f.field}{f.op}{f.value}: out of range") from err


def _cmp(col: Any, op: str, v: Any) -> pa.Array:
    fn = {"=": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal,
          ">": pc.greater, ">=": pc.greater_equal}[op]
    return pc.fill_null(fn(col, v), False)


def _text(col: Any, f: Filter, case: bool) -> pa.Array:
    if f.op == "contains":
        return pc.fill_null(pc.match_substring(col, f.value, ignore_case=not case), False)
    if f.op == "regex":
        return pc.fill_null(pc.match_substring_regex(col, f.value, ignore_case=not case), False)
    if f.op in ("=", "!=") and not case and f.field not in _EXACT:
        eq = pc.equal(pc.utf8_lower(col), f.value.lower())
        return pc.fill_null(eq if f.op == "=" else pc.invert(eq), False)
    return _cmp(col, f.op, f.value)


def _metadata_mask(col: Any, f: Filter, case: bool) -> pa.Array:
    key = f.field.split(".", 1)[1]
    values = [_meta_get(s, key) for s in col.to_pylist()]
    if f.op == "regex":
        # Arrow's RE2 (linear time), as for messages: Python's backtracking engine held
        # the GIL for ever on "(a+)+$" against a long value, and the whole hub stopped.
        texts = pa.array([None if v is None else v if isinstance(v, str) else
                          orjson.dumps(v).decode() for v in values], pa.string())
        return pc.fill_null(pc.match_substring_regex(texts, f.value, ignore_case=not case),
                            False)
    out = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        out[i] = v is not None and _match_value(v, f, case)
    return pa.array(out)


def _meta_get(s: str | None, key: str) -> Any:
    if not s:
        return None
    doc = orjson.loads(s)
    for part in key.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def _match_value(v: Any, f: Filter, case: bool) -> bool:
    if f.op in ("<", "<=", ">", ">=") and isinstance(v, int | float):
        try:
            w = float(f.value)
        except ValueError:
            return False
        return {"<": v < w, "<=": v <= w, ">": v > w, ">=": v >= w}[f.op]
    s = v if isinstance(v, str) else orjson.dumps(v).decode()
    a, b = (s, f.value) if case else (s.lower(), f.value.lower())
    if f.op == "=":
        return a == b
    if f.op == "!=":
        return a != b
    if f.op == "contains":
        return b in a
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[f.op]


# ---- row selection on segment row groups (read the filter columns, keep row positions) ----

def scan_columns(q: LogQuery, cursor: bool = False) -> list[str]:
    """The columns a segment row group must provide for ``Selector.select`` (the id, long
    and unique, only for a cursor or a filter on it)."""
    cols = ["timestamp", "id"] if cursor else ["timestamp"]
    for f in q.filters:
        if f.field in _CHEAP and f.field not in cols:
            cols.append(f.field)
    if needs_message(q):
        cols += [c for c in ("template_id", "params") if c not in cols]
    if any(f.field.startswith("metadata.") for f in q.filters):
        cols.append("metadata")
    return cols


class Selector:
    """Which rows of a segment row group match a query, without rendering the messages
    that need not be: a word or phrase inside a template's fixed text matches every row of
    that template; rows are rendered only where the template or a parameter may hold the
    term across a boundary, for regexes (prefiltered by their literal parts) and for
    message or metadata filters. Template decisions are cached for the whole query."""

    def __init__(self, q: LogQuery, miner: Any, cursor: tuple[int, str] | None,
                 cache: dict[tuple, int] | None = None) -> None:
        self.q, self.miner, self.cursor = q, miner, cursor
        self.terms = q.terms
        self.render_all = any(f.field == "message" or f.field.startswith("metadata.")
                              for f in q.filters)
        self.needles = [_needles(t, q.case) for t in self.terms]
        # Decisions on templates, shared by the store's queries (see _per_row, _slot_joins,
        # _inner_hashes, _in_templates).
        self._class: dict[tuple, Any] = {} if cache is None else cache
        self._infos: dict[int, Any] | None = None
        self._anywhere: bool | None = None
        # per segment, per needle, per row group: the templates that may hold the needle
        # there (None: any), for ``select``'s ``among`` (server.store.prune)
        self.allowed: dict[str, list[list[pa.Array | None]]] = {}
        self.rendered = 0
        # Terms are checked on the packed parameters of segments as read (in C, a row at
        # a time): lists are unpacked only for the rows that need them.
        self.takes_packed = bool(self.terms) and not self.render_all and \
            not any("\x1f" in n for ns in self.needles for n in ns) and _native() is not None

    def select(self, t: pa.Table, top: int | None, among: np.ndarray | None = None
               ) -> np.ndarray:
        """Rows of ``t`` that match (of those ``among`` leaves, when given), at most the
        ``top`` newest (oldest for ascending order) and their ties."""
        if not self.takes_packed:
            t = paramsmod.unpacked(t)
        mask = _cheap_mask(t, self.q, self.cursor)
        if mask is None:
            idx = np.arange(t.num_rows) if among is None else np.flatnonzero(among)
        else:
            keep = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
            idx = np.flatnonzero(keep if among is None else keep & among)
        if len(idx) and (self.terms or self.render_all):
            if top is not None and len(idx) > top and not self.render_all and \
                    all(term.kind != "regex" for term in self.terms) and self._in_templates():
                # Rows whose templates decide every term count without looking at their
                # parameters: when there are enough of them, rows older than the page
                # they make (newer for ascending order) cannot enter it.
                sure = self._sure(t, idx)
                if sure.sum() >= top:
                    idx = idx[self._top_mask(t["timestamp"].to_numpy()[idx], top, sure)]
            idx = self._text(t, idx)
        if top is not None and len(idx) > top:
            idx = idx[self._top_mask(t["timestamp"].to_numpy()[idx], top)]
        return idx

    def _top_mask(self, ts: np.ndarray, top: int, among: np.ndarray | None = None
                  ) -> np.ndarray:
        """Rows at least as new (old for asc) as the top-th of ``among`` (default: all),
        ties included (ids break them later)."""
        pool = ts if among is None else ts[among]
        desc = self.q.sort == "desc"
        kth = np.partition(pool, len(pool) - top)[len(pool) - top] if desc else \
            np.partition(pool, top - 1)[top - 1]
        return ts >= kth if desc else ts <= kth

    def _in_templates(self) -> bool:
        """Does every needle occur in the text of some template? (Else no row is sure.)"""
        if self._anywhere is None:
            # Shared by queries: templates are only added, so a yes holds for good and a
            # no until the number of templates changes.
            infos = self.miner.templates()
            key = ("anywhere", self.q.case, tuple(map(tuple, self.needles)))
            got = self._class.get(key)
            if got is not None and (got[1] or got[0] == len(infos)):
                self._anywhere = bool(got[1])
            else:
                texts = [i.text if self.q.case else i.text.lower() for i in infos.values()]
                self._anywhere = all(any(n in x for x in texts)
                                     for needles in self.needles for n in needles)
                self._class[key] = (len(infos), self._anywhere)
        return self._anywhere

    def _sure(self, t: pa.Table, idx: np.ndarray) -> np.ndarray:
        """Rows (of idx) whose template holds every term in its fixed text."""
        tids = t["template_id"].combine_chunks()
        if len(idx) != t.num_rows:
            tids = tids.take(pa.array(idx))
        sure = np.ones(len(idx), bool)
        for term, needles in zip(self.terms, self.needles, strict=True):
            for needle in needles:
                sure &= self._per_row(tids, needle, self.q.case, term.kind == "word") == 2
        return sure

    def _per_row(self, tids: pa.Array, needle: str, case: bool, word: bool) -> np.ndarray:
        """``_decide`` of each row's template: decided once per template and needle (a
        template id is the hash of its text, so a decision holds for good), kept in one
        sorted array per needle shared by queries and looked up for a row group at once."""
        uniq = pc.unique(tids)
        which = pc.index_in(tids, value_set=uniq).to_numpy(zero_copy_only=False)
        if uniq.null_count:
            cls = np.array([self._decide(needle, tid, case, word)
                            for tid in uniq.to_pylist()], np.int8)
            return cls[which]
        ids = uniq.to_numpy()
        key = ("sorted", needle, case, word)
        known_ids, known_cls = self._class.get(key) or (np.zeros(0, np.uint64),
                                                       np.zeros(0, np.int8))
        at, found = _sorted_find(known_ids, ids)
        cls = np.zeros(len(ids), np.int8)
        cls[found] = known_cls[at[found]]
        miss = np.flatnonzero(~found)
        if len(miss):
            cls[miss] = [self._decide(needle, int(t), case, word) for t in ids[miss]]
            decided = miss[cls[miss] != 3]          # an unknown template may become known
            merged = np.concatenate((known_ids, ids[decided]))
            order = np.argsort(merged, kind="stable")
            self._class[key] = (merged[order],
                                np.concatenate((known_cls, cls[decided]))[order])
        return cls[which]

    def _text(self, t: pa.Table, idx: np.ndarray) -> np.ndarray:
        sub = t if len(idx) == t.num_rows else t.take(pa.array(idx))
        keep = np.ones(len(idx), bool)
        verify = np.full(len(idx), self.render_all)
        for term, needles in zip(self.terms, self.needles, strict=True):
            k, v = self._term(sub, term, needles)
            keep &= k
            verify |= v
        verify &= keep
        if verify.any():
            rows = np.flatnonzero(verify)
            vs = paramsmod.unpacked(sub.take(pa.array(rows)))
            msg = self.miner.render_many(vs["template_id"].to_numpy(),
                                         vs["params"].combine_chunks())
            self.rendered += len(rows)
            cols = {"message": msg}
            if "metadata" in vs.column_names:
                cols["metadata"] = vs["metadata"]
            ok = _message_mask(pa.table(cols), self.q)
            if ok is not None:
                keep[rows[~pc.fill_null(ok, False).to_numpy(zero_copy_only=False)]] = False
        return idx[keep]

    def _term(self, sub: pa.Table, term: Any, needles: list[str]) -> tuple[np.ndarray,
                                                                          np.ndarray]:
        """(rows that may match, rows that must be rendered to know). Needles are taken
        longest first, each on the rows the previous ones left."""
        n = sub.num_rows
        if not needles:                       # a regex with no literal part
            return np.ones(n, bool), np.ones(n, bool)
        case = self.q.case and term.kind != "regex"
        word = term.kind == "word"
        alive = np.arange(n)
        sure = np.ones(n, bool)
        for needle in sorted(needles, key=len, reverse=True):
            part = sub if len(alive) == n else sub.take(pa.array(alive))
            per_row = self._per_row(part["template_id"].combine_chunks(), needle, case, word)
            m = len(alive)
            hit = np.zeros(m, bool)
            edge = np.zeros(m, bool)
            if (per_row < 2).any() and paramsmod.is_packed(part):
                hit = _contains_rows(part["params"], needle, case)
                one = per_row == 1
                if one.any() and word and plain_word(needle):
                    # A whole word crossing a parameter edge is a match of the needle
                    # crossing it: the rows whose slots' needs a parameter meets (C), then
                    # the whole-word edge check on the lists of those rows only.
                    rows1 = np.flatnonzero(self._slot_edges_rows(part, one, needle, case))
                    if len(rows1):
                        edge[rows1[self._word_edge_rows(part.take(pa.array(rows1)), needle,
                                                        case)]] = True
                elif one.any():
                    edge = self._slot_edges_rows(part, one, needle, case)
            elif (per_row < 2).any():
                flat = pc.list_flatten(part["params"])
                parents = pc.list_parent_indices(part["params"]).to_numpy(
                    zero_copy_only=False)
                found = _contains(flat, needle, case)
                hit[parents[found]] = True
                one = per_row == 1
                if one.any():           # only parameters of those rows can join
                    mine = one[parents]
                    if word and plain_word(needle):
                        flat1, parents1 = pc.filter(flat, pa.array(mine)), parents[mine]
                        jl, jr = self._slot_joins(part, parents, mine)
                        edges = _word_edges(flat1, needle, case, jl, jr,
                                            self._inner_hashes(needle))
                        edge[parents1[edges]] = True
                    else:
                        edges = self._slot_edges(part, parents, mine, flat, needle, case)
                        edge[parents[edges]] = True
            if word and (per_row == 1).any():
                # the word in fixed text next to a slot: a whole word when the parameter
                # there ends (starts) with a non-word character or is empty
                edge |= self._touch_rows(part, per_row == 1, needle, case)
            ok = (per_row >= 2) | hit | ((per_row == 1) & edge)
            sure[alive[per_row != 2]] = False
            alive = alive[ok]
            if not len(alive):
                break
        keep = np.zeros(n, bool)
        keep[alive] = True
        if term.kind == "regex":
            sure[:] = False
        return keep, keep & ~sure

    def _table(self, key: tuple, make: Callable[[], _SlotTable]) -> _SlotTable:
        """The store's ``_SlotTable`` under ``key`` (made by ``make()`` when missing)."""
        table = self._class.get(key)
        if table is None:
            table = self._class[key] = make()
        return table

    def _slot_codes(self, table: _SlotTable, part: pa.Table, parents: np.ndarray,
                    mine: np.ndarray) -> np.ndarray:
        """The code in ``table`` of the slot of each parameter ``mine`` selects (of
        ``part``'s flattened ``params``, whose rows are ``parents``)."""
        offsets = part["params"].combine_chunks().offsets.to_numpy()
        at = np.flatnonzero(mine)
        rows = parents[at]
        slot = at - (offsets[rows] - offsets[0])
        return table.codes_of(part["template_id"].combine_chunks(), rows, slot,
                              self._templates())

    def _templates(self) -> dict[int, Any]:
        if self._infos is None:
            self._infos = self.miner.templates()
        return self._infos

    def _slot_joins(self, part: pa.Table, parents: np.ndarray, mine: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Does each parameter's slot in its template touch a word character or another
        parameter on the left, on the right? (Both for an unknown template or a parameter
        past its slots.)"""
        table = self._table(("joins",), lambda: _SlotTable(_slot_joinable, (True, True)))
        codes = self._slot_codes(table, part, parents, mine)
        sides = np.array(table.values, bool).reshape(-1, 2)
        return sides[codes, 0], sides[codes, 1]

    def _slot_edges(self, part: pa.Table, parents: np.ndarray, mine: np.ndarray,
                    flat: Any, needle: str, case: bool) -> np.ndarray:
        """Parameters (of ``flat``, among the ones ``mine`` selects) a match of ``needle``
        could cross the edge of, given the fixed text around each one's slot
        (``_slot_needs``)."""
        if not case and not needle.isascii():
            return mine.copy()                  # case folding beyond ASCII: no pruning
        table = self._needs_table(needle, case)
        lib = _native()
        if lib is not None and not part["params"].null_count:
            return _needs_met_c(lib, table, part, mine, flat, case, self._templates())
        codes = self._slot_codes(table, part, parents, mine)
        if len(codes) < len(flat):      # the others need nothing (no copy of the strings)
            full = np.full(len(flat), table.code(()), np.int32)
            full[mine] = codes
            codes = full
        return _needs_met(flat, codes, table.values, case)

    def _touch_rows(self, part: pa.Table, mine: np.ndarray, needle: str, case: bool
                    ) -> np.ndarray:
        """Rows (among ``mine``) whose template holds the word ``needle`` in fixed text
        touching a slot (``_touching``) whose parameter leaves it a whole word: empty, or
        with a non-word character at its edge toward it."""
        table = self._table(("touch", needle, case), lambda: _SlotTable(
            lambda pieces: _touching([p if case else p.lower() for p in pieces], needle),
            (False, False)))
        base, count, codes = table.rows_of(part["template_id"].combine_chunks(),
                                           self._templates())
        touches = np.array(table.values, bool).reshape(-1, 2).any(axis=1)[codes]
        upto = np.concatenate(([0], np.cumsum(touches)))
        out = np.zeros(part.num_rows, bool)
        rows = np.flatnonzero(mine & (upto[base + count] > upto[base]))
        if not len(rows):
            return out
        sub = paramsmod.unpacked(part.take(pa.array(rows)))
        flat, parents = _flat_params(sub["params"])
        side = np.array(table.values, bool).reshape(-1, 2)[
            self._slot_codes(table, sub, parents, np.ones(len(parents), bool))]
        flat, off, data = _raw(flat)
        size = off[1:] - off[:-1]
        first = ~_WORD_BYTES[np.take(data, off[:-1], mode="clip")] | (size == 0)
        last = ~_WORD_BYTES[np.take(data, off[1:] - 1, mode="clip")] | (size == 0)
        if flat.null_count:
            first |= ~np.asarray(flat.is_valid())
        met = (side[:, 0] & first) | (side[:, 1] & last)
        out[rows[parents[met]]] = True
        return out

    def _word_edge_rows(self, part: pa.Table, needle: str, case: bool) -> np.ndarray:
        """Rows of ``part`` (packed parameters) with a parameter a whole word ``needle``
        may cross the edge of (``_word_edges`` on their lists)."""
        part = paramsmod.unpacked(part)
        flat, parents = _flat_params(part["params"])
        jl, jr = self._slot_joins(part, parents, np.ones(len(flat), bool))
        edges = _word_edges(flat, needle, case, jl, jr, self._inner_hashes(needle))
        return np.unique(parents[edges])

    def _needs_table(self, needle: str, case: bool) -> _SlotTable:
        return self._table(("needs", needle, case), lambda: _SlotTable(
            lambda pieces: _slot_needs([p if case else p.lower() for p in pieces], needle),
            None))

    def _slot_edges_rows(self, part: pa.Table, mine: np.ndarray, needle: str, case: bool
                         ) -> np.ndarray:
        """``_slot_edges`` on packed parameters, by row: rows (among ``mine``) with a
        parameter a match of ``needle`` could cross the edge of."""
        if not case and not needle.isascii():
            return mine.copy()                  # case folding beyond ASCII: no pruning
        lib = _native()
        assert lib is not None
        return _needs_met_rows_c(lib, self._needs_table(needle, case), part, mine, case,
                                 self._templates())

    def _inner_hashes(self, needle: str) -> np.ndarray:
        """Word hashes of the needle's proper substrings (``_word_edges``)."""
        key = ("inner", needle)
        got = self._class.get(key)
        if got is None:
            n = len(needle)
            subs = {needle[i:j] for i in range(n) for j in range(i + 1, n + 1) if j - i < n}
            got = np.concatenate([words.query_hashes(x) for x in subs]) if subs else \
                np.zeros(0, np.uint64)
            self._class[key] = got
        return got

    def _decide(self, needle: str, tid: int | None, case: bool, word: bool) -> int:
        """0: no row of the template can hold the needle; 1: only across a boundary between
        its text and a parameter; 2: every row holds it; 3: unknown template."""
        if self._infos is None:
            self._infos = self.miner.templates()
        info = self._infos.get(tid) if tid is not None else None
        if info is None:
            self._infos = None   # (a template new since the query began: look again)
            return 3             # unknown template: render to know
        text = info.text if case else info.text.lower()
        pieces = text.split("<*>")
        if word:
            sure = any(_whole_inside(p, needle, i > 0, i < len(pieces) - 1)
                       for i, p in enumerate(pieces))
        else:
            sure = any(needle in p for p in pieces)
        if sure:
            return 2
        return 1 if _may_hold(text, needle) else 0


_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[ord("A"):ord("Z") + 1] += 32


def _sorted_find(known: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in the sorted array ``known`` and which of them are there
    (positions of the absent ones are in bounds but meaningless)."""
    if not len(known):
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    at = np.minimum(np.searchsorted(known, ids), len(known) - 1)
    return at, known[at] == ids


def _non_ascii(data: np.ndarray, off: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Which strings ``idx`` (of the buffers ``data``/``off``) hold a non-ASCII byte:
    case folding beyond ASCII (the Kelvin sign folds to k) is not modelled, so such a
    string may take part in a case-insensitive match."""
    if not len(idx) or data.tobytes().isascii():
        return np.zeros(len(idx), bool)
    high = np.concatenate(([0], np.cumsum(data >= 0x80)))
    return high[off[1:][idx]] > high[off[:-1][idx]]


def _raw(flat: Any) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """``words.string_buffers`` as (array, offsets, bytes), the bytes never empty (so
    vectorised reads at any offset stay in bounds)."""
    flat, data, off = words.string_buffers(flat)
    return flat, off, (data if len(data) else np.zeros(1, np.uint8))


def _match(flat: Any, needle: str, case: bool) -> np.ndarray:
    m = pc.fill_null(pc.match_substring(flat, needle, ignore_case=not case), False)
    if isinstance(m, pa.ChunkedArray):
        m = m.combine_chunks()
    return m.to_numpy(zero_copy_only=False)


def _contains(flat: Any, needle: str, case: bool, most: int = 4096) -> np.ndarray:
    """Which strings of ``flat`` contain ``needle`` (case folded unless ``case``), as
    ``pc.match_substring`` says: a search of the whole byte buffer (memmem speed) mapped
    back to strings, for needles found at most ``most`` times (ASCII folding only);
    Arrow's per-string match otherwise."""
    folds = not case and needle.lower() != needle.upper()
    if not needle or (folds and not needle.isascii()):
        return _match(flat, needle, case)
    lib = _native()
    if lib is not None:
        return _contains_c(lib, flat, needle, folds)
    flat, off, data = _raw(flat)
    lo, hi = int(off[0]), int(off[-1])
    raw = data[lo:hi].tobytes()
    if folds:
        if not raw.isascii():
            return _match(flat, needle, case)     # Unicode case folding (K: Kelvin sign)
        raw = raw.lower()                         # ASCII letters only
    key = (needle.lower() if folds else needle).encode()
    if raw.count(key) > most:
        return _match(flat, needle, case)
    out = np.zeros(len(flat), bool)
    at = raw.find(key)
    starts = off[1:] - lo
    while at >= 0:
        i = int(np.searchsorted(starts, at, "right"))    # the string holding byte `at`
        if at + len(key) <= starts[i]:
            out[i] = True
        at = raw.find(key, at + 1)
    if flat.null_count:
        out &= np.asarray(flat.is_valid())
    return out


def _contains_c(lib: ctypes.CDLL, strings: Any, needle: str, folds: bool,
                undecided: Callable[[Any], np.ndarray] | None = None) -> np.ndarray:
    """``_contains`` in C: each string searched for the (ASCII-folded when ``folds``)
    needle; strings with non-ASCII bytes, when folding, are left to ``undecided`` (the
    strings -> which hold it; default: Arrow's match)."""
    strings, off, data = _raw(strings)
    key = np.frombuffer((needle.lower() if folds else needle).encode(), np.uint8)
    got = np.zeros(len(strings), np.uint8)
    left = lib.mohlog_contains(data.ctypes.data, off.ctypes.data, len(strings),
                               key.ctypes.data, len(key), int(folds), got.ctypes.data)
    out = got == 1
    if left:
        at = np.flatnonzero(got == 2)
        some = strings.take(pa.array(at))
        out[at] = undecided(some) if undecided else _match(some, needle, False)
    if strings.null_count:
        out &= np.asarray(strings.is_valid())
    return out


class _SlotTable:
    """A value per template slot, computed once per store (a template's text is fixed for
    its id) by ``per_slot(pieces)`` and kept as small integer codes in one flat array;
    ``values`` holds each code's value, code 0 the value for unknown templates and
    parameters past their template's slots."""

    def __init__(self, per_slot: Callable[[list[str]], list[Any]], unknown: Any) -> None:
        self._lock = threading.Lock()
        self._per_slot = per_slot
        self._at: dict[int, tuple[int, int]] = {}
        self._code: dict[Any, int] = {unknown: 0}
        self.values: list[Any] = [unknown]
        self._codes = np.zeros(1, np.int32)
        self._ids = np.zeros(0, np.uint64)                  # known templates, sorted,
        self._pairs = np.zeros((0, 2), np.int64)            # and their (base, count)
        self.compiled: _CompiledNeeds | None = None           # values for the C check

    def codes_of(self, tids: pa.Array, rows: np.ndarray, slot: np.ndarray,
                 infos: dict[int, Any]) -> np.ndarray:
        """The code of slot ``slot[i]`` of the template of row ``rows[i]`` (of ``tids``)."""
        base, count, codes = self.rows_of(tids, infos)
        base, count = base[rows], count[rows]
        return codes[np.where(slot < count, base + slot, 0)]

    def rows_of(self, tids: pa.Array, infos: dict[int, Any]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each row of ``tids``, where its template's slot codes start and how many
        there are, and the array of codes they index (slot s of row r has code
        ``codes[base[r] + s]`` when s < count[r], else code 0). Templates met before are
        looked up in one sorted array; new ones are computed."""
        uniq = pc.unique(tids)
        which = pc.index_in(tids, value_set=uniq).to_numpy(zero_copy_only=False)
        with self._lock:
            if uniq.null_count:
                pairs = np.array([self._place(t, infos) for t in uniq.to_pylist()],
                                 np.int64).reshape(-1, 2)
            else:
                ids = uniq.to_numpy()
                at, found = _sorted_find(self._ids, ids)
                if not found.all():
                    for t in ids[~found].tolist():
                        self._place(t, infos)
                    known = np.fromiter(self._at, np.uint64, len(self._at))
                    order = np.argsort(known)
                    self._ids = known[order]
                    self._pairs = np.array(list(self._at.values()), np.int64
                                           ).reshape(-1, 2)[order]
                    at, found = _sorted_find(self._ids, ids)
                pairs = np.zeros((len(ids), 2), np.int64)         # unknown: (0, 0)
                pairs[found] = self._pairs[at[found]]
            codes = self._codes
        return pairs[which, 0], pairs[which, 1], codes

    def _place(self, tid: int | None, infos: dict[int, Any]) -> tuple[int, int]:
        """(first code index, slot count) of a template, computed when new (under the
        lock; the caller re-sorts the known ids); an unknown template (yet) is not kept:
        (0, 0), code 0 everywhere."""
        if tid is None:
            return 0, 0
        got = self._at.get(tid)
        if got is not None:
            return got
        info = infos.get(tid)
        if info is None:
            return 0, 0
        vals = self._per_slot(info.text.split("<*>"))
        new = [self._code.setdefault(v, len(self._code)) for v in vals]
        got = self._at[tid] = (len(self._codes), len(vals))
        if new:
            self._codes = np.concatenate((self._codes, np.array(new, np.int32)))
            self.values = list(self._code)
        return got

    def code(self, value: Any) -> int:
        """The code of a value (given one when new)."""
        with self._lock:
            got = self._code.get(value)
            if got is None:
                got = self._code[value] = len(self._code)
                self.values = list(self._code)
            return got


def _touching(pieces: list[str], needle: str) -> list[tuple[bool, bool]]:
    """Per slot of a template (its fixed ``pieces``): does the word ``needle`` end the text
    before the slot (whether it is a whole word there depends on the first character of
    the slot's parameter), does it begin the text after it (on its last character)?"""
    k = len(pieces) - 1
    right = bool(needle) and is_word_char(needle[-1])
    left = bool(needle) and is_word_char(needle[0])
    return [(right and pieces[i].endswith(needle), left and pieces[i + 1].startswith(needle))
            for i in range(k)]


def _slot_joinable(pieces: list[str]) -> list[tuple[bool, bool]]:
    """Per slot: does a word character or a parameter touch it on the left, on the right?"""
    k = len(pieces) - 1
    return [((i > 0 and not pieces[i]) or (bool(pieces[i]) and is_word_char(pieces[i][-1])),
             (i + 1 < k and not pieces[i + 1]) or
             (bool(pieces[i + 1]) and is_word_char(pieces[i + 1][0]))) for i in range(k)]


def _slot_needs(pieces: list[str], needle: str, most: int = 48, shortcut: bool = True
                ) -> list[tuple[tuple[str, bytes], ...] | None]:
    """Per slot of a template (its fixed ``pieces``, case folded like ``needle``): what a
    parameter there must be for a match of the needle to cross its edge without lying
    inside it — end with ``needle[:j]`` (the match runs on into the text after), start with
    ``needle[-j:]`` (it began before), or equal ``needle[a:b]`` (it runs through) — where
    the rest of the needle agrees with the fixed text beside the slot, or may run on into
    the next parameter when the text after is shorter. A match is looked for from the
    parameter right after its first character only: one beginning in a parameter there
    (the text after the slot decides), one beginning in fixed text in the parameter that
    follows it (that text holds the needle's start); so a match coming from a parameter
    further left is never looked for again here. None: more than ``most`` such strings
    (anything may). ``shortcut``: decide the usual slots without the loops (False for
    the tests comparing both)."""
    n, k = len(needle), len(pieces) - 1
    heads, tails = set(needle[:-1]), set(needle[1:])
    out: list[tuple[tuple[str, bytes], ...] | None] = []
    for i in range(k):
        left, right, after = pieces[i], pieces[i + 1], i + 1 < k
        if shortcut and (not left or left[-1] not in heads) and (
                right[:1] or " ") not in tails and (right or not after):
            # the text before ends with no start of the needle (no "start"/"eq"), the
            # text after begins with none of its later characters (no "end"): the usual
            # case, decided without the loops below
            out.append(())
            continue

        def fits_right(t: str, right: str = right, after: bool = after) -> bool:
            return right.startswith(t) if len(t) <= len(right) else \
                after and t.startswith(right)
        need: set[tuple[str, bytes]] = set()
        for j in range(1, n):
            if fits_right(needle[j:]):
                need.add(("end", needle[:j].encode()))
            if left.endswith(needle[:n - j]):
                need.add(("start", needle[n - j:].encode()))
        for a in range(1, n):
            if left.endswith(needle[:a]):
                need.update(("eq", needle[a:b].encode()) for b in range(a, n)
                            if fits_right(needle[b:]))
        out.append(None if len(need) > most else tuple(sorted(need)))
    return out


def _needs_met(flat: Any, codes: np.ndarray, values: list[Any], case: bool) -> np.ndarray:
    """Which parameters meet their slot's ``_slot_needs`` (code ``codes[i]`` of
    ``values``): compared on the raw bytes, ASCII case folded unless ``case``; a parameter
    holding other bytes meets any need when folding (Unicode folds are not modelled).
    Parameters are first sifted by their length and last and first byte (one table look-up
    each), the few left compared with the strings of their slot."""
    flat, off, data = _raw(flat)
    start, end = off[:-1], off[1:]
    size = end - start
    seen = np.zeros(len(values), bool)
    seen[codes] = True
    present = np.flatnonzero(seen)
    row = np.zeros(len(values), np.int64)
    row[present] = np.arange(len(present))
    r = row[codes]
    big = np.iinfo(np.int64).max
    by_last = np.full((len(present), 256), big, np.int64)    # shortest end/eq string
    by_first = np.full((len(present), 256), big, np.int64)   # shortest start string
    anything = np.zeros(len(present), bool)
    empty = np.zeros(len(present), bool)
    shortest = np.full(len(present), big, np.int64)          # of any string of the slot
    for i, c in enumerate(present.tolist()):
        if values[c] is None:
            anything[i] = True
            continue
        for kind, want in values[c]:
            shortest[i] = min(shortest[i], len(want))
            if not want:
                empty[i] = True
            elif kind == "start":
                by_first[i, want[0]] = min(by_first[i, want[0]], len(want))
            else:
                by_last[i, want[-1]] = min(by_last[i, want[-1]], len(want))
    out = anything[r] | (empty[r] & (size == 0))
    if flat.null_count:
        out |= ~np.asarray(flat.is_valid())
    some = ~anything & ((by_last < big).any(axis=1) | (by_first < big).any(axis=1))
    if not some.any():
        return out

    def byte(pos: np.ndarray) -> np.ndarray:
        b = np.take(data, pos, mode="clip")
        return b if case else _LOWER[b]
    # (a parameter is never shorter in bytes than what it folds to: the sift by length
    # holds for non-ASCII parameters too)
    cand = np.flatnonzero((size >= np.maximum(shortest, 1)[r]) & some[r] & ~out)
    if not case:
        other = _non_ascii(data, off, cand)
        out[cand[other]] = True
        cand = cand[~other]
    rc, sz = r[cand], size[cand]
    cand = cand[(sz >= by_last[rc, byte(end[cand] - 1)]) |
                (sz >= by_first[rc, byte(start[cand])])]
    if not len(cand):
        return out
    wants: dict[tuple[str, bytes], list[int]] = {}
    seen[:] = False
    seen[codes[cand]] = True
    for c in np.flatnonzero(seen).tolist():
        for want in values[c]:
            wants.setdefault(want, []).append(c)
    for (kind, want), cs in wants.items():
        m = len(want)
        sel = cand[np.isin(codes[cand], cs) & ~out[cand]]
        sel = sel[size[sel] == m] if kind == "eq" else sel[size[sel] >= m]
        if not len(sel) or not m:
            out[sel] = True
            continue
        at = (end[sel] - m if kind == "end" else start[sel])[:, None] + np.arange(m)
        got = data[at] if case else _LOWER[data[at]]
        out[sel[(got == np.frombuffer(want, np.uint8)).all(axis=1)]] = True
    return out


_SRC = Path(__file__).with_name("native") / "filters.c"
_NOTHING, _ANYTHING, _LIST = 0, 1, 2
_KINDS = {"end": 0, "start": 1, "eq": 2}


def _declare(lib: ctypes.CDLL) -> None:
    p = ctypes.c_void_p
    lib.mohlog_contains.restype = ctypes.c_int64
    lib.mohlog_contains.argtypes = [p, p, ctypes.c_int64, p, ctypes.c_int64, ctypes.c_int, p]
    lib.mohlog_needs_met_rows.restype = ctypes.c_int64
    lib.mohlog_needs_met_rows.argtypes = [p, p, ctypes.c_int64, ctypes.c_uint8,
                                          *[p] * 12, ctypes.c_int, p]
    fn = lib.mohlog_needs_met
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   *[ctypes.c_void_p] * 13, ctypes.c_int, ctypes.c_void_p]


def _native() -> ctypes.CDLL | None:
    return clib.load(_SRC, _declare)


class _CompiledNeeds:
    """``_slot_needs`` values of a ``_SlotTable`` as flat arrays for the C check."""

    def __init__(self, values: list[Any]) -> None:
        n = len(values)
        self.size = n
        self.kind = np.zeros(n, np.int8)
        self.shortest = np.zeros(n, np.int64)
        self.empty = np.zeros(n, np.uint8)
        e_off = [0]
        ekind: list[int] = []
        woff: list[int] = []
        wlen: list[int] = []
        blob = bytearray()
        for c, need in enumerate(values):
            if need is None:
                self.kind[c] = _ANYTHING
            else:
                wants = list(need)
                self.empty[c] = any(not w for _k, w in wants)
                self.kind[c] = _LIST if any(w for _k, w in wants) else _NOTHING
                self.shortest[c] = min((len(w) for _k, w in wants), default=0)
                for kind, want in wants:
                    ekind.append(_KINDS[kind])
                    woff.append(len(blob))
                    wlen.append(len(want))
                    blob += want
            e_off.append(len(ekind))
        self.e_off = np.array(e_off, np.int32)
        self.ekind = np.array(ekind or [0], np.int8)
        self.woff = np.array(woff or [0], np.int64)
        self.wlen = np.array(wlen or [0], np.int64)
        self.blob = np.frombuffer(bytes(blob) or b"\0", np.uint8)


def _compiled(table: _SlotTable) -> _CompiledNeeds:
    """The needs of ``table`` compiled for C (again when the table has grown)."""
    values = table.values
    compiled = table.compiled
    if compiled is None or compiled.size != len(values):
        compiled = table.compiled = _CompiledNeeds(values)
    return compiled


def _contains_rows(packed: Any, needle: str, case: bool) -> np.ndarray:
    """``_contains`` on packed parameters, by row: rows with a parameter holding
    ``needle`` (which never holds the separator). Rows the C search leaves undecided
    (non-ASCII bytes, case folded) are unpacked and matched by Arrow."""
    lib = _native()
    assert lib is not None
    folds = not case and needle.lower() != needle.upper()

    def by_arrow(rows: Any) -> np.ndarray:
        return _any_param(rows, lambda flat: _match(flat, needle, case))
    if folds and not needle.isascii():
        return by_arrow(packed)
    return _contains_c(lib, packed, needle, folds, by_arrow)


def _flat_params(params: Any) -> tuple[pa.Array, np.ndarray]:
    """A parameters column (packed or lists) as its parameters, flat, and the row of each."""
    lists = paramsmod.unpack(params)
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    return pc.list_flatten(lists), pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)


def _any_param(packed: Any, test: Callable[[Any], np.ndarray]) -> np.ndarray:
    """Rows of packed parameters with a parameter for which ``test`` (on the flattened
    parameters) is true."""
    flat, parents = _flat_params(packed)
    out = np.zeros(len(packed), bool)
    out[parents[test(flat)]] = True
    return out


def _slot_args(table: _SlotTable, part: pa.Table, infos: dict[int, Any]) -> list[Any]:
    """The arguments the C checks of slot needs share: each row's (base, count), the slot
    codes and the compiled needs (kept referenced by the list while the call runs)."""
    base, count, codes = table.rows_of(part["template_id"].combine_chunks(), infos)
    need = _compiled(table)
    return [np.ascontiguousarray(base, np.int64), np.ascontiguousarray(count, np.int64),
            np.ascontiguousarray(codes, np.int32), need.kind, need.shortest, need.empty,
            need.e_off, need.ekind, need.woff, need.wlen, need.blob]


def _needs_met_rows_c(lib: ctypes.CDLL, table: _SlotTable, part: pa.Table, mine: np.ndarray,
                      case: bool, infos: dict[int, Any]) -> np.ndarray:
    """Rows (among ``mine``) of ``part``, whose parameters are packed, with a parameter
    that meets its slot's needs in ``table``."""
    args = _slot_args(table, part, infos)
    packed, off, data = _raw(part["params"])
    mine8 = np.ascontiguousarray(mine, np.uint8)
    met = np.zeros(len(packed), np.uint8)
    ptr = [a.ctypes.data for a in args]
    lib.mohlog_needs_met_rows(data.ctypes.data, off.ctypes.data, len(packed), paramsmod.SEP,
                              *ptr[:3], mine8.ctypes.data, *ptr[3:], int(case),
                              met.ctypes.data)
    return met.view(bool)


def _needs_met_c(lib: ctypes.CDLL, table: _SlotTable, part: pa.Table, mine: np.ndarray,
                 flat: Any, case: bool, infos: dict[int, Any]) -> np.ndarray:
    """``_needs_met`` of the parameters ``mine`` selects (of ``part``'s flattened params,
    ``flat``) against their slots' needs in ``table``, in C: one pass over those
    parameters (no per-parameter arrays of slot codes)."""
    args = _slot_args(table, part, infos)
    lists = part["params"].combine_chunks()
    loff = np.ascontiguousarray(lists.offsets.to_numpy(), np.int32)
    loff = loff - loff[0]
    flat, off, data = _raw(flat)
    mine8 = np.ascontiguousarray(mine, np.uint8)
    valid = None if not flat.null_count else \
        np.ascontiguousarray(np.asarray(flat.is_valid()), np.uint8)
    met = np.zeros(len(flat), np.uint8)
    ptr = [a.ctypes.data for a in args]
    lib.mohlog_needs_met(data.ctypes.data, off.ctypes.data, loff.ctypes.data, len(loff) - 1,
                         *ptr[:3], mine8.ctypes.data,
                         None if valid is None else valid.ctypes.data, *ptr[3:], int(case),
                         met.ctypes.data)
    return met.view(bool)


_WORD_BYTES = np.zeros(256, bool)
_WORD_BYTES[0x80:] = True                      # bytes of non-ASCII characters
_WORD_BYTES[np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                          np.uint8)] = True


def plain_word(needle: str) -> bool:
    """ASCII letters and digits only (the needles ``_word_edges`` handles)."""
    return bool(needle) and needle.isascii() and needle.isalnum()


def _word_edges(flat: Any, needle: str, case: bool, join_left: np.ndarray,
                join_right: np.ndarray, inner_hashes: np.ndarray) -> np.ndarray:
    """Parameters a whole-word occurrence of ``needle`` (``plain_word``) could cross the
    edge of, given for each parameter whether its slot in its template touches a word
    character or another parameter on the left / on the right (else no word runs across
    that edge). A word starting in a parameter and running past its end holds the
    parameter's trailing word run as a proper prefix; one ending in it, the leading run as
    a proper suffix; one running through it, the whole parameter (then all word
    characters) as a proper substring (``inner_hashes``: word hashes of those); an empty
    parameter joins its neighbours."""
    flat, off, data = _raw(flat)
    out = np.zeros(len(flat), bool)
    if flat.null_count:
        out |= ~np.asarray(flat.is_valid())
    size = off[1:] - off[:-1]
    joinable = join_left | join_right
    out |= (size == 0) & joinable
    cand = np.flatnonzero(joinable & (size > 0))
    if not case:
        other = _non_ascii(data, off, cand)
        out[cand[other]] = True
        cand = cand[~other]
    if not len(cand):
        return out
    sub, off, data = _raw(flat.take(pa.array(cand)))
    jl, jr = join_left[cand], join_right[cand]
    nb = np.frombuffer((needle if case else needle.lower()).encode(), np.uint8)
    n, nbytes = len(nb), len(data)
    start, end = off[:-1], off[1:]
    size = end - start
    b = data if case else _LOWER[data]
    pos = np.arange(nbytes)
    nonword = ~_WORD_BYTES[data]
    last_nw = np.maximum.accumulate(np.where(nonword, pos, -1))       # at or before i
    next_nw = np.minimum.accumulate(np.where(nonword, pos, nbytes)[::-1])[::-1]
    tl = end - np.maximum(start, last_nw[end - 1] + 1)                 # trailing run
    hl = np.minimum(end, next_nw[start]) - start                       # leading run
    allword = tl == size
    hit = np.zeros(len(cand), bool)
    for prefix, side, run_at, run_len in ((True, jr, end - tl, tl), (False, jl, start, hl)):
        at_ = np.flatnonzero(side & ~allword & (run_len >= 1) & (run_len < n))
        at, ln = run_at[at_], run_len[at_]
        ok = np.ones(len(at_), bool)
        base = np.zeros(len(at_), np.int64) if prefix else n - ln
        for j in range(n - 1):
            m = ln > j
            ok[m] &= b[at[m] + j] == nb[base[m] + j]
        hit[at_[ok]] = True
    inner = np.flatnonzero(allword & (size < n))
    if len(inner):              # whole parameters inside the needle, by word hashes
        _, in_off, in_data = _raw(sub.take(pa.array(inner)))
        got = words.word_hashes(in_data, in_off)
        hit[inner[np.isin(got, inner_hashes)] if len(got) == len(inner) else inner] = True
    out[cand[hit]] = True
    return out


def _whole_inside(piece: str, w: str, param_before: bool, param_after: bool) -> bool:
    """w occurs in piece as a whole word whatever the parameters around the piece are."""
    start = piece.find(w)
    while start >= 0:
        end = start + len(w)
        left = piece[start - 1] if start > 0 else None
        right = piece[end] if end < len(piece) else None
        ok_left = not (w and is_word_char(w[0])) or (
            (left is None and not param_before) or (left is not None and not is_word_char(left)))
        ok_right = not (w and is_word_char(w[-1])) or (
            (right is None and not param_after) or (right is not None and not is_word_char(right)))
        if ok_left and ok_right:
            return True
        start = piece.find(w, start + 1)
    return False


def _needles(term: Any, case: bool) -> list[str]:
    """Literal strings a match must contain (lower-cased unless the case flag is set:
    regexes always lower-cased and checked case-insensitively, a superset)."""
    if term.kind != "regex":
        return [term.text if case else term.text.lower()]
    return [s.lower() for s in regex_literals(term.text) if len(s) >= 3]


def regex_literals(pattern: str) -> list[str]:
    """Runs of literal characters at the top level of a regex (each must appear in any
    match); empty when the pattern has a top-level alternation or does not parse."""
    import re._parser as sre  # type: ignore[import-not-found]
    try:
        parsed = sre.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return []
    out, cur = [], []
    for op, av in parsed:
        if op is sre.LITERAL:
            cur.append(chr(av))
            continue
        if op is sre.BRANCH:
            return []
        if cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out
