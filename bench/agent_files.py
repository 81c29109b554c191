"""The agent's file tailing: lines per second of one core, headers parsed or not.

No bar: this prints what parsing line headers (mohlog/lines.py: time, level, host,
process, pid) costs the agent's ``FilesSource`` against reading lines whole
(``files_parse = false``), in the same run, on the same file: the loghub corpora
(``../shared/data/loghub``: syslog, ISO-8601 and HDFS lines) repeated to ``--lines``.
Each mode is run ``--rounds`` times alternately; medians are printed.

    .venv/bin/python bench/agent_files.py --lines 300000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.sources.files import FilesSource  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LOGHUB = ROOT.parent / "shared" / "data" / "loghub"
CORPORA = ("OpenSSH", "Linux", "Zookeeper", "HDFS", "Apache", "Android")


def corpus(lines: int) -> str:
    got: list[str] = []
    for name in CORPORA:
        path = LOGHUB / name / f"{name}_2k.log"
        if path.exists():
            got += path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not got:
        sys.exit(f"no loghub corpus under {LOGHUB}")
    return "\n".join((got * (lines // len(got) + 1))[:lines]) + "\n"


def run(text: str, parse: bool, work: Path) -> float:
    """Lines per second for one full read of the file by a fresh FilesSource."""
    path = work / "app.log"
    path.write_text(text)
    src = FilesSource([str(path)], work / f"pos-{time.monotonic_ns()}.json", parse=parse)
    t0 = time.perf_counter()
    n = 0
    while got := src.poll(str(path)):
        n += len(got)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    text = corpus(args.lines)
    rates: dict[str, list[float]] = {"parsed": [], "whole": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for mode in ("whole", "parsed"):
                rates[mode].append(run(text, mode == "parsed", Path(tmp)))
    med = {m: statistics.median(v) for m, v in rates.items()}
    for mode in ("parsed", "whole"):
        print(f"{mode:>7}: {med[mode]:>10,.0f} lines/s (rounds: "
              f"{', '.join(f'{r:,.0f}' for r in rates[mode])})")
    cost = (1 / med["parsed"] - 1 / med["whole"]) * 1e6
    print(f"parsing the headers: {cost:.2f} µs per line; parsed/whole = "
          f"{med['parsed'] / med['whole']:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "agent_files.json").write_text(json.dumps(
        {"lines": args.lines, "rounds": rates, "median": med, "parse_us_per_line": cost},
        indent=2))


if __name__ == "__main__":
    main()
