"""Tail log files and globs: new lines become entries; rotation (rename + new file) and
truncation are followed; (inode, offset) per path is kept in a state file so a restart
resumes where it stopped (nothing twice, nothing missed).

A file truncated and written again before the next look (logrotate's ``copytruncate`` on
a busy service: the new lines soon outgrow the old offset) is told by its bytes: the last
``FINGERPRINT`` bytes before the offset are kept (and saved with it), and read again
whenever the file changed; when they differ the file is read from its start. By size
alone, those lines were skipped.

A line's time, level, host, process and pid come from its header when it has one
(mohlog.lines), and the lines after it without one (a traceback) join its entry
(``multiline``): an entry is handed on when the next header comes, after ``multiline_wait_s``
without one, or when the file is rotated. The saved position is that of the first byte
not handed on (before a partial last line and the entry held), so a restart reads them
again instead of losing them."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any

import orjson

from agent.sources.base import Emit, Source
from mohlog import log
from mohlog.lines import LineParser, Records, compression_of
from mohlog.model import new_id

FINGERPRINT = 64        # bytes before the offset that must still be there


class FilesSource(Source):
    name = "files"

    def __init__(self, patterns: list[str], state_file: Path, component: str = "APPLICATION",
                 poll_s: float = 0.2, max_line: int = 1 << 20, parse: bool = True,
                 multiline: bool = True, multiline_wait_s: float = 1.0) -> None:
        super().__init__()
        self.patterns, self.state_file, self.component = patterns, state_file, component
        self.poll_s, self.max_line = poll_s, max_line
        self._last: dict[str, bytes] = {}     # the bytes before the offset (FINGERPRINT)
        self._mtime: dict[str, int] = {}      # modification time when last looked at
        self.pos: dict[str, tuple[int, int]] = self._load()   # (inode, offset read up to)
        self._partial: dict[str, bytes] = {}
        self._partial_bytes: dict[str, int] = {}
        self._host = os.uname().nodename
        self.parse, self.multiline = parse, multiline and parse
        self.multiline_wait_s = multiline_wait_s
        self._parsers: dict[str, LineParser] = {}
        self._records: dict[str, Records] = {}

    def _load(self) -> dict[str, tuple[int, int]]:
        """Saved (inode, offset) per file; a missing or damaged state reads files from
        their start (records twice rather than lost)."""
        try:
            saved = orjson.loads(self.state_file.read_bytes())
            pos = {k: (int(v[0]), int(v[1])) for k, v in saved.items()}
            self._last = {k: bytes.fromhex(v[2]) for k, v in saved.items() if len(v) > 2}
            return pos
        except (OSError, ValueError, TypeError, AttributeError, IndexError, KeyError):
            self._last = {}
            return {}

    def _save(self) -> None:
        state = {}
        for path, (ino, off) in self.pos.items():
            at = max(0, off - self.held(path))
            last = self._last.get(path, b"") if at == off else \
                _bytes_before(path, ino, at) or b""
            state[path] = (ino, at, last.hex())
        tmp = self.state_file.with_suffix(".tmp")
        try:
            tmp.write_bytes(orjson.dumps(state))
            os.replace(tmp, self.state_file)
        except OSError as err:          # a full disk: positions kept in memory meanwhile
            tmp.unlink(missing_ok=True)
            self.counters["state_write_errors"] += 1
            if self.counters["state_write_errors"] % 300 == 1:
                log.agent.error("files: cannot save positions to %s (%s); kept in memory, "
                                "saved again once it can", self.state_file, err)

    def held(self, path: str) -> int:
        """Bytes of ``path`` read but not handed on: a partial last line, the entry held."""
        rec = self._records.get(path)
        return self._partial_bytes.get(path, 0) + (rec.pending_bytes if rec else 0)

    def paths(self) -> list[str]:
        out: list[str] = []
        for pat in self.patterns:
            out += sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        return out

    def run_forever(self, emit: Emit) -> None:
        while not self.stopping.is_set():
            changed = False
            for path in self.paths():
                entries = self.poll(path)
                if entries:
                    emit(entries)
                    changed = True
            if changed:
                self._save()
            self.stopping.wait(self.poll_s)
        self._save()

    def poll(self, path: str) -> list[dict[str, Any]]:
        try:
            st = os.stat(path)
        except OSError:                 # deleted: what was held of it is handed on
            held = path in self._partial or self.held(path)
            return self._lines(path, b"", final=True) if held else []
        ino, off = self.pos.get(path, (st.st_ino, 0))
        out: list[dict[str, Any]] = []
        if ino != st.st_ino:  # rotated: finish the old file (if still reachable), then new
            out += self._rest_of_rotated(path, ino, off)
            ino, off = st.st_ino, 0
            self._last.pop(path, None)
            self.counters["rotations"] += 1
        if st.st_size < off or self._rewritten(path, st, off):  # truncated
            off = 0
            self._last.pop(path, None)
            self._partial.pop(path, None)
            self._partial_bytes.pop(path, None)
            out += self._flush(path)
            self.counters["truncations"] += 1
        if st.st_size > off:
            with open(path, "rb") as f:
                compressed = off == 0 and compression_of(f.read(8)) is not None
                f.seek(off)
                data = b"" if compressed else f.read(64 << 20)
            if compressed:
                # a compressed rotated file a glob caught (syslog.2.gz): not text, and
                # its lines were read before it was rotated
                if self.counters["compressed_skipped"] < 100:
                    log.agent.info("files: %s is compressed: skipped", path)
                self.counters["compressed_skipped"] += 1
                self.pos[path] = (ino, st.st_size)
                return out
            off += len(data)
            self._last[path] = (self._last.get(path, b"") + data[-FINGERPRINT:])[-FINGERPRINT:]
            out += self._lines(path, data)
        rec = self._records.get(path)
        if rec is not None and rec.pending_bytes and \
                time.monotonic() - rec.since >= self.multiline_wait_s:
            out += self._flush(path)
        self.pos[path] = (ino, off)
        return out

    def _rewritten(self, path: str, st: os.stat_result, off: int) -> bool:
        """Was the file truncated and written again past ``off`` since it was read (its
        bytes before ``off`` are not those read)? Looked at when it changed."""
        if self._mtime.get(path) == st.st_mtime_ns:
            return False
        self._mtime[path] = st.st_mtime_ns
        last = self._last.get(path)
        if not off or not last:
            return False
        now = _bytes_before(path, st.st_ino, off)
        if now is None or now == last:          # (None: rotated meanwhile, or unreadable)
            return False
        log.agent.info("files: %s was truncated and written again (copytruncate?): read "
                       "from its start", path)
        return True

    def _rest_of_rotated(self, path: str, ino: int, off: int) -> list[dict[str, Any]]:
        """The end of the rotated file (if still reachable), and what was held of it."""
        for cand in glob.glob(path + "*"):
            try:
                if os.stat(cand).st_ino == ino and cand != path:
                    with open(cand, "rb") as f:
                        f.seek(off)
                        return self._lines(path, f.read(64 << 20), final=True)
            except OSError:
                continue
        return self._lines(path, b"", final=True)

    def _lines(self, path: str, data: bytes, final: bool = False) -> list[dict[str, Any]]:
        old = self._partial.pop(path, b"")
        dropped = self._partial_bytes.pop(path, 0) - len(old)   # cut off a too long line
        data = old + data
        lines = data.split(b"\n")
        rest = lines.pop()
        if rest and not final:
            self._partial[path] = rest[: self.max_line]
            self._partial_bytes[path] = len(rest) + (dropped if not lines else 0)
        elif rest:
            lines.append(rest)
        self.counters["lines"] += len(lines)
        out = []
        if self.multiline:
            rec = self._records.get(path)
            if rec is None:
                rec = self._records[path] = Records()
            for i, ln in enumerate(lines):
                size = len(ln) + 1 + (dropped if i == 0 else 0)
                for fields, _, _ in rec.add(ln.decode("utf-8", "replace").rstrip("\r"), size):
                    out.append(self._entry(path, fields))
            if final:
                out += self._flush(path)
            return out
        parser = self._parsers.get(path) if self.parse else None
        if parser is None and self.parse:
            parser = self._parsers[path] = LineParser()
        for ln in lines:
            if ln.strip():
                text = ln.decode("utf-8", "replace").rstrip("\r")
                out.append(self._entry(path, parser.fields(text) if parser else
                                       {"message": text}))
        return out

    def _flush(self, path: str) -> list[dict[str, Any]]:
        """The entry held for ``path`` (its lines end it)."""
        rec = self._records.get(path)
        return [self._entry(path, fields) for fields, _, _ in rec.flush()] if rec else []

    def _entry(self, path: str, fields: dict[str, Any]) -> dict[str, Any]:
        e = {"id": new_id(), "timestamp": time.time_ns(), "level": "INFO",
             "component": self.component, "source": "file", "host": self._host, "pid": 0,
             "tid": 0, "process": os.path.basename(path), "message": "",
             "metadata": {"file": path}, "context": {}}
        e.update(fields)
        return e


def _bytes_before(path: str, ino: int, at: int) -> bytes | None:
    """The FINGERPRINT bytes of ``path`` before offset ``at``; None when it is not the
    file of inode ``ino`` any more, or unreadable."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_ino != ino:
                return None
            n = min(at, FINGERPRINT)
            return os.pread(f.fileno(), n, at - n)
    except OSError:
        return None
