"""Shared pieces of the hub benches: a hub subprocess with settings, timing helpers."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_common import free_port, stop_proc, wait_http  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = str(ROOT / ".venv" / "bin" / "python")


# The chDB peer's table: the same fields, MergeTree ordered by (host, timestamp).
CHDB_DDL = ("CREATE DATABASE IF NOT EXISTS b; "
            "CREATE TABLE b.logs (id String, timestamp Int64, level LowCardinality(String), "
            "source LowCardinality(String), component LowCardinality(String), "
            "host LowCardinality(String), pid Int64, tid Int64, process LowCardinality(String),"
            " message String CODEC(ZSTD(3)), metadata String, context String) "
            "ENGINE = MergeTree ORDER BY (host, timestamp)")


@dataclass
class BenchHub:
    settings: dict[str, Any]
    workdir: Path | None = None
    proc: subprocess.Popen | None = None
    port: int = 0

    def __post_init__(self) -> None:
        self.workdir = self.workdir or Path(tempfile.mkdtemp(prefix="mohlog-bench-"))
        self.port = free_port()

    @property
    def data(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data / "admin.token").read_text().strip()

    def start(self) -> BenchHub:
        assert self.workdir is not None
        cfg = self.workdir / "hub.json"
        cfg.write_text(json.dumps(self.settings))
        logf = open(self.workdir / "hub.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "mohlog.cli", "hub", "--data", str(self.data), "--listen",
             f"127.0.0.1:{self.port}", "--config", str(cfg)], cwd=ROOT, stdout=logf,
            stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/healthz", 120, self.proc, "hub")
        return self

    def get(self, path: str) -> Any:
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def post(self, path: str, obj: Any) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(obj).encode(),
                                     method="POST",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def stop(self, remove: bool = True) -> None:
        stop_proc(self.proc, 120)
        if remove and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p99": pct(values, 99), "n": len(values)}


def dir_bytes(path: Path, exclude: tuple[str, ...] = ()) -> int:
    return sum(p.stat().st_size for p in path.rglob("*")
               if p.is_file() and not any(part in exclude for part in p.parts))


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                **result}, indent=2))
    return path
