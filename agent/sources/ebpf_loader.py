"""The probe loader: a short-lived child process that compiles and attaches the probes
with bcc and hands their file descriptors to the agent, then exits.

Why a child: bcc embeds clang/LLVM; after compiling the probes a process holds ~250 MB
more resident memory, for good. The agent keeps only what it needs: per probe the perf
event fds that hold the tracepoint attachments (closing them detaches), the program fds
(for recursion_misses), and the map fds of its ring buffer and counters (read through
mmap or bpf_sys). The child exits with ``os._exit`` so bcc's atexit cleanup does not
disable the perf events the agent now owns.

Protocol over a SOCK_SEQPACKET socket (fd given as argv[1]); the request is JSON on
stdin: ``{"cfg": EbpfConfig fields, "agent_tgid": int}``; the child reads the BTF
offsets too (agent/btf.py, cached in the state dir), so the agent never parses the dump. One message
per probe: JSON ``{"probe", "attached", "fds": [names]}`` with the fds attached in that
order (SCM_RIGHTS), or ``{"probe", "error"}``; then ``{"done": true}``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from agent import btf
from agent.sources.ebpf import (
    BPF_DIR,
    EbpfConfig,
    EbpfError,
    Probe,
    _captured,
    _cgroup_id,
    _compile,
    enabled_probes,
    possible_cpus,
    probe_cflags,
    ring_bytes,
    tracepoint_of,
)

_BPF_MAP_TYPE_RINGBUF = 27
MAPS = ("mh_events", "mh_drops", "mh_errgen", "mh_errors0", "mh_errors1")


def load_probe(cfg: EbpfConfig, probe: Probe, offsets: dict[str, int],
               agent_tgid: int) -> tuple[Any, dict[str, Any], list[int]]:
    """Compile, attach and fill the filters of one probe: (bcc object, message, fds)."""
    for _m, default, _f in probe.tracepoints:
        tp = tracepoint_of(cfg, default)
        cat, _, evt = tp.partition(":")
        if not (Path(cfg.tracefs) / "events" / cat / evt / "format").exists():
            raise EbpfError(f"tracepoint {tp} does not exist on this kernel "
                            f"({cfg.tracefs}/events/{cat}/{evt} missing)")
    bpf = _compile(BPF_DIR / probe.file, probe_cflags(cfg, probe, offsets, agent_tgid))
    attached = []
    for _m, default, fn in probe.tracepoints:
        tp = tracepoint_of(cfg, default)
        _captured(f"attach of {fn} to {tp}", bpf.attach_tracepoint, tp=tp.encode(),
                  fn_name=fn.encode())
        attached.append(tp)
    fill_filters(cfg, bpf)
    names, fds = per_cpu_rings(cfg, probe, bpf)
    for tp in attached:
        names.append(f"perf:{tp}")
        fds.append(bpf.tracepoint_fds[tp.encode()])
    for _m, _tp, fn in probe.tracepoints:
        names.append(f"prog:{fn}")
        fds.append(bpf.funcs[fn.encode()].fd)
    for name in MAPS:
        try:
            table = bpf[name.encode()]
        except KeyError:
            continue
        names.append(name)
        fds.append(table.map_fd)
    return bpf, {"probe": probe.name, "attached": attached, "fds": names}, fds


def per_cpu_rings(cfg: EbpfConfig, probe: Probe, bpf: Any) -> tuple[list[str], list[int]]:
    """Create the rings of CPUs 1..n-1 (CPU 0 has mh_events) and put all in mh_rings."""
    import ctypes

    from bcc.libbcc import lib

    outer = bpf[b"mh_rings"]
    size = ring_bytes(cfg, probe)
    names, fds = [], []
    for cpu in range(possible_cpus()):
        if cpu == 0:
            fd = bpf[b"mh_events"].map_fd
        else:
            fd = lib.bcc_create_map(_BPF_MAP_TYPE_RINGBUF, f"mh_events{cpu}".encode(), 0, 0,
                                    size, 0)
            if fd < 0:
                raise EbpfError(f"cannot create the ring buffer of CPU {cpu}: "
                                f"{os.strerror(ctypes.get_errno() or -fd)}")
            names.append(f"mh_events@{cpu}")
            fds.append(fd)
        outer[ctypes.c_int(cpu)] = ctypes.c_int(fd)
    return names, fds


def fill_filters(cfg: EbpfConfig, bpf: Any) -> None:
    for pid in cfg.exclude_pids:
        table = bpf[b"mh_filter_pids"]
        table[table.Key(pid)] = table.Leaf(1)
    for comm in cfg.exclude_comms:
        table = bpf[b"mh_filter_comms"]
        key = table.Key()
        key.comm = comm.encode()  # a c_char array field: zero padded
        table[key] = table.Leaf(1)
    for cg in cfg.exclude_cgroups:
        table = bpf[b"mh_filter_cgroups"]
        table[table.Key(_cgroup_id(cg))] = table.Leaf(1)


def serve(sock: socket.socket, request: dict[str, Any]) -> None:
    cfg = EbpfConfig(**request["cfg"])
    offsets = btf.offsets(Path(cfg.state_dir) if cfg.state_dir else None)
    keep = []  # the bcc objects stay alive (and attached) until the agent has the fds
    for probe in enabled_probes(cfg):
        if not probe.file:
            continue
        try:
            bpf, msg, fds = load_probe(cfg, probe, offsets, request["agent_tgid"])
        except Exception as err:  # noqa: BLE001 - any failure disables this probe only
            socket.send_fds(sock, [json.dumps({"probe": probe.name,
                                               "error": str(err) or type(err).__name__
                                               }).encode()], [])
            continue
        keep.append(bpf)
        socket.send_fds(sock, [json.dumps(msg).encode()], fds)
    socket.send_fds(sock, [b'{"done": true}'], [])


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(sock, json.loads(sys.stdin.read()))
    except Exception as err:  # noqa: BLE001 - reported to the agent, then exit
        print(f"probe loader failed: {err}", file=sys.stderr, flush=True)
        os._exit(1)
    sock.close()
    os._exit(0)  # no atexit: bcc's cleanup would disable the agent's perf events


if __name__ == "__main__":
    main()
