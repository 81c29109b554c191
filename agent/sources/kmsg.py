"""The kernel log from /dev/kmsg: every printk record as a KERNEL entry with its priority.

Why /dev/kmsg and not the ``printk:console`` tracepoint: the tracepoint carries only the
text (no priority, facility or sequence number), and fires only on the path that emits to
consoles; /dev/kmsg hands out every record of the kernel's ring buffer with priority,
facility, a sequence number (so loss is visible: a reader that fell behind gets EPIPE and a
gap in ``seq``) and structured fields (SUBSYSTEM=, DEVICE=). Messages written to /dev/kmsg
by user space (facility ``user``) come the same way.

Record format (Documentation/ABI/testing/dev-kmsg): ``pri,seq,usec,flags[,...];text\\n``
then continuation lines `` KEY=value\\n``; unprintable bytes in the text are ``\\xNN``.
Start position: the end of the buffer (only new records), or with a saved state of the same
boot (``boot_id`` + last ``seq`` in the state file) just after the last record handed on;
with a state of another boot, from the start of the buffer (all of it is new).
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.sources.base import Emit, Source
from mohlog import log
from mohlog.model import SYSLOG_LEVELS, new_id

KMSG = "/dev/kmsg"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
PRIORITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp",
              "cron", "authpriv", "ftp", "ntp", "audit", "alert", "clock", "local0",
              "local1", "local2", "local3", "local4", "local5", "local6", "local7")
_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_TAG = re.compile(r"^([\w.\-/]+)(?:\[(\d+)\])?: ")


@dataclass
class KmsgRecord:
    priority: int        # 0 emerg .. 7 debug
    facility: int        # 0 kern, 1 user, ...
    seq: int             # the kernel's sequence number of the record
    usec: int            # microseconds since boot (the printk clock)
    continued: bool      # flags 'c': a fragment continued by the next record
    text: str
    fields: dict[str, str] = field(default_factory=dict)


def parse_record(raw: bytes) -> KmsgRecord:
    """One /dev/kmsg read; ValueError when it is not a record."""
    head, sep, rest = raw.partition(b";")
    parts = head.split(b",")
    if not sep or len(parts) < 4:
        raise ValueError(f"not a kmsg record: {raw[:80]!r}")
    pri, seq, usec = int(parts[0]), int(parts[1]), int(parts[2])
    lines = rest.rstrip(b"\n").split(b"\n")
    fields = {}
    for line in lines[1:]:
        key, eq, value = line.strip().partition(b"=")
        if eq:
            fields[key.decode("ascii", "replace")] = _unescape(value)
    return KmsgRecord(priority=pri & 7, facility=pri >> 3, seq=seq, usec=usec,
                      continued=parts[3].startswith(b"c"), text=_unescape(lines[0]),
                      fields=fields)


def _unescape(raw: bytes) -> str:
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw).decode("utf-8", "replace")


def to_entry(rec: KmsgRecord, host: str, mono_offset: int, source: str = "kmsg") -> dict:
    """The entry of a record: KERNEL component, level from the priority."""
    facility = FACILITIES[rec.facility] if rec.facility < len(FACILITIES) else str(rec.facility)
    process, pid = "kernel", 0
    match = _TAG.match(rec.text) if rec.facility else None
    if match:  # user space writes "tag[pid]: text" by convention
        process, pid = match.group(1), int(match.group(2) or 0)
    meta: dict[str, Any] = {"event": "printk", "priority": rec.priority,
                            "priority_name": PRIORITY_NAMES[rec.priority],
                            "facility": facility, "seq": rec.seq, "kernel_usec": rec.usec}
    if rec.continued:
        meta["continued"] = True
    meta.update({k.lower(): v for k, v in rec.fields.items()})
    return {"id": new_id(), "timestamp": rec.usec * 1000 + mono_offset,
            "level": SYSLOG_LEVELS[rec.priority], "source": source, "component": "KERNEL",
            "host": host, "pid": pid, "tid": pid, "process": process, "message": rec.text,
            "metadata": meta, "context": {}}


def boot_id() -> str:
    try:
        return Path(BOOT_ID).read_text().strip()
    except OSError:
        return ""


class KmsgReader:
    """A non-blocking /dev/kmsg reader that resumes after the last record it handed on."""

    def __init__(self, state_file: Path | None = None, from_start: bool = False,
                 path: str = KMSG, source: str = "kmsg") -> None:
        self.state_file, self.path, self.source = state_file, path, source
        self.host = os.uname().nodename
        self.mono_offset = time.time_ns() - time.monotonic_ns()
        self.records = self.lost = self.bad = 0
        self.boot = boot_id()
        self.last_seq = -1
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        saved = self._load_state()
        if saved is not None:
            self.last_seq = saved
            os.lseek(self.fd, 0, os.SEEK_SET)
        elif not from_start:
            os.lseek(self.fd, 0, os.SEEK_END)

    def _load_state(self) -> int | None:
        if self.state_file is None or not self.state_file.exists():
            return None
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        if state.get("boot_id") != self.boot:
            return -1  # another boot: everything in the buffer is new
        return int(state.get("seq", -1))

    def save(self) -> None:
        if self.state_file is None or self.last_seq < 0:
            return
        tmp = self.state_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"boot_id": self.boot, "seq": self.last_seq}))
            tmp.replace(self.state_file)
        except OSError as err:
            log.agent.warning("cannot save kmsg position to %s: %s", self.state_file, err)

    def read(self, limit: int = 4096) -> list[dict]:
        """Entries of the records available now (at most ``limit``)."""
        out: list[dict] = []
        while len(out) < limit:
            try:
                raw = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno == errno.EPIPE:  # overwritten before we read it: seq shows the gap
                    continue
                raise
            if not raw:
                break
            entry = self.take(raw)
            if entry is not None:
                out.append(entry)
        return out

    def take(self, raw: bytes) -> dict | None:
        """The entry of one record, None when bad or already handed on; counts gaps."""
        try:
            rec = parse_record(raw)
        except ValueError:
            self.bad += 1
            return None
        if rec.seq <= self.last_seq:
            return None  # handed on before a restart
        if self.last_seq >= 0 and rec.seq > self.last_seq + 1:
            self.lost += rec.seq - self.last_seq - 1
        self.last_seq = rec.seq
        self.records += 1
        return to_entry(rec, self.host, self.mono_offset, self.source)

    def close(self) -> None:
        self.save()
        os.close(self.fd)

    def stats(self) -> dict[str, int]:
        return {"records": self.records, "lost": self.lost, "bad": self.bad,
                "last_seq": self.last_seq}


@dataclass
class KmsgConfig:
    """The kernel log source on its own (when eBPF is off; with eBPF on, its printk probe
    reads /dev/kmsg the same way - run one or the other)."""

    # File keeping boot id and last sequence number, to resume after a restart (None: none).
    state_file: str | None = None
    # With no saved position: read the whole buffer (True) or only new records (False).
    from_start: bool = False
    # Seconds between reads when idle (a read returns at once when records are waiting).
    poll_interval_s: float = 0.2


class KmsgSource(Source):
    """/dev/kmsg as a Source: entries with ``source="kmsg"`` and metadata event printk."""

    name = "kmsg"

    def __init__(self, cfg: KmsgConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.reader = KmsgReader(Path(cfg.state_file) if cfg.state_file else None,
                                 cfg.from_start)

    def run_forever(self, emit: Emit) -> None:
        import select

        poller = select.poll()
        poller.register(self.reader.fd, select.POLLIN)
        try:
            while not self.stopping.is_set():
                entries = self.reader.read()
                if entries:
                    emit(entries)
                    self.counters["events"] += len(entries)
                    self.reader.save()
                else:
                    poller.poll(self.cfg.poll_interval_s * 1000)
        finally:
            self.reader.close()

    def stats(self) -> dict[str, int]:
        return {**self.counters, **self.reader.stats()}
