"""The hub's storage engine (no HTTP): durable append, segments, indexes, queries.

``Store(StoreConfig(data_dir))``; ``await open()``; ``parse(body, encoding, content_type)``
(CPU-heavy, run in an executor); ``await append(batch, idempotency_key)`` returns after the
write-ahead log's fsync; ``search``, ``query``, ``stats``, ``subscribe``, ``export``,
``template_stats``, ``archive_list``, ``archive_restore``, ``enforce_retention``.
"""

from server.store.config import StoreConfig
from server.store.engine import AppendResult, Batch, SearchPage, Store, Subscription
from server.store.query import Filter, LogQuery

__all__ = ["AppendResult", "Batch", "Filter", "LogQuery", "SearchPage", "Store", "StoreConfig",
           "Subscription"]
