"""Failed-open storm: bar >= 100,000 failed opens/s for 60 s, 0 lost
(attempted = delivered + counted drops, drops 0).

Runs the real hub and the real agent (eBPF on, ``--probes open_fail`` by default), then a
static C generator (bench/c/openstorm.c: WORKERS processes calling openat() on a missing
path, paced to ``--rate``) under a unique comm. Ground truth in the same run: bpftrace
counting ``tracepoint:syscalls:sys_exit_openat`` with ret < 0 for that comm. After the storm
it waits for the agent to drain and counts the hub's records
(``metadata.event=open_fail`` and ``metadata.comm=<name>``).

    .venv/bin/python bench/open_storm.py --duration 60 --rate 100000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_common import (  # noqa: E402
    Agent,
    Bpftrace,
    Hub,
    build_c,
    cpu_seconds,
    drops_by_stage,
    keep_logs,
    log,
    metric_sum,
    run_saved,
    save,
    source_only,
    table,
    unique_name,
    wait_spool_empty,
    wait_stable_count,
    workdir,
)


def storm(args: argparse.Namespace, work: Path, name: str) -> dict[str, object]:
    generator = build_c("openstorm.c", work / name)
    missing = f"/nonexistent-mohlog-bench/{name}/file"
    hub = Hub(work / "hub").start()
    agent = Agent(hub, work / "agent", probes=args.probes).start()
    try:
        time.sleep(2.0)
        before = agent.metrics()
        truth = Bpftrace("tracepoint:syscalls:sys_exit_openat",
                         f'comm == "{name}" && args->ret < 0').start()
        log(f"storm: {args.workers} workers, {args.rate:,.0f} failed opens/s, "
            f"{args.duration:.0f} s")
        assert agent.proc is not None and hub.proc is not None
        pids = (agent.proc.pid, hub.proc.pid)
        cpu0 = (*(cpu_seconds(p) for p in pids), time.monotonic())
        out = subprocess.run([str(generator), missing, str(args.workers), str(args.duration),
                              str(args.rate)], check=True, capture_output=True, text=True).stdout
        cpu1 = (*(cpu_seconds(p) for p in pids), time.monotonic())
        rss_mb = memory_mb(pids[0])
        attempted, seconds = int(out.split()[1]), float(out.split()[5])
        time.sleep(1.0)
        kernel = truth.stop()
        filters = ["metadata.event=open_fail", f"metadata.comm={name}"]
        wait_spool_empty(agent, args.drain_timeout)
        count = wait_stable_count(hub, filters, kernel, 20.0, args.drain_timeout)
        after = agent.metrics()
        hwm_mb = memory_mb(pids[0], "VmHWM")
    finally:
        agent.stop()
        hub.stop()
    drops = (metric_sum(after, "mohlog_agent_dropped_total")
             - metric_sum(before, "mohlog_agent_dropped_total"))
    return {
        "name": name, "workers": args.workers, "target_rate": args.rate, "seconds": seconds,
        "attempted": attempted, "rate_per_s": attempted / seconds, "bpftrace_failed_opens":
        kernel, "delivered": count,
        "agent_drops_during_run": drops, "agent_drops": drops_by_stage(after),
        "agent_open_events": metric_sum(after, "mohlog_agent_events_total", probe="open_fail")
        - metric_sum(before, "mohlog_agent_events_total", probe="open_fail"),
        "unaccounted": attempted - count - drops,
        "agent_cores": (cpu1[0] - cpu0[0]) / (cpu1[2] - cpu0[2]),
        "hub_cores": (cpu1[1] - cpu0[1]) / (cpu1[2] - cpu0[2]),
        "agent_rss_mb_end_of_storm": rss_mb, "agent_peak_rss_mb": hwm_mb,
        "load_avg_after": os.getloadavg(),
    }


def memory_mb(pid: int, key: str = "VmRSS") -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def source_only_run(args: argparse.Namespace, work: Path, name: str) -> dict[str, object]:
    generator = build_c("openstorm.c", work / name)
    truth = Bpftrace("tracepoint:syscalls:sys_exit_openat",
                     f'comm == "{name}" && args->ret < 0').start()
    cmd = [str(generator), f"/nonexistent-mohlog-bench/{name}/file", str(args.workers),
           str(args.duration), str(args.rate)]
    res = source_only("open_fail", name, lambda: subprocess.run(
        cmd, check=True, capture_output=True, text=True).stdout.strip())
    res["bpftrace_failed_opens"] = truth.stop()
    return res


def report(r: dict[str, object]) -> None:
    print(table([
        ("attempted (generator)", r["attempted"]), ("seconds", r["seconds"]),
        ("failed opens/s", r["rate_per_s"]),
        ("bpftrace sys_exit_openat<0", r["bpftrace_failed_opens"]),
        ("agent open_fail events", r["agent_open_events"]),
        ("delivered to hub (count query)", r["delivered"]),
        ("agent drops during run", r["agent_drops_during_run"]),
        ("attempted - delivered - drops", r["unaccounted"]),
        ("agent CPU during the storm, cores", r["agent_cores"]),
        ("hub CPU during the storm, cores", r["hub_cores"]),
        ("agent RSS at the end of the storm, MB", r["agent_rss_mb_end_of_storm"]),
        ("agent peak RSS, MB", r["agent_peak_rss_mb"]),
    ]))
    print(f"  agent drops by stage: {r['agent_drops'] or 'none'}")
    ok = (r["rate_per_s"] >= 100_000 and r["unaccounted"] == 0
          and r["agent_drops_during_run"] == 0)
    print(f"bar: >= 100,000/s, attempted = delivered + drops, drops 0 -> "
          f"{'PASS' if ok else 'FAIL'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of storm")
    parser.add_argument("--rate", type=float, default=100_000, help="opens/s target (0 = max)")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--probes", default="open_fail", help="agent --probes")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--source-only", action="store_true",
                        help="only the eBPF source in this process (no agent, no hub)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = workdir("open-storm")
    if args.source_only:
        return run_saved(lambda: source_only_run(args, work, unique_name("mho")), work,
                         "open_storm_source_only")
    try:
        result = storm(args, work, unique_name("mho"))
    finally:
        keep_logs(work, "open_storm")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    report(result)
    print(f"saved {save('open_storm', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
