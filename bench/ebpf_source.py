"""The eBPF source alone (no pipeline, no hub): can the probes and the ring-buffer reader keep
up with a failed-open storm and an exec storm? Ground truth in the same run: bpftrace
counting the same tracepoint for the generator's comm.

The source runs in this process exactly as in the agent (EbpfSource, its reader thread,
decoders building full entry dicts); emit() only counts the generator's entries. Printed
side by side: generator attempts, bpftrace's count, entries delivered by the source,
kernel drops (failed reserves) and misses, decode errors, this process's CPU and RSS.

    .venv/bin/python bench/ebpf_source.py --storm open --rate 100000 --duration 20
    .venv/bin/python bench/ebpf_source.py --storm exec --rate 10500 --duration 20
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from agent_common import Bpftrace, build_c, table, unique_name  # noqa: E402

from agent.sources.ebpf import EbpfConfig, EbpfSource  # noqa: E402

STORMS = {  # probe, tracepoint and predicate for bpftrace, generator
    "open": ("open_fail", "tracepoint:syscalls:sys_exit_openat", "args->ret < 0",
             "openstorm.c"),
    "exec": ("exec", "tracepoint:sched:sched_process_exec", "1", "spawner.c"),
}


def _thread_cpu(src: EbpfSource) -> float:
    """CPU seconds of the source's reader thread (utime + stime of its /proc task)."""
    assert src._thread is not None and src._thread.native_id is not None
    fields = Path(f"/proc/self/task/{src._thread.native_id}/stat").read_text()
    utime, stime = fields.rsplit(")", 1)[1].split()[11:13]
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace) -> dict[str, Any]:
    probe, tp, pred, gen_src = STORMS[args.storm]
    work = Path(tempfile.mkdtemp(prefix="mohlog-ebpf-bench-"))
    name = unique_name("mhb")
    if args.storm == "open":
        gen = build_c(gen_src, work / name)
        cmd = [str(gen), f"/nonexistent-mohlog-bench/{name}", str(args.workers),
               str(args.duration), str(args.rate)]
    else:
        target = build_c("exec_target.c", work / name, "-nostdlib")
        gen = build_c(gen_src, work / "spawner")
        cmd = [str(gen), str(target), str(args.workers), str(args.duration), str(args.rate)]
    src = EbpfSource(EbpfConfig(probes=args.probes.split(",") if args.probes else [probe]))
    src.load()
    count = [0]
    lock = threading.Lock()

    def emit(batch: list[dict[str, Any]]) -> None:
        mine = sum(1 for e in batch if e["process"] == name)
        with lock:
            count[0] += mine

    truth = Bpftrace(tp, f'comm == "{name}" && {pred}').start()
    src.start(emit)
    cpu0, wall0 = _thread_cpu(src), time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    time.sleep(1.0)
    cpu1, wall1 = _thread_cpu(src), time.monotonic()  # the storm and 1 s after it
    kernel = truth.stop()
    deadline = time.monotonic() + 60
    while count[0] + src.stats()["probes"][probe]["kernel_drops"] < kernel and (
            time.monotonic() < deadline):
        time.sleep(0.2)
    stats = src.stats()["probes"][probe]
    src.stop()
    cpu = cpu1 - cpu0
    return {
        "storm": args.storm, "attempted": int(out[1]), "seconds": float(out[5]),
        "rate_per_s": int(out[1]) / float(out[5]), "bpftrace": kernel, "delivered": count[0],
        "kernel_drops": stats["kernel_drops"], "kernel_misses": stats["kernel_misses"],
        "reserve_retries": stats["reserve_retries"],
        "decode_errors": src.stats()["decode_errors"],
        "reader_thread_cpu_cores": cpu / (wall1 - wall0),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storm", choices=sorted(STORMS), default="open")
    parser.add_argument("--rate", type=float, default=100_000, help="per second (0 = max)")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--probes", default="", help="probes to load (default: the storm's)")
    args = parser.parse_args()
    r = run(args)
    print(table([(k, v) for k, v in r.items() if k != "storm"]))
    ok = r["delivered"] == r["bpftrace"] and r["kernel_drops"] == 0
    print(f"{r['storm']} storm: delivered == bpftrace, drops 0 -> {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
