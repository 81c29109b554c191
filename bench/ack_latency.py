"""Acknowledged write of one small batch (10 records, NDJSON): p50/p99/max, idle and while a
background client posts 20,000-record batches. Bar: p99 < 5 ms.

Each request is timed twice over: on a new connection per request (urllib: TCP connect and
Python's HTTP client included) and on one kept-alive connection (http.client), as the
agent and the SDK send (aiohttp sessions keep their connections).

    .venv/bin/python bench/ack_latency.py --n 2000
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import time
import urllib.request
from multiprocessing import Event, Process
from pathlib import Path

import orjson
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_corpus import load, ndjson_batches  # noqa: E402
from hub_common import BenchHub, pct, save  # noqa: E402


def post(url: str, token: str, body: bytes, encoding: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": os.urandom(12).hex()}
    if encoding:
        headers["Content-Encoding"] = encoding
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def small_body(i: int) -> bytes:
    return b"\n".join(orjson.dumps({"level": "INFO", "component": "APPLICATION",
                                    "message": f"small batch {i} record {j}"})
                      for j in range(10))


def measure(hub: BenchHub, n: int) -> list[float]:
    """n requests, each on a new connection."""
    url = hub.url + "/api/v1/logs"
    lat = []
    for i in range(n):
        body = small_body(i)
        t0 = time.perf_counter()
        post(url, hub.token, body)
        lat.append((time.perf_counter() - t0) * 1000)
    return lat


def measure_kept(hub: BenchHub, n: int) -> list[float]:
    """n requests on one kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=60)
    lat = []
    try:
        for i in range(n):
            body = small_body(i)
            headers = {"Authorization": f"Bearer {hub.token}",
                       "Idempotency-Key": os.urandom(12).hex()}
            t0 = time.perf_counter()
            conn.request("POST", "/api/v1/logs", body, headers)
            r = conn.getresponse()
            r.read()
            lat.append((time.perf_counter() - t0) * 1000)
            if r.status != 200:
                raise SystemExit(f"hub answered {r.status}")
    finally:
        conn.close()
    return lat


def background(url: str, token: str, stop: Event, bodies: list[bytes]) -> None:
    """A separate process (no GIL shared with the measuring loop) posting big batches."""
    i = 0
    while not stop.is_set():
        post(url + "/api/v1/logs", token, bodies[i % len(bodies)], "zstd")
        i += 1


def row(name: str, lat: list[float]) -> dict:
    r = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat), "n": len(lat)}
    print(f"{name:<34}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}")
    return r


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    hub = BenchHub({"embeddings": False}).start()
    try:
        idle = measure(hub, args.n)
        idle_kept = measure_kept(hub, args.n)
        zc = zstandard.ZstdCompressor(level=1)
        bodies = [zc.compress(b) for b in ndjson_batches(load(200_000).drop_columns(["id"]),
                                                          20_000)]
        stop = Event()
        bg = Process(target=background, args=(hub.url, hub.token, stop, bodies), daemon=True)
        bg.start()
        time.sleep(1)
        loaded = measure(hub, args.n)
        loaded_kept = measure_kept(hub, args.n)
        stop.set()
        bg.join(60)
    finally:
        hub.stop()
    print(f"\nacknowledged (fsync'd) write of one 10-record batch, {args.n} sequential requests")
    print(f"{'':<34}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    res = {"idle": row("idle hub", idle),
           "loaded": row("with 20k-record batches beside", loaded),
           "idle_kept_alive": row("idle hub, kept-alive connection", idle_kept),
           "loaded_kept_alive": row("20k batches beside, kept-alive", loaded_kept)}
    print(f"saved {save('ack_latency', res)}")


if __name__ == "__main__":
    main()
