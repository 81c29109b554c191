"""Prometheus instruments of the store, registered in the registry the hub gives."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

_LAT = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class StoreMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.received = Counter("mohlog_records_received", "Records acknowledged", registry=r)
        self.rejected = Counter("mohlog_batches_rejected", "Batches refused as invalid",
                                registry=r)
        self.deduplicated = Counter("mohlog_records_deduplicated",
                                    "Records of replayed batches not stored again", registry=r)
        self.early = Counter("mohlog_records_dated_before_2000",
                             "Records acknowledged with a time before 2000 (a unit mix-up?)",
                             registry=r)
        self.future = Counter("mohlog_records_dated_in_the_future",
                              "Records acknowledged with a time more than a day ahead of "
                              "the hub's clock", registry=r)
        self.stored = Counter("mohlog_records_stored", "Records written to segments",
                              registry=r)
        self.raw_bytes = Counter("mohlog_bytes_raw", "Decoded request bytes acknowledged",
                                 registry=r)
        self.stored_bytes = Gauge("mohlog_bytes_stored", "Bytes of segments", registry=r)
        self.segments = Gauge("mohlog_segments", "Segments served", registry=r)
        self.corrupt_segments = Counter("mohlog_segments_corrupt",
                                        "Segments skipped for a bad checksum", registry=r)
        self.fsync_seconds = Histogram("mohlog_wal_fsync_seconds",
                                       "WAL fsync latency (one per group commit)",
                                       buckets=_LAT, registry=r)
        self.query_seconds = Histogram("mohlog_query_seconds", "Query latency", buckets=_LAT,
                                       registry=r)


def memory_gauges(r: CollectorRegistry, caches: dict[str, Callable[[], float]]) -> None:
    """The process's own figures (resident memory, CPU, open files: ``process_*``), the
    bytes Arrow's memory pool holds, and the bytes of each of ``caches``, read when
    scraped: where a hub's memory goes."""
    ProcessCollector(registry=r)
    pool = Gauge("mohlog_arrow_allocated_bytes",
                 "Bytes allocated from Arrow's memory pool", ["backend"], registry=r)
    pool.labels(pa.default_memory_pool().backend_name).set_function(
        lambda: pa.default_memory_pool().bytes_allocated())
    cache = Gauge("mohlog_cache_bytes", "Bytes held by the store's in-memory caches",
                  ["cache"], registry=r)
    for name, fn in caches.items():
        cache.labels(name).set_function(fn)
