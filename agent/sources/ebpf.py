"""The eBPF source: kernel events from tracepoint probes (bpf/mohlog.c) as log entries.

Each probe (``PROBES``) is its own BPF object, compiled from bpf/mohlog.c with
``-DPROBE_<NAME>``, so a probe that cannot find its tracepoint, compile or attach fails
alone: the reason is logged and kept in ``stats()``, and the others run. Kernel struct
offsets come from BTF (agent/btf.py) as -D macros.

The compiling and attaching happen in a short-lived child process
(agent/sources/ebpf_loader.py): bcc's LLVM would otherwise stay resident in the agent
(~250 MB). The child hands back file descriptors; this module never imports bcc. Every
probe has one ring buffer per CPU, read through mmap from one thread that waits on all of
them (and /dev/kmsg) with epoll; records are decoded in place from the mapping
(agent/sources/ebpf_decode.py) and handed on in batches, with no per-record callback.
While events flow the rings are read every ``read_interval_ms``, not at every wakeup.
Failed reserves are counted per event type in each probe's ``mh_drops`` array (read via
mmap); ``stats()`` reports them per probe with the kernel's recursion misses.

The ``syscall_errors`` probe has no ring buffer traffic: its maps are drained every
``syscall_errors_interval_s``. The ``printk`` probe is /dev/kmsg (agent/sources/kmsg.py),
read in the same loop. Call ``load()`` before ``start()`` to learn about failed probes
synchronously; ``start()`` loads otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import btf
from agent.sources import ebpf_decode as dec
from agent.sources.base import Emit, Source
from agent.sources.bpf_sys import BatchDrainer, prog_recursion_misses
from agent.sources.kmsg import KmsgReader
from mohlog import log
from mohlog.errors import MohlogError

BPF_DIR = Path(__file__).resolve().parent.parent.parent / "bpf"
_BUSY, _DISCARD = 1 << 31, 1 << 30
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class EbpfError(MohlogError):
    """The eBPF source cannot run at all (bcc missing, not root, bad config)."""


@dataclass(frozen=True)
class Probe:
    """One switchable probe: its BPF file, tracepoints (macro, default, function) and event."""

    name: str
    file: str
    event: int
    tracepoints: tuple[tuple[str, str, str], ...]
    default: bool
    ring_mb: int
    description: str


PROBES: tuple[Probe, ...] = (
    Probe("exec", "mohlog.c", dec.EV_EXEC,
          (("TP_EXEC", "sched:sched_process_exec", "mh_exec"),), True, 16,
          "process exec: filename, argv (bounded), ppid, uid, cgroup id"),
    Probe("exit", "mohlog.c", dec.EV_EXIT,
          (("TP_EXIT", "sched:sched_process_exit", "mh_exit"),), True, 4,
          "process exit: exit code, signal, lifetime (one per process)"),
    Probe("fork", "mohlog.c", dec.EV_FORK,
          (("TP_FORK", "task:task_newtask", "mh_fork"),), True, 4,
          "fork/clone of a process (threads skipped unless fork_threads)"),
    Probe("oom", "mohlog.c", dec.EV_OOM,
          (("TP_OOM", "oom:mark_victim", "mh_oom"),), True, 1,
          "OOM kill: victim pid, comm, memory figures"),
    Probe("signal", "mohlog.c", dec.EV_SIGNAL,
          (("TP_SIGNAL", "signal:signal_generate", "mh_signal"),), True, 2,
          "signals sent (fatal ones by default): sender, target, signal, result"),
    Probe("tcp_state", "mohlog.c", dec.EV_TCP_STATE,
          (("TP_TCP_STATE", "sock:inet_sock_set_state", "mh_tcp_state"),), True, 4,
          "TCP connect, accept, close (with duration), listen"),
    Probe("tcp_retransmit", "mohlog.c", dec.EV_TCP_RETRANSMIT,
          (("TP_TCP_RETRANSMIT", "tcp:tcp_retransmit_skb", "mh_tcp_retransmit"),), True, 2,
          "TCP retransmits"),
    Probe("tcp_reset", "mohlog.c", dec.EV_TCP_RESET,
          (("TP_TCP_SEND_RESET", "tcp:tcp_send_reset", "mh_tcp_send_reset"),
           ("TP_TCP_RECEIVE_RESET", "tcp:tcp_receive_reset", "mh_tcp_receive_reset")),
          True, 1, "TCP resets sent and received"),
    Probe("open_fail", "mohlog.c", dec.EV_OPEN_FAIL,
          (("TP_OPENAT_ENTER", "syscalls:sys_enter_openat", "mh_openat_enter"),
           ("TP_OPENAT_EXIT", "syscalls:sys_exit_openat", "mh_openat_exit"),
           ("TP_OPENAT2_ENTER", "syscalls:sys_enter_openat2", "mh_openat2_enter"),
           ("TP_OPENAT2_EXIT", "syscalls:sys_exit_openat2", "mh_openat2_exit")), True, 64,
          "failed opens (openat, openat2): path and errno"),
    Probe("syscall_errors", "mohlog.c", dec.EV_SYSCALL_ERRORS,
          (("TP_SYS_EXIT", "raw_syscalls:sys_exit", "mh_sys_exit"),), True, 0,
          "failed syscalls counted in the kernel per (process, syscall, errno), drained "
          "every interval into one record per key"),
    Probe("printk", "", 0, (), True, 0, "the kernel log (/dev/kmsg) with priorities"),
)
PROBE_NAMES = tuple(p.name for p in PROBES)
FATAL_SIGNALS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 15, 24, 25, 31)
# HUP INT QUIT ILL TRAP ABRT BUS FPE KILL SEGV PIPE TERM XCPU XFSZ SYS


@dataclass
class EbpfConfig:
    """Settings of the eBPF source (the agent config's ``ebpf`` section)."""

    # Probes to load by name (see list_probes()); None = every probe that is on by default.
    probes: list[str] | None = None
    # Processes (tgids) whose events are dropped in the kernel; the agent's own always is.
    exclude_pids: list[int] = field(default_factory=list)
    # Command names (comm, at most 15 chars) whose events are dropped in the kernel.
    exclude_comms: list[str] = field(default_factory=list)
    # cgroup v2 ids or cgroup directory paths whose events are dropped in the kernel.
    exclude_cgroups: list[int | str] = field(default_factory=list)
    # Ring buffer size in MB per probe name, overriding the probe's default (power of 2).
    ringbuf_mb: dict[str, int] = field(default_factory=dict)
    # Bytes of the argument area read per exec (power of 2, 64..4096).
    argv_bytes: int = 512
    # Signals reported: "fatal" (default action ends the process), "all", or numbers.
    signals: str | list[int] = "fatal"
    # Report new threads (clone with CLONE_THREAD) as fork events too.
    fork_threads: bool = False
    # Report every TCP state transition, not only connect/accept/close/listen.
    tcp_all_states: bool = False
    # Seconds between drains of the in-kernel syscall error counts (one record per key).
    syscall_errors_interval_s: float = 1.0
    # Most distinct (process, syscall, errno) keys per interval; more are counted as drops.
    syscall_errors_max_keys: int = 16384
    # Tracepoint replacements "category:event" -> "category:event" (renamed on a kernel).
    tracepoints: dict[str, str] = field(default_factory=dict)
    # Directory for the BTF offset cache and the kmsg position (None: no cache, no resume).
    state_dir: str | None = None
    # With no saved kmsg position: read the whole kernel log buffer instead of new records.
    kmsg_from_start: bool = False
    # Most entries handed to emit() per call.
    batch_max: int = 8192
    # Milliseconds the reader waits for events when idle.
    poll_timeout_ms: int = 100
    # Milliseconds between reads of the rings while events flow (0: read at each wakeup).
    # The kernel wakes the reader for the first record put in an empty ring, so a reader
    # that keeps up is woken for nearly every event; waiting lets them gather into batches.
    read_interval_ms: float = 10.0
    # Where tracefs is mounted (tracepoint existence and formats).
    tracefs: str = "/sys/kernel/tracing"


def list_probes() -> list[dict[str, Any]]:
    """Every probe: name, tracepoints, on by default, description (``--list-probes``)."""
    return [{"name": p.name, "tracepoints": [tp for _m, tp, _f in p.tracepoints]
             or ["/dev/kmsg"], "default": p.default, "description": p.description}
            for p in PROBES]


def enabled_probes(cfg: EbpfConfig) -> list[Probe]:
    names = cfg.probes if cfg.probes is not None else [p.name for p in PROBES if p.default]
    unknown = [n for n in names if n not in PROBE_NAMES]
    if unknown:
        raise EbpfError(f"unknown probe(s) {unknown}; known: {list(PROBE_NAMES)}")
    return [p for p in PROBES if p.name in names]


def signal_mask(signals: str | list[int]) -> int:
    if signals == "all":
        return (1 << 64) - 2
    nums = FATAL_SIGNALS if signals == "fatal" else signals
    if isinstance(nums, str) or not all(isinstance(n, int) and 0 < n < 64 for n in nums):
        raise EbpfError(f"signals must be 'fatal', 'all' or numbers 1..63, not {signals!r}")
    return sum(1 << n for n in nums)


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def tracepoint_of(cfg: EbpfConfig, default: str) -> str:
    return cfg.tracepoints.get(default, default)


def probe_cflags(cfg: EbpfConfig, probe: Probe, offsets: dict[str, int],
                 agent_tgid: int | None = None) -> list[str]:
    """The compiler flags of one probe's BPF object."""
    tgid = os.getpid() if agent_tgid is None else agent_tgid
    pages = ring_bytes(cfg, probe) // mmap.PAGESIZE
    flags = [f"-I{BPF_DIR / 'include'}", *btf.cflags(offsets), f"-DAGENT_TGID={tgid}",
             f"-DRINGBUF_PAGES={pages}", f"-DNCPUS={possible_cpus()}",
             f"-DPROBE_{probe.name.upper()}",
             f"-DARGV_BYTES={cfg.argv_bytes}", f"-DSIGNAL_MASK={signal_mask(cfg.signals)}ULL",
             f"-DSYSCALL_ERRORS_MAX={cfg.syscall_errors_max_keys}"]
    for macro, default, _fn in probe.tracepoints:
        tp = tracepoint_of(cfg, default)
        if tp != default:
            flags.append(f"-D{macro}={tp.replace(':', ',')}")
    flags += [f"-D{name}" for name, on in (
        ("FORK_THREADS", cfg.fork_threads), ("TCP_ALL_STATES", cfg.tcp_all_states),
        ("FILTER_PIDS", bool(cfg.exclude_pids)), ("FILTER_COMMS", bool(cfg.exclude_comms)),
        ("FILTER_CGROUPS", bool(cfg.exclude_cgroups)),
        ("TCP_RETRANSMIT_HAS_ERR", _has_field(cfg, "tcp:tcp_retransmit_skb", "err"))) if on]
    return flags


def possible_cpus() -> int:
    """Number of possible CPUs (ids 0..n-1 that bpf_get_smp_processor_id can return)."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def ring_bytes(cfg: EbpfConfig, probe: Probe) -> int:
    """Bytes of each of a probe's per-CPU rings: its total size split over the CPUs
    (a power of two, at least one page)."""
    total = cfg.ringbuf_mb.get(probe.name, probe.ring_mb) << 20
    per_cpu = max(total // possible_cpus(), mmap.PAGESIZE)
    return 1 << (per_cpu.bit_length() - 1)


def _has_field(cfg: EbpfConfig, tp: str, name: str) -> bool:
    cat, _, evt = tp.partition(":")
    try:
        text = (Path(cfg.tracefs) / "events" / cat / evt / "format").read_text()
    except OSError:
        return False
    return f" {name};" in text


def check_config(cfg: EbpfConfig) -> None:
    if not 0 <= cfg.read_interval_ms <= 1000:
        raise EbpfError(f"read_interval_ms must be in 0..1000, not {cfg.read_interval_ms}")
    if not _power_of_two(cfg.argv_bytes) or not 64 <= cfg.argv_bytes <= 4096:
        raise EbpfError(f"argv_bytes must be a power of 2 in 64..4096, not {cfg.argv_bytes}")
    for name, mb in cfg.ringbuf_mb.items():
        if not _power_of_two(mb):
            raise EbpfError(f"ringbuf_mb[{name}] must be a power of 2, not {mb}")
    for comm in cfg.exclude_comms:
        if not 0 < len(comm.encode()) <= 15:
            raise EbpfError(f"exclude_comms: {comm!r} is not a comm (1..15 bytes)")
    signal_mask(cfg.signals)
    enabled_probes(cfg)


def dump_bpf(cfg: EbpfConfig) -> str:
    """The C of every enabled probe with its compiler flags (``--dump-bpf``)."""
    check_config(cfg)
    offsets = btf.offsets(Path(cfg.state_dir) if cfg.state_dir else None)
    parts = [f"/* ==== bpf/include/mohlog.h ==== */\n{(BPF_DIR / 'include/mohlog.h').read_text()}"]
    for probe in enabled_probes(cfg):
        if not probe.file:
            parts.append(f"/* ==== probe {probe.name}: /dev/kmsg, no BPF program ==== */")
            continue
        flags = " ".join(probe_cflags(cfg, probe, offsets))
        parts.append(f"/* ==== probe {probe.name}: bpf/{probe.file}\n * cflags: {flags}\n */\n"
                     + (BPF_DIR / probe.file).read_text())
    return "\n".join(parts)


class RingReader:
    """Reads a BPF ring buffer map through mmap, the way libbpf does, without callbacks.

    libbpf maps the data area twice in a row so a record that wraps around the end reads
    as one piece; the kernel pre-populates those page tables, so that doubles the resident
    memory of every ring. Here the data is mapped once, and the rare record that wraps is
    put together from its two parts."""

    def __init__(self, map_fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self.size, self.mask, self.page = size, size - 1, page
        self.consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.data = mmap.mmap(map_fd, page + size, mmap.MAP_SHARED, mmap.PROT_READ,
                              offset=page)
        self.pos = _U64.unpack_from(self.consumer, 0)[0]

    def read(self, decode: Any, out: list[dict[str, Any]], limit: int) -> int:
        """Decode up to ``limit`` records into ``out``; returns decode errors."""
        data, page, mask, pos = self.data, self.page, self.mask, self.pos
        end_of_data = page + self.size
        end = _U64.unpack_from(data, 0)[0]
        errors, n = 0, 0
        while pos < end and n < limit:
            off = page + (pos & mask)
            length = _U32.unpack_from(data, off)[0]
            if length & _BUSY:
                break
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD:
                try:
                    if off + 8 + size <= end_of_data:
                        out.append(decode(data, off + 8))
                    else:  # wraps: the tail of the data area, then its start
                        head = data[off + 8:end_of_data]
                        out.append(decode(head + data[page:page + size - len(head)], 0))
                except (KeyError, IndexError, ValueError, struct.error):
                    errors += 1
                n += 1
            pos += (size + 8 + 7) & ~7
        if pos != self.pos:
            _U64.pack_into(self.consumer, 0, pos)
            self.pos = pos
        return errors

    def pending(self) -> bool:
        return _U64.unpack_from(self.data, 0)[0] > self.pos

    def close(self) -> None:
        self.data.close()
        self.consumer.close()


class MmapArray:
    """A BPF_F_MMAPABLE array map read and written through mmap: no bpf() syscall, so the
    tracepoint programs on the reading CPU are never skipped because of it."""

    def __init__(self, map_fd: int, value_size: int, entries: int) -> None:
        length = max(value_size * entries, 1)
        length = (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        self.value_size = value_size
        self.mem = mmap.mmap(map_fd, length, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=0)

    def u64(self, index: int) -> int:
        return int(_U64.unpack_from(self.mem, index * self.value_size)[0])

    def set_u32(self, index: int, value: int) -> None:
        _U32.pack_into(self.mem, index * self.value_size, value)

    def close(self) -> None:
        self.mem.close()


@dataclass
class LoadedProbe:
    """A probe's state: its BPF object and ring reader once loaded, or why it failed."""

    probe: Probe
    fds: dict[str, int] = field(default_factory=dict)
    rings: list[RingReader] = field(default_factory=list)
    drops: MmapArray | None = None
    errgen: MmapArray | None = None
    drainers: list[BatchDrainer] = field(default_factory=list)
    error: str = ""
    events: int = 0
    attached: list[str] = field(default_factory=list)


class EbpfSource(Source):
    """Loads the enabled probes and turns their events into entries (see module doc)."""

    name = "ebpf"

    def __init__(self, cfg: EbpfConfig) -> None:
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        self.decoder = dec.Decoder(argv_bytes=cfg.argv_bytes)
        self.loaded: dict[str, LoadedProbe] = {}
        self.kmsg: KmsgReader | None = None
        self.decode_errors = 0
        self.syscall_counted = 0
        self._errgen = 0
        self._loaded = False

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load every enabled probe (idempotent; run_forever calls it). The compiling is done
        by a child process (agent/sources/ebpf_loader.py) that hands back fds."""
        if self._loaded:
            return
        self._loaded = True
        state = Path(self.cfg.state_dir) if self.cfg.state_dir else None
        probes = enabled_probes(self.cfg)
        results: dict[str, tuple[dict[str, Any], list[int]]] = {}
        if any(p.file for p in probes):  # the loader reads the BTF offsets itself
            results = _run_loader(self.cfg)
        for probe in probes:
            lp = LoadedProbe(probe)
            self.loaded[probe.name] = lp
            try:
                self._take(lp, results, state)
            except Exception as err:  # noqa: BLE001 - any failure disables this probe only
                lp.error = str(err) or type(err).__name__
                self._unload(lp)
                log.bpf.error("probe %s not loaded: %s", probe.name, lp.error)
            else:
                log.bpf.info("probe %s loaded (%s)", probe.name, ", ".join(lp.attached))

    def _take(self, lp: LoadedProbe, results: dict[str, tuple[dict[str, Any], list[int]]],
              state: Path | None) -> None:
        probe = lp.probe
        if probe.name == "printk":
            state_file = state / "kmsg.json" if state else None
            self.kmsg = KmsgReader(state_file, self.cfg.kmsg_from_start, source="ebpf")
            lp.attached.append("/dev/kmsg")
            return
        msg, fds = results.get(probe.name, ({"error": "the probe loader gave no answer"}, []))
        lp.fds = dict(zip(msg.get("fds", []), fds, strict=True))
        if "error" in msg:
            raise EbpfError(msg["error"])
        lp.attached = list(msg["attached"])
        lp.drops = MmapArray(lp.fds["mh_drops"], 8, dec.EV_MAX)
        if probe.name == "syscall_errors":
            lp.errgen = MmapArray(lp.fds["mh_errgen"], 4, 1)
            lp.drainers = [BatchDrainer(lp.fds[f"mh_errors{i}"], dec.ERR_KEY.size,
                                        dec.ERR_VAL.size, self.cfg.syscall_errors_max_keys)
                           for i in (0, 1)]
        if probe.ring_mb or probe.name in self.cfg.ringbuf_mb:
            size = ring_bytes(self.cfg, probe)
            lp.rings = [RingReader(fd, size) for name, fd in lp.fds.items()
                        if name.startswith("mh_events")]

    def _unload(self, lp: LoadedProbe) -> None:
        for ring in lp.rings:
            ring.close()
        lp.rings = []
        for attr in ("drops", "errgen"):
            mapped = getattr(lp, attr)
            if mapped is not None:
                mapped.close()
                setattr(lp, attr, None)
        for fd in lp.fds.values():  # closing the perf event fds detaches the programs
            with contextlib.suppress(OSError):
                os.close(fd)
        lp.fds = {}

    # -- running ---------------------------------------------------------------------------

    def run_forever(self, emit: Emit) -> None:
        self.load()
        poller = select.epoll()
        rings = [lp for lp in self.loaded.values() if lp.rings]
        for lp in rings:
            for name, fd in lp.fds.items():
                if name.startswith("mh_events"):
                    poller.register(fd, select.EPOLLIN)
        if self.kmsg is not None:
            poller.register(self.kmsg.fd, select.EPOLLIN)
        next_drain = time.monotonic() + self.cfg.syscall_errors_interval_s
        interval = self.cfg.read_interval_ms / 1000
        try:
            while not self.stopping.is_set():
                n = self.poll_once(emit, rings)
                if n >= self.cfg.batch_max:
                    pass  # a ring held more than a batch: read on at once
                elif n or poller.poll(self.cfg.poll_timeout_ms / 1000):
                    if interval > 0:  # events flow: let them gather (see read_interval_ms)
                        self.stopping.wait(interval)
                if time.monotonic() >= next_drain:
                    next_drain += self.cfg.syscall_errors_interval_s
                    self.drain_syscall_errors(emit)
            self._drain_all(emit, rings)
        finally:
            poller.close()
            self.close()

    def _drain_all(self, emit: Emit, rings: list[LoadedProbe], timeout: float = 5.0) -> None:
        """At stop: hand on what the rings still hold (bounded, producers may go on)."""
        deadline = time.monotonic() + timeout
        while self.poll_once(emit, rings) and time.monotonic() < deadline:
            pass
        self.drain_syscall_errors(emit)

    def poll_once(self, emit: Emit, rings: list[LoadedProbe] | None = None) -> int:
        """Read every ring buffer and the kernel log once; returns entries emitted."""
        total = 0
        for lp in rings if rings is not None else self.loaded.values():
            if not lp.rings:
                continue
            out: list[dict[str, Any]] = []
            # a probe's rings carry its one event type: its decoder directly, no dispatch
            decode = self.decoder.for_type(lp.probe.event)
            for ring in lp.rings:
                self.decode_errors += ring.read(decode, out, self.cfg.batch_max)
            if out:
                lp.events += len(out)
                total += len(out)
                emit(out)
        if self.kmsg is not None:
            out = self.kmsg.read(self.cfg.batch_max)
            if out:
                self.loaded["printk"].events += len(out)
                total += len(out)
                emit(out)
                self.kmsg.save()
        return total

    def drain_syscall_errors(self, emit: Emit) -> int:
        """Switch the kernel to the other map, then empty this one: one entry per key."""
        lp = self.loaded.get("syscall_errors")
        if lp is None or lp.errgen is None or not lp.drainers:
            return 0
        old = self._errgen
        self._errgen ^= 1
        lp.errgen.set_u32(0, self._errgen)
        time.sleep(0.005)  # let programs that read the old generation finish
        out = []
        for key, value in lp.drainers[old].drain():
            entry = self.decoder.syscall_errors(key, value, self.cfg.syscall_errors_interval_s)
            out.append(entry)
            self.syscall_counted += entry["metadata"]["count"]
        if out:
            lp.events += len(out)
            emit(out)
        return len(out)

    # -- counters --------------------------------------------------------------------------

    def kernel_drops(self, lp: LoadedProbe) -> int:
        """Failed ring-buffer reserves (or full maps) of this probe's event type."""
        return lp.drops.u64(lp.probe.event) if lp.drops is not None else 0

    def kernel_misses(self, lp: LoadedProbe) -> int:
        """Runs of this probe's programs the kernel skipped (recursion_misses)."""
        return sum(prog_recursion_misses(fd) for name, fd in lp.fds.items()
                   if name.startswith("prog:"))

    def stats(self) -> dict[str, Any]:  # type: ignore[override]
        probes = {name: {"events": lp.events, "kernel_drops": self.kernel_drops(lp),
                         "kernel_misses": self.kernel_misses(lp),
                         "reserve_retries": lp.drops.u64(0) if lp.drops else 0,
                         "loaded": not lp.error, "error": lp.error,
                         "tracepoints": lp.attached}
                  for name, lp in self.loaded.items()}
        out: dict[str, Any] = {"probes": probes, "decode_errors": self.decode_errors,
                               "syscall_errors_counted": self.syscall_counted}
        if self.kmsg is not None:
            out["kmsg"] = self.kmsg.stats()
        return out

    def close(self) -> None:
        for lp in self.loaded.values():
            self._unload(lp)
        if self.kmsg is not None:
            self.kmsg.close()
            self.kmsg = None


def cgroup2_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid
    hosts): the ids of bpf_get_current_cgroup_id() are inode numbers of its directories."""
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    except OSError:
        pass
    return Path("/sys/fs/cgroup")


def _cgroup_id(cg: int | str) -> int:
    """A cgroup v2 id: given, or the inode number of the cgroup's directory."""
    if isinstance(cg, int):
        return cg
    root = cgroup2_root()
    path = Path(cg) if cg.startswith(str(root)) else root / cg.lstrip("/")
    try:
        return path.stat().st_ino
    except OSError as err:
        raise EbpfError(f"exclude_cgroups: no cgroup {cg} ({err})") from err


def _errors(errf: Any) -> str:
    errf.seek(0)
    lines = [ln.strip() for ln in errf.read().decode("utf-8", "replace").splitlines()
             if "error" in ln.lower() or "invalid" in ln.lower() or "unknown" in ln.lower()]
    return "; ".join(lines[:3])


def _captured(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with fd 2 captured: bcc prints compiler and verifier messages there,
    and they are the reason a probe failed."""
    with tempfile.TemporaryFile() as errf:
        saved = os.dup(2)
        os.dup2(errf.fileno(), 2)
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            os.dup2(saved, 2)
            raise EbpfError(f"{what} failed: {_errors(errf) or err}") from err
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _compile(src: Path, cflags: list[str]) -> Any:
    from bcc import BPF

    return _captured(f"compile of {src.name}", BPF, src_file=str(src).encode(), cflags=cflags)


def _run_loader(cfg: EbpfConfig,
                timeout: float = 120.0) -> dict[str, tuple[dict[str, Any], list[int]]]:
    """Run agent/sources/ebpf_loader.py; per probe its message and the fds it sent."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    root = str(BPF_DIR.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    request = json.dumps({"cfg": dataclasses.asdict(cfg), "agent_tgid": os.getpid()})
    with tempfile.TemporaryFile() as errf:
        child = subprocess.Popen(
            [sys.executable, "-m", "agent.sources.ebpf_loader", str(theirs.fileno())],
            stdin=subprocess.PIPE, stderr=errf, pass_fds=(theirs.fileno(),), env=env)
        theirs.close()
        try:
            assert child.stdin is not None
            child.stdin.write(request.encode())
            child.stdin.close()
            results = _receive(ours, timeout)
        finally:
            ours.close()
            failure = _reap(child, errf, timeout)
    if failure:  # every probe it did not answer for gets the loader's own error
        for probe in enabled_probes(cfg):
            results.setdefault(probe.name, ({"error": failure}, []))
    return results


def _reap(child: subprocess.Popen[bytes], errf: Any, timeout: float) -> str:
    """Wait for the loader; its error text when it failed."""
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    if not child.returncode:
        return ""
    errf.seek(0)
    lines = errf.read().decode("utf-8", "replace").strip().splitlines()
    text = f"probe loader exited with {child.returncode}: {lines[-1] if lines else ''}"
    log.bpf.error("%s", text)
    return text


def _receive(sock: socket.socket,
             timeout: float) -> dict[str, tuple[dict[str, Any], list[int]]]:
    sock.settimeout(timeout)
    out: dict[str, tuple[dict[str, Any], list[int]]] = {}
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 16 + possible_cpus())
        except OSError as err:
            log.bpf.error("probe loader: %s", err)
            return out
        if not data:
            return out
        msg = json.loads(data)
        if msg.get("done"):
            return out
        out[msg["probe"]] = (msg, fds)
