"""JSONL contract of ``mohlog templates`` through the real installed command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from embeddings.miner import TemplateMiner, template_id

ROOT = Path(__file__).resolve().parents[2]
MOHLOG = ROOT / ".venv" / "bin" / "mohlog"

LINES = [
    "Accepted password for root from 10.0.0.1 port 5022 ssh2",
    "Accepted password for root from 10.0.0.2 port 6022 ssh2",
    "  odd   spacing\tkept ",
    "",
    "disk /dev/sda1 at 91% usage",
]


def _run(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MOHLOG), "templates", *args],
        input=stdin, capture_output=True, text=True, timeout=120, check=False,
    )


def test_jsonl_one_object_per_line_in_order() -> None:
    proc = _run([], "\n".join(LINES) + "\n")
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(out) == len(LINES)
    miner = TemplateMiner(None)
    for obj, line in zip(out, LINES, strict=True):
        assert set(obj) == {"template_id", "template", "params"}
        assert obj["template_id"] == template_id(obj["template"])
        pieces = obj["template"].split("<*>")
        assert len(pieces) == len(obj["params"]) + 1
        rebuilt = pieces[0] + "".join(p + s for p, s in zip(obj["params"], pieces[1:], strict=True))
        assert rebuilt == line
    assert out[0]["template"] == "Accepted password for root from <*> port <*> ssh2"
    assert out[0]["params"] == ["10.0.0.1", "5022"]
    # the same ids as the in-process miner
    assert [o["template_id"] for o in out] == miner.mine(LINES).template_ids.tolist()


def test_state_keeps_ids_across_runs(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    users = [f"Invalid user {u} from 10.0.0.{i}" for i, u in enumerate("abcdefg")]
    first = _run(["--state", str(state)], "\n".join(users) + "\n")
    assert first.returncode == 0, first.stderr
    assert state.exists()
    wide = json.loads(first.stdout.splitlines()[-1])
    second = _run(["--state", str(state)], "Invalid user zz from 10.1.1.1\n")
    assert second.returncode == 0, second.stderr
    obj = json.loads(second.stdout)
    assert obj["template_id"] == wide["template_id"]
    assert obj["params"] == ["zz", "10.1.1.1"]


def test_bad_option_is_an_error() -> None:
    proc = _run(["--batch", "0"], "x\n")
    assert proc.returncode == 2
    assert "batch" in proc.stderr
