"""The application SDK: write log entries without ever waiting on the network.

    from mohlog import sdk
    sdk.log_write("INFO", "APPLICATION", "user %s logged in from %s", user, addr)
    sdk.log_write_structured({"level": "ERROR", "component": "AI_ENGINE",
                              "message": "model load failed", "metadata": {"model": name}})
    sdk.log_set_level("APPLICATION", "WARNING")      # keep WARNING and above
    sdk.log_register_handler("ERROR", alert)         # alert(entry) for ERROR and above
    logging.getLogger().addHandler(sdk.MohlogHandler(component="WEB_RUNTIME"))

Semantics
- Level filter: each component has a minimum level (default ``SdkConfig.min_level``);
  an entry is kept when ``LEVEL_RANK[level] >= LEVEL_RANK[minimum]``. A filtered call
  costs two dict look-ups and never formats its message (formatting is lazy).
- Handlers: ``log_register_handler(level, fn)`` calls ``fn(entry_dict)`` synchronously,
  in the writing thread, for every entry that passed its component's filter and whose
  level ranks at or above ``level``. A handler that raises is counted
  (``handler_errors``) and ignored. Handlers must not block: they run on the caller's path.
- Delivery: accepted entries go to a bounded in-process buffer (``buffer_size``). A daemon
  thread sends them in batches (NDJSON) to the agent's unix socket
  (``MOHLOG_SDK_SOCKET``, default ``/run/mohlog/sdk.sock``) or, when no agent listens
  there, straight to a hub (``MOHLOG_HUB`` + ``MOHLOG_TOKEN``/``MOHLOG_TOKEN_FILE``,
  ``POST /api/v1/logs`` with an Idempotency-Key that stays the same across retries).
  A failed send is retried with back-off while new entries keep filling the buffer;
  when the buffer is full new entries are dropped and counted (``dropped_buffer_full``).
  A batch the hub rejects as invalid (4xx) is dropped and counted (``dropped_rejected``).
- Never raises into the caller: every ``log_*`` call returns ``True`` when the entry was
  accepted into the buffer and ``False`` otherwise (filtered, invalid, buffer full).
  Invalid input (unknown level/component, bad structured entry) is counted (``invalid``)
  and the reason kept in ``stats()["last_error"]``.
- Exit and fork: ``atexit`` flushes for up to ``exit_flush_timeout_s`` and counts what is
  left as ``dropped_exit``. After ``fork()`` the child starts with an empty buffer and
  zeroed counters (the parent still sends what it had buffered) and starts its own
  sender thread on its first write.

Imports only the standard library, ``orjson`` and ``mohlog.model``/``errors``/``settings``:
no root, no bcc, no aiohttp.
"""

from __future__ import annotations

import atexit
import collections
import http.client
import logging
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from mohlog.errors import InvalidInput
from mohlog.model import COMPONENTS, FIELDS, LEVEL_RANK, Entry, new_id
from mohlog.settings import hub_url

Handler = Callable[[dict[str, Any]], None]

DEFAULT_SOCKET = "/run/mohlog/sdk.sock"
_INT_FIELDS = ("timestamp", "pid", "tid")
_STR_FIELDS = ("id", "source", "host", "process")


def _env_token() -> str | None:
    if os.environ.get("MOHLOG_TOKEN"):
        return os.environ["MOHLOG_TOKEN"]
    path = os.environ.get("MOHLOG_TOKEN_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


@dataclass
class SdkConfig:
    """Settings of one SDK client. ``SdkConfig.from_env()`` reads the MOHLOG_* variables."""

    # Unix socket of the local agent (NDJSON entries). Env MOHLOG_SDK_SOCKET.
    socket_path: str = DEFAULT_SOCKET
    # Hub base URL used when the agent socket is absent, e.g. http://127.0.0.1:7480. Env MOHLOG_HUB.
    hub_url: str | None = None
    # Bearer token (ingest role) for the hub. Env MOHLOG_TOKEN or file MOHLOG_TOKEN_FILE.
    token: str | None = None
    # Default minimum level of every component. Env MOHLOG_LEVEL.
    min_level: str = "TRACE"
    # Most entries held in memory before new ones are dropped (and counted).
    buffer_size: int = 100_000
    # Most entries per send (one NDJSON write or one HTTP request).
    batch_size: int = 1000
    # The sender wakes at least this often to ship what is buffered (seconds).
    flush_interval_s: float = 0.1
    # Socket/HTTP timeout of one send (seconds).
    send_timeout_s: float = 5.0
    # Longest wait between retries after failed sends (back-off doubles from 50 ms).
    retry_max_s: float = 2.0
    # At interpreter exit, wait at most this long for the buffer to drain (seconds).
    exit_flush_timeout_s: float = 2.0
    # The ``source`` field of entries written by log_write / MohlogHandler.
    source: str = "sdk"
    # The ``process`` field; default: the program's name (basename of sys.argv[0]).
    process: str = field(default_factory=lambda: os.path.basename(sys.argv[0] or "python"))

    @classmethod
    def from_env(cls) -> SdkConfig:
        env = os.environ
        return cls(
            socket_path=env.get("MOHLOG_SDK_SOCKET") or DEFAULT_SOCKET,
            hub_url=env.get("MOHLOG_HUB") or None,
            token=_env_token(),
            min_level=env.get("MOHLOG_LEVEL") or "TRACE",
        )


class _Retry(Exception):
    """A send failed in a way that may succeed later (agent/hub down, 5xx, 507)."""


class _Rejected(Exception):
    """The hub refused the batch for good (400/401/403/413): resending will not help."""


class _SocketTransport:
    """A persistent connection to the agent's unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self.sock: socket.socket | None = None

    def available(self) -> bool:
        return os.path.exists(self.path)

    def send(self, data: bytes, key: str) -> None:
        try:
            if self.sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                self.sock = sock
            self.sock.sendall(data)
        except OSError as err:
            self.close()
            raise _Retry(f"agent socket {self.path}: {err}") from err

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class _HubTransport:
    """``POST /api/v1/logs`` to a hub with the standard library's HTTP client."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        try:
            url = hub_url(url)                  # HOST:PORT alone: http://HOST:PORT
        except InvalidInput:
            pass                                # its sends fail and are counted
        self.url = url.rstrip("/") + "/api/v1/logs"
        self.token, self.timeout = token, timeout

    def send(self, data: bytes, key: str) -> None:
        headers = {"Content-Type": "application/x-ndjson", "Idempotency-Key": key}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as err:
            if err.code in (400, 401, 403, 404, 413):
                raise _Rejected(f"hub refused batch: HTTP {err.code}") from err
            raise _Retry(f"hub: HTTP {err.code}") from err
        except (OSError, ValueError, http.client.HTTPException) as err:
            raise _Retry(f"hub {self.url}: {err}") from err

    def close(self) -> None:
        pass


def _serialize(entries: list[dict[str, Any]]) -> bytes:
    opt = orjson.OPT_APPEND_NEWLINE
    return b"".join(orjson.dumps(e, default=str, option=opt) for e in entries)


_clients: weakref.WeakSet[Client] = weakref.WeakSet()


class Client:
    """One SDK instance: level table, handlers, buffer, sender thread and counters.

    The module-level functions use a default client built from the environment;
    create your own for a different socket or hub.
    """

    def __init__(self, config: SdkConfig | None = None) -> None:
        self.config = cfg = config or SdkConfig.from_env()
        default = LEVEL_RANK.get(cfg.min_level, 0)
        self._min_rank: dict[str, int] = dict.fromkeys(COMPONENTS, default)
        self._handlers: tuple[tuple[int, Handler], ...] = ()
        self._host = os.uname().nodename
        self._socket = _SocketTransport(cfg.socket_path, cfg.send_timeout_s)
        self._hub = (
            _HubTransport(cfg.hub_url, cfg.token, cfg.send_timeout_s) if cfg.hub_url else None
        )
        self._init_runtime()
        _clients.add(self)

    def _init_runtime(self) -> None:
        """State that must not cross a fork: buffer, locks, thread, counters."""
        self._pid = os.getpid()
        self._buf: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        self._closed = False
        self._inflight = 0  # entries taken from the buffer and not yet sent or dropped
        self._counts: collections.Counter[str] = collections.Counter()
        self._last_error = ""
        self._pending: list[dict[str, Any]] = []  # the batch being sent (kept across retries)
        self._pending_key = ""  # its Idempotency-Key
        self._pending_data = b""  # its NDJSON bytes
        self._healthy = True  # False while the last send failed (shortens the exit flush)

    # -- writing ---------------------------------------------------------------------------

    def write(self, level: str, component: str, fmt: Any, args: tuple[Any, ...]) -> bool:
        rank = LEVEL_RANK.get(level)
        floor = self._min_rank.get(component)
        if rank is None or floor is None:
            return self._invalid(f"unknown level {level!r}" if rank is None else
                                 f"unknown component {component!r}")
        if rank < floor:
            return False
        entry = {
            "id": new_id(), "timestamp": time.time_ns(), "level": level,
            "source": self.config.source, "component": component, "host": self._host,
            "pid": self._pid, "tid": threading.get_native_id(), "process": self.config.process,
            "message": self._format(fmt, args), "metadata": {}, "context": {},
        }
        if self._handlers:
            self._call_handlers(rank, entry)
        return self._enqueue(entry)

    def _format(self, fmt: Any, args: tuple[Any, ...]) -> str:
        if not args:
            return fmt if isinstance(fmt, str) else str(fmt)
        try:
            return fmt % args
        except Exception as err:  # noqa: BLE001 - a bad format string must not raise
            self._count("format_errors")
            self._last_error = f"format {fmt!r}: {err}"
            return f"{fmt} {args!r}"

    def write_structured(self, entry: dict[str, Any] | Entry) -> bool:
        try:
            data = self._normalize(entry)
        except (TypeError, ValueError) as err:
            return self._invalid(str(err))
        rank = LEVEL_RANK[data["level"]]
        if rank < self._min_rank[data["component"]]:
            return False
        if self._handlers:
            self._call_handlers(rank, data)
        return self._enqueue(data)

    def _normalize(self, entry: dict[str, Any] | Entry) -> dict[str, Any]:
        """Validate a structured entry and fill defaults; ValueError/TypeError on bad input."""
        data = entry.to_dict() if isinstance(entry, Entry) else entry
        if not isinstance(data, dict):
            raise TypeError(f"entry must be a dict or Entry, not {type(data).__name__}")
        unknown = set(data) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; valid: {list(FIELDS)}")
        out = dict(data)
        if not isinstance(out.get("message"), str):
            raise ValueError("message (str) is required")
        out.setdefault("level", "INFO")
        out.setdefault("component", "APPLICATION")
        if out["level"] not in LEVEL_RANK:
            raise ValueError(f"unknown level {out['level']!r}; valid: {list(LEVEL_RANK)}")
        if out["component"] not in self._min_rank:
            raise ValueError(f"unknown component {out['component']!r}; valid: {list(COMPONENTS)}")
        self._check_types(out)
        return self._fill_defaults(out)

    @staticmethod
    def _check_types(out: dict[str, Any]) -> None:
        for name in _INT_FIELDS:
            value = out.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} must be an int, got {type(value).__name__}")
        for name in _STR_FIELDS:
            if name in out and not isinstance(out[name], str):
                raise ValueError(f"{name} must be a str, got {type(out[name]).__name__}")
        for name in ("metadata", "context"):
            if out.get(name) is not None and not isinstance(out[name], dict):
                raise ValueError(f"{name} must be an object (dict)")

    def _fill_defaults(self, out: dict[str, Any]) -> dict[str, Any]:
        defaults = {
            "id": new_id, "timestamp": time.time_ns, "source": lambda: self.config.source,
            "host": lambda: self._host, "pid": lambda: self._pid,
            "tid": threading.get_native_id, "process": lambda: self.config.process,
            "metadata": dict, "context": dict,
        }
        for name, make in defaults.items():
            if out.get(name) is None:
                out[name] = make()
        return out

    def _call_handlers(self, rank: int, entry: dict[str, Any]) -> None:
        for min_rank, handler in self._handlers:
            if rank >= min_rank:
                try:
                    handler(entry)
                except Exception as err:  # noqa: BLE001 - a handler must not break logging
                    self._count("handler_errors")
                    self._last_error = f"handler {handler!r}: {err!r}"

    def _enqueue(self, entry: dict[str, Any]) -> bool:
        buf = self._buf
        if len(buf) >= self.config.buffer_size or self._closed:
            self._count("dropped_exit" if self._closed else "dropped_buffer_full")
            return False
        buf.append(entry)
        if not self._running:
            self._start()
        if len(buf) == self.config.batch_size:
            self._wake.set()
        return True

    def _invalid(self, reason: str) -> bool:
        self._count("invalid")
        self._last_error = reason
        return False

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    # -- configuration ---------------------------------------------------------------------

    def set_level(self, component: str | None, min_level: str) -> bool:
        """Minimum level of one component, or of all when component is None or "*"."""
        if min_level not in LEVEL_RANK:
            return self._invalid(f"unknown level {min_level!r}")
        if component in (None, "*"):
            self._min_rank = dict.fromkeys(COMPONENTS, LEVEL_RANK[min_level])
            return True
        if component not in self._min_rank:
            return self._invalid(f"unknown component {component!r}")
        self._min_rank = {**self._min_rank, component: LEVEL_RANK[min_level]}
        return True

    def register_handler(self, level: str, handler: Handler) -> bool:
        if level not in LEVEL_RANK or not callable(handler):
            return self._invalid(f"register_handler: bad level {level!r} or handler")
        self._handlers = (*self._handlers, (LEVEL_RANK[level], handler))
        return True

    def unregister_handler(self, handler: Handler) -> bool:
        before = len(self._handlers)
        self._handlers = tuple(h for h in self._handlers if h[1] != handler)
        return len(self._handlers) < before

    # -- sending ---------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._running or self._closed:
                return
            self._running = True
            self._thread = threading.Thread(target=self._run, name="mohlog-sdk", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            self._wake.wait(backoff or self.config.flush_interval_s)
            self._wake.clear()
            try:
                ok = self._drain()
            except Exception as err:  # noqa: BLE001 - the sender must outlive one send
                self._count("send_failures")
                self._last_error = f"{type(err).__name__}: {err}"
                ok = False
            backoff = 0.0 if ok else min(max(backoff * 2, 0.05), self.config.retry_max_s)

    def _drain(self) -> bool:
        """Send everything buffered; False after a failed send (the batch is kept)."""
        while self._pending or self._buf:
            if not self._pending:
                self._take_batch()
            if not self._send_pending():
                return False
        return True

    def _take_batch(self) -> None:
        buf, n = self._buf, min(len(self._buf), self.config.batch_size)
        batch = [buf.popleft() for _ in range(n)]
        self._inflight = len(batch)
        self._pending, self._pending_key = batch, new_id()
        self._pending_data = _serialize(batch)

    def _send_pending(self) -> bool:
        n = len(self._pending)
        try:
            self._send_any(self._pending_data, self._pending_key)
            self._count("sent", n)
            self._healthy = True
        except _Retry as err:
            self._healthy = False
            self._count("send_failures")
            self._last_error = str(err)
            return False
        except _Rejected as err:
            self._count("dropped_rejected", n)
            self._last_error = str(err)
        self._pending, self._pending_data, self._inflight = [], b"", 0
        return True

    def _send_any(self, data: bytes, key: str) -> None:
        err: _Retry | None = None
        for transport in self._transports():
            try:
                transport.send(data, key)
                return
            except _Retry as failed:
                err = failed
        raise err or _Retry("no transport")

    def _transports(self) -> list[_SocketTransport | _HubTransport]:
        """The agent socket when it exists (or is connected), then the hub if configured."""
        out: list[_SocketTransport | _HubTransport] = []
        if self._socket.sock is not None or self._socket.available() or self._hub is None:
            out.append(self._socket)
        if self._hub is not None:
            out.append(self._hub)
        return out

    # -- flushing, stats, shutdown -----------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything buffered was sent; False when the timeout passed first."""
        deadline = time.monotonic() + timeout
        while self._buf or self._inflight:
            if not self._running or time.monotonic() >= deadline:
                return not (self._buf or self._inflight)
            self._wake.set()
            time.sleep(0.002)
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush (bounded), stop the sender and count what could not be sent."""
        if self._closed:
            return
        wait = self.config.exit_flush_timeout_s if timeout is None else timeout
        self.flush(wait if self._healthy else min(wait, 0.2))
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.config.send_timeout_s + 1)
        left = len(self._buf) + self._inflight
        if left:
            self._count("dropped_exit", left)
            self._buf.clear()
            self._inflight = 0
        self._socket.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                name: self._counts.get(name, 0)
                for name in ("sent", "dropped_buffer_full", "dropped_rejected", "dropped_exit",
                             "invalid", "format_errors", "handler_errors", "send_failures")
            }
        out["buffered"] = len(self._buf) + self._inflight
        out["dropped"] = out["dropped_buffer_full"] + out["dropped_rejected"] + out["dropped_exit"]
        out["last_error"] = self._last_error
        return out

    def _after_fork_in_child(self) -> None:
        self._socket.close()
        self._init_runtime()


# -- the default client and the public functions ------------------------------------------

_default: Client | None = None
_default_lock = threading.Lock()


def client() -> Client:
    """The process-wide client, built from the environment on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Client()
    return _default


def configure(config: SdkConfig) -> Client:
    """Replace the default client (the old one is flushed and shut down)."""
    global _default
    with _default_lock:
        old, _default = _default, Client(config)
    if old is not None:
        old.shutdown()
    return _default


def log_write(level: str, component: str, fmt: Any, *args: Any) -> bool:
    """Write ``fmt % args`` at ``level`` for ``component``; formats only when kept."""
    return (_default or client()).write(level, component, fmt, args)


def log_write_structured(entry: dict[str, Any] | Entry) -> bool:
    """Write a structured entry (dict of mohlog.model FIELDS, or an Entry)."""
    return (_default or client()).write_structured(entry)


def log_set_level(component: str | None, min_level: str) -> bool:
    """Keep entries of ``component`` (all components for None/"*") at ``min_level`` or above."""
    return (_default or client()).set_level(component, min_level)


def log_register_handler(level: str, handler: Handler) -> bool:
    """Call ``handler(entry)`` in the writing thread for kept entries at ``level`` or above."""
    return (_default or client()).register_handler(level, handler)


def log_unregister_handler(handler: Handler) -> bool:
    return (_default or client()).unregister_handler(handler)


def flush(timeout: float = 5.0) -> bool:
    return (_default or client()).flush(timeout)


def stats() -> dict[str, Any]:
    return (_default or client()).stats()


def shutdown() -> None:
    if _default is not None:
        _default.shutdown()


def _after_fork() -> None:
    for c in list(_clients):
        c._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(shutdown)


# -- the standard logging module ------------------------------------------------------------

def level_from_logging(levelno: int) -> str:
    """Map a ``logging`` level number to a mohlog level (custom levels round down)."""
    if levelno >= logging.CRITICAL:
        return "CRITICAL"
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARNING"
    if levelno >= logging.INFO:
        return "INFO"
    if levelno >= logging.DEBUG:
        return "DEBUG"
    return "TRACE"


# A LogRecord's own attributes (anything else on it came from ``extra``), and those the
# handler reads itself.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message", "asctime", "metadata", "component", "taskName"}
_JSON_TYPES = (str, int, float, bool, type(None), list, dict)


class MohlogHandler(logging.Handler):
    """A ``logging.Handler`` that writes records through the SDK (non-blocking).

    Levels: CRITICAL, ERROR, WARNING, INFO, DEBUG map to the same names, below DEBUG to
    TRACE. The component is ``record.component`` (``extra={"component": ...}``) or the
    handler's. The entry's metadata carries the logger name, file, line and function,
    every other ``extra`` field (``log.info("paid", extra={"order": 77})``: values that
    are not JSON types as their text) and what ``extra={"metadata": {...}}`` holds.
    """

    def __init__(self, component: str = "APPLICATION", level: int = logging.NOTSET,
                 client_: Client | None = None) -> None:
        super().__init__(level)
        self.component = component
        self._client = client_

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "mohlog.sdk":  # never feed the SDK's own diagnostics back in
            return
        try:
            target = self._client or _default or client()
            target.write_structured(self._entry(record, target))
        except Exception:  # noqa: BLE001
            self.handleError(record)

    def _entry(self, record: logging.LogRecord, target: Client) -> dict[str, Any]:
        metadata = {"logger": record.name, "file": record.pathname, "line": record.lineno,
                    "function": record.funcName}
        for key in record.__dict__.keys() - _RECORD_FIELDS:     # the extra fields
            value = record.__dict__[key]
            metadata[key] = value if isinstance(value, _JSON_TYPES) else str(value)
        extra = getattr(record, "metadata", None)
        if isinstance(extra, dict):
            metadata.update(extra)
        return {
            "timestamp": int(record.created * 1e9), "level": level_from_logging(record.levelno),
            "component": getattr(record, "component", self.component),
            "message": self.format(record), "pid": record.process or os.getpid(),
            "tid": threading.get_native_id(), "metadata": metadata,
            "process": target.config.process,
        }
