"""Hub outage: bar — hub stopped for 60 s during a steady 20,000 events/s; after it returns,
0 lost and 0 duplicated (every generated id found exactly once in the hub).

Runs the real hub and the real agent (``--no-ebpf``; source: the agent's SDK socket). A
generator process writes ``--rate`` entries/s through ``mohlog.sdk`` to that socket, each with
a known id (run prefix + sequence number) and ``metadata.bench=<run>``. After ``--before`` s the
hub is stopped (SIGTERM) for ``--outage`` s — the agent spools — then started again on the same
data directory and port; the generator goes on for ``--after`` s. When the agent's spool is
empty, the hub's records of the run are exported and compared id by id.

    .venv/bin/python bench/agent_outage.py --before 20 --outage 60 --after 30 --rate 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_common import (  # noqa: E402
    PYTHON,
    ROOT,
    Agent,
    Hub,
    drops_by_stage,
    hub_ids,
    keep_logs,
    log,
    metric_sum,
    save,
    table,
    wait_spool_empty,
    wait_stable_count,
    workdir,
)

GENERATOR = """
import json, sys, time
from mohlog import sdk
prefix, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
client = sdk.Client(sdk.SdkConfig.from_env())
rejected, seq, start = [], 0, time.monotonic()
total = int(rate * seconds)
while seq < total:
    for _ in range(200):
        ok = client.write_structured({
            "id": f"{prefix}{seq:016x}", "level": "INFO", "component": "APPLICATION",
            "message": f"outage bench event {seq}", "metadata": {"bench": prefix, "seq": seq}})
        if not ok:
            rejected.append(seq)
        seq += 1
    ahead = start + seq / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
elapsed = time.monotonic() - start
client.flush(120)
print(json.dumps({"written": seq, "seconds": elapsed, "rejected": rejected,
                  "sdk": client.stats()}))
"""


def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    prefix = os.urandom(8).hex()
    sock = work / "sdk.sock"
    hub = Hub(work / "hub").start()
    agent = Agent(hub, work / "agent", ebpf=False, config={"sdk_socket": str(sock)}).start()
    try:
        env = {**os.environ, "MOHLOG_SDK_SOCKET": str(sock), "PYTHONPATH": str(ROOT)}
        env.pop("MOHLOG_HUB", None)
        seconds = args.before + args.outage + args.after
        gen = subprocess.Popen([PYTHON, "-c", GENERATOR, prefix, str(args.rate), str(seconds)],
                               env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(args.before)
        log(f"stopping the hub for {args.outage:.0f} s")
        hub.stop()
        down = time.monotonic()
        time.sleep(args.outage)
        spool = agent.metrics()
        hub.start()
        log(f"hub back after {time.monotonic() - down:.1f} s")
        gen_out = json.loads(gen.communicate(timeout=seconds + 300)[0])
        drained = wait_spool_empty(agent, args.drain_timeout)
        expected = gen_out["written"] - len(gen_out["rejected"])
        wait_stable_count(hub, [f"metadata.bench={prefix}"], expected, 20.0,
                          args.drain_timeout)
        ids = hub_ids(hub, [f"metadata.bench={prefix}"])
        metrics = agent.metrics()
    finally:
        agent.stop()
        hub.stop()
    return compare(prefix, gen_out, ids, spool, drained, metrics)


def compare(prefix: str, gen: dict, ids: list[str], spool: dict[str, float],
            drained: dict[str, float], metrics: dict[str, float]) -> dict[str, object]:
    rejected = set(gen["rejected"])
    expected = {f"{prefix}{seq:016x}" for seq in range(gen["written"]) if seq not in rejected}
    counts = Counter(ids)
    found = set(counts)
    return {
        "written": gen["written"], "seconds": gen["seconds"],
        "rate_per_s": gen["written"] / gen["seconds"], "sdk_rejected": len(rejected),
        "sdk_stats": gen["sdk"], "expected": len(expected), "records_in_hub": len(ids),
        "lost": len(expected - found), "duplicated": sum(n - 1 for n in counts.values() if n > 1),
        "unexpected": len(found - expected),
        "spool_batches_at_end_of_outage": metric_sum(spool, "mohlog_agent_spool_batches"),
        "spool_bytes_at_end_of_outage": metric_sum(spool, "mohlog_agent_spool_bytes"),
        "spool_batches_after_drain": metric_sum(drained, "mohlog_agent_spool_batches"),
        "agent_drops": drops_by_stage(metrics),
    }


def report(r: dict[str, object]) -> None:
    print(table([
        ("written (generator)", r["written"]), ("seconds", r["seconds"]),
        ("events/s", r["rate_per_s"]), ("SDK rejected (buffer full)", r["sdk_rejected"]),
        ("spool batches at end of outage", r["spool_batches_at_end_of_outage"]),
        ("spool bytes at end of outage", r["spool_bytes_at_end_of_outage"]),
        ("expected ids", r["expected"]), ("records in hub", r["records_in_hub"]),
        ("lost", r["lost"]), ("duplicated", r["duplicated"]), ("unexpected", r["unexpected"]),
    ]))
    print(f"  agent drops by stage: {r['agent_drops'] or 'none'}")
    ok = r["lost"] == 0 and r["duplicated"] == 0 and r["rate_per_s"] >= 0.98 * 20_000
    print(f"bar: 20,000/s, hub down 60 s, 0 lost, 0 duplicated -> {'PASS' if ok else 'FAIL'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20_000, help="events/s generated")
    parser.add_argument("--before", type=float, default=20.0, help="seconds before the outage")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the hub is down")
    parser.add_argument("--after", type=float, default=30.0, help="seconds after it returns")
    parser.add_argument("--duration", type=float, default=None,
                        help="shortcut: outage = DURATION, before = after = DURATION/3")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.duration is not None:
        args.outage, args.before, args.after = args.duration, args.duration / 3, args.duration / 3
    work = workdir("agent-outage")
    try:
        result = run(args, work)
    finally:
        keep_logs(work, "agent_outage")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(result)
    print(f"saved {save('agent_outage', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
