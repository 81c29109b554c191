"""Loading: a probe that cannot load is reported (which and why) and the others run; the
in-kernel comm filter; kernel drops counted when the ring buffer is full."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.sources.ebpf import EbpfConfig, EbpfSource, dump_bpf, possible_cpus
from tests.privileged.ebpf_helpers import Collector, event, running

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def _unique_exe(tmp_path: Path, prefix: str) -> Path:
    exe = tmp_path / f"{prefix}{uuid.uuid4().hex[:8]}"
    shutil.copy("/bin/true", exe)
    return exe


def test_missing_tracepoint_fails_alone(tmp_path: Path) -> None:
    cfg = EbpfConfig(probes=["exec", "tcp_reset", "signal"],
                     tracepoints={"tcp:tcp_send_reset": "tcp:mohlog_no_such_tracepoint",
                                  "signal:signal_generate": "sched:sched_process_fork"})
    with running(cfg) as (src, sink):
        probes = src.stats()["probes"]
        assert probes["tcp_reset"]["loaded"] is False
        assert "tcp:mohlog_no_such_tracepoint does not exist" in probes["tcp_reset"]["error"]
        assert probes["signal"]["loaded"] is False  # fork's fields are not signal_generate's
        assert "compile of mohlog.c failed" in probes["signal"]["error"]
        assert "no member named" in probes["signal"]["error"]
        assert probes["exec"]["loaded"] is True and probes["exec"]["error"] == ""
        exe = _unique_exe(tmp_path, "mhl")
        subprocess.run([str(exe)], check=True)
        assert sink.wait(event("exec", filename=str(exe)))
        assert src.stats()["probes"]["exec"]["events"] >= 1


def test_exclude_comms_in_kernel(tmp_path: Path) -> None:
    skipped, kept = _unique_exe(tmp_path, "mhs"), _unique_exe(tmp_path, "mhk")
    with running(EbpfConfig(probes=["exec"], exclude_comms=[skipped.name])) as (_src, sink):
        subprocess.run([str(skipped)], check=True)
        subprocess.run([str(kept)], check=True)
        assert sink.wait(event("exec", filename=str(kept)))
        time.sleep(0.3)
        assert sink.find(event("exec", filename=str(skipped))) == []


def test_exclude_pids_in_kernel() -> None:
    """The excluded shell's own failed open is dropped in the kernel; its child's is not."""
    marker = uuid.uuid4().hex
    script = f"read x; cat /nonexistent-{marker}/seen; : < /nonexistent-{marker}/skipped"
    shell = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    try:
        with running(EbpfConfig(probes=["open_fail"], exclude_pids=[shell.pid])) as (_s, sink):
            assert shell.stdin is not None
            shell.stdin.write(b"go\n")
            shell.stdin.close()
            shell.wait(10)
            [seen] = sink.wait(event("open_fail", filename=f"/nonexistent-{marker}/seen"))
            assert seen["pid"] != shell.pid and seen["metadata"]["comm"] == "cat"
            time.sleep(0.3)
            assert sink.find(lambda e: marker in e["metadata"]["filename"]
                             and e["pid"] == shell.pid) == []
    finally:
        shell.kill()
        shell.wait()


def test_full_ring_buffer_counts_kernel_drops(tmp_path: Path) -> None:
    """Probes loaded but nobody reading: a 1 MiB ring holds ~3,200 failed-open records;
    a burst of 20,000 must show up as records read + kernel drops, none unaccounted."""
    name = f"mhd{uuid.uuid4().hex[:8]}"
    src = EbpfSource(EbpfConfig(probes=["open_fail"], ringbuf_mb={"open_fail": 1}))
    src.load()
    try:
        n = 20_000
        code = (f"import os\nopen('/proc/self/comm', 'w').write('{name}')\n"
                f"for i in range({n}):\n"
                "    try:\n        os.open(f'/nonexistent-mhd/{i}', os.O_RDONLY)\n"
                "    except OSError:\n        pass\n")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        sink = Collector()
        while src.poll_once(sink):
            pass
        ours = sink.find(lambda e: e["metadata"]["comm"] == name)
        stats = src.stats()["probes"]["open_fail"]
        drops = stats["kernel_drops"]
        assert isinstance(stats["kernel_misses"], int) and stats["kernel_misses"] >= 0
        assert drops > 0 and 0 < len(ours) < n
        assert len(ours) + drops >= n  # other processes' failures may also have been dropped
    finally:
        src.close()


def test_dump_bpf_shows_source_and_flags() -> None:
    text = dump_bpf(EbpfConfig(probes=["exec", "oom"]))
    assert "probe exec: bpf/mohlog.c" in text and "-DPROBE_EXEC" in text
    assert "-DOFF_TASK_REAL_PARENT=" in text and "-DPROBE_OOM" in text
    assert "sched_process_exec" in text and "PROBE_OPEN_FAIL" in text  # the C itself


def test_records_wrapping_the_ring_decode() -> None:
    """A ring of 1 MiB per CPU written over more than once while read: the records that
    straddle its end (joined from two parts, the data area is mapped once) decode like the
    others. The writer goes in steps of 500 records (~160 kB) and waits for the reader to
    have them all, so a starved reader on a loaded machine cannot make the ring drop."""
    name = f"mhw{uuid.uuid4().hex[:8]}"
    n, step = 10_000, 500
    code = (f"import os, sys\nopen('/proc/self/comm', 'w').write('{name}')\n"
            "os.sched_setaffinity(0, {0})  # one CPU: all records in one ring\n"
            f"for i in range({n}):\n"
            f"    if i % {step} == 0 and not sys.stdin.readline():\n        break\n"
            "    try:\n        os.open(f'/nonexistent-mhw/{i:05d}', os.O_RDONLY)\n"
            "    except OSError:\n        pass\n")
    mb = possible_cpus()  # 1 MiB per CPU
    cfg = EbpfConfig(probes=["open_fail"], ringbuf_mb={"open_fail": 1 << (mb - 1).bit_length()})
    mine = lambda e: e["metadata"]["comm"] == name  # noqa: E731
    with running(cfg) as (src, sink):
        writer = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
        try:
            assert writer.stdin is not None
            for done in range(step, n + step, step):
                writer.stdin.write("go\n")
                writer.stdin.flush()
                got = len(sink.wait(mine, count=done, timeout=20))
                assert got == done, (got, done, src.stats())
            writer.stdin.close()
            assert writer.wait(30) == 0
        finally:
            writer.kill()
            writer.wait()
        ours = sink.find(mine)
        stats = src.stats()
    assert stats["decode_errors"] == 0 and stats["probes"]["open_fail"]["kernel_drops"] == 0, stats
    assert len(ours) == n, stats
    assert sorted(e["metadata"]["filename"] for e in ours) == [
        f"/nonexistent-mhw/{i:05d}" for i in range(n)]
