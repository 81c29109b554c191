"""Arrow IPC streams of the agent's batches, written without pyarrow.

pyarrow costs the agent ~55 MB resident (libarrow and friends, mapped and relocated at
import) for one job: turning columns of str and int into one IPC stream. This module
writes that stream itself (Arrow columnar format, IPC streaming format, metadata V5):

    schema message | record batch message | end-of-stream marker

The schema message is fixed (the hub's record schema, built once from ``FIELDS``); the
record batch message is a small flatbuffer (length, one FieldNode per column, three or two
Buffers per column) followed by the body: for a string column its validity bitmap (empty
when it has no null), int32 offsets and UTF-8 bytes; for an int64 column its validity
bitmap and little-endian values. Every buffer starts on an 8-byte boundary.

Columns are built in C: ``str.join`` + ``itertools.accumulate`` into an ``array('i')``
for strings, ``array('q')`` for ints. The hub reads the stream with pyarrow; the tests
check it against pyarrow's reader and writer.
"""

from __future__ import annotations

import itertools
import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Any

# The hub's record schema (server/store/batch.py SCHEMA): name and type ("utf8", "int64").
FIELDS: tuple[tuple[str, str], ...] = (
    ("id", "utf8"), ("timestamp", "int64"), ("level", "utf8"), ("source", "utf8"),
    ("component", "utf8"), ("host", "utf8"), ("pid", "int64"), ("tid", "int64"),
    ("process", "utf8"), ("message", "utf8"), ("metadata", "utf8"), ("context", "utf8"))

SUPPORTED = sys.byteorder == "little"  # arrays are written as they are (else NDJSON)
_CONTINUATION = b"\xff\xff\xff\xff"
_EOS = _CONTINUATION + b"\x00\x00\x00\x00"
_V5 = 4  # MetadataVersion.V5
_SCHEMA_HEADER, _RECORD_BATCH_HEADER = 1, 3  # MessageHeader union
_TYPE_INT, _TYPE_UTF8 = 2, 5  # Type union
_MAX_OFFSET = 2**31 - 1


class _Builder:
    """A flatbuffer written front to back: tables point forward to what follows them."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def pad(self, align: int, extra: int = 0) -> None:
        """Pad so that the position + ``extra`` is a multiple of ``align``."""
        self.buf += b"\x00" * (-(len(self.buf) + extra) % align)

    def here(self) -> int:
        return len(self.buf)

    def patch_offset(self, at: int, target: int) -> None:
        """The uoffset at ``at`` points to ``target`` (later in the buffer)."""
        struct.pack_into("<I", self.buf, at, target - at)

    def vtable(self, table_size: int, offsets: Sequence[int]) -> int:
        pos = self.here()
        self.buf += struct.pack(f"<HH{len(offsets)}H", 4 + 2 * len(offsets), table_size,
                                *offsets)
        return pos

    def table_start(self, vtable: int) -> int:
        self.pad(8)
        pos = self.here()
        self.buf += struct.pack("<i", pos - vtable)
        return pos

    def string(self, text: str) -> int:
        data = text.encode()
        self.pad(4)
        pos = self.here()
        self.buf += struct.pack("<I", len(data)) + data + b"\x00"
        return pos


def _message(header_type: int, write_header: Any, body_length: int) -> bytes:
    """One encapsulated message: continuation, metadata size, Message flatbuffer (padded
    to 8 bytes); ``write_header(builder)`` writes the header table and returns its position."""
    b = _Builder()
    b.buf += b"\x00" * 4  # root offset, patched below
    # Message: version (short), header_type (ubyte), header (offset), bodyLength (long)
    vt = b.vtable(24, (20, 22, 4, 8))
    table = b.table_start(vt)  # soffset@0, header@4, bodyLength@8, version@20, type@22
    b.buf += struct.pack("<IqiHBx", 0, body_length, 0, _V5, header_type)
    header = write_header(b)
    b.patch_offset(table + 4, header)
    b.patch_offset(0, table)
    b.pad(8, 8)  # the continuation and the size (8 bytes) come before the flatbuffer
    return _CONTINUATION + struct.pack("<i", len(b.buf)) + bytes(b.buf)


def _schema_header(b: _Builder) -> int:
    # Schema: endianness (short, 0 = little) absent = default, fields (vector of Field)
    vt = b.vtable(8, (0, 4))
    table = b.table_start(vt)
    b.buf += b"\x00" * 4  # fields offset
    b.pad(4)
    vec = b.here()
    b.patch_offset(table + 4, vec)
    b.buf += struct.pack("<I", len(FIELDS)) + b"\x00" * 4 * len(FIELDS)
    for i, (name, typ) in enumerate(FIELDS):
        # Field: name (string), nullable (bool), type_type (ubyte), type (table),
        # dictionary (absent), children (vector, empty)
        fvt = b.vtable(20, (4, 16, 17, 8, 0, 12))
        field = b.table_start(fvt)  # soffset@0 name@4 type@8 children@12 nullable@16 tt@17
        b.buf += struct.pack("<IIIBBxx", 0, 0, 0, 1, _TYPE_INT if typ == "int64" else _TYPE_UTF8)
        b.patch_offset(vec + 4 + 4 * i, field)
        b.patch_offset(field + 4, b.string(name))
        b.pad(4)
        children = b.here()
        b.buf += struct.pack("<I", 0)
        b.patch_offset(field + 12, children)
        if typ == "int64":  # Int: bitWidth (int), is_signed (bool)
            tvt = b.vtable(12, (4, 8))
            tt = b.table_start(tvt)
            b.buf += struct.pack("<i?xxx", 64, True)
        else:  # Utf8: no fields
            tvt = b.vtable(4, ())
            tt = b.table_start(tvt)
        b.patch_offset(field + 8, tt)
    return table


_SCHEMA_MESSAGE = _message(_SCHEMA_HEADER, _schema_header, 0)


def _record_batch_header(length: int, nodes: list[tuple[int, int]],
                         buffers: list[tuple[int, int]]) -> Any:
    def write(b: _Builder) -> int:
        # RecordBatch: length (long), nodes (vector of FieldNode), buffers (vector of Buffer)
        vt = b.vtable(24, (8, 4, 16))
        table = b.table_start(vt)  # soffset@0 nodes@4 length@8 buffers@16
        b.buf += struct.pack("<Iqi4x", 0, length, 0)
        for at, items in ((table + 4, nodes), (table + 16, buffers)):
            b.pad(8, 4)  # the 16-byte structs start on 8 bytes, after the u32 count
            vec = b.here()
            b.patch_offset(at, vec)
            b.buf += struct.pack("<I", len(items))
            b.buf += struct.pack(f"<{2 * len(items)}q", *itertools.chain.from_iterable(items))
        return table
    return write


def _validity(col: list[Any]) -> bytes:
    """LSB-first bitmap: 1 where the value is not None."""
    bits = "".join("0" if v is None else "1" for v in reversed(col))
    return int(bits, 2).to_bytes((len(col) + 7) // 8, "little")


def _utf8(col: list[Any]) -> tuple[int, list[bytes]]:
    """(null count, [validity, offsets, data]) of a column of str and None."""
    try:
        text, nulls, values = "".join(col), 0, col
    except TypeError:  # None among them (or something else: TypeError again below)
        nulls = col.count(None)
        values = [v if v is not None else "" for v in col]
        text = "".join(values)
    if text.isascii():  # O(1): CPython knows it
        data = text.encode("ascii")
        lengths: Any = map(len, values)
    else:
        parts = [v.encode() for v in values]  # UnicodeEncodeError (lone surrogates)
        data = b"".join(parts)
        lengths = map(len, parts)
    if len(data) > _MAX_OFFSET:
        raise OverflowError("string column over 2 GB")
    offsets = array("i", [0])
    offsets.extend(itertools.accumulate(lengths))
    return nulls, [_validity(col) if nulls else b"", offsets.tobytes(), data]


def _int64(col: list[Any]) -> tuple[int, list[bytes]]:
    """(null count, [validity, values]) of a column of int and None."""
    try:
        return 0, [b"", array("q", col).tobytes()]
    except TypeError:  # None among them (or something else: TypeError again below)
        nulls = col.count(None)
        values = array("q", [v if v is not None else 0 for v in col])
        return nulls, [_validity(col), values.tobytes()]


def stream(columns: Sequence[list[Any]]) -> bytes:
    """One Arrow IPC stream (schema, one record batch, end marker) of ``columns`` in
    FIELDS order. TypeError, ValueError or OverflowError when a value does not fit its
    column (the caller then sends NDJSON)."""
    if not SUPPORTED:
        raise ValueError("the Arrow writer writes little-endian hosts' arrays as they are")
    if len(columns) != len(FIELDS):
        raise ValueError(f"{len(columns)} columns for {len(FIELDS)} fields")
    length = len(columns[0])
    nodes: list[tuple[int, int]] = []
    buffers: list[tuple[int, int]] = []
    body: list[bytes] = []
    offset = 0
    for col, (_name, typ) in zip(columns, FIELDS, strict=True):
        if len(col) != length:
            raise ValueError("columns of different lengths")
        nulls, bufs = _int64(col) if typ == "int64" else _utf8(col)
        nodes.append((length, nulls))
        for data in bufs:
            buffers.append((offset, len(data)))
            pad = -len(data) % 8
            body.append(data)
            if pad:
                body.append(b"\x00" * pad)
            offset += len(data) + pad
    header = _message(_RECORD_BATCH_HEADER, _record_batch_header(length, nodes, buffers),
                      offset)
    return b"".join([_SCHEMA_MESSAGE, header, *body, _EOS])
