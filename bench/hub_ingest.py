"""Hub ingest over HTTP (acknowledged durable) vs chDB MergeTree on the same records.

    .venv/bin/python bench/hub_ingest.py -n 2000000 --duration 60

Prints: records/s per 5 s window (median) and overall, for NDJSON+zstd bodies and for Arrow
IPC bodies; the time until everything acknowledged is searchable; chDB's ingest rate on the
same records, and the ratios hub/chDB. The timed runs use the hub's default settings
(``--flush-rows N`` to change the records per segment flush).

Compression is measured apart, on one pass over the N unique records into a fresh hub:
NDJSON bytes / stored bytes (segments, pre-aggregates, template state; WAL excluded after
the final flush), chDB's ratio on the same records beside it. (The timed runs replay the
corpus; identical replayed records sort next to each other and would flatter the ratio.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pyarrow as pa
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_common import cpu_seconds  # noqa: E402
from gen_corpus import load, ndjson_batches  # noqa: E402
from hub_common import CHDB_DDL, BenchHub, dir_bytes, save  # noqa: E402


def arrow_bodies(table: pa.Table, size: int) -> list[bytes]:
    out = []
    opts = pa.ipc.IpcWriteOptions(compression="zstd")
    table = table.drop_columns(["id"])
    for start in range(0, table.num_rows, size):
        sink = pa.BufferOutputStream()
        part = table.slice(start, size)
        with pa.ipc.new_stream(sink, part.schema, options=opts) as w:
            w.write_table(part)
        out.append(sink.getvalue().to_pybytes())
    return out


async def drive(hub: BenchHub, bodies: list[tuple[bytes, int]], headers: dict[str, str],
                duration: float, concurrency: int) -> dict:
    acked = 0
    windows: list[tuple[float, int]] = []
    stop_at = time.monotonic() + duration
    auth = {"Authorization": f"Bearer {hub.token}", **headers}

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        nonlocal acked
        i = w
        while time.monotonic() < stop_at:
            body, rows = bodies[i % len(bodies)]
            i += concurrency
            hdrs = {**auth, "Idempotency-Key": os.urandom(12).hex()}
            async with session.post(f"{hub.url}/api/v1/logs", data=body, headers=hdrs) as r:
                res = await r.json()
                if r.status != 200:
                    raise SystemExit(f"hub refused: {r.status} {res}")
            acked += res["accepted"]
            windows.append((time.monotonic(), res["accepted"]))

    t0 = time.monotonic()
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(600)) as s:
        await asyncio.gather(*(worker(w, s) for w in range(concurrency)))
    elapsed = time.monotonic() - t0
    per5 = {}
    for t, n in windows:
        per5[int((t - t0) // 5)] = per5.get(int((t - t0) // 5), 0) + n
    full = [v / 5 for k, v in per5.items() if (k + 1) * 5 <= elapsed]
    return {"acked": acked, "elapsed_s": elapsed, "rate": acked / elapsed,
            "rate_median_5s": statistics.median(full) if full else acked / elapsed,
            "rates_5s": [round(v) for v in full]}


def searchable_after(hub: BenchHub, expect: int, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if hub.get("/api/v1/stats")["records"] >= expect:
            got = hub.post("/api/v1/query", {"type": "aggregation"})["rows"][0]["count"]
            if got >= expect:
                return time.monotonic() - t0
        time.sleep(0.2)
    return float("inf")


def entropy_floor(table: pa.Table, span_s: int = 3600) -> dict:
    """A lower bound on the bytes per record any lossless store needs for this corpus: the
    randomness gen_corpus injected (uniform random digits in messages, pids in
    [100, 40000), one of 50 hosts, one of the levels, n sorted uniform timestamps over the
    span), ignoring the choice of line. NDJSON bytes per record / this = the best ratio
    possible."""
    import math

    import numpy as np
    import pyarrow.compute as pc
    from gen_corpus import LEVELS
    msgs = table["message"].slice(0, 200_000)
    digits = pc.utf8_length(pc.replace_substring_regex(msgs, "[^0-9]", "")).to_numpy()
    n = table.num_rows
    p = np.unique(LEVELS, return_counts=True)[1] / len(LEVELS)
    bits = (float(np.mean(digits)) * math.log2(10) + math.log2(39_900) + math.log2(50)
            - float(np.sum(p * np.log2(p))) + math.log2(span_s * 1e9 * math.e / n))
    return {"bytes_per_record": bits / 8}


def one_pass_ratio(bodies: list[tuple[bytes, int]], ndjson_bytes: int) -> dict:
    """Every record once into a fresh hub; NDJSON bytes / bytes on disk (WAL excluded)."""
    hub = BenchHub({"flush_rows": 1_000_000, "flush_interval_s": 1.0,
                    "embeddings": False}).start()
    try:
        sent = asyncio.run(post_once(hub, bodies))
        st = hub.get("/api/v1/stats")
        t0 = time.monotonic()
        while (st["records_in_memory"] or st["records"] < sent) and \
                time.monotonic() - t0 < 300:
            time.sleep(1)
            st = hub.get("/api/v1/stats")
        disk = dir_bytes(hub.data, exclude=("wal",))
        return {"records": sent, "raw_bytes": ndjson_bytes, "stored_bytes": disk,
                "segments_bytes": st["stored_bytes"], "ratio": ndjson_bytes / disk}
    finally:
        hub.stop()


async def post_once(hub: BenchHub, bodies: list[tuple[bytes, int]], key: str = "once") -> int:
    """Every Arrow body once, in order (Idempotency-Key ``key-i``); records acknowledged."""
    auth = {"Authorization": f"Bearer {hub.token}",
            "Content-Type": "application/vnd.apache.arrow.stream"}
    total = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(600)) as s:
        for i, (body, _) in enumerate(bodies):
            async with s.post(f"{hub.url}/api/v1/logs", data=body,
                              headers={**auth, "Idempotency-Key": f"{key}-{i}"}) as r:
                total += (await r.json())["accepted"]
    return total


def chdb_run(table: pa.Table, ndjson_bytes: int) -> dict:
    from chdb import session
    d = tempfile.mkdtemp(prefix="chdb-bench-")
    s = session.Session(d)
    s.query(CHDB_DDL)
    t0, cpu0 = time.perf_counter(), cpu_seconds(os.getpid())
    for start in range(0, table.num_rows, 100_000):
        part = table.slice(start, 100_000)  # noqa: F841 - read by chDB's Python()
        s.query("INSERT INTO b.logs SELECT * FROM Python(part)")
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(os.getpid()) - cpu0
    s.query("OPTIMIZE TABLE b.logs FINAL")
    size = int(str(s.query("SELECT sum(bytes_on_disk) FROM system.parts WHERE "
                           "database='b' AND table='logs' AND active", "CSV")).strip())
    return {"rate": table.num_rows / elapsed, "bytes": size, "ratio": ndjson_bytes / size,
            "cpu_us_per_record": cpu / table.num_rows * 1e6,
            "dir": d, "session": s}


def run_format(name: str, bodies: list[tuple[bytes, int]], headers: dict[str, str],
               args: argparse.Namespace, per_record: float) -> dict:
    settings: dict = {"embeddings": False}      # the hub's defaults otherwise
    if args.flush_rows:
        settings["flush_rows"] = args.flush_rows
    hub = BenchHub(settings).start()
    try:
        assert hub.proc is not None
        cpu0 = cpu_seconds(hub.proc.pid)
        res = asyncio.run(drive(hub, bodies, headers, args.duration, args.concurrency))
        res["cpu_us_per_record"] = (cpu_seconds(hub.proc.pid) - cpu0) / res["acked"] * 1e6
        res["searchable_after_s"] = searchable_after(hub, res["acked"])
        return res
    except Exception:
        log = (hub.workdir / "hub.log").read_text(errors="replace") if hub.workdir else ""
        print(f"hub failed during the {name} run; its log ends with:\n{log[-4000:]}",
              file=sys.stderr)
        raise
    finally:
        hub.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=2_000_000)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--batch", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--formats", default="ndjson,arrow")
    p.add_argument("--flush-rows", type=int, default=0,
                   help="hub flush_rows for the timed runs (default: the hub's, 500000)")
    args = p.parse_args()
    table = load(args.n)
    print(f"corpus: {table.num_rows} records", file=sys.stderr)
    nd = ndjson_batches(table.drop_columns(["id"]), args.batch)
    ndjson_bytes = sum(len(b) for b in ndjson_batches(table, args.batch))
    zc = zstandard.ZstdCompressor(level=1)
    results: dict = {"records": table.num_rows, "ndjson_bytes": ndjson_bytes,
                     "batch": args.batch, "duration_s": args.duration,
                     "flush_rows": args.flush_rows or "hub default"}
    if "ndjson" in args.formats:
        bodies = [(zc.compress(b), b.count(b"\n")) for b in nd]
        results["hub_ndjson"] = run_format("ndjson", bodies, {
            "Content-Encoding": "zstd", "Content-Type": "application/x-ndjson"}, args,
            ndjson_bytes / table.num_rows)
    if "arrow" in args.formats:
        bodies = [(b, args.batch) for b in arrow_bodies(table, args.batch)]
        results["hub_arrow"] = run_format("arrow", bodies, {
            "Content-Type": "application/vnd.apache.arrow.stream"}, args,
            ndjson_bytes / table.num_rows)
    results["stored"] = one_pass_ratio([(b, args.batch) for b in
                                        arrow_bodies(table, 100_000)], ndjson_bytes)
    floor = entropy_floor(table)["bytes_per_record"]
    results["stored"]["entropy_floor_bytes_per_record"] = floor
    results["stored"]["best_possible_ratio"] = ndjson_bytes / table.num_rows / floor
    ch = chdb_run(table, ndjson_bytes)
    results["chdb"] = {k: v for k, v in ch.items()
                       if k in ("rate", "bytes", "ratio", "cpu_us_per_record")}
    print_table(results)
    print(f"saved {save('hub_ingest', results)}")


def print_table(r: dict) -> None:
    ch = r["chdb"]
    print(f"\nhub ingest, {r['records']:,} loghub-like records ({r['ndjson_bytes'] / 1e6:.1f} MB "
          f"NDJSON), {r['duration_s']:.0f} s, batches of {r['batch']}, flush_rows "
          f"{r.get('flush_rows', 1_000_000)}")
    print(f"{'engine':<22}{'rec/s (median 5s)':>20}{'rec/s overall':>16}{'searchable':>12}")
    for key in ("hub_ndjson", "hub_arrow"):
        if key in r:
            h = r[key]
            print(f"{key:<22}{h['rate_median_5s']:>20,.0f}{h['rate']:>16,.0f}"
                  f"{h['searchable_after_s']:>11.2f}s")
    print(f"{'chDB MergeTree':<22}{ch['rate']:>20,.0f}{ch['rate']:>16,.0f}{'-':>12}")
    for key in ("hub_ndjson", "hub_arrow"):
        if key in r:
            print(f"{key}/chDB: rate x{r[key]['rate_median_5s'] / ch['rate']:.2f}")
    # Acks run ahead of segment writing at first (up to the hub's max_tail_rows); the
    # windows after the first 20 s show the rate the hub holds.
    for key in ("hub_ndjson", "hub_arrow"):
        w = r.get(key, {}).get("rates_5s", [])
        if len(w) > 4:
            print(f"{key} 5 s windows: {', '.join(f'{v / 1000:.0f}k' for v in w)}; "
                  f"median after the first 20 s {statistics.median(w[4:]):,.0f}")
    # CPU per record is steadier than a rate on a shared machine: the hub's process
    # (all its threads) while the load ran, chDB's while it inserted
    cpu = [f"{key} {r[key]['cpu_us_per_record']:.2f}" for key in ("hub_ndjson", "hub_arrow")
           if key in r and "cpu_us_per_record" in r[key]]
    if cpu and "cpu_us_per_record" in ch:
        print(f"CPU per record (us): {', '.join(cpu)}; chDB {ch['cpu_us_per_record']:.2f}")
    st = r["stored"]
    print(f"\nstored, one pass over {st['records']:,} unique records: hub "
          f"{st['stored_bytes'] / 1e6:.1f} MB, ratio {st['ratio']:.1f}:1; chDB "
          f"{ch['bytes'] / 1e6:.1f} MB, ratio {ch['ratio']:.1f}:1; hub/chDB "
          f"x{st['ratio'] / ch['ratio']:.2f}")
    print(f"entropy floor of this corpus {st['entropy_floor_bytes_per_record']:.1f} B/record "
          f"-> no lossless store beats {st['best_possible_ratio']:.1f}:1 on it; hub "
          f"{st['stored_bytes'] / st['records']:.1f} B/record")


if __name__ == "__main__":
    main()
