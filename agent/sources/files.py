"""Tail log files and globs: new lines become entries; rotation (rename + new file) and
truncation are followed; (inode, offset) per path is kept in a state file so a restart
resumes where it stopped (nothing twice, nothing missed). A line's time, level, host,
process and pid come from its header when it has one (mohlog.lines)."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any

import orjson

from agent.sources.base import Emit, Source
from mohlog.lines import LineParser
from mohlog.model import new_id


class FilesSource(Source):
    name = "files"

    def __init__(self, patterns: list[str], state_file: Path, component: str = "APPLICATION",
                 poll_s: float = 0.2, max_line: int = 1 << 20, parse: bool = True) -> None:
        super().__init__()
        self.patterns, self.state_file, self.component = patterns, state_file, component
        self.poll_s, self.max_line = poll_s, max_line
        self.pos: dict[str, tuple[int, int]] = self._load()
        self._partial: dict[str, bytes] = {}
        self._host = os.uname().nodename
        self.parse = parse
        self._parsers: dict[str, LineParser] = {}

    def _load(self) -> dict[str, tuple[int, int]]:
        try:
            return {k: tuple(v) for k, v in orjson.loads(self.state_file.read_bytes()).items()}
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.pos))
        os.replace(tmp, self.state_file)

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
        except OSError:
            return []
        ino, off = self.pos.get(path, (st.st_ino, 0))
        out: list[dict[str, Any]] = []
        if ino != st.st_ino:  # rotated: finish the old file (if still reachable), then new
            out += self._rest_of_rotated(path, ino, off)
            ino, off = st.st_ino, 0
            self.counters["rotations"] += 1
        if st.st_size < off:  # truncated
            off = 0
            self._partial.pop(path, None)
            self.counters["truncations"] += 1
        if st.st_size > off:
            with open(path, "rb") as f:
                f.seek(off)
                data = f.read(64 << 20)
            off += len(data)
            out += self._lines(path, data)
        self.pos[path] = (ino, off)
        return out

    def _rest_of_rotated(self, path: str, ino: int, off: int) -> list[dict[str, Any]]:
        for cand in glob.glob(path + "*"):
            try:
                if os.stat(cand).st_ino == ino and cand != path:
                    with open(cand, "rb") as f:
                        f.seek(off)
                        return self._lines(path, f.read(64 << 20), final=True)
            except OSError:
                continue
        return []

    def _lines(self, path: str, data: bytes, final: bool = False) -> list[dict[str, Any]]:
        data = self._partial.pop(path, b"") + data
        lines = data.split(b"\n")
        rest = lines.pop()
        if rest and not final:
            self._partial[path] = rest[: self.max_line]
        elif rest:
            lines.append(rest)
        now = time.time_ns()
        name = os.path.basename(path)
        self.counters["lines"] += len(lines)
        parser = self._parsers.get(path) if self.parse else None
        if parser is None and self.parse:
            parser = self._parsers[path] = LineParser()
        out = []
        for ln in lines:
            if not ln.strip():
                continue
            text = ln.decode("utf-8", "replace").rstrip("\r")
            e = {"id": new_id(), "timestamp": now, "level": "INFO", "component": self.component,
                 "source": "file", "host": self._host, "pid": 0, "tid": 0, "process": name,
                 "message": text, "metadata": {"file": path}, "context": {}}
            if parser is not None:
                e.update(parser.fields(text))
            out.append(e)
        return out
