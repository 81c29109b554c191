"""Hub settings: a typed dataclass loaded from flags or an explicit --config file."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mohlog.errors import InvalidInput
from mohlog.settings import check_types, duration_s, read_settings, size_bytes
from server.store import StoreConfig

DEFAULT_LISTEN = "127.0.0.1:7480"
DEFAULT_DATA = Path("/var/lib/mohlog")


@dataclass
class HubConfig:
    # Data directory: write-ahead log, segments, archive, tokens, admin.token.
    data: Path = DEFAULT_DATA
    # Address to listen on, HOST:PORT (port 0 picks a free one; the hub prints it).
    listen: str = DEFAULT_LISTEN
    # PEM certificate for HTTPS; with tls_key the hub serves TLS only.
    tls_cert: Path | None = None
    # PEM private key matching tls_cert.
    tls_key: Path | None = None
    # Largest request body accepted (bytes, before and after decompression): larger is 413.
    max_body_bytes: int = 64 << 20
    # Archive and drop partitions older than this many seconds (None: keep forever).
    retention_age_s: int | None = None
    # Archive the oldest partitions while segments exceed this many bytes (None: no bound).
    retention_bytes: int | None = None
    # Delete archives whose newest record is older than this many seconds (None: keep).
    archive_age_s: int | None = None
    # Delete the oldest archives while the archive exceeds this many bytes (None: no bound).
    archive_bytes: int | None = None
    # Records buffered (memory + WAL) before being written as a segment.
    flush_rows: int = 500_000
    # Seconds after which buffered records are written as a segment anyway.
    flush_interval_s: float = 5.0
    # Time partition span in seconds.
    partition_s: int = 3600
    # Seconds a restored partition is left alone by retention.
    restore_keep_s: float = 7 * 86400
    # Small segments in a partition that get merged into one (0: never merge).
    compact_segments: int = 8
    # Start the embedding service (semantic search) when its packages are installed.
    embeddings: bool = True
    # While ingest runs above this many records/s, loading the embedding model (seconds of
    # CPU, once) waits: at most embeddings_defer_max_s, or until a semantic query. 0: never.
    embeddings_defer_rate: int = 50_000
    embeddings_defer_max_s: float = 600.0
    # The model loads on CPU time nothing else wants (SCHED_IDLE); on cores kept busy it
    # goes on at the embedding child's nice level after this many seconds, or at once when
    # a semantic query is waiting.
    embeddings_idle_load_s: float = 60.0

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidInput(f"listen must be HOST:PORT, not {self.listen!r}")
        return host.strip("[]"), int(port)

    def store_config(self) -> StoreConfig:
        return StoreConfig(self.data, retention_age_s=self.retention_age_s,
                           retention_bytes=self.retention_bytes,
                           archive_age_s=self.archive_age_s, archive_bytes=self.archive_bytes,
                           max_batch_bytes=self.max_body_bytes, flush_rows=self.flush_rows,
                           flush_interval_s=self.flush_interval_s, partition_s=self.partition_s,
                           restore_keep_s=self.restore_keep_s,
                           compact_segments=self.compact_segments)


def load(path: Path | None, overrides: dict[str, Any]) -> HubConfig:
    """Settings from an explicit file (JSON or TOML), then non-None overrides (flags)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_settings(path, "hub"))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(HubConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInput(f"unknown hub settings: {', '.join(unknown)}", valid=sorted(known))
    for name in ("retention_age_s", "archive_age_s"):       # "30d" as well as seconds
        if name in values:
            values[name] = duration_s(values[name], name)
    for name in ("retention_bytes", "archive_bytes"):       # "10G" as well as bytes
        if name in values:
            values[name] = size_bytes(values[name], name)
    check_types(HubConfig, values, "hub")
    cfg = HubConfig(**values)
    for name in ("data", "tls_cert", "tls_key"):
        v = getattr(cfg, name)
        if v is not None and not isinstance(v, Path):
            setattr(cfg, name, Path(v))
    cfg.host_port()
    return cfg
