"""Shared pieces of the agent benches: a real hub and a real agent as subprocesses,
the agent's /metrics, counting records in the hub, bpftrace ground truth, C generators.

Everything runs against the real programs (``mohlog hub``, ``mohlog agent``) on loopback
ports chosen by the OS; data and state go to a temporary directory that is removed at
the end unless ``--keep`` is given.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
C_DIR = ROOT / "bench" / "c"
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_name(prefix: str) -> str:
    """A comm-sized (<= 15 chars) name nobody else on the host uses."""
    return f"{prefix}{os.urandom(4).hex()}"[:15]


def build_c(source: str, out: Path, *flags: str) -> Path:
    """Compile bench/c/SOURCE statically with gcc into OUT."""
    if shutil.which("gcc") is None:
        raise SystemExit("gcc is needed for the C generators (apt-get install gcc)")
    cmd = ["gcc", "-O2", "-static", *flags, "-o", str(out), str(C_DIR / source)]
    subprocess.run(cmd, check=True)
    return out


# -- hub -----------------------------------------------------------------------------------


@dataclass
class Hub:
    """``mohlog hub`` on a loopback port with its data directory."""

    data: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data / "admin.token").read_text().strip()

    def start(self, timeout: float = 60.0) -> Hub:
        self.data.mkdir(parents=True, exist_ok=True)
        cmd = [PYTHON, "-m", "mohlog.cli", "hub", "--data", str(self.data),
               "--listen", f"127.0.0.1:{self.port}"]
        logf = open(self.data.parent / "hub.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/healthz", timeout, self.proc, "hub")
        wait_for(lambda: (self.data / "admin.token").exists(), timeout, "hub admin.token")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        stop_proc(self.proc, timeout)
        self.proc = None


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} (see its log)")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise SystemExit(f"{what} did not answer {url} within {timeout:.0f} s")


def stop_proc(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def hub_get(hub: Hub, path: str, params: list[tuple[str, str]] | None = None,
            timeout: float = 120.0) -> bytes:
    query = urllib.parse.urlencode(params or [])
    req = urllib.request.Request(f"{hub.url}{path}?{query}",
                                 headers={"Authorization": f"Bearer {hub.token}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def hub_export(hub: Hub, filters: list[str], start: str = "-1d") -> Iterator[dict[str, Any]]:
    """Every stored record matching ``filters`` (``f=`` expressions): the NDJSON export,
    or paging through ``GET /api/v1/logs`` when the hub has no export route."""
    params = [("format", "ndjson"), ("start", start)] + [("f", f) for f in filters]
    req = urllib.request.Request(f"{hub.url}/api/v1/export?{urllib.parse.urlencode(params)}",
                                 headers={"Authorization": f"Bearer {hub.token}"})
    try:
        resp = urllib.request.urlopen(req, timeout=600)
    except urllib.error.HTTPError as err:
        if err.code not in (404, 405):
            raise
        yield from hub_pages(hub, filters, start)
        return
    with resp:
        for line in resp:
            if line.strip():
                yield json.loads(line)


def hub_pages(hub: Hub, filters: list[str], start: str) -> Iterator[dict[str, Any]]:
    cursor: str | None = None
    while True:
        params = [("start", start), ("limit", "10000"), ("sort", "asc")]
        params += [("f", f) for f in filters] + ([("cursor", cursor)] if cursor else [])
        page = json.loads(hub_get(hub, "/api/v1/logs", params))
        yield from page["records"]
        cursor = page.get("next_cursor")
        if not cursor or not page["records"]:
            return


def hub_ids(hub: Hub, filters: list[str]) -> list[str]:
    return [rec["id"] for rec in hub_export(hub, filters)]


def hub_count(hub: Hub, filters: list[str], start: str = "-1d") -> int:
    """Matching records counted by the hub (POST /api/v1/query, type aggregation)."""
    spec = {"type": "aggregation", "start": start, "filters": filters,
            "metrics": [{"op": "count"}]}
    req = urllib.request.Request(f"{hub.url}/api/v1/query", data=json.dumps(spec).encode(),
                                 headers={"Authorization": f"Bearer {hub.token}",
                                          "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=600) as resp:
        rows = json.loads(resp.read())["rows"]
    return int(rows[0]["count"]) if rows else 0


def wait_stable_count(hub: Hub, filters: list[str], expected: int | None,
                      quiet_s: float, timeout: float) -> int:
    """Poll the hub's count until it reaches ``expected`` or stops growing for quiet_s."""
    deadline = time.monotonic() + timeout
    last, since, count = -1, time.monotonic(), 0
    while time.monotonic() < deadline:
        try:
            count = hub_count(hub, filters)
        except (OSError, urllib.error.URLError, KeyError, ValueError) as err:
            log(f"hub count failed: {err}")
        if expected is not None and count >= expected:
            return count
        if count != last:
            last, since = count, time.monotonic()
            log(f"hub has {count:,} matching records")
        elif time.monotonic() - since >= quiet_s:
            return count
        time.sleep(2.0)
    return count


# -- agent ---------------------------------------------------------------------------------


@dataclass
class Agent:
    """``mohlog agent`` shipping to ``hub``; /metrics on a loopback port."""

    hub: Hub
    state: Path
    probes: str | None = None  # --probes a,b; None = the agent's defaults
    ebpf: bool = True
    config: dict[str, Any] | None = None  # written as JSON and passed with --config
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        self.state.mkdir(parents=True, exist_ok=True)
        token_file = self.state / "token"
        token_file.write_text(self.hub.token)
        cmd = [PYTHON, "-m", "mohlog.cli", "agent", "--hub", self.hub.url,
               "--token-file", str(token_file), "--state-dir", str(self.state),
               "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        if self.config is not None:
            cfg = self.state / "agent.json"
            cfg.write_text(json.dumps(self.config, indent=2))
            cmd += ["--config", str(cfg)]
        if not self.ebpf:
            cmd.append("--no-ebpf")
        elif self.probes:
            cmd += ["--probes", self.probes]
        return cmd

    def start(self, timeout: float = 120.0) -> Agent:
        cmd = self.command()
        log("agent: " + " ".join(cmd))
        logf = open(self.state.parent / "agent.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
        wait_http(self.metrics_url, timeout, self.proc, "agent")
        return self

    def metrics(self) -> dict[str, float]:
        """Prometheus samples as {'name{label="v",...}': value}."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            text = resp.read().decode()
        return parse_metrics(text)

    def stop(self, timeout: float = 60.0) -> None:
        stop_proc(self.proc, timeout)
        self.proc = None


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def drops_by_stage(samples: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in samples.items():
        if key.startswith("mohlog_agent_dropped_total") and value:
            out[key.partition("{")[2].rstrip("}")] = value
    return out


def wait_spool_empty(agent: Agent, timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    samples: dict[str, float] = {}
    while time.monotonic() < deadline:
        samples = agent.metrics()
        if metric_sum(samples, "mohlog_agent_spool_batches") == 0:
            return samples
        time.sleep(1.0)
    return samples


# -- bpftrace ground truth -------------------------------------------------------------------


class Bpftrace:
    """A bpftrace one-liner counting into ``@n``; ``stop()`` returns the count."""

    def __init__(self, probe: str, predicate: str) -> None:
        self.script = f"{probe} /{predicate}/ {{ @n = count(); }}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60.0) -> Bpftrace:
        self.proc = subprocess.Popen(["bpftrace", "-e", self.script], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if "Attaching" in line:
                time.sleep(0.5)
                return self
            if not line and self.proc.poll() is not None:
                raise SystemExit(f"bpftrace failed: {self.script}")
        raise SystemExit("bpftrace did not attach")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired as err:  # printed its map, then hung on exit
            partial = err.stdout or ""
            out = partial.decode() if isinstance(partial, bytes) else partial
            self.proc.kill()
            out += self.proc.communicate()[0] or ""
        match = re.search(r"@n:\s*(\d+)", out)
        return int(match.group(1)) if match else 0


class Exitsnoop:
    """Debian's exitsnoop-bpfcc (tracepoint based), counting exits of one comm.

    Measured here (kernel 6.18, Debian's 6.1 headers): it attaches and prints its header but
    reports no exit at all — it reads task_struct fields through the mismatched headers.
    ``total`` keeps the number of exits it printed for any process, to show that.
    """

    def __init__(self, comm: str) -> None:
        self.comm = comm
        self.total = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Exitsnoop | None:
        exe = shutil.which("exitsnoop-bpfcc")
        if exe is None:
            return None
        self.proc = subprocess.Popen([exe], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        time.sleep(15.0)  # compiling its BPF program
        return self if self.proc.poll() is None else None

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=120)
        lines = out.splitlines()[1:]
        self.total = len(lines)
        return sum(1 for line in lines if line.split()[:1] == [self.comm])


# -- results -----------------------------------------------------------------------------------


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"mohlog-{name}-"))


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    return out


def run_saved(run: Any, work: Path, name: str) -> int:
    """run() in ``work`` (removed after), its result printed and saved as ``name``."""
    try:
        result = run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2, default=str))
    print(f"saved {save(name, result)}")
    return 0


def table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = []
    for key, value in rows:
        text = f"{value:,.0f}" if isinstance(value, int | float) and not isinstance(
            value, bool) and float(value).is_integer() else (
            f"{value:,.2f}" if isinstance(value, float) else str(value))
        lines.append(f"  {key:<{width}}  {text:>16}")
    return "\n".join(lines)


def keep_logs(work: Path, bench: str) -> None:
    """Copy the hub's and agent's logs of a run to bench/results/logs/ for post-mortems."""
    dest = RESULTS / "logs"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("hub.log", "agent.log"):
        if (work / name).exists():
            shutil.copy(work / name, dest / f"{bench}-{name}")


def source_only(probe: str, comm: str, generate: Any) -> dict[str, Any]:
    """The eBPF source alone, in this process (no pipeline, no hub): how many events of
    ``comm`` it decodes while ``generate()`` runs, and its kernel drop counters.
    A stepping stone when the agent or the hub is not runnable."""
    sys.path.insert(0, str(ROOT))
    from agent.sources.ebpf import EbpfConfig, EbpfSource

    seen = {"match": 0, "all": 0}

    def emit(batch: list[dict[str, Any]]) -> None:
        seen["all"] += len(batch)
        seen["match"] += sum(1 for e in batch if e.get("metadata", {}).get("comm") == comm)

    source = EbpfSource(EbpfConfig(probes=[probe]))
    source.load()
    source.start(emit)
    try:
        out = generate()
        last = -1
        while seen["match"] != last:  # until the reader has caught up
            last = seen["match"]
            time.sleep(2.0)
        stats = source.stats()
    finally:
        source.stop(30)
    return {"generator": out, "source_events_for_comm": seen["match"],
            "source_events_all": seen["all"], "source_stats": stats}
