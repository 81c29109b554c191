"""Acknowledgment latency of small batches while N live tails are open.

No bar: this shows what open tails (``GET /api/v1/tail``, one per dashboard or
``mohlog tail``) cost a sender. For each N in ``--tails`` a fresh hub gets N tails on one
query, then ``--batches`` batches of 20 records, one at a time; it prints the p50/p99
acknowledgment latency and checks every tail got every record.

    .venv/bin/python bench/tail_fanout.py --tails 0 10 300 --batches 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_common import BenchHub, pct, save  # noqa: E402


async def run(hub: BenchHub, tails: int, batches: int) -> dict:
    auth = {"Authorization": f"Bearer {hub.token}"}
    got = [0] * tails
    opened = 0

    async def tail(s: aiohttp.ClientSession, i: int) -> None:
        nonlocal opened
        async with s.get(f"{hub.url}/api/v1/tail?q=fanout", headers=auth) as r:
            opened += 1
            async for line in r.content:
                if line.startswith(b"data: "):
                    got[i] += 1

    lat = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        tasks = [asyncio.create_task(tail(s, i)) for i in range(tails)]
        while opened < tails:
            await asyncio.sleep(0.05)
        for k in range(batches):
            body = b"\n".join(orjson.dumps({
                "timestamp": time.time_ns(), "level": "INFO", "component": "APPLICATION",
                "message": f"fanout batch {k} record {j}"}) for j in range(20))
            t0 = time.perf_counter()
            async with s.post(f"{hub.url}/api/v1/logs", data=body,
                              headers={**auth, "Idempotency-Key": os.urandom(8).hex()}) as r:
                assert r.status == 200, await r.text()
            lat.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 60
        while tails and min(got) < 20 * batches and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for t in tasks:
            t.cancel()
    return {"tails": tails, "ack_p50_ms": pct(lat, 50), "ack_p99_ms": pct(lat, 99),
            "records_per_tail_min": min(got) if got else None, "records_sent": 20 * batches}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tails", type=int, nargs="+", default=[0, 10, 300])
    p.add_argument("--batches", type=int, default=200)
    a = p.parse_args()
    results = []
    for n in a.tails:
        hub = BenchHub({"embeddings": False}).start()
        try:
            r = asyncio.run(run(hub, n, a.batches))
        finally:
            hub.stop()
        results.append(r)
        print(f"{n:4d} tails: ack p50 {r['ack_p50_ms']:.2f} ms, p99 {r['ack_p99_ms']:.2f} ms; "
              f"each tail got {r['records_per_tail_min']} of {r['records_sent']} records")
    save("tail_fanout", {"runs": results})


if __name__ == "__main__":
    main()
