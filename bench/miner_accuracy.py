"""Grouping accuracy (Loghub "GA") of the template miner, drain3 (defaults) beside it.

A line is correct when the set of lines sharing its predicted template equals the set
sharing its true EventId; accuracy = correct lines / all lines, per system. Our miner
is scored on the template each line resolves to at the end of the run (``resolve``:
lines stored under a template that later widened are found under the wider one); the
accuracy of the id returned at mining time is printed too.

The figures are also written as JSON to ``--out`` (default
bench/results/miner_accuracy.json).

Usage: .venv/bin/python bench/miner_accuracy.py [--data DIR] [--no-drain3]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embeddings.miner import TemplateMiner  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "loghub"


def load_system(folder: Path) -> tuple[list[str], list[str]]:
    """(messages, true event ids) of one Loghub 2k system."""
    name = folder.name
    with open(folder / f"{name}_2k.log_structured.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["Content"] for r in rows], [r["EventId"] for r in rows]


def systems(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if (p / f"{p.name}_2k.log_structured.csv").exists())


def grouping_accuracy(predicted: Sequence[Hashable], truth: Sequence[Hashable]) -> float:
    """Share of lines whose predicted group is exactly their true group."""
    true_size = Counter(truth)
    groups: dict[Hashable, list[Hashable]] = defaultdict(list)
    for p, t in zip(predicted, truth, strict=True):
        groups[p].append(t)
    correct = 0
    for members in groups.values():
        kinds = set(members)
        if len(kinds) == 1 and true_size[members[0]] == len(members):
            correct += len(members)
    return correct / len(truth)


def mine_ours(messages: list[str]) -> tuple[list[int], list[int]]:
    """(ids at mining time, ids resolved at the end) — one line per call, online."""
    miner = TemplateMiner(None)
    at_time = [int(miner.mine([m]).template_ids[0]) for m in messages]
    return at_time, [miner.resolve(t) for t in at_time]


def mine_drain3(messages: list[str]) -> list[int]:
    from drain3 import TemplateMiner as Drain3

    d = Drain3()
    return [d.add_log_message(m)["cluster_id"] for m in messages]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--no-drain3", action="store_true")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "miner_accuracy.json",
        help="where to write the figures as JSON",
    )
    args = ap.parse_args(argv)
    rows = []
    print(f"{'system':<11} {'ours':>7} {'at-time':>8} {'drain3':>7} {'tmpl':>5} {'true':>5}")
    for folder in systems(args.data):
        messages, truth = load_system(folder)
        t0 = time.perf_counter()
        at_time, final = mine_ours(messages)
        took = time.perf_counter() - t0
        ours, ours_t = grouping_accuracy(final, truth), grouping_accuracy(at_time, truth)
        d3 = float("nan") if args.no_drain3 else grouping_accuracy(mine_drain3(messages), truth)
        rows.append((folder.name, ours, ours_t, d3, len(set(final)), len(set(truth)), took))
        print(
            f"{folder.name:<11} {ours:7.3f} {ours_t:8.3f} {d3:7.3f} {len(set(final)):5d} "
            f"{len(set(truth)):5d}   ({took * 1000:.0f} ms)"
        )
    summary = {}
    for label, fn in (("average", statistics.mean), ("minimum", min)):
        summary[label] = {
            "ours": fn(r[1] for r in rows),
            "ours_at_time": fn(r[2] for r in rows),
            "drain3": fn(r[3] for r in rows),
        }
        print(
            f"{label:<11} {summary[label]['ours']:7.3f} {summary[label]['ours_at_time']:8.3f} "
            f"{summary[label]['drain3']:7.3f}"
        )

    def num(x: float) -> float | None:
        return None if math.isnan(x) else x

    result = {
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metric": "grouping accuracy (Loghub GA)",
        "systems": {
            r[0]: {
                "ours": r[1], "ours_at_time": r[2], "drain3": num(r[3]),
                "templates_mined": r[4], "templates_true": r[5], "ours_ms": r[6] * 1000,
            }
            for r in rows
        },
        **{k: {n: num(x) for n, x in v.items()} for k, v in summary.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
