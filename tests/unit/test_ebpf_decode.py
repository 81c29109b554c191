"""Decoders of raw eBPF events (no root): records packed as bpf/mohlog.c lays them out."""

from __future__ import annotations

import errno
import mmap
import signal
import socket
import struct

import pytest

from agent import btf
from agent.sources import ebpf_decode as d
from agent.sources.ebpf import (
    FATAL_SIGNALS,
    PROBE_NAMES,
    EbpfConfig,
    EbpfError,
    check_config,
    enabled_probes,
    list_probes,
    possible_cpus,
    probe_cflags,
    ring_bytes,
    signal_mask,
)
from mohlog.model import COMPONENT_CODE, LEVEL_RANK

MONO = 1_700_000_000_000_000_000
COMM = b"worker\0\0\0\0\0\0\0\0\0\0"


@pytest.fixture
def dec() -> d.Decoder:
    return d.Decoder(host="h1", mono_offset=MONO, argv_bytes=512)


def hdr(etype: int, pid: int = 100, tid: int = 101, uid: int = 1000, comm: bytes = COMM,
        ts: int = 5_000, cgroup: int = 77) -> bytes:
    return d.HDR.pack(ts, cgroup, etype, pid, tid, uid, comm)


def test_layout_sizes_match_the_c_structs() -> None:
    assert d.HDR.size == 48 and d.EXIT.size == 64 and d.FORK.size == 80
    assert d.OOM.size == 120 and d.SIGNAL.size == 88 and d.NET.size == 136
    assert d.OPEN_FAIL.size == 64 and d.ERR_KEY.size == 16 and d.ERR_VAL.size == 56


def test_exec(dec: d.Decoder) -> None:
    fn = b"/usr/bin/curl"
    args = b"curl\0-s\0http://example.test/x\0"
    raw = (hdr(d.EV_EXEC) + d.EXEC.pack(1, 100, len(fn) + 1, len(args))
           + fn.ljust(256, b"\0") + args.ljust(512, b"\0"))
    e = dec.decode(b"\xff" * 8 + raw, 8)  # at an offset, as in the ring buffer
    assert e["message"] == "exec /usr/bin/curl -s http://example.test/x pid 100 ppid 1 uid 1000"
    assert e["metadata"] == {"event": "exec", "ppid": 1, "uid": 1000, "cgroup_id": 77,
                             "comm": "worker", "filename": "/usr/bin/curl",
                             "argv": ["curl", "-s", "http://example.test/x"],
                             "argv_truncated": False}
    assert (e["level"], e["component"], e["source"], e["host"]) == (
        "INFO", "PROCESS_MANAGER", "ebpf", "h1")
    assert (e["pid"], e["tid"], e["process"], e["timestamp"]) == (100, 101, "worker",
                                                                    MONO + 5_000)
    assert len(e["id"]) == 32 and e["context"] == {}


def test_exec_truncated_argv(dec: d.Decoder) -> None:
    args = (b"x" * 600)[:512]
    raw = hdr(d.EV_EXEC) + d.EXEC.pack(1, 100, 3, 512) + b"/a\0".ljust(256, b"\0") + args
    e = dec.decode(raw)
    assert e["metadata"]["argv_truncated"] is True and e["metadata"]["argv"] == ["x" * 512]


@pytest.mark.parametrize(("code", "level", "status", "sig", "text"), [
    (0, "INFO", 0, 0, "exit code 0"),
    (3 << 8, "WARNING", 3, 0, "exit code 3"),
    (signal.SIGTERM, "WARNING", 0, 15, "killed by SIGTERM"),
    (signal.SIGSEGV | 0x80, "WARNING", 0, 11, "killed by SIGSEGV (core dumped)"),
])
def test_exit(dec: d.Decoder, code: int, level: str, status: int, sig: int, text: str) -> None:
    e = dec.decode(d.EXIT.pack(5_000, 77, d.EV_EXIT, 100, 100, 0, COMM, 1, code, 2_500_000_000))
    assert e["level"] == level and text in e["message"] and "after 2.500s" in e["message"]
    assert e["metadata"]["exit_code"] == status and e["metadata"]["signal"] == sig
    assert e["metadata"]["lifetime_ns"] == 2_500_000_000 and e["metadata"]["ppid"] == 1


def test_fork(dec: d.Decoder) -> None:
    e = dec.decode(d.FORK.pack(1, 2, d.EV_FORK, 100, 100, 0, COMM, 4242, 0, 0x11,
                               b"child\0".ljust(16, b"\0")))
    assert e["metadata"]["child_pid"] == 4242 and e["metadata"]["child_comm"] == "child"
    assert e["metadata"]["thread"] is False
    assert e["message"] == "fork worker pid 100 -> child pid 4242"


def test_oom(dec: d.Decoder) -> None:
    e = dec.decode(d.OOM.pack(1, 2, d.EV_OOM, 7, 7, 0, b"alloc\0".ljust(16, b"\0"), 900, 33,
                              500_000, 400_000, 1_000, 10, 800, -17, 0,
                              b"hog\0".ljust(16, b"\0")))
    assert (e["level"], e["component"], e["pid"], e["process"]) == (
        "CRITICAL", "MEMORY_MANAGER", 900, "hog")
    m = e["metadata"]
    assert (m["victim_pid"], m["uid"], m["anon_rss_kb"], m["oom_score_adj"]) == (
        900, 33, 400_000, -17)
    assert m["trigger_pid"] == 7 and m["trigger_comm"] == "alloc"
    assert "OOM kill of hog pid 900" in e["message"]


@pytest.mark.parametrize(("sig", "level"), [(15, "WARNING"), (9, "ERROR"), (11, "ERROR")])
def test_signal(dec: d.Decoder, sig: int, level: str) -> None:
    e = dec.decode(d.SIGNAL.pack(1, 2, d.EV_SIGNAL, 50, 50, 0, b"kill\0".ljust(16, b"\0"), sig,
                                 0, 0, 60, 1, 0, b"sleep\0".ljust(16, b"\0")))
    assert e["level"] == level and e["component"] == "PROCESS_MANAGER"
    m = e["metadata"]
    assert (m["sender_pid"], m["target_pid"], m["target_comm"], m["result"]) == (
        50, 60, "sleep", "delivered")
    assert e["message"] == (f"signal {signal.Signals(sig).name} from kill pid 50 to sleep "
                            "pid 60 (delivered)")


def _net(etype: int, old: int, new: int, extra: int = 0, family: int = socket.AF_INET,
         saddr: bytes = b"\x7f\0\0\x01", daddr: bytes = b"\x0a\0\0\x02",
         duration: int = 0) -> bytes:
    return d.NET.pack(1, 2, etype, 10, 10, 0, COMM, duration, 4026531840, old, new, extra,
                      40000, 80, family, 0, saddr.ljust(16, b"\0"), daddr.ljust(16, b"\0"),
                      10, 0, b"curl\0".ljust(16, b"\0"))


def test_tcp_state_connect_close_and_refused(dec: d.Decoder) -> None:
    conn = dec.decode(_net(d.EV_TCP_STATE, 2, 1))
    m = conn["metadata"]
    assert m["kind"] == "connect" and (m["saddr"], m["daddr"], m["sport"], m["dport"]) == (
        "127.0.0.1", "10.0.0.2", 40000, 80)
    assert m["netns"] == 4026531840 and m["family"] == "inet" and m["owner_comm"] == "curl"
    assert (conn["level"], conn["component"]) == ("INFO", "IPC_MANAGER")
    assert conn["message"].startswith("tcp connect 127.0.0.1:40000 -> 10.0.0.2:80")
    close = dec.decode(_net(d.EV_TCP_STATE, 9, 7, duration=1_500_000_000))
    assert close["metadata"]["kind"] == "close" and "after 1.500s" in close["message"]
    assert close["metadata"]["duration_ns"] == 1_500_000_000
    refused = dec.decode(_net(d.EV_TCP_STATE, 2, 7))
    assert refused["metadata"]["kind"] == "connect_failed" and refused["level"] == "WARNING"
    assert dec.decode(_net(d.EV_TCP_STATE, 3, 1))["metadata"]["kind"] == "accept"
    assert dec.decode(_net(d.EV_TCP_STATE, 7, 10))["metadata"]["kind"] == "listen"


def test_tcp_retransmit_and_reset_ipv6(dec: d.Decoder) -> None:
    v6 = socket.inet_pton(socket.AF_INET6, "fd00::1")
    r = dec.decode(_net(d.EV_TCP_RETRANSMIT, 0, 1, extra=0, family=socket.AF_INET6,
                        saddr=v6, daddr=v6))
    assert (r["level"], r["metadata"]["saddr"], r["metadata"]["family"]) == (
        "PERFORMANCE", "fd00::1", "inet6")
    assert r["metadata"]["state"] == "ESTABLISHED"
    sent = dec.decode(_net(d.EV_TCP_RESET, 0, -1, extra=2))
    assert sent["metadata"]["direction"] == "sent" and sent["metadata"]["reason"] == 2
    assert sent["metadata"]["state"] == "" and sent["level"] == "WARNING"
    got = dec.decode(_net(d.EV_TCP_RESET, 1, -1))
    assert got["metadata"]["direction"] == "received" and "reason" not in got["metadata"]


def test_open_fail(dec: d.Decoder) -> None:
    path = b"/etc/shadow"
    raw = d.OPEN_FAIL.pack(1, 2, d.EV_OPEN_FAIL, 30, 31, 65534, b"cat\0".ljust(16, b"\0"),
                           errno.EACCES, 0o100000, 0, len(path) + 1) + path.ljust(256, b"\0")
    e = dec.decode(raw)
    assert e["metadata"] == {"event": "open_fail", "filename": "/etc/shadow", "errno": 13,
                             "errno_name": "EACCES", "flags": 0o100000, "syscall": "openat",
                             "uid": 65534, "cgroup_id": 2, "comm": "cat"}
    assert e["message"] == ("open /etc/shadow failed: EACCES (Permission denied) in cat "
                            "pid 30 uid 65534")
    assert (e["level"], e["component"]) == ("WARNING", "KERNEL")


@pytest.mark.parametrize(("err", "level"), [
    (errno.ENOENT, "DEBUG"), (errno.ENOTDIR, "DEBUG"), (errno.EACCES, "WARNING"),
    (errno.EPERM, "WARNING"), (errno.ELOOP, "WARNING"), (errno.EMFILE, "ERROR"),
    (errno.ENOSPC, "ERROR"), (errno.EIO, "ERROR")])
def test_open_fail_level_by_errno(dec: d.Decoder, err: int, level: str) -> None:
    """A missing file is routine (locales, search paths); out of descriptors, of room or
    an I/O error is the system failing."""
    path = b"/usr/lib/locale/C.UTF-8/LC_CTYPE"
    raw = d.OPEN_FAIL.pack(1, 2, d.EV_OPEN_FAIL, 30, 31, 0, b"rm\0".ljust(16, b"\0"),
                           err, 0, 0, len(path) + 1) + path.ljust(256, b"\0")
    assert dec.decode(raw)["level"] == level


def test_syscall_errors(dec: d.Decoder) -> None:
    key = d.ERR_KEY.pack(77, 3, errno.EBADF, 0)
    val = d.ERR_VAL.pack(500, 1_000, 9_000, 78, 0, 5, b"python3\0".ljust(16, b"\0"))
    e = dec.syscall_errors(key, val, 1.0)
    m = e["metadata"]
    assert (m["syscall"], m["errno_name"], m["count"], m["comm"]) == ("close", "EBADF", 500,
                                                                      "python3")
    assert m["first_ns"] == MONO + 1_000 and e["timestamp"] == MONO + 9_000
    assert e["level"] == "WARNING" and e["pid"] == 77
    assert e["message"] == "syscall close failed 500 times with EBADF in python3 pid 77 (last 1s)"
    for err in (errno.EAGAIN, errno.ECHILD, errno.ESRCH, errno.ESPIPE, errno.EEXIST):
        routine = dec.syscall_errors(d.ERR_KEY.pack(77, 0, err, 0), val, 1.0)
        assert routine["level"] == "DEBUG", errno.errorcode[err]
    odd = dec.syscall_errors(d.ERR_KEY.pack(77, 9999, 516, 0), val, 1.0)
    assert odd["metadata"]["syscall"] == "syscall_9999"
    assert odd["metadata"]["errno_name"] == "ERESTART_RESTARTBLOCK"


def test_bad_records(dec: d.Decoder) -> None:
    with pytest.raises(KeyError):
        dec.decode(hdr(99))
    with pytest.raises(struct.error):
        dec.decode(hdr(d.EV_OOM))


def test_mapping_uses_model_levels_and_components() -> None:
    assert set(d.MAPPING) == set(PROBE_NAMES)
    for level, component, _ in d.MAPPING.values():
        assert level in LEVEL_RANK and component in COMPONENT_CODE


def test_probe_table_and_config() -> None:
    probes = {p["name"]: p for p in list_probes()}
    assert probes["exec"]["tracepoints"] == ["sched:sched_process_exec"]
    assert probes["printk"]["tracepoints"] == ["/dev/kmsg"]
    assert all(p["description"] for p in probes.values())
    assert [p.name for p in enabled_probes(EbpfConfig(probes=["oom", "exec"]))] == [
        "exec", "oom"]
    with pytest.raises(EbpfError, match="unknown probe"):
        check_config(EbpfConfig(probes=["nope"]))
    with pytest.raises(EbpfError, match="argv_bytes"):
        check_config(EbpfConfig(argv_bytes=300))
    with pytest.raises(EbpfError, match="comm"):
        check_config(EbpfConfig(exclude_comms=["x" * 16]))
    with pytest.raises(EbpfError, match="signals"):
        check_config(EbpfConfig(signals="some"))
    with pytest.raises(EbpfError, match="read_interval_ms"):
        check_config(EbpfConfig(read_interval_ms=-1))
    assert signal_mask([15]) == 1 << 15
    assert signal_mask("fatal") == sum(1 << s for s in FATAL_SIGNALS)
    assert signal_mask("all") & (1 << 17)


def test_probe_cflags() -> None:
    cfg = EbpfConfig(tracepoints={"tcp:tcp_send_reset": "tcp:other"}, exclude_pids=[1],
                     ringbuf_mb={"tcp_reset": 2})
    [probe] = enabled_probes(EbpfConfig(probes=["tcp_reset"]))
    flags = probe_cflags(cfg, probe, {"OFF_TASK_TGID": 7})
    assert "-DOFF_TASK_TGID=7" in flags and "-DPROBE_TCP_RESET" in flags
    assert "-DTP_TCP_SEND_RESET=tcp,other" in flags and "-DFILTER_PIDS" in flags
    per_cpu = ring_bytes(cfg, probe)
    assert f"-DRINGBUF_PAGES={per_cpu // mmap.PAGESIZE}" in flags
    assert f"-DNCPUS={possible_cpus()}" in flags and not any("TP_TCP_RECEIVE" in f for f in flags)
    assert per_cpu & (per_cpu - 1) == 0 and per_cpu * possible_cpus() <= 2 << 20


def test_btf_offsets_through_anonymous_members() -> None:
    types = [
        {"id": 1, "kind": "INT", "name": "int", "size": 4},
        {"id": 2, "kind": "STRUCT", "name": "(anon)", "size": 16, "vlen": 2, "members": [
            {"name": "x", "type_id": 1, "bits_offset": 0},
            {"name": "arg_start", "type_id": 1, "bits_offset": 64}]},
        {"id": 3, "kind": "STRUCT", "name": "mm_struct", "size": 32, "vlen": 2, "members": [
            {"name": "pad", "type_id": 1, "bits_offset": 0},
            {"name": "(anon)", "type_id": 2, "bits_offset": 128}]},
        {"id": 4, "kind": "TYPEDEF", "name": "mm_t", "type_id": 3},
        {"id": 5, "kind": "STRUCT", "name": "task", "size": 64, "vlen": 1, "members": [
            {"name": "mm_inline", "type_id": 4, "bits_offset": 256}]},
    ]
    got = btf.compute_offsets(types, {"A": "mm_struct.arg_start",
                                      "B": "task.mm_inline.arg_start"})
    assert got == {"A": 24, "B": 56}
    with pytest.raises(btf.BtfError, match="no member"):
        btf.compute_offsets(types, {"C": "mm_struct.nope"})
    with pytest.raises(btf.BtfError, match="not in BTF"):
        btf.compute_offsets(types, {"C": "nothere.x"})


def test_decoder_for_one_type_skips_the_dispatch(dec: d.Decoder) -> None:
    assert dec.for_type(d.EV_OPEN_FAIL) == dec.open_fail
    assert dec.for_type(d.EV_TCP_RESET) == dec.net and dec.for_type(99) == dec.decode
