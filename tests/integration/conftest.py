"""A real hub subprocess on a free port, with its data directory and admin token."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
URL_RE = re.compile(r"mohlog hub: (https?://\S+)")


@dataclass
class Hub:
    data: Path
    settings: dict[str, Any] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    url: str = ""
    listen: str = "127.0.0.1:0"
    output: list[str] = field(default_factory=list)

    @property
    def token(self) -> str:
        return (self.data / "admin.token").read_text().strip()

    def start(self, timeout: float = 30) -> Hub:
        cfg = self.data.parent / f"{self.data.name}-hub.json"
        cfg.write_text(json.dumps({"flush_interval_s": 0.5, "embeddings": False, **self.settings}))
        cmd = [sys.executable, "-m", "mohlog.cli", "hub", "--data", str(self.data),
               "--listen", self.listen, "--config", str(cfg), *self.extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}")
            m = URL_RE.search(line)
            if m:
                self.url = m.group(1)
                _drain(self.proc, self.output)
                return self
        raise RuntimeError("hub did not start in time")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, token: str | None = "admin"
                ) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if token == "admin":
            token = self.token
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                data = resp.read()
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            data, status, ctype = err.read(), err.code, err.headers.get("Content-Type", "")
        if ctype.startswith("application/json") and data:
            return status, orjson.loads(data)
        return status, data

    def ingest(self, entries: list[dict], key: str | None = None, **kw: Any
               ) -> tuple[int, Any]:
        body = b"\n".join(orjson.dumps(e) for e in entries)
        headers = {"Idempotency-Key": key} if key else {}
        return self.request("POST", "/api/v1/logs", body, headers, **kw)

    def search(self, query: str = "") -> dict:
        status, data = self.request("GET", "/api/v1/logs?" + query)
        assert status == 200, data
        return data

    def all_ids(self, query: str = "") -> list[str]:
        ids, cursor = [], None
        while True:
            q = query + "&limit=1000" + (f"&cursor={cursor}" if cursor else "")
            page = self.search(q)
            ids += [r["id"] for r in page["records"]]
            cursor = page["next_cursor"]
            if not cursor:
                return ids


def _drain(proc: subprocess.Popen, out: list[str]) -> None:
    import threading

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            out.append(line)
    threading.Thread(target=pump, daemon=True).start()


@pytest.fixture
def make_hub(tmp_path: Path) -> Iterator[Any]:
    hubs: list[Hub] = []

    def make(name: str = "data", **settings: Any) -> Hub:
        extra = settings.pop("extra", [])
        hub = Hub(tmp_path / name, settings, extra).start()
        hubs.append(hub)
        return hub
    yield make
    for h in hubs:
        if h.proc and h.proc.poll() is None:
            h.stop()


@pytest.fixture
def hub(make_hub: Any) -> Hub:
    return make_hub()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(hub: Hub, work: Path, settings: dict[str, Any], *flags: str,
                token_value: str | None = None) -> subprocess.Popen:
    """A real agent process (eBPF off) shipping to ``hub``: its settings in
    ``work/agent.json``, a token file ``work/token`` (the admin token unless
    ``token_value``), its state in ``work/state``."""
    cfg = work / "agent.json"
    cfg.write_text(json.dumps({"ebpf": False, "batch_max_delay_s": 0.2, **settings}))
    token = work / "token"
    token.write_text(token_value or hub.token)
    return subprocess.Popen(
        [sys.executable, "-m", "mohlog.cli", "agent", "--hub", hub.url, "--token-file",
         str(token), "--state-dir", str(work / "state"), "--config", str(cfg), *flags,
         "--no-ebpf"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.DEVNULL)


def entry(i: int, **kw: Any) -> dict:
    base = {"id": f"e{i:08d}", "timestamp": 1_700_000_000_000_000_000 + i * 1000,
            "level": "INFO", "component": "APPLICATION", "host": f"h{i % 3}",
            "pid": 100 + i % 7, "process": "app", "source": "test",
            "message": f"request {i} from 10.1.{i % 200}.{i % 250} took {i % 97} ms",
            "metadata": {"n": i}, "context": {}}
    base.update(kw)
    return base
