"""Query latency on a hub holding N loghub-like records vs chDB on the same records.

    .venv/bin/python bench/hub_query.py -n 10000000 --runs 30

Queries: (a) last 100 of one host in 5 minutes, (b) count by level per minute over
everything, (c) a rare word, (d) a phrase, (e) a regex. Each over HTTP on the hub
(p50/p99 of --runs), and the equivalent SQL on chDB MergeTree ORDER BY (host, timestamp).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_corpus import load  # noqa: E402
from hub_common import CHDB_DDL, BenchHub, pct, save  # noqa: E402
from hub_ingest import arrow_bodies, post_once  # noqa: E402


def rare_word(table: pa.Table) -> str:
    """A token present in 1-10 records."""
    msgs = table["message"].slice(0, 200_000).combine_chunks()
    words = pc.list_flatten(pc.split_pattern(msgs, " "))
    counts = pc.value_counts(words).to_pylist()
    rare = [c["values"] for c in counts if c["counts"] == 1 and len(c["values"]) >= 8
            and any(ch.isdigit() for ch in c["values"]) and c["values"].isalnum()]
    for w in rare[:50]:
        n = pc.sum(pc.match_substring(table["message"], w)).as_py()
        if 1 <= n <= 10:
            return w
    return rare[0]


def hub_queries(table: pa.Table, word: str) -> dict[str, tuple[str, object]]:
    host = table["host"][0].as_py()
    end = pc.max(table["timestamp"]).as_py() + 1
    return {
        "last 100 of one host in 5 min": ("GET", {"host": host, "start": end - 300 * 10**9,
                                                  "end": end, "limit": 100}),
        "count by level per minute": ("POST", {"type": "time_series", "interval": "1m",
                                               "group_by": ["level"]}),
        "rare word": ("GET", {"q": word, "limit": 100}),
        "phrase": ("GET", {"q": '"Received block"', "limit": 100}),
        "regex": ("GET", {"q": "/Accepted password for \\w+ from/", "limit": 100}),
    }


def chdb_queries(table: pa.Table, word: str) -> dict[str, str]:
    host = table["host"][0].as_py()
    end = pc.max(table["timestamp"]).as_py() + 1
    return {
        "last 100 of one host in 5 min":
            f"SELECT * FROM b.logs WHERE host='{host}' AND timestamp >= {end - 300 * 10**9} "
            f"AND timestamp < {end} ORDER BY timestamp DESC LIMIT 100",
        "count by level per minute":
            "SELECT intDiv(timestamp, 60000000000) AS m, level, count() FROM b.logs "
            "GROUP BY m, level ORDER BY m",
        "rare word": f"SELECT * FROM b.logs WHERE positionCaseInsensitive(message, '{word}') > 0"
                     " ORDER BY timestamp DESC LIMIT 100",
        "phrase": "SELECT * FROM b.logs WHERE positionCaseInsensitive(message, "
                  "'Received block') > 0 ORDER BY timestamp DESC LIMIT 100",
        "regex": "SELECT * FROM b.logs WHERE match(message, '(?i)Accepted password for \\\\w+ "
                 "from') ORDER BY timestamp DESC LIMIT 100",
    }


def time_hub(hub: BenchHub, method: str, params: object, runs: int) -> list[float]:
    lat: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        if method == "GET":
            hub.get("/api/v1/logs?" + urllib.parse.urlencode(params))  # type: ignore[arg-type]
        else:
            hub.post("/api/v1/query", params)
        lat.append((time.perf_counter() - t0) * 1000)
        if lat[-1] > 10_000 and len(lat) >= 3:
            break
    return lat


def load_hub(table: pa.Table) -> BenchHub:
    hub = BenchHub({"flush_rows": 1_000_000, "flush_interval_s": 2.0,
                    "embeddings": False}).start()
    bodies = [(b, 100_000) for b in arrow_bodies(table, 100_000)]
    sent = asyncio.run(post_once(hub, bodies, "q"))
    while hub.get("/api/v1/stats")["records_in_memory"]:
        time.sleep(1)
    # ingest leaves the parameter filters of word indexes to the background (CPU to
    # spare): the queries are measured on the store as it stays
    t0 = time.monotonic()
    while hub.get("/api/v1/stats").get("segments_indexing") and time.monotonic() - t0 < 600:
        time.sleep(1)
    print(f"hub loaded {sent} records; parameter filters added in "
          f"{time.monotonic() - t0:.0f} s more", file=sys.stderr)
    return hub


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=10_000_000)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--skip-chdb", action="store_true")
    args = p.parse_args()
    table = load(args.n)
    word = rare_word(table)
    print(f"{table.num_rows:,} records; rare word {word!r}", file=sys.stderr)
    hub = load_hub(table)
    res: dict = {"records": table.num_rows, "rare_word": word, "hub": {}, "chdb": {}}
    try:
        for name, (method, params) in hub_queries(table, word).items():
            lat = time_hub(hub, method, params, args.runs)
            res["hub"][name] = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "n": len(lat),
                                "ms": [round(x, 1) for x in lat]}
    finally:
        hub.stop()
    if not args.skip_chdb:
        res["chdb"] = run_chdb(table, word, args.runs)
    print_table(res)
    print(f"saved {save('hub_query', res)}")


def run_chdb(table: pa.Table, word: str, runs: int) -> dict:
    from chdb import session
    s = session.Session(tempfile.mkdtemp(prefix="chdb-q-"))
    s.query(CHDB_DDL)
    for start in range(0, table.num_rows, 500_000):
        part = table.slice(start, 500_000)  # noqa: F841 - read by chDB's Python()
        s.query("INSERT INTO b.logs SELECT * FROM Python(part)")
    s.query("OPTIMIZE TABLE b.logs FINAL")
    out = {}
    for name, sql in chdb_queries(table, word).items():
        lat = []
        for _ in range(runs):
            t0 = time.perf_counter()
            s.query(sql, "Arrow")
            lat.append((time.perf_counter() - t0) * 1000)
        out[name] = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "n": len(lat),
                     "ms": [round(x, 1) for x in lat]}
    return out


def print_table(res: dict) -> None:
    print(f"\nqueries on {res['records']:,} records (ms)")
    print(f"{'query':<32}{'hub p50':>10}{'hub p99':>10}{'chDB p50':>10}{'chDB p99':>10}"
          f"{'p50 ratio':>11}")
    for name, h in res["hub"].items():
        c = res["chdb"].get(name, {})
        ratio = h["p50_ms"] / c["p50_ms"] if c else float("nan")
        print(f"{name:<32}{h['p50_ms']:>10.1f}{h['p99_ms']:>10.1f}"
              f"{c.get('p50_ms', float('nan')):>10.1f}{c.get('p99_ms', float('nan')):>10.1f}"
              f"{ratio:>10.1f}x")


if __name__ == "__main__":
    main()
