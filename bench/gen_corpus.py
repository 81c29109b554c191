"""A loghub-like corpus for the hub benches, cached under /var/tmp/mohlog-bench.

Lines come from ../shared/data/loghub/*/*.log (eight systems); every digit run is replaced
by random digits of the same length (numbers, IPs, ids and hex-ish values vary), records
get hosts, levels, components, pids and increasing ns timestamps. Deterministic (seed).

    .venv/bin/python bench/gen_corpus.py -n 2000000      # writes and prints the cache path
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
LOGHUB = ROOT.parent / "shared" / "data" / "loghub"
CACHE = Path("/var/tmp/mohlog-bench")
LEVELS = ["INFO"] * 14 + ["DEBUG"] * 3 + ["WARNING"] * 2 + ["ERROR"]
COMPONENT = {"Android": "APPLICATION", "Apache": "WEB_RUNTIME", "BGL": "KERNEL",
             "HDFS": "IPC_MANAGER", "Linux": "KERNEL", "OpenSSH": "APPLICATION",
             "Spark": "AI_ENGINE", "Zookeeper": "P2P_NETWORK"}
# Whole numbers (not digits inside names like R22-M8-NC, which real logs draw from a small
# set of nodes) and 0x hex values vary; everything else stays as Loghub has it.
_VARY = re.compile(r"0x[0-9a-fA-F]+|(?<![A-Za-z0-9])\d+(?![A-Za-z0-9])")


def source_lines() -> list[tuple[str, str]]:
    if not LOGHUB.exists():
        sys.exit(f"no loghub data at {LOGHUB}")
    out = []
    for d in sorted(p for p in LOGHUB.iterdir() if p.is_dir()):
        for f in sorted(d.glob("*.log")):
            out += [(d.name, ln) for ln in f.read_text(errors="replace").splitlines() if ln]
    return out


def _new(tok: str, rng: random.Random) -> str:
    if tok.startswith("0x"):
        return "0x" + "".join(rng.choice("0123456789abcdef") for _ in tok[2:])
    return str(rng.randrange(10 ** (len(tok) - 1), 10 ** len(tok)))


def vary(line: str, rng: random.Random) -> str:
    return _VARY.sub(lambda m: _new(m.group(), rng), line)


def generate(n: int, seed: int = 7, hosts: int = 50, span_s: int = 3600) -> pa.Table:
    rng = random.Random(seed)
    lines = source_lines()
    pick = np.random.default_rng(seed).integers(0, len(lines), n)
    msgs, comps, procs = [], [], []
    for i in pick:
        system, line = lines[i]
        msgs.append(vary(line, rng))
        comps.append(COMPONENT.get(system, "APPLICATION"))
        procs.append(system.lower())
    nprng = np.random.default_rng(seed + 1)
    t0 = 1_790_000_000_000_000_000
    ts = t0 + np.sort(nprng.integers(0, span_s * 10**9, n))
    return pa.table({
        "id": [f"{seed:04x}{i:016x}" for i in range(n)],
        "timestamp": pa.array(ts, pa.int64()),
        "level": pa.array(nprng.choice(LEVELS, n)),
        "source": pa.array(["bench"] * n),
        "component": pa.array(comps),
        "host": pa.array([f"host{h:03d}" for h in nprng.integers(0, hosts, n)]),
        "pid": pa.array(nprng.integers(100, 40000, n), pa.int64()),
        "tid": pa.array(np.zeros(n, np.int64)),
        "process": pa.array(procs),
        "message": pa.array(msgs),
        "metadata": pa.array(["{}"] * n),
        "context": pa.array(["{}"] * n),
    })


def load(n: int, seed: int = 7) -> pa.Table:
    """The cached corpus of n records (generated on first use)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"corpus2-{n}-{seed}.parquet"
    if not path.exists():
        t0 = time.perf_counter()
        table = generate(n, seed)
        pq.write_table(table, path.with_suffix(".tmp"), compression="zstd")
        path.with_suffix(".tmp").rename(path)
        print(f"generated {n} records in {time.perf_counter() - t0:.1f}s -> {path}",
              file=sys.stderr)
    return pq.read_table(path)


def ndjson_batches(table: pa.Table, size: int) -> list[bytes]:
    """NDJSON bodies of ``size`` records (metadata/context as objects)."""
    out = []
    cols = table.to_pydict()
    n = table.num_rows
    for start in range(0, n, size):
        lines = []
        for i in range(start, min(n, start + size)):
            rec = {k: cols[k][i] for k in cols}
            rec["metadata"] = {}
            rec["context"] = {}
            lines.append(orjson.dumps(rec))
        out.append(b"\n".join(lines) + b"\n")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=2_000_000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    t = load(args.n, args.seed)
    print(f"{t.num_rows} records in {CACHE}")


if __name__ == "__main__":
    main()
