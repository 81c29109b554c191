"""The SDK socket: applications on this host write NDJSON entries to a unix socket.

Protocol (CONTRACTS.md "SDK ↔ agent"): a unix stream socket (default
``/run/mohlog/sdk.sock``, mode 0666 so any local user may write), many clients at once,
one JSON entry object per line with the FIELDS of ``mohlog.model``. ``message`` is
required; ``level`` defaults to INFO, ``component`` to APPLICATION, ``source`` to "sdk",
``pid`` to the connecting process (SO_PEERCRED, given by the kernel), ``process`` to
that pid's comm, and id/timestamp/host/tid/metadata/context to the usual defaults. Every
entry's ``metadata.peer`` is the writer's pid, uid and gid as the kernel gives them (what
an entry says of itself is its writer's claim), and a ``source`` the agent collects itself
(ebpf, kmsg, journal, file, syslog) cannot be claimed: it becomes "sdk".
A line that is not a valid entry is counted (``invalid_json``, ``invalid_entry``,
``line_too_long``) and skipped; the connection stays open. A client that disconnects in
the middle of a line loses only that partial line (counted as ``partial_line``).

One thread serves every client with ``selectors`` (no thread per client); each read
becomes one ``emit`` call with the entries it completed.
"""

from __future__ import annotations

import os
import selectors
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from agent.sources.base import Emit, Source
from mohlog.errors import MohlogError
from mohlog.model import COMPONENT_CODE, FIELDS, LEVEL_RANK, new_id

_FIELD_SET = frozenset(FIELDS)
_INT_FIELDS = ("timestamp", "pid", "tid")
_STR_FIELDS = ("id", "source", "host", "process")


class SdkSocketError(MohlogError):
    """The SDK socket cannot be set up (path in use by a live agent, permissions...)."""


@dataclass
class SdkSocketConfig:
    """Settings of the SDK socket source (the agent config's ``sdk_socket`` section)."""

    # Path of the unix stream socket the SDK writes to (SDK env MOHLOG_SDK_SOCKET).
    path: str = "/run/mohlog/sdk.sock"
    # File mode of the socket; 0o666 lets every local user log.
    mode: int = 0o666
    # Longest accepted line in bytes; longer lines are skipped and counted.
    max_line_bytes: int = 1 << 20
    # Most connected clients; further connections are closed and counted.
    max_clients: int = 4096
    # Bytes read per recv() call.
    read_bytes: int = 256 << 10


# Sources the agent itself collects: an application on the socket cannot claim them (its
# claim is kept as metadata.claimed_source), so ``source=ebpf`` or ``source=journal`` are
# the agent's word, whoever writes to the world-writable socket.
AGENT_SOURCES = frozenset({"ebpf", "kmsg", "journal", "file", "syslog"})


class _Client:
    """One connection: its socket, unfinished line and the peer's pid, uid, gid and
    comm (the kernel's, SO_PEERCRED)."""

    def __init__(self, sock: socket.socket, pid: int, uid: int, gid: int, comm: str
                 ) -> None:
        self.sock, self.pid, self.comm = sock, pid, comm
        self.peer = {"pid": pid, "uid": uid, "gid": gid}
        self.rest = b""
        self.skipping = False  # inside an over-long line: drop bytes until the next newline


def _peer(sock: socket.socket) -> tuple[int, int, int, str]:
    """The connecting process's pid, uid, gid and comm (kernel-given), or (0, -1, -1, "")."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
    except OSError:
        return 0, -1, -1, ""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = ""
    return pid, uid, gid, comm


class SdkSocketSource(Source):
    """Accepts SDK clients on a unix socket and emits their entries (source "sdk")."""

    name = "sdk"

    def __init__(self, config: SdkSocketConfig | None = None) -> None:
        super().__init__()
        self.config = config or SdkSocketConfig()
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._host = os.uname().nodename
        self._clients: dict[int, _Client] = {}

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, emit: Emit) -> None:
        """Bind now (errors reach the caller), then serve in the source thread."""
        self.listen()
        super().start(emit)

    def listen(self) -> None:
        path = Path(self.config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, self.config.mode)
            sock.listen(512)
        except OSError as err:
            sock.close()
            raise SdkSocketError(f"cannot listen on {path}: {err}") from err
        sock.setblocking(False)
        self._listener, self._inode = sock, path.stat().st_ino

    def _remove_stale(self, path: Path) -> None:
        """Unlink a socket file left by a dead agent; refuse to steal a live one."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise SdkSocketError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)
            return
        finally:
            probe.close()
        raise SdkSocketError(f"{path} is in use by a running process (another agent?)")

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        for client in list(self._clients.values()):
            client.sock.close()
        self._clients.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._unlink_own()

    def _unlink_own(self) -> None:
        path = Path(self.config.path)
        try:
            if self._inode is not None and path.lstat().st_ino == self._inode:
                path.unlink()
        except FileNotFoundError:
            pass
        self._inode = None

    # -- serving ------------------------------------------------------------------------------

    def run_forever(self, emit: Emit) -> None:
        if self._listener is None:
            self.listen()
        assert self._listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ, None)
            while not self.stopping.is_set():
                for key, _ in sel.select(timeout=0.2):
                    if key.data is None:
                        self._accept(sel)
                    else:
                        self._read(sel, key.data, emit)
            for client in list(self._clients.values()):
                self._flush_close(sel, client, emit)

    def _accept(self, sel: selectors.BaseSelector) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["accept_errors"] += 1
                return
            if len(self._clients) >= self.config.max_clients:
                self.counters["refused_clients"] += 1
                conn.close()
                continue
            conn.setblocking(False)
            client = _Client(conn, *_peer(conn))
            self._clients[conn.fileno()] = client
            sel.register(conn, selectors.EVENT_READ, client)
            self.counters["connections"] += 1

    def _read(self, sel: selectors.BaseSelector, client: _Client, emit: Emit) -> None:
        try:
            data = client.sock.recv(self.config.read_bytes)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._flush_close(sel, client, emit)
            return
        self.counters["bytes"] += len(data)
        entries = self._lines(client, data)
        if entries:
            self.counters["entries"] += len(entries)
            emit(entries)

    def _flush_close(self, sel: selectors.BaseSelector, client: _Client, emit: Emit) -> None:
        """Drain what the client still sent, then close; an unfinished line is counted."""
        while True:
            try:
                data = client.sock.recv(self.config.read_bytes)
            except OSError:
                break
            if not data:
                break
            entries = self._lines(client, data)
            if entries:
                self.counters["entries"] += len(entries)
                emit(entries)
        if client.rest.strip():
            self.counters["partial_line"] += 1
        sel.unregister(client.sock)
        self._clients.pop(client.sock.fileno(), None)
        client.sock.close()

    # -- parsing ------------------------------------------------------------------------------

    def _lines(self, client: _Client, data: bytes) -> list[dict[str, Any]]:
        """Split the client's bytes into complete lines and turn them into entries."""
        buf = client.rest + data
        lines = buf.split(b"\n")
        client.rest = lines.pop()
        out: list[dict[str, Any]] = []
        for line in lines:
            if client.skipping:
                client.skipping = False
                continue
            entry = self._entry(line, client)
            if entry is not None:
                out.append(entry)
        if len(client.rest) > self.config.max_line_bytes:
            self.counters["line_too_long"] += 1
            client.rest, client.skipping = b"", True
        return out

    def _entry(self, line: bytes, client: _Client) -> dict[str, Any] | None:
        line = line.strip()
        if not line:
            return None
        if len(line) > self.config.max_line_bytes:
            self.counters["line_too_long"] += 1
            return None
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.counters["invalid_json"] += 1
            return None
        reason = validate(obj)
        if reason:
            self.counters["invalid_entry"] += 1
            return None
        return self._fill(obj, client)

    def _fill(self, obj: dict[str, Any], client: _Client) -> dict[str, Any]:
        obj.setdefault("level", "INFO")
        obj.setdefault("component", "APPLICATION")
        for name, value in (("source", "sdk"), ("host", self._host), ("tid", 0),
                            ("pid", client.pid), ("process", client.comm)):
            if obj.get(name) is None:
                obj[name] = value
        if obj.get("id") is None:
            obj["id"] = new_id()
        if obj.get("timestamp") is None:
            obj["timestamp"] = time.time_ns()
        for name in ("metadata", "context"):
            if obj.get(name) is None:
                obj[name] = {}
        # What the entry says of itself (pid, process, host) is the application's claim;
        # metadata.peer is the kernel's word on who wrote it.
        obj["metadata"]["peer"] = dict(client.peer)
        if obj["source"] in AGENT_SOURCES:
            obj["metadata"]["claimed_source"] = obj["source"]
            obj["source"] = "sdk"
        return obj


def validate(obj: Any) -> str | None:
    """Why ``obj`` is not a valid SDK entry, or None when it is."""
    if not isinstance(obj, dict):
        return "not an object"
    if not isinstance(obj.get("message"), str):
        return "message (str) is required"
    unknown = obj.keys() - _FIELD_SET
    if unknown:
        return f"unknown fields {sorted(unknown)}"
    if obj.get("level", "INFO") not in LEVEL_RANK:
        return f"unknown level {obj.get('level')!r}"
    if obj.get("component", "APPLICATION") not in COMPONENT_CODE:
        return f"unknown component {obj.get('component')!r}"
    for name in _INT_FIELDS:
        value = obj.get(name)
        if value is not None and (type(value) is not int):
            return f"{name} must be an int"
    for name in _STR_FIELDS:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} must be a str"
    for name in ("metadata", "context"):
        value = obj.get(name)
        if value is not None and not isinstance(value, dict):
            return f"{name} must be an object"
    return None

