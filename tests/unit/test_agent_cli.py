"""`mohlog agent` command line: --list-probes runs, bad input gives a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.sources.ebpf import list_probes

ROOT = Path(__file__).resolve().parents[2]


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mohlog.cli", "agent", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_list_probes_names_every_probe() -> None:
    res = _agent("--list-probes")
    assert res.returncode == 0, res.stderr
    names = [line.split()[0] for line in res.stdout.splitlines() if line and line[0] != " "]
    assert names == [p["name"] for p in list_probes()]


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    res = _agent("--config", str(tmp_path / "absent.toml"))
    assert res.returncode != 0
    assert "absent.toml" in res.stderr
