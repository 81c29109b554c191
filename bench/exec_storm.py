"""Exec storm: bar >= 10,000 exec/s for 60 s, delivered to the hub = bpftrace's count,
agent drops 0.

Runs the real hub and the real agent (eBPF on, ``--probes exec`` by default), then a C
generator (bench/c/spawner.c: WORKERS processes posix_spawn()ing a tiny static binary with a
unique name, paced to ``--rate``). Ground truth in the same run: bpftrace counting
``tracepoint:sched:sched_process_exec`` for that comm. Optional peer: Debian's
``exitsnoop-bpfcc`` counting the same processes' exits (``--exitsnoop``). After the storm it
waits for the agent to drain and counts the records in the hub
(``metadata.event=exec`` and ``metadata.comm=<name>``). The CPU the agent and the hub used
during the storm (from /proc/PID/stat) is reported in cores.

``--spawner-only`` runs the generator alone (no agent, hub or bpftrace): the machine's
ceiling. ``--method spawn`` uses posix_spawn() instead of vfork()+execve().

    .venv/bin/python bench/exec_storm.py --duration 60 --rate 10000
    .venv/bin/python bench/exec_storm.py --spawner-only --duration 20 --rate 0
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_common import (  # noqa: E402
    Agent,
    Bpftrace,
    Exitsnoop,
    Hub,
    build_c,
    cpu_seconds,
    drops_by_stage,
    hub_ids,
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


def spawner_cmd(args: argparse.Namespace, spawner: Path, target: Path) -> list[str]:
    return [str(spawner), str(target), str(args.workers), str(args.duration), str(args.rate),
            args.method]


def storm(args: argparse.Namespace, work: Path, name: str) -> dict[str, object]:
    target = build_c("exec_target.c", work / name, "-nostdlib")
    spawner = build_c("spawner.c", work / "spawner")
    hub = Hub(work / "hub").start()
    agent = Agent(hub, work / "agent", probes=args.probes).start()
    try:
        time.sleep(2.0)
        before = agent.metrics()
        truth = Bpftrace("tracepoint:sched:sched_process_exec", f'comm == "{name}"').start()
        peer = Exitsnoop(name).start() if args.exitsnoop else None
        log(f"storm: {args.workers} workers, {args.rate:,.0f} exec/s, {args.duration:.0f} s")
        assert agent.proc is not None and hub.proc is not None
        cpu0 = (cpu_seconds(agent.proc.pid), cpu_seconds(hub.proc.pid), time.monotonic())
        out = subprocess.run(spawner_cmd(args, spawner, target), check=True,
                             capture_output=True, text=True).stdout
        cpu1 = (cpu_seconds(agent.proc.pid), cpu_seconds(hub.proc.pid), time.monotonic())
        spawned, seconds = int(out.split()[1]), float(out.split()[5])
        time.sleep(1.0)
        kernel = truth.stop()
        exits = peer.stop() if peer else None
        exits_any = peer.total if peer else None
        filters = ["metadata.event=exec", f"metadata.comm={name}"]
        wait_spool_empty(agent, args.drain_timeout)
        count = wait_stable_count(hub, filters, kernel, 15.0, args.drain_timeout)
        ids = hub_ids(hub, filters)
        after = agent.metrics()
    finally:
        agent.stop()
        hub.stop()
    return {
        "name": name, "workers": args.workers, "method": args.method,
        "target_rate": args.rate, "seconds": seconds,
        "spawned": spawned, "rate_per_s": spawned / seconds, "bpftrace_exec": kernel,
        "exitsnoop_exits": exits, "exitsnoop_all_exits": exits_any,
        "delivered": count, "exported": len(ids), "unique_delivered": len(set(ids)),
        "agent_drops": drops_by_stage(after),
        "agent_drops_during_run": metric_sum(after, "mohlog_agent_dropped_total")
        - metric_sum(before, "mohlog_agent_dropped_total"),
        "agent_exec_events": metric_sum(after, "mohlog_agent_events_total", probe="exec")
        - metric_sum(before, "mohlog_agent_events_total", probe="exec"),
        "agent_shipped": metric_sum(after, "mohlog_agent_shipped_total"),
        "agent_cores": (cpu1[0] - cpu0[0]) / (cpu1[2] - cpu0[2]),
        "hub_cores": (cpu1[1] - cpu0[1]) / (cpu1[2] - cpu0[2]),
    }


def source_only_run(args: argparse.Namespace, work: Path, name: str) -> dict[str, object]:
    target = build_c("exec_target.c", work / name, "-nostdlib")
    spawner = build_c("spawner.c", work / "spawner")
    truth = Bpftrace("tracepoint:sched:sched_process_exec", f'comm == "{name}"').start()
    cmd = spawner_cmd(args, spawner, target)
    res = source_only("exec", name, lambda: subprocess.run(
        cmd, check=True, capture_output=True, text=True).stdout.strip())
    res["bpftrace_exec"] = truth.stop()
    return res


def spawner_only_run(args: argparse.Namespace, work: Path, name: str) -> dict[str, object]:
    """The generator alone: no agent, no hub, no bpftrace."""
    target = build_c("exec_target.c", work / name, "-nostdlib")
    spawner = build_c("spawner.c", work / "spawner")
    out = subprocess.run(spawner_cmd(args, spawner, target), check=True, capture_output=True,
                         text=True).stdout
    spawned, seconds = int(out.split()[1]), float(out.split()[5])
    return {"workers": args.workers, "method": args.method, "target_rate": args.rate,
            "seconds": seconds, "spawned": spawned, "failed": int(out.split()[3]),
            "rate_per_s": spawned / seconds}


def report(r: dict[str, object]) -> None:
    print(table([
        ("spawned (generator)", r["spawned"]), ("seconds", r["seconds"]),
        ("exec/s", r["rate_per_s"]), ("bpftrace sched_process_exec", r["bpftrace_exec"]),
        ("exitsnoop-bpfcc exits", r["exitsnoop_exits"] if r["exitsnoop_exits"] is not None
         else "not run"),
        ("exitsnoop-bpfcc exits, any process", r["exitsnoop_all_exits"]
         if r["exitsnoop_all_exits"] is not None else "not run"),
        ("agent exec events (metrics)", r["agent_exec_events"]),
        ("delivered to hub", r["delivered"]), ("unique ids in hub", r["unique_delivered"]),
        ("agent drops during run", r["agent_drops_during_run"]),
        ("agent CPU during the storm, cores", r["agent_cores"]),
        ("hub CPU during the storm, cores", r["hub_cores"]),
    ]))
    print(f"  agent drops by stage: {r['agent_drops'] or 'none'}")
    ok = (r["rate_per_s"] >= 10_000 and r["delivered"] == r["bpftrace_exec"]
          and r["agent_drops_during_run"] == 0)
    print(f"bar: >= 10,000 exec/s, delivered == bpftrace, drops 0 -> {'PASS' if ok else 'FAIL'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of storm")
    parser.add_argument("--rate", type=float, default=10_500, help="exec/s target (0 = max)")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--probes", default="exec", help="agent --probes (default: exec)")
    parser.add_argument("--exitsnoop", action="store_true", help="run exitsnoop-bpfcc too")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--method", choices=("vfork", "spawn"), default="vfork",
                        help="how the generator starts processes (see bench/c/spawner.c)")
    parser.add_argument("--spawner-only", action="store_true",
                        help="only the generator (no agent, hub, bpftrace): the ceiling")
    parser.add_argument("--source-only", action="store_true",
                        help="only the eBPF source in this process (no agent, no hub)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = workdir("exec-storm")
    if args.spawner_only:
        return run_saved(lambda: spawner_only_run(args, work, unique_name("mhx")), work,
                         "exec_storm_spawner_only")
    if args.source_only:
        return run_saved(lambda: source_only_run(args, work, unique_name("mhx")), work,
                         "exec_storm_source_only")
    try:
        result = storm(args, work, unique_name("mhx"))
    finally:
        keep_logs(work, "exec_storm")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    report(result)
    print(f"saved {save('exec_storm', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
