"""SDK write latency and throughput, side by side with the stdlib ``logging`` module.

Bar: ``log_write`` p99 < 20 µs, calls/s from one thread printed.

mohlog: ``sdk.log_write`` with a real receiver — the agent's ``SdkSocketSource`` in a
separate process on a temporary unix socket — so the background sender really ships
while we measure. Peer (same run, same message): ``logging`` with a ``QueueHandler``
whose ``QueueListener`` writes to a file (the stdlib's non-blocking recipe).

Paced runs write at ``--rate`` calls/s (the sender keeps up: drops shown); max-rate runs
write as fast as one thread can (the buffer may overflow: drops counted, shown). Each call
is timed alone with ``perf_counter_ns`` (p50/p99/p99.9/max); max-rate calls/s come from a
separate untimed loop. Also the filtered path (level below the minimum) of both.

    .venv/bin/python bench/sdk_write.py --duration 10
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mohlog import sdk  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def serve(path: str) -> int:
    """Receiver process: an SdkSocketSource counting entries until SIGTERM."""
    from agent.sources.sdk_socket import SdkSocketConfig, SdkSocketSource

    count = [0]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    source = SdkSocketSource(SdkSocketConfig(path=path))
    source.start(lambda batch: count.__setitem__(0, count[0] + len(batch)))
    print("ready", flush=True)
    done.wait()
    time.sleep(0.3)
    source.stop()
    print(json.dumps({"received": count[0], **source.stats()}), flush=True)
    return 0


def timed(call: Callable[[int], object], duration: float) -> list[int]:
    """Per-call latencies (ns) for ``duration`` seconds."""
    clock = time.perf_counter_ns
    out: list[int] = []
    end = clock() + int(duration * 1e9)
    i = 0
    while True:
        t0 = clock()
        call(i)
        t1 = clock()
        out.append(t1 - t0)
        i += 1
        if t1 > end:
            return out


def paced(call: Callable[[int], object], duration: float, per_s: float) -> list[int]:
    """Per-call latencies at a steady ``per_s`` calls/s (sleeps between bursts of 100)."""
    clock = time.perf_counter_ns
    out: list[int] = []
    start = clock()
    end, step = start + int(duration * 1e9), 1e9 / per_s
    i = 0
    while True:
        for _ in range(100):
            t0 = clock()
            call(i)
            t1 = clock()
            out.append(t1 - t0)
            i += 1
        if t1 > end:
            return out
        ahead = start + i * step - clock()
        if ahead > 0:
            time.sleep(ahead / 1e9)


def rate(call: Callable[[int], object], duration: float) -> float:
    """Calls per second of an untimed loop (checks the clock every 1000 calls)."""
    n, start = 0, time.perf_counter()
    end = start + duration
    while True:
        for i in range(1000):
            call(i)
        n += 1000
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def summary(name: str, lat: list[int], calls_s: float, dropped: int) -> dict[str, object]:
    return {"name": name, "calls": len(lat), "p50_us": pct(lat, 0.50), "p99_us": pct(lat, 0.99),
            "p999_us": pct(lat, 0.999), "max_us": max(lat) / 1000.0, "calls_per_s": calls_s,
            "sdk_dropped": dropped if name.startswith("mohlog") else None}


def stdlib_logger(tmp: Path) -> tuple[logging.Logger, logging.handlers.QueueListener]:
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    file_handler = logging.FileHandler(tmp / "stdlib.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    listener = logging.handlers.QueueListener(q, file_handler)
    listener.start()
    logger = logging.getLogger("bench.stdlib")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers[:] = [logging.handlers.QueueHandler(q)]
    return logger, listener


def run(duration: float, per_s: float) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="mohlog-sdkbench-"))
    path = str(tmp / "sdk.sock")
    receiver = subprocess.Popen([sys.executable, __file__, "--serve", path],
                                stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    client = sdk.configure(sdk.SdkConfig(socket_path=path, hub_url=None))
    sdk.log_set_level("APPLICATION", "INFO")
    logger, listener = stdlib_logger(tmp)

    def mohlog_call(i: int) -> object:
        return sdk.log_write("INFO", "APPLICATION", "request %d served in %s ms", i, "12.5")

    def mohlog_filtered(i: int) -> object:
        return sdk.log_write("DEBUG", "APPLICATION", "request %d served in %s ms", i, "12.5")

    def std_call(i: int) -> None:
        logger.info("request %d served in %s ms", i, "12.5")

    def std_filtered(i: int) -> None:
        logger.debug("request %d served in %s ms", i, "12.5")

    rows = []
    for name, call in ((f"mohlog log_write @{per_s:,.0f}/s", mohlog_call),
                       (f"stdlib Queue @{per_s:,.0f}/s", std_call)):
        before = client.stats()["dropped"]
        lat = paced(call, duration, per_s)
        client.flush(30)
        rows.append(summary(name, lat, len(lat) / duration, client.stats()["dropped"] - before))
    for name, call in (("mohlog log_write max rate", mohlog_call),
                       ("stdlib Queue max rate", std_call),
                       ("mohlog filtered (DEBUG<INFO)", mohlog_filtered),
                       ("stdlib filtered (debug<INFO)", std_filtered)):
        rate(call, min(1.0, duration / 5))  # warm-up
        client.flush(30)
        before = client.stats()["dropped"]
        lat = timed(call, duration)
        calls_s = rate(call, duration / 2)
        client.flush(30)
        rows.append(summary(name, lat, calls_s, client.stats()["dropped"] - before))
    listener.stop()
    client.flush(60)
    stats = client.stats()
    receiver.send_signal(signal.SIGTERM)
    received = json.loads(receiver.communicate(timeout=60)[0].strip().splitlines()[-1])
    return {"duration_s": duration, "paced_rate": per_s, "rows": rows, "sdk_stats": stats,
            "receiver": received, "python": sys.version.split()[0], "cpus": os.cpu_count()}


def print_table(result: dict[str, object]) -> None:
    print(f"{'writer':<30} {'calls':>9} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} "
          f"{'max µs':>9} {'calls/s':>11} {'SDK drops*':>10}")
    for r in result["rows"]:  # type: ignore[attr-defined]
        drops = "" if r["sdk_dropped"] is None else f"{r['sdk_dropped']:,}"
        print(f"{r['name']:<30} {r['calls']:>9} {r['p50_us']:>8.2f} {r['p99_us']:>8.2f} "
              f"{r['p999_us']:>9.2f} {r['max_us']:>9.1f} {r['calls_per_s']:>11,.0f} {drops:>10}")
    print("* drops during that row's timed and untimed loops (buffer full: one thread writes "
          "faster than the sender ships)")
    s, rec = result["sdk_stats"], result["receiver"]  # type: ignore[index]
    print(f"\nSDK: sent {s['sent']:,}  dropped {s['dropped']:,} (buffer full "
          f"{s['dropped_buffer_full']:,})  buffered {s['buffered']}  send failures "
          f"{s['send_failures']}")
    print(f"receiver (SdkSocketSource, separate process): {rec['received']:,} entries, "
          f"invalid {rec.get('invalid_json', 0) + rec.get('invalid_entry', 0)}")
    for row in (result["rows"][0], result["rows"][2]):  # type: ignore[index]
        p99 = row["p99_us"]
        print(f"bar: log_write p99 < 20 µs ({row['name']}) -> {p99:.2f} µs "
              f"{'PASS' if p99 < 20 else 'FAIL'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per timed run")
    parser.add_argument("--rate", type=float, default=50_000, help="calls/s of the paced runs")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    result = run(args.duration, args.rate)
    print_table(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "sdk_write.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
