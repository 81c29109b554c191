"""``mohlog templates``: mine templates from stdin, one message per line -> JSONL.

Each input line (without its trailing newline; a trailing ``\\r`` is kept as part of the
message) gives one output line, in input order:
``{"template_id": <uint64>, "template": "<text>", "params": [...]}``.
With ``--state PATH`` the miner's state is loaded from PATH first (when it exists) and
saved there at the end, so ids stay stable across runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

from embeddings.miner import TemplateMiner
from mohlog.errors import MohlogError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mohlog templates", description=__doc__.split("\n")[0])
    ap.add_argument("--state", type=Path, help="load/save the miner state at this path")
    ap.add_argument(
        "--batch", type=int, default=10000, help="lines mined per batch (default 10000)"
    )
    return ap


def _batches(stream: BinaryIO, size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for raw in stream:
        line = raw.decode("utf-8", errors="replace")
        batch.append(line[:-1] if line.endswith("\n") else line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def run(miner: TemplateMiner, inp: BinaryIO, out: BinaryIO, batch_size: int) -> int:
    """Mine ``inp`` into JSONL on ``out``; returns the number of lines."""
    n = 0
    for batch in _batches(inp, batch_size):
        mined = miner.mine(batch)
        texts = miner.templates()
        lines = [
            orjson.dumps({"template_id": int(t), "template": texts[int(t)].text, "params": p})
            for t, p in zip(mined.template_ids, mined.params, strict=True)
        ]
        out.write(b"\n".join(lines) + b"\n")
        n += len(batch)
    out.flush()
    return n


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.batch < 1:
        print("mohlog templates: --batch must be >= 1", file=sys.stderr)
        return 2
    try:
        miner = TemplateMiner(args.state)
        run(miner, sys.stdin.buffer, sys.stdout.buffer, args.batch)
        if args.state is not None:
            miner.save()
    except MohlogError as err:
        print(f"mohlog templates: {err.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    return 0
