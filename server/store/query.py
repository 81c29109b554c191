"""The query model of ``GET /api/v1/logs``: time range, text, field filters, paging."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from mohlog.errors import InvalidInput
from mohlog.model import COMPONENTS, LEVEL_RANK, LEVELS
from mohlog.settings import UNIT_NS

OPS = ("<=", ">=", "!=", "=", "<", ">", " contains ", " regex ")
FIELDS = ("id", "timestamp", "level", "component", "source", "host", "pid", "tid", "process",
          "message", "template_id")
INT_FIELDS = ("timestamp", "pid", "tid", "template_id")
EQ_PARAMS = ("host", "level", "component", "source", "pid", "tid", "process", "id",
             "template_id")
_REL = re.compile(r"^-(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d|w)$")
_TERM = re.compile(r'"((?:[^"\\]|\\.)*)"|/((?:[^/\\]|\\.)+)/|(\S+)')


@dataclass(frozen=True)
class Filter:
    field: str
    op: str  # = != < <= > >= contains regex
    value: str

    def int_value(self) -> int:
        if self.field == "level" and self.value.upper() in LEVEL_RANK:
            return LEVEL_RANK[self.value.upper()]
        try:
            return int(self.value)
        except ValueError as err:
            raise InvalidInput(f"filter {self.field}{self.op}{self.value}: not an integer",
                               field=self.field) from err


@dataclass(frozen=True)
class Term:
    kind: str  # word | phrase | regex
    text: str


@dataclass
class LogQuery:
    start: int | None = None
    end: int | None = None
    text: str | None = None
    filters: list[Filter] = field(default_factory=list)
    case: bool = False
    limit: int = 100
    cursor: str | None = None
    sort: str = "desc"

    @property
    def terms(self) -> list[Term]:
        return parse_text(self.text or "")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> LogQuery:
        get = _getter(params)
        q = cls(start=parse_time(get("start")), end=parse_time(get("end")), text=get("q"),
                case=flag(get("case"), "case"), cursor=get("cursor") or None)
        q.limit = _int_param(get("limit"), 100, "limit", 1, 100_000)
        q.sort = (get("sort") or "desc").lower()
        if q.sort not in ("asc", "desc"):
            raise InvalidInput("sort must be asc or desc", valid=["asc", "desc"])
        for name in EQ_PARAMS:
            values = _getall(params, name)
            if len(values) == 1:
                q.filters.append(check_filter(Filter(name, "=", values[0])))
            elif values:                    # host=a&host=b: either of them
                q.filters.append(any_of(name, values))
        for spec in _getall(params, "f"):
            q.filters.append(parse_filter(spec))
        parse_text(q.text or "")  # validate regexes early
        decode_cursor(q.cursor)
        q.check_range()
        return q

    def check_range(self) -> None:
        if self.start is not None and self.end is not None and self.start > self.end:
            raise InvalidInput("start is after end", param="start")


def _getter(params: Mapping[str, Any]):  # noqa: ANN202 - small closure
    def get(name: str) -> str | None:
        v = params.get(name)
        if isinstance(v, list):
            return v[0] if v else None
        return v
    return get


def _getall(params: Mapping[str, Any], name: str) -> list[str]:
    if hasattr(params, "getall"):
        return list(params.getall(name, []))
    v = params.get(name)
    if v is None:
        return []
    return list(v) if isinstance(v, list) else [v]


TRUE, FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def flag(v: str | bool | None, name: str) -> bool:
    """A boolean parameter (absent or empty: false; JSON true/false too); anything else
    is a 400 rather than a guess (``case=maybe`` was read as false, and ``"case":
    "false"`` in a JSON query as true)."""
    if isinstance(v, bool):
        return v
    if not isinstance(v, str | None):
        raise InvalidInput(f"{name} must be true or false", param=name)
    low = (v or "").lower()
    if low in TRUE or low in FALSE:
        return low in TRUE
    raise InvalidInput(f"{name} must be one of {', '.join(TRUE + FALSE[1:])}", param=name)


def _int_param(v: str | None, default: int, name: str, lo: int, hi: int) -> int:
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError as err:
        raise InvalidInput(f"{name} must be an integer", param=name) from err
    if not lo <= n <= hi:
        raise InvalidInput(f"{name} must be between {lo} and {hi}", param=name)
    return n


def parse_time(v: str | int | None, now: int | None = None) -> int | None:
    """ns integer, ISO-8601 (UTC unless it gives an offset: the hub's own zone would
    make a query mean different times on different hubs), or relative (-5m, -2h, -1d);
    None stays None."""
    if v is None or v == "":
        return None
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise InvalidInput(f"bad time {v!r}: use ns, ISO-8601 or -5m/-2h/-1d", param="time")
    if isinstance(v, int):
        return _in_range(v)
    s = str(v).strip()
    if s.lstrip("-").isdigit():
        return _in_range(int(s))
    if s == "now":
        return now or time.time_ns()
    m = _REL.match(s)
    if m:
        return _in_range((now or time.time_ns()) - int(float(m.group(1)) * UNIT_NS[m.group(2)]))
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as err:
        raise InvalidInput(f"bad time {s!r}: use ns, ISO-8601 or -5m/-2h/-1d",
                           param="time") from err
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return _in_range(int(dt.timestamp() * 1e9))


def _in_range(ns: int) -> int:
    if not -(2**63) <= ns < 2**63:
        raise InvalidInput(f"bad time {ns}: out of range (ns since 1970 as a 64-bit integer)",
                           param="time")
    return ns


def parse_filter(spec: str) -> Filter:
    """``level>=WARNING``, ``host=web1``, ``process contains ssh``, ``message regex a.+b``."""
    best: tuple[int, str] | None = None
    for op in OPS:
        i = spec.find(op)
        if i > 0 and (best is None or i < best[0] or (i == best[0] and len(op) > len(best[1]))):
            best = (i, op)
    if best is None:
        raise InvalidInput(f"bad filter {spec!r}: expected <field><op><value>",
                           valid_ops=[o.strip() for o in OPS])
    i, op = best
    return check_filter(Filter(spec[:i].strip(), op.strip(), spec[i + len(op):].strip()))


def check_filter(f: Filter) -> Filter:
    if f.field in ("level", "component"):
        f = Filter(f.field, f.op, f.value.upper())
        valid = LEVELS if f.field == "level" else COMPONENTS
        numeric = f.field == "level" and f.op in ("<", "<=", ">", ">=") and \
            f.value.lstrip("-").isdigit()
        if f.op not in ("contains", "regex") and f.value not in valid and not numeric:
            raise InvalidInput(f"unknown {f.field} {f.value!r}", field=f.field,
                               valid=list(valid))
    if f.field not in FIELDS and not f.field.startswith("metadata."):
        raise InvalidInput(f"unknown field {f.field!r}", valid=[*FIELDS, "metadata.<key>"])
    if f.op == "regex":
        _compile(f.value, True)
    elif f.op in ("<", "<=", ">", ">=") and (f.field in INT_FIELDS or f.field == "level") \
            or f.op in ("=", "!=") and f.field in INT_FIELDS:
        f.int_value()                   # (pid=abc: a 400 now, not mid-way through a query)
    return f


def any_of(name: str, values: list[str]) -> Filter:
    """A filter keeping the records whose ``name`` equals one of ``values`` (each checked
    as an equality filter is), as an anchored regex of the escaped values."""
    if not values:
        raise InvalidInput(f"filter {name}: an empty list of values", field=name)
    checked = [check_filter(Filter(name, "=", v)).value for v in values]
    return Filter(name, "regex", "^(?:" + "|".join(re.escape(v) for v in checked) + ")$")


def _compile(pattern: str, case: bool) -> None:
    """Check ``pattern`` as the store matches it: RE2 (Arrow's regex engine, linear time:
    no backreferences, no lookaround), so a pattern is refused here with a 400 rather than
    failing mid-query."""
    try:
        pc.match_substring_regex(pa.array([""]), pattern, ignore_case=not case)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        reason = str(err).split(": ", 1)[-1]
        raise InvalidInput(f"bad regex {pattern!r}: {reason} (RE2 syntax: no backreferences "
                           "or lookaround)", reason=reason) from err


def parse_text(text: str) -> list[Term]:
    terms = []
    for m in _TERM.finditer(text):
        phrase, regex, word = m.groups()
        if phrase is not None:
            terms.append(Term("phrase", phrase.replace('\\"', '"')))
        elif regex is not None:
            _compile(regex, True)
            terms.append(Term("regex", regex.replace("\\/", "/")))
        elif word.startswith('"'):
            raise InvalidInput(f"unterminated phrase in q: {word!r}…: close it with \"",
                               param="q")
        else:
            terms.append(Term("word", word))
    return terms


def encode_cursor(ts: int, rid: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts, rid])).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[int, str] | None:
    if not cursor:
        return None
    try:
        ts, rid = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return int(ts), str(rid)
    except (ValueError, TypeError, orjson.JSONDecodeError) as err:
        raise InvalidInput("bad cursor", param="cursor") from err
