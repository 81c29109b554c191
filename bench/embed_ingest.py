"""Hub ingest throughput with embeddings on vs off (same corpus, real hub both ways).

    .venv/bin/python bench/embed_ingest.py -n 200000 --duration 30 --rounds 2

Each round starts a fresh hub with ``"embeddings": false`` then one with ``true`` (on the
hub's defaults a hub started into an ingest above ``embeddings_defer_rate`` records/s loads
the model once the burst ends: the run then measures the template bookkeeping only; the
embedding side's status, printed, says whether the model loaded) and drives
NDJSON+zstd bodies for --duration seconds with bench/hub_ingest.drive. Prints the acknowledged
records/s of each run, the median of each side and the ratio on/off (bar: >= 0.95), and
how many templates the embedding side had indexed at the end.

With ``--after-ready`` the embedding side asks for the model (a semantic query) and waits
until it has loaded before the load starts (steady state: the cost of embedding new
templates, not of importing torch and loading the model, which a hub pays once).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import urllib.error
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_corpus import load, ndjson_batches  # noqa: E402
from hub_common import BenchHub, save  # noqa: E402
from hub_ingest import drive  # noqa: E402


def one_run(bodies: list[tuple[bytes, int]], embeddings: bool, args: argparse.Namespace
            ) -> dict:
    hub = BenchHub({"flush_interval_s": 5.0, "embeddings": embeddings}).start()
    try:
        if embeddings and args.after_ready:
            t0 = time.monotonic()
            try:        # a semantic query asks for the model (a fresh hub waits for one)
                hub.get("/api/v1/search/semantic?q=warm+up")
            except urllib.error.HTTPError as err:
                if err.code != 503:
                    raise
            while not hub.get("/api/v1/embeddings").get("model_ready"):
                if time.monotonic() - t0 > 300:
                    raise SystemExit("the model did not load within 300 s")
                time.sleep(1)
        res = asyncio.run(drive(hub, bodies, {"Content-Encoding": "zstd",
                                              "Content-Type": "application/x-ndjson"},
                                args.duration, args.concurrency))
        if embeddings:
            time.sleep(6)  # one flush interval: templates reach the embedding service
            res["embeddings"] = hub.get("/api/v1/embeddings")
        return res
    finally:
        hub.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=200_000)
    p.add_argument("--duration", type=float, default=30)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--after-ready", action="store_true",
                   help="start the load once the model has loaded")
    args = p.parse_args()
    table = load(args.n)
    zc = zstandard.ZstdCompressor(level=1)
    bodies = [(zc.compress(b), b.count(b"\n"))
              for b in ndjson_batches(table.drop_columns(["id"]), args.batch)]
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for side in ("off", "on"):
            res = one_run(bodies, side == "on", args)
            runs[side].append(res)
            extra = f"  embeddings {res['embeddings']}" if "embeddings" in res else ""
            print(f"round {r + 1} embeddings {side:3s}: {res['rate']:,.0f} rec/s "
                  f"({res['acked']:,} acked in {res['elapsed_s']:.1f}s){extra}", flush=True)
    off = statistics.median(x["rate"] for x in runs["off"])
    on = statistics.median(x["rate"] for x in runs["on"])
    print(f"\nhub ingest, {table.num_rows:,} loghub-like records cycled, {args.duration:.0f} s "
          f"per run, {args.rounds} rounds: embeddings off {off:,.0f} rec/s, on {on:,.0f} rec/s, "
          f"ratio on/off {on / off:.3f} (bar >= 0.95)"
          f"{', load started after the model loaded' if args.after_ready else ''}")
    name = "embed_ingest_after_ready" if args.after_ready else "embed_ingest"
    saved = save(name, {"off": runs["off"], "on": runs["on"], "ratio": on / off,
                        "after_ready": args.after_ready})
    print(f"saved {saved}")


if __name__ == "__main__":
    main()
