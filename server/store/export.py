"""Streaming export of matching records: NDJSON, CSV or Parquet."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from mohlog.errors import InvalidInput
from server.store.query import LogQuery

if TYPE_CHECKING:
    from server.store.engine import Store

FORMATS = ("ndjson", "csv", "parquet")
_CSV = ["id", "timestamp", "level", "source", "component", "host", "pid", "tid", "process",
        "message", "template_id", "metadata", "context"]


_SCHEMA = pa.schema([(c, pa.uint64() if c == "template_id" else
                      pa.int64() if c in ("timestamp", "pid", "tid") else pa.string())
                     for c in _CSV])


def pages(store: Store, q: LogQuery) -> Iterator[list[dict]]:
    q = LogQuery(q.start, q.end, q.text, q.filters, q.case, 10_000, q.cursor, q.sort)
    while True:
        page = store.search(q)
        if page.records:
            yield page.records
        if not page.next_cursor:
            return
        q.cursor = page.next_cursor


def export(store: Store, q: LogQuery, fmt: str) -> Iterator[bytes]:
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}", valid=list(FORMATS))
    return {"ndjson": _ndjson, "csv": _csv, "parquet": _parquet}[fmt](store, q)


def _ndjson(store: Store, q: LogQuery) -> Iterator[bytes]:
    for recs in pages(store, q):
        yield b"".join(orjson.dumps(r) + b"\n" for r in recs)


def _csv(store: Store, q: LogQuery) -> Iterator[bytes]:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_CSV)
    for recs in pages(store, q):
        for r in recs:
            w.writerow([_cell(r.get(c)) for c in _CSV])
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


def _cell(v: object) -> object:
    return orjson.dumps(v).decode() if isinstance(v, dict | list) else v


class _Sink(io.RawIOBase):
    """A write-only file whose bytes are taken out as they come (tell() keeps counting)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.parts.append(bytes(b))
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos


def _parquet(store: Store, q: LogQuery) -> Iterator[bytes]:
    sink = _Sink()
    writer = None
    for recs in pages(store, q):
        for r in recs:
            r["metadata"] = orjson.dumps(r["metadata"]).decode()
            r["context"] = orjson.dumps(r["context"]).decode()
        t = pa.Table.from_pylist(recs, schema=_SCHEMA)
        if writer is None:
            writer = pq.ParquetWriter(sink, t.schema, compression="zstd")
        writer.write_table(t.cast(writer.schema))
        yield _drain(sink)
    if writer is None:
        writer = pq.ParquetWriter(sink, _SCHEMA)
    writer.close()
    yield _drain(sink)


def _drain(sink: _Sink) -> bytes:
    data = b"".join(sink.parts)
    sink.parts.clear()
    return data
