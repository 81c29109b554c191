"""Template miner throughput in-process, drain3 on the same lines in the same run.

Three workloads:

* **known**: Loghub 2k messages of the eight local systems, resampled to ``--lines``
  lines with every digit run replaced by random digits (new parameter values, known
  shapes). The miner learns them once; the timed pass mines them again (templates
  known). drain3 (defaults) is timed on the same lines after the same first pass, with
  ``add_log_message`` (what an online miner does) and with ``match`` (inference only).
* **learning**: synthesised messages of ``--templates`` distinct new templates (random
  words, numbers, ids), each seen 4 times, shuffled, mined from an empty state in batches
  of 10,000 lines — a quarter of the lines bring a template never seen before; then the
  worst case, each template seen once (every line brings a new template).

* **hub** (``--hub``): the messages of the hub benchmark corpus (bench/gen_corpus.py, full
  Loghub lines with headers; cached under /var/tmp/mohlog-bench): 1M lines learnt, mined
  again, then the next 1M lines and those again, one ``mine_arrow`` call each (what the
  hub's flush does); median of ``--runs`` runs, each from an empty state.

drain3 is slow on these lines, so it runs on the first ``--peer-known`` /
``--peer-learning`` lines of the same corpora (a prefix: fewer templates, which favours it).

Each figure is the median of ``--runs`` runs; all of them are also written as JSON to
``--out`` (default bench/results/miner_throughput.json). Usage:
  .venv/bin/python bench/miner_throughput.py [--lines 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embeddings.miner import TemplateMiner  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "loghub"


def known_corpus(n: int, seed: int = 1) -> list[str]:
    base: list[str] = []
    for path in sorted(DATA.glob("*/*_2k.log_structured.csv")):
        with open(path, encoding="utf-8", newline="") as f:
            base += [r["Content"] for r in csv.DictReader(f)]
    rnd = random.Random(seed)
    digits = re.compile(r"\d+")

    def vary(m: re.Match[str]) -> str:
        return str(rnd.randrange(10 ** len(m.group(0)))).zfill(len(m.group(0)))

    return [digits.sub(vary, rnd.choice(base)) for _ in range(n)]


def learning_corpus(templates: int, seed: int = 2, repeats: int = 4) -> list[str]:
    rnd = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rnd.choice(letters) for _ in range(rnd.randint(3, 10))) for _ in range(5000)]
    fields = ["{n}", "{ip}", "{hex}", "{path}", "{ms}ms"]
    shapes = []
    for _ in range(templates):
        toks = [rnd.choice(vocab) for _ in range(rnd.randint(4, 14))]
        for _ in range(rnd.randint(1, 3)):
            toks.insert(rnd.randrange(len(toks) + 1), rnd.choice(fields))
        shapes.append(" ".join(toks))
    lines = []
    for shape in shapes * repeats:
        lines.append(
            shape.format(
                n=rnd.randrange(10**6),
                ip=f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}",
                hex=f"{rnd.getrandbits(48):012x}",
                path=f"/var/data/{rnd.randrange(1000)}/f{rnd.randrange(99)}.log",
                ms=rnd.randrange(5000),
            )
        )
    rnd.shuffle(lines)
    return lines


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_rate(n: int, runs: int, fn: Callable[[], object]) -> float:
    return n / statistics.median(timed(fn) for _ in range(runs))


def one_thread(fn: Callable[[], float]) -> float:
    """Run with the miner's chunk threads off (every batch mined in one chunk)."""
    from embeddings import miner as miner_mod

    saved = miner_mod.PARALLEL_MIN_LINES
    miner_mod.PARALLEL_MIN_LINES = 1 << 62
    try:
        return fn()
    finally:
        miner_mod.PARALLEL_MIN_LINES = saved


def bench_known(lines: list[str], runs: int, batch: int, peer: int) -> dict[str, float]:
    arr = pa.array(lines, type=pa.string())
    miner = TemplateMiner(None)
    miner.mine_arrow(arr)  # learn
    batches = [arr.slice(i, batch) for i in range(0, len(arr), batch)]
    out = {
        "ours mine_arrow, one call": median_rate(len(arr), runs, lambda: miner.mine_arrow(arr)),
        "ours mine_arrow, one call, one thread": one_thread(
            lambda: median_rate(len(arr), runs, lambda: miner.mine_arrow(arr))
        ),
        f"ours mine_arrow, batches of {batch}": median_rate(
            len(arr), runs, lambda: [miner.mine_arrow(b) for b in batches]
        ),
    }
    mined = miner.mine_arrow(arr)
    out["ours render_many (read path), one call"] = median_rate(
        len(arr), runs, lambda: miner.render_many(mined.template_ids, mined.params)
    )
    sub = lines[: min(len(lines), peer)]
    out[f"ours mine (list in/out, {len(sub)} lines)"] = median_rate(
        len(sub), runs, lambda: miner.mine(sub)
    )
    from drain3 import TemplateMiner as Drain3

    d3 = Drain3()
    for line in sub:  # learn first, as ours did
        d3.add_log_message(line)
    out[f"drain3 add_log_message ({len(sub)} lines)"] = median_rate(
        len(sub), runs, lambda: [d3.add_log_message(x) for x in sub]
    )
    out[f"drain3 match ({len(sub)} lines)"] = median_rate(
        len(sub), runs, lambda: [d3.match(x) for x in sub]
    )
    return out


def bench_learning(lines: list[str], runs: int, batch: int, peer: int) -> dict[str, float]:
    arr = pa.array(lines, type=pa.string())

    def ours() -> None:
        miner = TemplateMiner(None)
        for i in range(0, len(arr), batch):
            miner.mine_arrow(arr.slice(i, batch))

    def drain3() -> None:
        from drain3 import TemplateMiner as Drain3

        d3 = Drain3()
        for line in lines[:peer]:
            d3.add_log_message(line)

    return {
        f"ours mine_arrow, batches of {batch}": median_rate(len(lines), runs, ours),
        f"drain3 add_log_message (first {min(peer, len(lines))} lines)": median_rate(
            min(peer, len(lines)), runs, drain3
        ),
    }


def bench_hub(runs: int, n: int = 1_000_000) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "bench"))
    from gen_corpus import load

    msgs = load(2 * n)["message"]
    a, b = msgs.slice(0, n).combine_chunks(), msgs.slice(n, n).combine_chunks()
    steps = {f"learn {n} lines": a, "same lines again": a, f"next {n} lines": b,
             "next lines again": b}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(runs):
        miner = TemplateMiner(None)
        for name, arr in steps.items():
            times[name].append(timed(lambda m=miner, x=arr: m.mine_arrow(x)))
    return {f"ours mine_arrow, {k}": n / statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000, help="known-template lines")
    ap.add_argument("--templates", type=int, default=50_000, help="new templates to learn")
    ap.add_argument("--batch", type=int, default=100_000, help="lines per mine call")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hub", action="store_true", help="also the hub corpus workload")
    ap.add_argument("--peer-known", type=int, default=100_000, help="drain3 known lines")
    ap.add_argument("--peer-learning", type=int, default=10_000, help="drain3 learning lines")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "miner_throughput.json",
        help="where to write the figures as JSON",
    )
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)  # drain3 warns about its missing ini file
    result: dict[str, object] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "unit": "lines/s, median of runs",
    }
    if args.hub:
        print(f"hub corpus: lines of bench/gen_corpus.py (median of {args.runs} runs)")
        rates = bench_hub(args.runs)
        result["hub"] = rates
        for name, rate in rates.items():
            print(f"  {name:<45} {rate:>12,.0f} lines/s")
    known = known_corpus(args.lines)
    print(f"known templates: {len(known)} lines (median of {args.runs} runs)")
    rates = bench_known(known, args.runs, args.batch, args.peer_known)
    result["known"] = rates
    for name, rate in rates.items():
        print(f"  {name:<45} {rate:>12,.0f} lines/s")
    for repeats in (4, 1):
        learn = learning_corpus(args.templates, repeats=repeats)
        print(
            f"learning: {len(learn)} lines, {args.templates} new templates x{repeats}, shuffled"
            f" ({100 // repeats}% of the lines bring a new template)"
        )
        rates = bench_learning(learn, args.runs, min(args.batch, 10_000), args.peer_learning)
        result[f"learning, {100 // repeats}% new"] = rates
        for name, rate in rates.items():
            print(f"  {name:<45} {rate:>12,.0f} lines/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
