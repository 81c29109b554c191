"""Pure decoders: raw ring-buffer events of bpf/*.c -> entry dicts (mohlog.model FIELDS).

No bcc and no root needed: the tests build raw records with ``struct.pack`` and check the
entries. The layouts mirror ``bpf/include/mohlog.h`` and the probe files (little endian,
C alignment); ``Decoder.decode(buf, off)`` reads one record at ``off`` in any buffer
(bytes, or the ring buffer's mmap directly, so no copy is made per record).

The level/component mapping lives in ``MAPPING`` (one table, documented in docs/probes.md);
a few events pick a level from their content (``exit`` by its status, ``signal`` by its
number, ``syscall_errors`` and ``printk`` by errno / priority).
"""

from __future__ import annotations

import errno as errno_mod
import itertools
import os
import re
import signal as signal_mod
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# event type numbers (enum mh_event_type in bpf/include/mohlog.h)
EV_EXEC, EV_EXIT, EV_FORK, EV_OOM, EV_SIGNAL = 1, 2, 3, 4, 5
EV_TCP_STATE, EV_TCP_RETRANSMIT, EV_TCP_RESET, EV_OPEN_FAIL, EV_SYSCALL_ERRORS = 6, 7, 8, 9, 10
EV_MAX = 12
EVENT_NAMES: dict[int, str] = {
    EV_EXEC: "exec", EV_EXIT: "exit", EV_FORK: "fork", EV_OOM: "oom", EV_SIGNAL: "signal",
    EV_TCP_STATE: "tcp_state", EV_TCP_RETRANSMIT: "tcp_retransmit", EV_TCP_RESET: "tcp_reset",
    EV_OPEN_FAIL: "open_fail", EV_SYSCALL_ERRORS: "syscall_errors",
}

# event -> (default level, component, when the level differs)
MAPPING: dict[str, tuple[str, str, str]] = {
    "exec": ("INFO", "PROCESS_MANAGER", ""),
    "fork": ("INFO", "PROCESS_MANAGER", ""),
    "exit": ("INFO", "PROCESS_MANAGER", "WARNING when killed by a signal or status != 0"),
    "oom": ("CRITICAL", "MEMORY_MANAGER", ""),
    "signal": ("WARNING", "PROCESS_MANAGER",
               "ERROR for SIGKILL SIGSEGV SIGBUS SIGILL SIGFPE SIGABRT SIGSYS"),
    "tcp_state": ("INFO", "IPC_MANAGER", "WARNING for a failed connect (SYN_SENT -> CLOSE)"),
    "tcp_retransmit": ("PERFORMANCE", "IPC_MANAGER", ""),
    "tcp_reset": ("WARNING", "IPC_MANAGER", ""),
    "open_fail": ("WARNING", "KERNEL",
                  "DEBUG for a missing file (ENOENT ENOTDIR); ERROR when the system is out "
                  "of something or failing (EMFILE ENFILE ENOSPC EDQUOT EIO EROFS)"),
    "syscall_errors": ("WARNING", "KERNEL",
                       "DEBUG for routine errnos (EAGAIN EINTR EINPROGRESS ETIMEDOUT ENOENT "
                       "ENOTTY ECHILD ESRCH ESPIPE EEXIST ENOTDIR ENODATA ERESTART*)"),
    "printk": ("INFO", "KERNEL", "by priority: 0-2 CRITICAL, 3 ERROR, 4 WARNING, 5-6 INFO, "
               "7 DEBUG"),
}

SEVERE_SIGNALS = frozenset({9, 11, 7, 4, 8, 6, 31})  # KILL SEGV BUS ILL FPE ABRT SYS
# Failures programs expect and handle: a wait with no child left (ECHILD), a kill or
# signal-0 check of a process already gone (ESRCH), a seek on a pipe (ESPIPE), creating
# what exists (EEXIST), looking along a search path (ENOENT ENOTDIR) or for an absent
# extended attribute (ENODATA).
ROUTINE_ERRNOS = frozenset({errno_mod.EAGAIN, errno_mod.EINTR, errno_mod.EINPROGRESS,
                            errno_mod.ETIMEDOUT, errno_mod.ENOENT, errno_mod.ENOTTY,
                            errno_mod.ECHILD, errno_mod.ESRCH, errno_mod.ESPIPE,
                            errno_mod.EEXIST, errno_mod.ENOTDIR, errno_mod.ENODATA,
                            512, 513, 514, 516})  # ERESTARTSYS..ERESTART_RESTARTBLOCK
# A failed open: a missing file is looked for all the time (locales, library and config
# search paths: most failed opens of a host); running out of descriptors or room, or an
# I/O error, is the system failing.
OPEN_MISSING = frozenset({errno_mod.ENOENT, errno_mod.ENOTDIR})
OPEN_SEVERE = frozenset({errno_mod.EMFILE, errno_mod.ENFILE, errno_mod.ENOSPC,
                         errno_mod.EDQUOT, errno_mod.EIO, errno_mod.EROFS})
TCP_STATES = ("", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
              "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING",
              "NEW_SYN_RECV", "BOUND_INACTIVE")
SIGNAL_RESULTS = ("delivered", "ignored", "already_pending", "overflow_fail", "lose_info")
OPEN_SYSCALLS = ("openat", "openat2")

HDR = struct.Struct("<QQIIII16s")                         # struct mh_hdr, 48 bytes
EXEC = struct.Struct("<IIII")                             # after hdr; then filename, args
EXIT = struct.Struct("<QQIIII16sIIQ")                     # 64
FORK = struct.Struct("<QQIIII16sIIQ16s")                  # 80
OOM = struct.Struct("<QQIIII16sIIQQQQQiI16s")             # 120
SIGNAL = struct.Struct("<QQIIII16siiiIii16s")             # 88
NET = struct.Struct("<QQIIII16sQIiiiHHHH16s16sII16s")      # 136
OPEN_FAIL = struct.Struct("<QQIIII16siIII")               # 64, then path[256]
ERR_KEY = struct.Struct("<IIiI")                          # struct mh_err_key (pad)
ERR_VAL = struct.Struct("<QQQIIQ16s")                     # struct mh_err_val
PATH_MAX = 256


_KERNEL_ERRNOS = {512: "ERESTARTSYS", 513: "ERESTARTNOINTR", 514: "ERESTARTNOHAND",
                  515: "ENOIOCTLCMD", 516: "ERESTART_RESTARTBLOCK", 524: "ENOTSUPP"}


def _errname(err: int) -> str:
    return errno_mod.errorcode.get(err) or _KERNEL_ERRNOS.get(err, f"E{err}")


def _strerror(err: int) -> str:
    return os.strerror(err) if err in errno_mod.errorcode else "kernel-internal errno"


def _signame(sig: int) -> str:
    try:
        return signal_mod.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return ""


def exit_status(code: int) -> tuple[int, int, bool]:
    """(exit status, terminating signal, core dumped) of a raw task->exit_code."""
    return (code >> 8) & 0xFF, code & 0x7F, bool(code & 0x80)


def argv_from(raw: bytes) -> list[str]:
    """The NUL-separated argument area of a process, as a list (a cut last arg kept)."""
    parts = raw.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "replace") for p in parts]


def _load_syscall_names() -> dict[int, str]:
    """Syscall numbers -> names from the installed unistd header (x86_64 or generic)."""
    names: dict[int, str] = {}
    pattern = re.compile(r"#define __NR_(\w+)\s+(\d+)")
    for path in ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
                 "/usr/include/asm/unistd_64.h", "/usr/include/asm-generic/unistd.h"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for name, nr in pattern.findall(text):
            names.setdefault(int(nr), name)
        if names:
            break
    return names or dict(_FALLBACK_SYSCALLS)


_FALLBACK_SYSCALLS = {  # x86_64, the usual suspects, when no header is installed
    0: "read", 1: "write", 2: "open", 3: "close", 4: "stat", 5: "fstat", 6: "lstat",
    7: "poll", 8: "lseek", 9: "mmap", 16: "ioctl", 21: "access", 23: "select",
    41: "socket", 42: "connect", 43: "accept", 44: "sendto", 45: "recvfrom", 49: "bind",
    59: "execve", 61: "wait4", 62: "kill", 72: "fcntl", 79: "getcwd", 80: "chdir",
    82: "rename", 83: "mkdir", 84: "rmdir", 87: "unlink", 89: "readlink", 202: "futex",
    232: "epoll_wait", 257: "openat", 262: "newfstatat", 281: "epoll_pwait", 288: "accept4",
    332: "statx", 437: "openat2",
}
SYSCALL_NAMES: dict[int, str] = _load_syscall_names()


def syscall_name(nr: int) -> str:
    return SYSCALL_NAMES.get(nr, f"syscall_{nr}")


class Decoder:
    """Turns raw records into entry dicts. ``mono_offset`` = wall ns - CLOCK_MONOTONIC ns."""

    def __init__(self, host: str | None = None, mono_offset: int | None = None,
                 argv_bytes: int = 512) -> None:
        self.host = host or os.uname().nodename
        self.mono_offset = (time.time_ns() - time.monotonic_ns() if mono_offset is None
                            else mono_offset)
        self.argv_bytes = argv_bytes
        self._comms: dict[bytes, str] = {}
        self._errnos: dict[int, tuple[str, str]] = {}
        # ids like mohlog.model.new_id (64 random bits, then a counter) without its getpid()
        # per call: a syscall, slow while syscall tracepoints are on (open storms)
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(time.time_ns() & 0xFFFFFFFF)
        self._by_type: dict[int, Callable[[Any, int], dict[str, Any]]] = {
            EV_EXEC: self.exec, EV_EXIT: self.exit, EV_FORK: self.fork, EV_OOM: self.oom,
            EV_SIGNAL: self.signal, EV_TCP_STATE: self.net, EV_TCP_RETRANSMIT: self.net,
            EV_TCP_RESET: self.net, EV_OPEN_FAIL: self.open_fail,
        }

    def decode(self, buf: Any, off: int = 0) -> dict[str, Any]:
        """One record at ``off``; raises KeyError for an unknown type, struct.error if short."""
        etype = struct.unpack_from("<I", buf, off + 16)[0]
        return self._by_type[etype](buf, off)

    def for_type(self, etype: int) -> Callable[[Any, int], dict[str, Any]]:
        """The decoder of one event type (``decode`` when the type has none of its own)."""
        return self._by_type.get(etype, self.decode)

    def comm(self, raw: bytes) -> str:
        name = self._comms.get(raw)
        if name is None:
            name = _cstr(raw)
            if len(self._comms) < 65536:
                self._comms[raw] = name
        return name

    def entry(self, event: str, level: str, component: str, ts: int, pid: int, tid: int,
              comm: str, message: str, meta: dict[str, Any]) -> dict[str, Any]:
        meta["event"] = event
        return {"id": f"{self._id_prefix}{next(self._ids):016x}",
                "timestamp": ts + self.mono_offset, "level": level, "source": "ebpf",
                "component": component, "host": self.host, "pid": pid, "tid": tid,
                "process": comm, "message": message, "metadata": meta,
                "context": {}}

    # -- processes ---------------------------------------------------------------------

    def exec(self, buf: Any, off: int) -> dict[str, Any]:
        ts, cg, _t, pid, tid, uid, comm_raw = HDR.unpack_from(buf, off)
        ppid, old_pid, fn_len, args_len = EXEC.unpack_from(buf, off + 48)
        base = off + 64
        filename = bytes(buf[base:base + max(fn_len - 1, 0)]).decode("utf-8", "replace")
        argv = argv_from(bytes(buf[base + PATH_MAX:base + PATH_MAX + args_len]))
        comm = self.comm(comm_raw)
        cmd = " ".join([filename, *argv[1:]])
        msg = f"exec {cmd} pid {pid} ppid {ppid} uid {uid}"
        meta = {"ppid": ppid, "uid": uid, "cgroup_id": cg, "comm": comm,
                "filename": filename, "argv": argv,
                "argv_truncated": args_len >= self.argv_bytes}
        if old_pid != pid:
            meta["old_pid"] = old_pid
        return self.entry("exec", "INFO", "PROCESS_MANAGER", ts, pid, tid, comm, msg, meta)

    def exit(self, buf: Any, off: int) -> dict[str, Any]:
        ts, cg, _t, pid, tid, uid, comm_raw, ppid, code, life = EXIT.unpack_from(buf, off)
        status, sig, core = exit_status(code)
        comm = self.comm(comm_raw)
        how = (f"killed by {_signame(sig)}{' (core dumped)' if core else ''}" if sig
               else f"exit code {status}")
        level = "WARNING" if sig or status else "INFO"
        msg = f"exit {comm} pid {pid} ppid {ppid} {how} after {life / 1e9:.3f}s"
        meta = {"ppid": ppid, "uid": uid, "cgroup_id": cg, "comm": comm, "exit_code": status,
                "signal": sig, "signal_name": _signame(sig) if sig else "",
                "core_dumped": core, "lifetime_ns": life}
        return self.entry("exit", level, "PROCESS_MANAGER", ts, pid, tid, comm, msg, meta)

    def fork(self, buf: Any, off: int) -> dict[str, Any]:
        ts, cg, _t, pid, tid, uid, comm_raw, child, _p, flags, ccomm = FORK.unpack_from(buf, off)
        comm = self.comm(comm_raw)
        msg = f"fork {comm} pid {pid} -> child pid {child}"
        meta = {"uid": uid, "cgroup_id": cg, "comm": comm, "child_pid": child,
                "child_comm": self.comm(ccomm), "clone_flags": flags,
                "thread": bool(flags & 0x10000)}
        return self.entry("fork", "INFO", "PROCESS_MANAGER", ts, pid, tid, comm, msg, meta)

    # -- memory, signals ----------------------------------------------------------------

    def oom(self, buf: Any, off: int) -> dict[str, Any]:
        (ts, cg, _t, pid, tid, uid, comm_raw, vpid, vuid, total_vm, anon, file_rss, shmem,
         pgtables, adj, _p, vcomm_raw) = OOM.unpack_from(buf, off)
        vcomm = self.comm(vcomm_raw)
        msg = (f"OOM kill of {vcomm} pid {vpid} uid {vuid}: total-vm {total_vm} kB, "
               f"anon-rss {anon} kB, file-rss {file_rss} kB, shmem-rss {shmem} kB, "
               f"oom_score_adj {adj}")
        meta = {"victim_pid": vpid, "victim_comm": vcomm, "uid": vuid, "cgroup_id": cg,
                "total_vm_kb": total_vm, "anon_rss_kb": anon, "file_rss_kb": file_rss,
                "shmem_rss_kb": shmem, "pgtables_kb": pgtables, "oom_score_adj": adj,
                "comm": vcomm, "trigger_pid": pid, "trigger_comm": self.comm(comm_raw)}
        return self.entry("oom", "CRITICAL", "MEMORY_MANAGER", ts, vpid, vpid, vcomm, msg, meta)

    def signal(self, buf: Any, off: int) -> dict[str, Any]:
        (ts, cg, _t, pid, tid, uid, comm_raw, sig, err, code, target, group, result,
         tcomm_raw) = SIGNAL.unpack_from(buf, off)
        comm, tcomm, name = self.comm(comm_raw), self.comm(tcomm_raw), _signame(sig)
        res = SIGNAL_RESULTS[result] if 0 <= result < len(SIGNAL_RESULTS) else str(result)
        msg = f"signal {name} from {comm} pid {pid} to {tcomm} pid {target} ({res})"
        level = "ERROR" if sig in SEVERE_SIGNALS else "WARNING"
        meta = {"signal": sig, "signal_name": name, "sender_pid": pid, "sender_comm": comm,
                "target_pid": target, "target_comm": tcomm, "uid": uid, "cgroup_id": cg,
                "comm": comm, "code": code, "errno": err, "group": bool(group),
                "result": res}
        return self.entry("signal", level, "PROCESS_MANAGER", ts, pid, tid, comm, msg, meta)

    # -- network -----------------------------------------------------------------------

    def net(self, buf: Any, off: int) -> dict[str, Any]:
        (ts, cg, etype, pid, tid, uid, comm_raw, duration, netns, old, new, extra, sport,
         dport, family, _p, saddr_raw, daddr_raw, owner, _p2, ocomm_raw) = NET.unpack_from(
            buf, off)
        comm = self.comm(comm_raw)
        saddr, daddr = _addr(family, saddr_raw), _addr(family, daddr_raw)
        meta: dict[str, Any] = {
            "saddr": saddr, "daddr": daddr, "sport": sport, "dport": dport,
            "family": "inet" if family == socket.AF_INET else "inet6", "netns": netns,
            "uid": uid, "cgroup_id": cg, "comm": comm}
        conn = f"{saddr}:{sport} -> {daddr}:{dport}"
        if etype == EV_TCP_STATE:
            return self._tcp_state(ts, pid, tid, comm, conn, old, new, duration, owner,
                                   self.comm(ocomm_raw), meta)
        state = TCP_STATES[new] if 0 < new < len(TCP_STATES) else ""
        meta["state"] = state
        if etype == EV_TCP_RETRANSMIT:
            meta["err"] = extra
            msg = f"tcp retransmit {conn} state {state}"
            return self.entry("tcp_retransmit", "PERFORMANCE", "IPC_MANAGER", ts, pid, tid,
                              comm, msg, meta)
        meta["direction"] = "received" if old else "sent"
        if not old:
            meta["reason"] = extra
        msg = f"tcp reset {meta['direction']} {conn}" + (f" state {state}" if state else "")
        return self.entry("tcp_reset", "WARNING", "IPC_MANAGER", ts, pid, tid, comm, msg, meta)

    def _tcp_state(self, ts: int, pid: int, tid: int, comm: str, conn: str, old: int,
                   new: int, duration: int, owner: int, owner_comm: str,
                   meta: dict[str, Any]) -> dict[str, Any]:
        olds = TCP_STATES[old] if 0 < old < len(TCP_STATES) else str(old)
        news = TCP_STATES[new] if 0 < new < len(TCP_STATES) else str(new)
        kind = _tcp_kind(olds, news)
        level = "WARNING" if kind == "connect_failed" else "INFO"
        meta.update({"kind": kind, "oldstate": olds, "newstate": news,
                     "owner_pid": owner, "owner_comm": owner_comm})
        msg = f"tcp {kind} {conn} ({olds} -> {news})"
        if news == "CLOSE":
            meta["duration_ns"] = duration
            msg += f" after {duration / 1e9:.3f}s"
        return self.entry("tcp_state", level, "IPC_MANAGER", ts, pid, tid, comm,
                          msg + f" owner {owner_comm} pid {owner}", meta)

    # -- files, syscalls ------------------------------------------------------------------

    def errno_names(self, err: int) -> tuple[str, str]:
        """(name, description) of an errno, cached."""
        names = self._errnos.get(err)
        if names is None:
            names = self._errnos[err] = (_errname(err), _strerror(err))
        return names

    def open_fail(self, buf: Any, off: int) -> dict[str, Any]:
        # the hottest decoder (failed-open storms): no helper calls beyond the caches
        ts, cg, _t, pid, tid, uid, comm_raw, err, flags, sc, plen = OPEN_FAIL.unpack_from(
            buf, off)
        path = buf[off + 64:off + 63 + plen].decode("utf-8", "replace") if plen else ""
        comm = self._comms.get(comm_raw) or self.comm(comm_raw)
        name, text = self._errnos.get(err) or self.errno_names(err)
        level = "DEBUG" if err in OPEN_MISSING else "ERROR" if err in OPEN_SEVERE else \
            "WARNING"
        return {"id": f"{self._id_prefix}{next(self._ids):016x}",
                "timestamp": ts + self.mono_offset, "level": level, "source": "ebpf",
                "component": "KERNEL", "host": self.host, "pid": pid, "tid": tid,
                "process": comm,
                "message": f"open {path} failed: {name} ({text}) in {comm} pid {pid} uid {uid}",
                "metadata": {"filename": path, "errno": err, "errno_name": name,
                             "flags": flags,
                             "syscall": OPEN_SYSCALLS[sc] if sc < 2 else str(sc),
                             "uid": uid, "cgroup_id": cg, "comm": comm, "event": "open_fail"},
                "context": {}}

    def syscall_errors(self, key: bytes, value: bytes, interval_s: float) -> dict[str, Any]:
        """One drained mh_errors map entry (raw key and value bytes)."""
        tgid, nr, err, _gen = ERR_KEY.unpack_from(key)
        count, first, last, tid, uid, cg, comm_raw = ERR_VAL.unpack_from(value)
        comm, name, sc = self.comm(comm_raw), _errname(err), syscall_name(nr)
        level = "DEBUG" if err in ROUTINE_ERRNOS else "WARNING"
        msg = (f"syscall {sc} failed {count} times with {name} in {comm} pid {tgid} "
               f"(last {interval_s:g}s)")
        meta = {"syscall": sc, "syscall_nr": nr, "errno": err, "errno_name": name,
                "count": count, "first_ns": first + self.mono_offset,
                "last_ns": last + self.mono_offset, "uid": uid, "cgroup_id": cg,
                "comm": comm}
        return self.entry("syscall_errors", level, "KERNEL", last, tgid, tid, comm, msg, meta)


def _tcp_kind(old: str, new: str) -> str:
    if new == "ESTABLISHED":
        return {"SYN_SENT": "connect", "SYN_RECV": "accept"}.get(old, "established")
    if new == "CLOSE":
        return {"SYN_SENT": "connect_failed", "LISTEN": "listen_close"}.get(old, "close")
    if new == "LISTEN":
        return "listen"
    return "state"
