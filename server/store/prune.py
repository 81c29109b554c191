"""Row groups and rows a phrase or a regex literal cannot occur in, from a segment's word
index.

The word filter of a row group holds every word of its messages, so it cannot tell a rare
``Accepted password for`` from the common ``Failed password for``: both hold the words.
It also holds the row group's template ids, and a second filter holds the words of its
parameters that have no digit (:mod:`server.store.words`). With those, a needle (a
phrase, or a literal part of a regex) is looked for only where it may be.

A message of template T is T's fixed pieces with parameters between them. A placement of
the needle on it lies inside a piece (T holds it: always possible), or begins in a piece
or a parameter and runs over parameters and pieces, the pieces' characters agreeing with
the needle's. Each parameter it crosses holds a part of the needle, and the words of that
part that the parameter's own edges or the part's other characters bound are whole words
of the parameter: for ``Failed password for <*> from …`` and the needle
"accepted password for ", a parameter ending with "accepted password for" (before
" from"), so holding "password" and "for". ``Placements`` lists, per template, the sets
of such words (without digits: those the filter knows) one of which its parameters must
hold; a brute-force test checks them.

A row group is read only if it holds a template whose requirements its parameter filter
meets (or that needs none); in it, only the rows of such templates are checked (``rows``).
A parameter word with a non-ASCII byte may fold onto an ASCII word (the Kelvin sign onto
k): a row group holding one is read whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embeddings.miner import RAW_TEMPLATE_ID
from server.store import words
from server.store.filters import _WORD_PY

_NON_ASCII = np.array([words.NON_ASCII], np.uint64)
_PROBED = 256       # more templates than this in a group: taken as present, not probed


@dataclass
class _Group:
    """Templates with the same requirements: the word hashes of each alternative set."""
    sets: list[np.ndarray]
    ids: np.ndarray                 # template ids
    templates: np.ndarray           # their hashes (as the word filter holds them)


@dataclass
class _Needle:
    known: int                      # templates known when worked out
    always: _Group                  # the templates needing no word
    groups: list[_Group]
    prunes: bool                    # False: too many templates need no word to prune


_Sets = list[frozenset[str]]


def _words(s: str, open_left: bool, open_right: bool) -> list[str]:
    """ASCII words without digits of ``s``, but those touching an open side."""
    out = []
    for m in _WORD_PY.finditer(s):
        if (m.start() == 0 and open_left) or (m.end() == len(s) and open_right):
            continue
        w = m.group()
        if w.isascii() and not any(c.isdigit() for c in w):
            out.append(w.lower())
    return out


class _Minimal:
    """The minimal sets among those added (a superset adds nothing to an "any of"); past
    ``most`` of them, their intersection alone (weaker, so still sound)."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.sets: _Sets = []

    @property
    def always(self) -> bool:
        return bool(self.sets) and not self.sets[0]

    def add(self, s: frozenset[str]) -> None:
        if self.always or any(x <= s for x in self.sets):
            return
        if not s:
            self.sets = [s]
            return
        self.sets = [x for x in self.sets if not s <= x] + [s]
        if len(self.sets) > self.most:
            self.sets = [frozenset.intersection(*self.sets)]


class _Segments:
    """Words of ``needle[x:y]`` a parameter holding just that part holds as whole words:
    ASCII words without digits (those the parameter filter knows), but those touching an
    open side (where the parameter may go on)."""

    def __init__(self, needle: str) -> None:
        self.needle = needle
        self._got: dict[tuple[int, int, bool, bool], frozenset[str]] = {}

    def __call__(self, x: int, y: int, open_left: bool, open_right: bool) -> frozenset[str]:
        key = (x, y, open_left, open_right)
        got = self._got.get(key)
        if got is None:
            got = self._got[key] = frozenset(_words(self.needle[x:y], open_left, open_right))
        return got


class Placements:
    """``requirements`` of templates for one needle, with what templates share cached: a
    piece matters only through where the needle may cross it (its ``_shape``), so
    templates whose pieces have the same shapes have the same requirements."""

    def __init__(self, needle: str, most: int = 16) -> None:
        self.needle, self.most = needle, most
        self.words_of = _Segments(needle)
        self._shapes: dict[str, tuple] = {}
        self._done: dict[tuple, _Sets] = {}

    def _shape(self, piece: str) -> tuple:
        got = self._shapes.get(piece)
        if got is None:
            needle, n = self.needle, len(self.needle)
            got = self._shapes[piece] = (
                needle in piece, min(len(piece), n),
                tuple(y for y in range(n) if needle.startswith(piece[:n - y], y)),
                tuple(len(piece) - o for o in range(max(0, len(piece) - n + 1), len(piece))
                      if needle.startswith(piece[o:])))
        return got

    def requirements(self, pieces: list[str]) -> _Sets:
        """When can a message of a template (its fixed ``pieces``, case folded like the
        needle) hold the needle? Only when its parameters hold, as whole words, every word
        of one of the returned sets: [] never, [frozenset()] always (the text holds it, or
        a placement needs no word the parameter filter knows).

        Every placement of the needle on the message is looked at: it begins inside a
        piece (running on past its end) or inside a parameter; each parameter it crosses
        holds a part of it, whole at a side where the parameter meets a piece or where
        another parameter begins or ends."""
        shapes = tuple(self._shape(p) for p in pieces)
        got = self._done.get(shapes)
        if got is None:
            got = self._done[shapes] = self._placements(shapes)
        return got

    def _placements(self, shapes: tuple) -> _Sets:
        n, k, most, words_of = len(self.needle), len(shapes) - 1, self.most, self.words_of
        if any(sh[0] for sh in shapes):
            return [frozenset()]
        if not n or not k:
            return []
        memo: dict[tuple[int, int, bool], _Sets] = {}

        def from_param(j: int, x: int, closed: bool) -> _Sets:
            """needle[x:] begins in parameter j (1..k), at its beginning when ``closed``."""
            key = (j, x, closed)
            got = memo.get(key)
            if got is not None:
                return got
            out = _Minimal(most)
            out.add(words_of(x, n, not closed, True))       # it ends in the parameter
            size, fits = shapes[j][1], shapes[j][2]
            for y in fits:                                  # the parameter ends at y,
                if out.always:                              # the piece after it fits
                    break
                if y < x:
                    continue
                part = words_of(x, y, not closed, False)
                if y + size >= n:
                    out.add(part)                           # it ends in the piece
                elif j < k:                                 # it runs on past the piece
                    for rest in from_param(j + 1, y + size, True):
                        out.add(part | rest)
            memo[key] = out.sets
            return out.sets

        found = _Minimal(most)
        for j in range(1, k + 1):
            for s in from_param(j, 0, False):
                found.add(s)
        for j in range(k):
            for m in shapes[j][3]:          # the piece ends with the needle's first m
                if found.always:
                    return found.sets
                for s in from_param(j + 1, m, True):
                    found.add(s)
        return found.sets


def _needle(sel: Any, needle: str, case: bool) -> _Needle:
    """What ``needle`` requires of each known template (cached for the store's queries
    while no template is added)."""
    infos = sel._templates()
    key = ("prune", needle, case)
    got = sel._class.get(key)
    if isinstance(got, _Needle) and got.known == len(infos):
        return got
    placements = Placements(needle)
    by_sets: dict[frozenset[frozenset[str]], list[int]] = {}
    texts = [(RAW_TEMPLATE_ID, "<*>")] + [(t, i.text) for t, i in infos.items()]
    for tid, text in texts:
        sets = placements.requirements((text if case else text.lower()).split("<*>"))
        if sets:
            by_sets.setdefault(frozenset(sets), []).append(tid)

    def group(sets: list[np.ndarray], ids: list[int]) -> _Group:
        arr = np.array(ids, np.uint64)
        return _Group(sets, arr, words.field_hashes("template_id", arr))
    always = group([], by_sets.pop(frozenset([frozenset()]), []))
    # (the words are ASCII: query_hashes of them joined gives each one's hash)
    groups = [group([words.query_hashes(" ".join(sorted(x))) for x in sets], ids)
              for sets, ids in by_sets.items()]
    got = _Needle(len(infos), always, groups, len(always.ids) <= _PROBED)
    sel._class[key] = got
    return got


def row_groups(sel: Any, index: words.WordIndex, key: str) -> np.ndarray | None:
    """For each row group of the segment ``index`` describes: may it hold a match of every
    phrase and regex literal of ``sel``'s query? None: the index cannot tell (one from
    before parameter filters) or no needle prunes. Which templates may hold each needle in
    each row group is kept in ``sel.allowed[key]`` for ``rows``."""
    if not index.has_params:
        return None
    keep: np.ndarray | None = None
    allowed: list[list[pa.Array | None]] = []
    for term, needles in zip(sel.terms, sel.needles, strict=True):
        if term.kind == "word":
            continue                # the word filter decides words (engine._pruned)
        case = sel.q.case and term.kind != "regex"
        for needle in needles:
            if not case and not needle.isascii():
                continue            # case folding beyond ASCII is not modelled
            nd = _needle(sel, needle, case)
            if not nd.prunes:
                continue
            got, ids = _may_occur(nd, index)
            allowed.append(ids)
            keep = got if keep is None else keep & got
            if not keep.any():
                break
    sel.allowed[key] = allowed
    return keep


def rows(sel: Any, key: str, groups: list[tuple[int, int]], tids: pa.ChunkedArray
         ) -> np.ndarray | None:
    """Of a read of row groups ``groups`` ((row group, rows) of segment ``key``, in the
    order read; template ids ``tids``), the rows whose template may hold every needle in
    their row group (``row_groups`` said which); None: any row may."""
    per_needle = sel.allowed.get(key)
    if not per_needle:
        return None
    mask = np.ones(len(tids), bool)
    start = 0
    for rg, n in groups:
        for allowed in per_needle:
            ids = allowed[rg] if rg < len(allowed) else None
            if ids is not None:
                part = tids.slice(start, n)
                mask[start:start + n] &= pc.is_in(part, value_set=ids
                                                  ).to_numpy(zero_copy_only=False)
        start += n
    return mask


def _may_occur(nd: _Needle, index: words.WordIndex
               ) -> tuple[np.ndarray, list[pa.Array | None]]:
    """Per row group: may it hold a message of a template that may hold the needle, and
    which templates may (None: any)?"""
    wanted = np.unique(np.concatenate([_NON_ASCII, *(h for g in nd.groups for h in g.sets)]))
    present = index.param_words_present(wanted)
    col = {h: i for i, h in enumerate(wanted.tolist())}

    def all_of(hs: np.ndarray) -> np.ndarray:
        return present[:, [col[h] for h in hs.tolist()]].all(axis=1)
    folded = all_of(_NON_ASCII)
    n_rg = len(folded)
    alive = np.zeros((n_rg, len(nd.groups)), bool)
    for j, g in enumerate(nd.groups):
        for hs in g.sets:
            alive[:, j] |= all_of(hs)
    keep = folded.copy()
    if len(nd.always.ids):
        keep |= index.words_present(nd.always.templates).any(axis=1)
    for j, g in enumerate(nd.groups):
        rgs = alive[:, j] & ~keep
        if not rgs.any():
            continue
        if len(g.templates) > _PROBED:
            keep |= rgs
        else:
            keep[rgs] |= index.words_present(g.templates)[rgs].any(axis=1)
    made: dict[bytes, pa.Array] = {}
    ids: list[pa.Array | None] = []
    for r in range(n_rg):
        if folded[r] or not keep[r]:
            ids.append(None)
            continue
        which = alive[r].tobytes()
        if which not in made:
            made[which] = pa.array(np.concatenate(
                [nd.always.ids, *(g.ids for g, a in zip(nd.groups, alive[r], strict=True)
                                  if a)]), pa.uint64())
        ids.append(made[which])
    return keep, ids
