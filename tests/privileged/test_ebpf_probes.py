"""The real probes against real processes: exec, fork, exit, failed opens, signals, OOM kill,
the kernel log, syscall error counts. One EbpfSource (all probes) for the module."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sources.ebpf import EbpfConfig, EbpfSource
from tests.privileged.ebpf_helpers import Collector, event, own_cgroup_id, running

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def probes() -> Iterator[tuple[EbpfSource, Collector]]:
    with running(EbpfConfig()) as pair:
        failed = {n: p["error"] for n, p in pair[0].stats()["probes"].items() if not p["loaded"]}
        assert failed == {}
        yield pair


def test_exec_with_arguments_then_exit(probes: tuple[EbpfSource, Collector],
                                       tmp_path: Path) -> None:
    _, sink = probes
    name = f"mhx{uuid.uuid4().hex[:10]}"
    exe = tmp_path / name
    shutil.copy("/bin/true", exe)
    child = subprocess.run([str(exe), "--alpha", "beta gamma"], check=True)
    assert child.returncode == 0
    [ev] = sink.wait(event("exec", filename=str(exe)))
    meta = ev["metadata"]
    assert meta["argv"] == [str(exe), "--alpha", "beta gamma"]
    assert meta["comm"] == name[:15] and ev["process"] == name[:15]
    assert meta["ppid"] == os.getpid() and meta["uid"] == 0
    assert meta["cgroup_id"] == own_cgroup_id()
    assert (ev["level"], ev["component"], ev["source"]) == ("INFO", "PROCESS_MANAGER", "ebpf")
    assert ev["message"] == (f"exec {exe} --alpha beta gamma pid {ev['pid']} "
                             f"ppid {os.getpid()} uid 0")
    assert abs(ev["timestamp"] - time.time_ns()) < 30e9
    [ex] = sink.wait(lambda e: event("exit")(e) and e["pid"] == ev["pid"])
    assert ex["metadata"]["exit_code"] == 0 and ex["metadata"]["signal"] == 0
    assert ex["metadata"]["ppid"] == os.getpid() and ex["level"] == "INFO"
    assert 0 < ex["metadata"]["lifetime_ns"] < 30e9


def test_fork_and_nonzero_exit(probes: tuple[EbpfSource, Collector]) -> None:
    _, sink = probes
    proc = subprocess.Popen(["/bin/sh", "-c", "/bin/sh -c 'exit 3' & wait $!; exit 0"])
    assert proc.wait(10) == 0
    [fork] = sink.wait(lambda e: event("fork")(e) and e["pid"] == proc.pid)
    child = fork["metadata"]["child_pid"]
    assert child != proc.pid and fork["metadata"]["thread"] is False
    [ex] = sink.wait(lambda e: event("exit")(e) and e["pid"] == child)
    assert ex["metadata"]["exit_code"] == 3 and ex["metadata"]["ppid"] == proc.pid
    assert ex["level"] == "WARNING" and "exit code 3" in ex["message"]


def test_failed_open_enoent(probes: tuple[EbpfSource, Collector]) -> None:
    _, sink = probes
    missing = f"/nonexistent-mohlog-{uuid.uuid4().hex}/file.txt"
    proc = subprocess.run(["cat", missing], capture_output=True)
    assert proc.returncode != 0
    [ev] = sink.wait(event("open_fail", filename=missing))
    meta = ev["metadata"]
    assert meta["errno"] == errno.ENOENT and meta["errno_name"] == "ENOENT"
    assert meta["comm"] == "cat" and meta["syscall"] == "openat" and meta["uid"] == 0
    assert (ev["level"], ev["component"]) == ("DEBUG", "KERNEL")    # routine
    assert missing in ev["message"] and "ENOENT" in ev["message"]


def test_failed_open_eacces_as_other_user(probes: tuple[EbpfSource, Collector],
                                          tmp_path: Path) -> None:
    _, sink = probes
    tmp_path.chmod(0o755)
    secret = tmp_path / f"secret-{uuid.uuid4().hex[:8]}"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    proc = subprocess.run(["cat", str(secret)], capture_output=True, user=65534, group=65534)
    assert proc.returncode != 0
    [ev] = sink.wait(event("open_fail", filename=str(secret)))
    assert ev["metadata"]["errno"] == errno.EACCES and ev["metadata"]["uid"] == 65534
    assert ev["pid"] == ev["tid"] and ev["process"] == "cat"
    assert ev["level"] == "WARNING"


def test_sigterm_to_child(probes: tuple[EbpfSource, Collector]) -> None:
    _, sink = probes
    target = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.2)
        sender = subprocess.run(["/bin/sh", "-c", f"kill -TERM {target.pid}; echo $$"],
                                capture_output=True, text=True, check=True)
        assert target.wait(10) == -signal.SIGTERM
    finally:
        target.kill()
    [ev] = sink.wait(lambda e: event("signal", target_pid=target.pid)(e))
    meta = ev["metadata"]
    assert meta["signal"] == signal.SIGTERM and meta["signal_name"] == "SIGTERM"
    assert meta["target_comm"] == "sleep" and meta["result"] == "delivered"
    assert meta["sender_pid"] == int(sender.stdout) and meta["sender_comm"] == "sh"
    assert (ev["level"], ev["component"]) == ("WARNING", "PROCESS_MANAGER")
    [ex] = sink.wait(lambda e: event("exit")(e) and e["pid"] == target.pid)
    assert ex["metadata"]["signal"] == signal.SIGTERM and ex["level"] == "WARNING"
    assert "killed by SIGTERM" in ex["message"]


def _memory_cgroup(name: str, limit: int) -> tuple[Path, str]:
    """A memory-limited cgroup: v2 when its memory controller is there, else v1."""
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            path = root / name
            path.mkdir()
            (path / "memory.max").write_text(str(limit))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")
            return path, "cgroup.procs"
    path = Path("/sys/fs/cgroup/memory") / name
    path.mkdir()
    (path / "memory.limit_in_bytes").write_text(str(limit))
    return path, "cgroup.procs"


def test_oom_kill_in_memory_limited_cgroup(probes: tuple[EbpfSource, Collector]) -> None:
    _, sink = probes
    cg, procs = _memory_cgroup(f"mohlog-oom-{uuid.uuid4().hex[:8]}", 64 << 20)
    hog = ("import os, sys\n"
           f"open('{cg / procs}', 'w').write(str(os.getpid()))\n"
           "chunks = []\n"
           "while True:\n"
           "    chunks.append(bytearray(8 << 20))\n")
    try:
        proc = subprocess.Popen([sys.executable, "-c", hog])
        assert proc.wait(60) == -signal.SIGKILL
        [ev] = sink.wait(event("oom", victim_pid=proc.pid), timeout=10)
    finally:
        cg.rmdir()
    meta = ev["metadata"]
    assert ev["pid"] == meta["victim_pid"] and meta["victim_comm"].startswith("python")
    assert (ev["level"], ev["component"]) == ("CRITICAL", "MEMORY_MANAGER")
    assert 30_000 < meta["anon_rss_kb"] <= 80_000  # the limit is 64 MiB
    assert meta["total_vm_kb"] > meta["anon_rss_kb"]
    assert meta["uid"] == 0 and "OOM kill" in ev["message"]
    [ex] = sink.wait(lambda e: event("exit")(e) and e["pid"] == meta["victim_pid"])
    assert ex["metadata"]["signal"] == signal.SIGKILL


def test_kmsg_message(probes: tuple[EbpfSource, Collector]) -> None:
    _, sink = probes
    text = f"mohlog-test[{os.getpid()}]: hello kernel log {uuid.uuid4().hex}"
    with open("/dev/kmsg", "w") as kmsg:
        kmsg.write(f"<4>{text}\n")
    [ev] = sink.wait(lambda e: event("printk")(e) and e["message"] == text)
    meta = ev["metadata"]
    assert meta["priority"] == 4 and meta["priority_name"] == "warning"
    assert meta["facility"] == "user" and meta["seq"] > 0
    assert (ev["level"], ev["component"]) == ("WARNING", "KERNEL")
    assert ev["process"] == "mohlog-test" and ev["pid"] == os.getpid()


def test_syscall_error_count(probes: tuple[EbpfSource, Collector]) -> None:
    src, sink = probes
    n = 500
    code = ("import os\n"
            f"for _ in range({n}):\n"
            "    try:\n        os.close(987654)\n    except OSError:\n        pass\n")
    proc = subprocess.run([sys.executable, "-c", code], check=True)
    assert proc.returncode == 0
    time.sleep(src.cfg.syscall_errors_interval_s * 2.5)
    pid_of = [e for e in sink.find(event("syscall_errors", syscall="close",
                                         errno=errno.EBADF))]
    ours = [e for e in pid_of if e["metadata"]["comm"].startswith("python")
            and e["metadata"]["count"] >= 1]
    assert ours, "no close/EBADF counts for the child"
    by_pid: dict[int, int] = {}
    for e in ours:
        by_pid[e["pid"]] = by_pid.get(e["pid"], 0) + e["metadata"]["count"]
    assert max(by_pid.values()) >= n
    top = max(ours, key=lambda e: e["metadata"]["count"])
    assert top["metadata"]["errno_name"] == "EBADF" and top["metadata"]["syscall_nr"] == 3
    assert (top["level"], top["component"]) == ("WARNING", "KERNEL")
    assert "syscall close failed" in top["message"]
