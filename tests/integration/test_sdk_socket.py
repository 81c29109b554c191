"""SDK → real unix socket → SdkSocketSource: delivery, many clients, bad lines,
socket mode and cleanup, fork, agent coming up late, hub fallback over HTTP."""

from __future__ import annotations

import http.server
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.sources.sdk_socket import SdkSocketConfig, SdkSocketError, SdkSocketSource
from mohlog import sdk
from mohlog.model import FIELDS

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class Sink:
    """Collects what the source emits (the emit callback of the agent pipeline)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        with self.lock:
            self.entries.extend(batch)

    def wait(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.entries) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.entries)


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "sdk.sock")


@pytest.fixture
def served(sock_path: str) -> Iterator[tuple[SdkSocketSource, Sink]]:
    source, sink = SdkSocketSource(SdkSocketConfig(path=sock_path)), Sink()
    source.start(sink)
    yield source, sink
    source.stop()


def make_client(path: str, **kw: Any) -> sdk.Client:
    return sdk.Client(sdk.SdkConfig(socket_path=path, flush_interval_s=0.01, **kw))


def test_delivery_through_the_socket(served: tuple[SdkSocketSource, Sink], sock_path: str) -> None:
    source, sink = served
    client = make_client(sock_path, batch_size=100)
    for i in range(2500):
        assert client.write("INFO", "APPLICATION", "msg %d", (i,))
    client.write_structured({"message": "structured", "level": "ERROR",
                             "metadata": {"order": 7}, "context": {"trace": "t1"}})
    assert client.flush(10)
    got = sink.wait(2501)
    assert len(got) == 2501
    assert [e["message"] for e in got[:2500]] == [f"msg {i}" for i in range(2500)]
    assert len({e["id"] for e in got}) == 2501
    assert all(set(e) == set(FIELDS) and e["source"] == "sdk" for e in got)
    peer = {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()}    # the kernel's
    assert got[-1]["metadata"] == {"order": 7, "peer": peer}
    assert got[-1]["context"] == {"trace": "t1"}
    assert got[0]["pid"] == os.getpid() and got[0]["metadata"]["peer"] == peer
    assert client.stats()["sent"] == 2501 and client.stats()["dropped"] == 0
    client.shutdown()
    assert source.stats()["entries"] == 2501


def test_socket_mode_and_cleanup(sock_path: str) -> None:
    source = SdkSocketSource(SdkSocketConfig(path=sock_path))
    source.start(Sink())
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o666
    with pytest.raises(SdkSocketError, match="in use"):
        SdkSocketSource(SdkSocketConfig(path=sock_path)).listen()
    source.stop()
    assert not os.path.exists(sock_path)


def test_stale_socket_is_replaced(sock_path: str) -> None:
    os.makedirs(os.path.dirname(sock_path))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.close()  # the file stays, nobody listens
    source, sink = SdkSocketSource(SdkSocketConfig(path=sock_path)), Sink()
    source.start(sink)
    try:
        raw_send(sock_path, b'{"message": "after stale"}\n')
        assert sink.wait(1)[0]["message"] == "after stale"
    finally:
        source.stop()


def test_not_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("keep me")
    with pytest.raises(SdkSocketError, match="not a socket"):
        SdkSocketSource(SdkSocketConfig(path=str(path))).listen()
    assert path.read_text() == "keep me"


def raw_send(path: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall(data)


def test_invalid_lines_are_counted_not_fatal(
        served: tuple[SdkSocketSource, Sink], sock_path: str) -> None:
    source, sink = served
    lines = [
        b"not json at all",
        b'["a", "list"]',
        b'{"level": "INFO"}',
        b'{"message": "m", "level": "LOUD"}',
        b'{"message": "m", "extra_field": 1}',
        b"",
        b'{"message": "good one", "level": "WARNING", "component": "KERNEL"}',
        b'{"message": "partial line without newline"',
    ]
    raw_send(sock_path, b"\n".join(lines))
    got = sink.wait(1)
    time.sleep(0.2)
    assert [e["message"] for e in got] == ["good one"]
    assert got[0]["pid"] == os.getpid()  # default pid from SO_PEERCRED
    assert got[0]["process"]  # comm of the peer
    stats = source.stats()
    assert stats["invalid_json"] == 1 and stats["invalid_entry"] == 4
    assert stats["partial_line"] == 1
    raw_send(sock_path, b'{"message": "still serving"}\n')
    assert sink.wait(2)[-1]["message"] == "still serving"


def test_over_long_line_is_skipped(sock_path: str) -> None:
    source, sink = SdkSocketSource(SdkSocketConfig(path=sock_path, max_line_bytes=1000)), Sink()
    source.start(sink)
    try:
        big = orjson.dumps({"message": "x" * 5000})
        raw_send(sock_path, big + b'\n{"message": "small"}\n')
        assert [e["message"] for e in sink.wait(1)] == ["small"]
        assert source.stats()["line_too_long"] == 1
    finally:
        source.stop()


CHILD = """
import sys
from mohlog import sdk
n = int(sys.argv[1])
for i in range(n):
    sdk.log_write("INFO", "PLUGIN", "child %s line %d", sys.argv[2], i)
assert sdk.flush(20), sdk.stats()
print(sdk.stats()["sent"])
"""


def test_many_clients_in_processes(served: tuple[SdkSocketSource, Sink], sock_path: str) -> None:
    _, sink = served
    env = {**os.environ, "MOHLOG_SDK_SOCKET": sock_path, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, "3000", f"c{k}"], env=env,
                              stdout=subprocess.PIPE, text=True) for k in range(4)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outs == ["3000"] * 4
    got = sink.wait(12000)
    assert len(got) == 12000 and len({e["id"] for e in got}) == 12000
    for k, proc in enumerate(procs):
        mine = [e["message"] for e in got if e["pid"] == proc.pid]
        assert mine == [f"child c{k} line {i}" for i in range(3000)]


def test_fork_parent_and_child_both_deliver(
        served: tuple[SdkSocketSource, Sink], sock_path: str) -> None:
    _, sink = served
    code = """
import os, sys
from mohlog import sdk
for i in range(100):
    sdk.log_write("INFO", "APPLICATION", "before fork %d", i)
pid = os.fork()
who = "child" if pid == 0 else "parent"
for i in range(100):
    sdk.log_write("INFO", "APPLICATION", "%s %d", who, i)
assert sdk.flush(20)
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
"""
    env = {**os.environ, "MOHLOG_SDK_SOCKET": sock_path, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    got = sink.wait(300)
    time.sleep(0.2)
    messages = [e["message"] for e in sink.entries]
    assert len(messages) == 300  # the child does not resend the parent's buffered entries
    assert sorted(m for m in messages if m.startswith("before")) == sorted(
        f"before fork {i}" for i in range(100))
    child = [e for e in got if e["message"].startswith("child")]
    parent = [e for e in got if e["message"].startswith("parent")]
    assert len(child) == len(parent) == 100
    assert {e["pid"] for e in child}.isdisjoint({e["pid"] for e in parent})


def test_agent_coming_up_later_gets_the_buffer(sock_path: str) -> None:
    client = make_client(sock_path)
    for i in range(500):
        client.write("WARNING", "APPLICATION", "early %d", (i,))
    time.sleep(0.3)  # sends fail meanwhile; entries stay buffered
    assert client.stats()["send_failures"] >= 1 and client.stats()["buffered"] == 500
    source, sink = SdkSocketSource(SdkSocketConfig(path=sock_path)), Sink()
    source.start(sink)
    try:
        assert client.flush(10)
        assert [e["message"] for e in sink.wait(500)] == [f"early {i}" for i in range(500)]
    finally:
        client.shutdown()
        source.stop()


class _HubDouble(http.server.BaseHTTPRequestHandler):
    """Stands in for POST /api/v1/logs of the hub: fails the first request with 503."""

    requests: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append((dict(self.headers), body))
        status = 503 if len(type(self).requests) == 1 else 200
        payload = orjson.dumps({"accepted": body.count(b"\n"), "duplicate": False})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def serve_http(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[str, Callable]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server.shutdown


def test_hub_fallback_when_no_agent_socket(sock_path: str) -> None:
    _HubDouble.requests = []
    url, stop = serve_http(_HubDouble)
    client = make_client(sock_path, hub_url=url, token="tok123", batch_size=1000)
    try:
        for i in range(10):
            client.write("INFO", "APPLICATION", "to hub %d", (i,))
        assert client.flush(10)
        first, second = _HubDouble.requests[:2]
        assert first[1] == second[1]  # the retried batch is the same bytes
        assert first[0]["Idempotency-Key"] == second[0]["Idempotency-Key"]
        assert second[0]["Authorization"] == "Bearer tok123"
        lines = [orjson.loads(x) for x in second[1].splitlines()]
        assert [x["message"] for x in lines] == [f"to hub {i}" for i in range(10)]
        assert client.stats()["sent"] == 10 and client.stats()["send_failures"] == 1
    finally:
        client.shutdown()
        stop()


@pytest.fixture
def real_hub(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``mohlog hub`` as a subprocess on a free loopback port: (url, admin token)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "hub"
    proc = subprocess.Popen([sys.executable, "-m", "mohlog.cli", "hub", "--data", str(data),
                             "--listen", f"127.0.0.1:{port}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "hub exited"
            assert time.monotonic() < deadline, "hub did not start"
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=2).close()
                if (data / "admin.token").exists():
                    break
            except OSError:
                time.sleep(0.2)
        yield url, (data / "admin.token").read_text().strip()
    finally:
        proc.terminate()
        proc.wait(30)


def test_sdk_ships_to_a_real_hub_without_agent(real_hub: tuple[str, str],
                                               sock_path: str) -> None:
    url, token = real_hub
    # MOHLOG_HUB as HOST:PORT alone, as --listen takes it
    client = make_client(sock_path, hub_url=url.removeprefix("http://"), token=token)
    run = os.urandom(4).hex()
    try:
        for i in range(300):
            client.write_structured({"message": f"direct {i}", "level": "WARNING",
                                     "metadata": {"run": run, "seq": i}})
        assert client.flush(30), client.stats()
    finally:
        client.shutdown()
    query = urllib.parse.urlencode([("f", f"metadata.run={run}"), ("limit", "1000")])
    req = urllib.request.Request(f"{url}/api/v1/logs?{query}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        records = orjson.loads(resp.read())["records"]
    assert sorted(r["metadata"]["seq"] for r in records) == list(range(300))
    assert {r["source"] for r in records} == {"sdk"} and records[0]["level"] == "WARNING"
    assert client.stats()["sent"] == 300 and client.stats()["dropped"] == 0


def test_a_writer_cannot_pass_for_another(served: tuple[SdkSocketSource, Sink],
                                          sock_path: str) -> None:
    """The socket is open to every local user: what an entry says of itself (pid,
    process, host) is its writer's claim, kept; ``metadata.peer`` is who wrote it, from
    the kernel; and the agent's own sources (ebpf, journal...) cannot be claimed."""
    _, sink = served
    forged = {"message": "Accepted password for root", "source": "journal",
              "process": "sshd", "pid": 1, "level": "SECURITY",
              "metadata": {"peer": {"uid": 0}}}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        s.sendall(orjson.dumps(forged) + b"\n" +
                  orjson.dumps({"message": "mine", "source": "billing"}) + b"\n")
        got = sink.wait(2)
    assert (got[0]["process"], got[0]["pid"]) == ("sshd", 1)           # claims, kept
    assert got[0]["source"] == "sdk" and got[0]["metadata"]["claimed_source"] == "journal"
    assert got[0]["metadata"]["peer"] == {"pid": os.getpid(), "uid": os.getuid(),
                                          "gid": os.getgid()}
    assert got[1]["source"] == "billing" and "claimed_source" not in got[1]["metadata"]
