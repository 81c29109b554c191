"""Settings of the storage engine (every field is documented in the README)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class StoreConfig:
    # Directory holding the write-ahead log, segments, archive and template state.
    data_dir: Path
    # Age (seconds) after which a time partition is archived and removed; None keeps all.
    retention_age_s: int | None = None
    # Upper bound on stored segment bytes; the oldest partitions are archived first. None: no bound.
    retention_bytes: int | None = None
    # Archives whose newest record is older than this many seconds are deleted; None
    # keeps them forever.
    archive_age_s: int | None = None
    # Upper bound on the archive's bytes; the oldest archives are deleted first. None: no bound.
    archive_bytes: int | None = None
    # Largest accepted request body after decompression, in bytes (larger: 413).
    max_batch_bytes: int = 64 << 20
    # Records buffered in memory (and the WAL) before they are written as a segment.
    flush_rows: int = 500_000
    # Records held in memory (acknowledged, not yet in a segment) past which new batches
    # wait for the background flush: bounds memory when ingest outruns segment writing.
    max_tail_rows: int = 2_000_000
    # Seconds after which buffered records are written as a segment even if fewer.
    flush_interval_s: float = 5.0
    # Span of one time partition, in seconds (segments never straddle two).
    partition_s: int = 3600
    # Rows per Parquet row group inside a segment (the unit of skipping by statistics).
    row_group_rows: int = 16_384
    # Memory for segment word indexes kept loaded (pre-aggregates get a quarter of it);
    # the least recently used are dropped past it and read again when needed.
    index_cache_bytes: int = 512 << 20
    # zstd level for segments.
    zstd_level: int = 3
    # zstd level for the parameters column of segments (most of their bytes and of the
    # time to write them).
    params_zstd_level: int = 2
    # Idempotency keys remembered for deduplication (oldest forgotten first).
    max_keys: int = 1_000_000
    # Seconds between retention passes of the background task.
    retention_interval_s: float = 60.0
    # Seconds a restored partition is left alone by retention (then archived again if
    # it is still expired).
    restore_keep_s: float = 7 * 86400
    # A time partition holding this many small segments has them merged into one (a
    # low-rate agent makes a segment per flush_interval_s); 0 never merges.
    compact_segments: int = 8
    # Ingest leaves parameter filters out of word indexes (~8 % of the ingest rate here);
    # they are added in the background while fewer records than this arrive a second.
    index_idle_rate: float = 200_000
    # Segments of fewer records than this are small (merged up to flush_rows records).
    compact_small_rows: int = 100_000
    # Mine message templates (store template id + parameters); False stores raw messages
    # as a single parameter of an empty template.
    templates: bool = True
