"""Immutable Parquet segments (zstd), one time partition each, and the manifest listing them.

A segment stores a message as (template_id, params), the parameters packed one string per
row (:mod:`server.store.params`; a list of strings when they cannot be packed); its checksum
(xxh64 of the file) is in the manifest and is verified when the store opens: a segment that
does not match is reported, skipped, and the rest is served.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
import zstandard

from server.store import params
from server.store.fsutil import fsync_dir

SEG_COLUMNS = ("id", "timestamp", "level", "source", "component", "host", "pid", "tid",
               "process", "template_id", "params", "metadata", "context")


_STATS_COLUMNS = ("timestamp", "pid", "tid", "template_id")
_DICT_COLUMNS = ("level", "source", "component", "host", "process", "template_id", "metadata",
                 "context")


@dataclass
class SegmentInfo:
    path: str          # relative to the segments directory
    partition: str     # e.g. 2026112503 (UTC hour)
    rows: int
    min_ts: int
    max_ts: int
    bytes: int
    raw_bytes: int     # NDJSON bytes of the records it holds (for the compression ratio)
    xxh64: str
    rollup_xxh64: str = ""   # checksum of the pre-aggregate beside it ("" = none yet)
    words_xxh64: str = ""    # checksum of the word index beside it ("" = none yet)


def partition_name(ts_ns: int, span_s: int) -> str:
    start = ts_ns // 1_000_000_000 // span_s * span_s
    import time as _t
    return _t.strftime("%Y%m%d%H%M", _t.gmtime(start))


def sort_for_segment(table: pa.Table) -> pa.Table:
    """Rows in (timestamp, id) order."""
    order = sort_order(table)
    return table if order is None else table.take(pa.array(order))


def sort_order(table: pa.Table) -> np.ndarray | None:
    """The permutation putting rows in (timestamp, id) order; None when they are. Equal
    timestamps are rare with ns clocks: a stable sort of the timestamps alone, then runs of
    equal ones ordered by id (~10x cheaper than comparing id strings everywhere)."""
    ts = table["timestamp"].to_numpy()
    if len(ts) < 2 or (np.diff(ts) > 0).all():
        return None                         # already in order, timestamps distinct
    order = np.argsort(ts, kind="stable")
    ties = np.flatnonzero(np.diff(ts[order]) == 0)
    if len(ties) > 4096:                    # many equal timestamps: one full sort
        return pc.sort_indices(table, [("timestamp", "ascending"),
                                       ("id", "ascending")]).to_numpy()
    if len(ties):
        ids = table["id"]
        starts = ties[np.concatenate(([True], np.diff(ties) > 1))]
        for a in starts.tolist():
            b = a + 1
            while b < len(order) and ts[order[b]] == ts[order[a]]:
                b += 1
            run = order[a:b]
            order[a:b] = run[np.argsort([ids[int(i)].as_py() for i in run], kind="stable")]
    if (order == np.arange(len(order))).all():
        return None
    return order


RAW_BYTES_KEY = b"mohlog.raw_bytes"
TEMPLATES_KEY = b"mohlog.templates"          # zstd of {"id": "text"} of the ids it holds


def write_segment(table: pa.Table, directory: Path, name: str, row_group: int,
                  level: int, presorted: bool = False, params_level: int | None = None,
                  footer: list[pq.FileMetaData] | None = None, raw_bytes: int | None = None,
                  templates: dict[int, str] | None = None) -> tuple[Path, int, str]:
    """Write ``table`` sorted by time to ``directory/name`` atomically; (path, bytes, xxh64).
    The parameters are packed and compressed at ``params_level`` (default: ``level``). The
    file's footer is appended to ``footer`` when given (no need to read it back). The
    NDJSON bytes of its records (``raw_bytes``) go in the footer too, for a manifest
    rebuilt from the files (:func:`info_from_file`), and the text of the templates its
    rows use, so its messages render without the template state (:func:`templates_of`)."""
    directory.mkdir(parents=True, exist_ok=True)
    table = table.select(list(SEG_COLUMNS))
    meta = {}
    if raw_bytes is not None:
        meta[RAW_BYTES_KEY] = str(raw_bytes).encode()
    if templates:
        meta[TEMPLATES_KEY] = zstandard.ZstdCompressor(level=3).compress(
            orjson.dumps({str(k): v for k, v in templates.items()}))
    if meta:
        table = table.replace_schema_metadata(meta)
    if not presorted:
        table = sort_for_segment(table)
    encoding = {"timestamp": "DELTA_BINARY_PACKED", "pid": "BYTE_STREAM_SPLIT",
                "tid": "BYTE_STREAM_SPLIT"}
    packed = params.pack(table["params"])
    if packed is not None:
        table = table.set_column(SEG_COLUMNS.index("params"), "params", packed)
        encoding["params"] = "DELTA_LENGTH_BYTE_ARRAY"
    levels = {c: level for c in SEG_COLUMNS}
    levels["params"] = level if params_level is None else params_level
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".parquet")
    os.close(fd)
    try:
        # Dictionaries only for low-cardinality columns (random-ish ids, pids and
        # parameters compress better plain); timestamps, sorted, as deltas; pids and tids
        # split by byte (their high bytes, mostly alike, compress apart: 14 % smaller
        # than plain on the bench corpus, and a third of the time). Row group
        # statistics for the integer columns only (time ranges skip row groups; min/max
        # of strings and parameter lists cost ~8 % of the write and are never read).
        # Packed parameters: lengths apart from the bytes (DELTA_LENGTH_BYTE_ARRAY) are
        # ~2 % smaller than PLAIN for as fast a read.
        pq.write_table(table, tmp, compression="zstd", compression_level=levels,
                       row_group_size=row_group, use_dictionary=list(_DICT_COLUMNS),
                       write_statistics=list(_STATS_COLUMNS), use_byte_stream_split=False,
                       column_encoding=encoding, metadata_collector=footer)
        digest, size = _digest(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        final = directory / name
        os.replace(tmp, final)
        fsync_dir(directory)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final, size, digest


def info_from_file(path: Path, rel: str) -> SegmentInfo:
    """A segment's manifest entry made from the file itself (a manifest lost or damaged):
    rows, time range, bytes and checksum; its NDJSON bytes when its footer has them (0 for
    segments written before it did); the sidecars' checksums empty (so they are verified
    by being rebuilt)."""
    meta = pq.read_metadata(path)
    ts_col = meta.schema.to_arrow_schema().get_field_index("timestamp")
    lows, highs = [], []
    for i in range(meta.num_row_groups):
        st = meta.row_group(i).column(ts_col).statistics
        if st is None or not st.has_min_max:
            ts = pq.read_table(path, columns=["timestamp"])["timestamp"]
            lows, highs = [pc.min(ts).as_py()], [pc.max(ts).as_py()]
            break
        lows.append(st.min)
        highs.append(st.max)
    raw = (meta.metadata or {}).get(RAW_BYTES_KEY, b"0")
    digest, size = _digest(path)
    return SegmentInfo(path=rel, partition=rel.split("/")[0], rows=meta.num_rows,
                       min_ts=min(lows, default=0), max_ts=max(highs, default=0), bytes=size,
                       raw_bytes=int(raw) if raw.isdigit() else 0, xxh64=digest)


def templates_of(path: Path) -> dict[int, str] | None:
    """The template texts a segment's footer holds (None: a segment written before
    footers held them)."""
    blob = (pq.read_metadata(path).metadata or {}).get(TEMPLATES_KEY)
    if blob is None:
        return None
    return {int(k): v for k, v in orjson.loads(
        zstandard.ZstdDecompressor().decompress(blob)).items()}


ROLLUP_KEYS = ("level", "component", "host", "source")
MINUTE = 60_000_000_000


def rollup(table: pa.Table) -> pa.Table:
    """Record counts per (minute, level, component, host, source): the pre-aggregate that
    answers counts and time series over whole segments without reading them."""
    minute = pc.multiply(pc.divide(table["timestamp"], MINUTE), MINUTE)
    keys = pa.table({"minute": minute, **{k: table[k] for k in ROLLUP_KEYS}})
    out = keys.group_by(["minute", *ROLLUP_KEYS]).aggregate([([], "count_all")])
    return out.rename_columns([*(c if c != "count_all" else "n" for c in out.column_names)])


def rollup_path(seg_path: Path) -> Path:
    return seg_path.with_suffix(".rollup.arrow")


def write_rollup(table: pa.Table, seg_path: Path) -> str:
    """Write the pre-aggregate of a segment beside it (Arrow IPC, zstd), atomically; xxh64."""
    import pyarrow.ipc as ipc
    path = rollup_path(seg_path)
    tmp = path.with_name(".tmp-" + path.name)
    with pa.OSFile(str(tmp), "wb") as f, ipc.new_file(
            f, table.schema, options=ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return _digest(path)[0]


def read_rollup(seg_path: Path, digest: str) -> pa.Table | None:
    """The pre-aggregate beside a segment, or None when missing or not matching digest."""
    import pyarrow.ipc as ipc
    path = rollup_path(seg_path)
    if not digest or not verify(path, digest):
        return None
    try:
        with pa.memory_map(str(path)) as src:
            return ipc.open_file(src).read_all()
    except (OSError, pa.ArrowInvalid):
        return None


def file_digest(path: Path) -> tuple[str, int]:
    """(xxh64 hex digest, size) of a file."""
    return _digest(path)


def _digest(path: Path) -> tuple[str, int]:
    h = xxhash.xxh64()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def verify(path: Path, digest: str) -> bool:
    try:
        return _digest(path)[0] == digest
    except OSError:
        return False


def write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass
class Manifest:
    segments: list[SegmentInfo]
    wal_upto: int = 0
    next_segment: int = 1
    # restored partitions retention leaves alone: partition -> until (unix seconds)
    kept: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"segments": [asdict(s) for s in self.segments], "wal_upto": self.wal_upto,
                "next_segment": self.next_segment, "kept": self.kept}

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """The manifest saved at ``path`` (the store handles a missing or damaged one)."""
        data = orjson.loads(path.read_bytes())
        return cls([SegmentInfo(**s) for s in data["segments"]], data.get("wal_upto", 0),
                   data.get("next_segment", 1), dict(data.get("kept", {})))

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())
