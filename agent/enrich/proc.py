"""Process context from a /proc tree (its root is a parameter: tests use a fake one).

For an entry with ``pid > 0`` it adds ``context["proc"]`` = {exe, cmdline, user, uid,
ppid, parents, start_time, cgroup, container_id}. Results are cached per pid (LRU with a
TTL; an exec event refreshes its pid), so known pids cost a dictionary look-up. A process
already gone keeps what the kernel gave in the entry's metadata (comm, ppid, uid,
cgroup id, filename) and is marked ``gone``.

Per-event cost matters in exec storms (10k+ exec/s, most processes already gone when their
entry is enriched): paths are plain strings (pathlib costs microseconds per join), a gone
process costs one failed open, the uid of an exec event is the kernel's (the same real uid
``status`` shows), and the parent chain stops at the first parent already in the cache.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

_CONTAINER = re.compile(r"(?:docker|cri-containerd|crio|libpod|containerd)[-/]([0-9a-f]{64})"
                        r"|/([0-9a-f]{64})(?:\.scope)?$")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ProcCache:
    def __init__(self, root: str = "/proc", ttl_s: float = 30.0, max_pids: int = 32768) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self.ttl_s, self.max_pids = ttl_s, max_pids
        self._cache: OrderedDict[int, tuple[float, dict[str, Any] | None]] = OrderedDict()
        self._users: dict[int, str] = {}
        self._btime = self._boot_time()
        self.hits = self.misses = 0

    def _boot_time(self) -> int:
        try:
            for line in (self.root / "stat").read_text().splitlines():
                if line.startswith("btime "):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def __call__(self, entry: dict[str, Any]) -> None:
        pid = entry.get("pid") or 0
        if pid <= 0:
            return
        meta = entry.get("metadata") or {}
        exec_event = meta.get("event") == "exec"
        info = self.lookup(int(pid), refresh=exec_event, kernel=meta if exec_event else None)
        ctx = entry.get("context")
        if ctx is None:
            ctx = entry["context"] = {}
        ctx["proc"] = info if info is not None else self._from_kernel(meta)

    def many(self, entries: list[dict[str, Any]]) -> None:
        """``self(entry)`` for each entry, looking each pid up once per call (storms: many
        entries of few processes). An exec event still refreshes its pid."""
        seen: dict[int, dict[str, Any] | None] = {}
        for entry in entries:
            pid = entry.get("pid") or 0
            meta = entry.get("metadata") or {}
            if pid <= 0 or pid not in seen or meta.get("event") == "exec":
                self(entry)
                if pid > 0:
                    proc = entry["context"]["proc"]
                    seen[pid] = None if proc.get("gone") else proc
                continue
            info = seen[pid]
            ctx = entry.get("context")
            if ctx is None:
                ctx = entry["context"] = {}
            ctx["proc"] = info if info is not None else self._from_kernel(meta)

    def lookup(self, pid: int, refresh: bool = False,
               kernel: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Cached context of pid; ``kernel``: the exec event's metadata (its uid is used)."""
        now = time.monotonic()
        cache = self._cache
        hit = cache.get(pid)
        if hit is not None and not refresh and now - hit[0] < self.ttl_s:
            self.hits += 1
            cache.move_to_end(pid)
            return hit[1]
        self.misses += 1
        info = self.read(pid, kernel)
        cache[pid] = (now, info)
        cache.move_to_end(pid)
        if len(cache) > self.max_pids:
            while len(cache) > self.max_pids:
                cache.popitem(last=False)
        return info

    def read(self, pid: int, kernel: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Everything /proc says about pid, or None when it is gone."""
        base = f"{self._root}/{pid}/"
        stat = _read_text(base + "stat")
        if stat is None:
            return None
        fields = stat[stat.rfind(")") + 2:].split()
        ppid, start_ticks = int(fields[1]), int(fields[19])
        kuid = kernel.get("uid") if kernel else None
        uid = kuid if isinstance(kuid, int) else self._uid(base)
        cgroup = self._cgroup(base)
        info: dict[str, Any] = {
            "exe": _readlink(base + "exe"),
            "cmdline": _cmdline(base),
            "uid": uid,
            "user": self._user(uid),
            "ppid": ppid,
            "parents": self._parents(ppid),
            "start_time": (self._btime * 10**9 + start_ticks * 10**9 // _TICKS)
            if self._btime else None,
            "cgroup": cgroup,
            "container_id": container_id(cgroup),
        }
        return info

    def _parents(self, ppid: int, depth: int = 8) -> list[int]:
        chain: list[int] = []
        pid = ppid
        now = time.monotonic()
        while pid > 0 and len(chain) < depth:
            chain.append(pid)
            hit = self._cache.get(pid)
            if hit is not None and hit[1] is not None and now - hit[0] < self.ttl_s:
                chain.extend(hit[1]["parents"][:depth - len(chain)])
                break
            stat = _read_text(f"{self._root}/{pid}/stat")
            if stat is None:
                break
            pid = int(stat[stat.rfind(")") + 2:].split()[1])
        return chain

    def _uid(self, base: str) -> int | None:
        status = _read_text(base + "status")
        if status is None:
            return None
        for line in status.splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
        return None

    def _user(self, uid: int | None) -> str | None:
        if uid is None:
            return None
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name

    def _cgroup(self, base: str) -> str | None:
        text = _read_text(base + "cgroup")
        if text is None:
            return None
        lines = text.splitlines()
        for line in lines:
            if line.startswith("0::"):
                return line[3:]
        return lines[0].split(":", 2)[-1] if lines else None

    def _from_kernel(self, meta: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"gone": True}
        for key in ("comm", "ppid", "uid", "cgroup_id", "filename"):
            if key in meta:
                out[key] = meta[key]
        if "uid" in meta:
            out["user"] = self._user(meta["uid"])
        return out


def container_id(cgroup: str | None) -> str | None:
    if not cgroup:
        return None
    for part in cgroup.split("/"):
        m = _CONTAINER.search("/" + part)
        if m:
            return m.group(1) or m.group(2)
    return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _cmdline(base: str) -> str | None:
    try:
        with open(base + "cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace") or None
