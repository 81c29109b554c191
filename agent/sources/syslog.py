"""Syslog listener: RFC 3164 and RFC 5424 over UDP and TCP (octet counting or newlines).

Severity → level: 0-2 CRITICAL, 3 ERROR, 4 WARNING, 5-6 INFO, 7 DEBUG; facility 4/10
(auth, authpriv) with severity ≤ 5 → SECURITY. APP-NAME → process, HOSTNAME → host,
PROCID → pid.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from datetime import datetime
from typing import Any

from agent.sources.base import Emit, Source
from mohlog.model import new_id, syslog_level

_PRI = re.compile(rb"^<(\d{1,3})>")
_5424 = re.compile(r"^1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|(?:\[.*?\])+) ?(.*)$", re.S)
_3164 = re.compile(r"^([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (\S+) ([^:\[\s]+)(?:\[(\d+)\])?:"
                   r" ?(.*)$", re.S)
_TAG = re.compile(r"^([^:\[\s]{1,48})(?:\[(\d+)\])?: ?(.*)$", re.S)


def parse(raw: bytes, peer: str = "") -> dict[str, Any]:
    """One syslog message (either RFC) → entry dict; unparsable text is kept whole."""
    m = _PRI.match(raw)
    pri = int(m.group(1)) if m else 13
    text = raw[m.end():].decode("utf-8", "replace") if m else raw.decode("utf-8", "replace")
    fac, sev = pri >> 3, pri & 7
    level = syslog_level(sev, fac)
    e: dict[str, Any] = {"id": new_id(), "timestamp": time.time_ns(), "level": level,
                         "component": "APPLICATION", "source": "syslog", "host": peer,
                         "pid": 0, "tid": 0, "process": "", "message": text.strip(),
                         "metadata": {"facility": fac, "severity": sev}, "context": {}}
    if (m5 := _5424.match(text)) is not None:
        ts, host, app, procid, msgid, sd, msg = m5.groups()
        e.update(host=_nil(host) or peer, process=_nil(app) or "", message=msg.strip())
        e["metadata"].update(rfc=5424, msgid=_nil(msgid), structured=_nil(sd))
        e["pid"] = int(procid) if procid.isdigit() else 0
        e["timestamp"] = _iso(ts) or e["timestamp"]
    elif (m3 := _3164.match(text)) is not None:
        _ts, host, tag, pid, msg = m3.groups()
        e.update(host=host, process=tag, message=msg.strip(), pid=int(pid or 0))
        e["metadata"]["rfc"] = 3164
    elif (mt := _TAG.match(text)) is not None:  # "TAG[pid]: msg" (Python's SysLogHandler)
        tag, pid, msg = mt.groups()
        e.update(process=tag, message=msg.strip(), pid=int(pid or 0))
    return e


def _nil(v: str) -> str | None:
    return None if v == "-" else v


def _iso(v: str) -> int | None:
    if v == "-":
        return None
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    try:
        return int(dt.replace(microsecond=0).timestamp()) * 10**9 + dt.microsecond * 1000
    except (ValueError, OverflowError):
        return None


def frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """Split a TCP stream: octet-counting ("LEN SP MSG") or newline-terminated frames."""
    out = []
    while buf:
        head = buf[:12]
        sp = head.find(b" ")
        if sp > 0 and head[:sp].isdigit():
            n = int(head[:sp])
            if len(buf) < sp + 1 + n:
                break
            out.append(buf[sp + 1:sp + 1 + n])
            buf = buf[sp + 1 + n:]
            continue
        nl = buf.find(b"\n")
        if nl < 0:
            break
        out.append(buf[:nl])
        buf = buf[nl + 1:]
    return [f.rstrip(b"\r\n") for f in out if f.strip()], buf


def _addr(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class SyslogSource(Source):
    name = "syslog"

    def __init__(self, udp: list[str], tcp: list[str]) -> None:
        super().__init__()
        self.sel = selectors.DefaultSelector()
        self.bound: dict[str, tuple[str, int]] = {}
        for spec in udp:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(_addr(spec))
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, "udp")
            self.bound[f"udp:{spec}"] = s.getsockname()
        for spec in tcp:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(_addr(spec))
            s.listen(128)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, "listen")
            self.bound[f"tcp:{spec}"] = s.getsockname()
        self._bufs: dict[socket.socket, bytes] = {}

    def run_forever(self, emit: Emit) -> None:
        while not self.stopping.is_set():
            for key, _ in self.sel.select(0.2):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if key.data == "udp":
                    data, peer = sock.recvfrom(65535)
                    self.counters["messages"] += 1
                    emit([parse(data.rstrip(b"\n"), peer[0])])
                elif key.data == "listen":
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    self.sel.register(conn, selectors.EVENT_READ, "tcp")
                    self._bufs[conn] = b""
                else:
                    self._read_tcp(sock, emit)
        self.sel.close()

    def _read_tcp(self, conn: socket.socket, emit: Emit) -> None:
        try:
            data = conn.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(conn)
            rest = self._bufs.pop(conn, b"")
            conn.close()
            if rest.strip():
                emit([parse(rest.strip(), "")])
            return
        msgs, self._bufs[conn] = frames(self._bufs[conn] + data)
        peer = conn.getpeername()[0] if msgs else ""
        if msgs:
            self.counters["messages"] += len(msgs)
            emit([parse(m, peer) for m in msgs])
