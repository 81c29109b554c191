"""TCP probes inside a network namespace of the test's own: an accepted connection (connect,
accept, close with duration) and a refused one (failed connect, resets sent and received)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from agent.sources.ebpf import EbpfConfig, EbpfSource
from tests.privileged.ebpf_helpers import Collector, event, running

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

SERVER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.recv(100)
c.sendall(b"bye")
c.close()
s.close()
"""
CLIENT = """
import socket, sys, time
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
c.sendall(b"hello")
c.recv(100)
time.sleep(0.05)
c.close()
"""
REFUSED = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
print(port, flush=True)
try:
    socket.create_connection(("127.0.0.1", port), timeout=5)
except ConnectionRefusedError:
    sys.exit(0)
sys.exit(1)
"""


@pytest.fixture(scope="module")
def netns() -> Iterator[tuple[str, int]]:
    name = f"mohlog-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True)
        yield name, os.stat(f"/run/netns/{name}").st_ino
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture(scope="module")
def tcp() -> Iterator[tuple[EbpfSource, Collector]]:
    cfg = EbpfConfig(probes=["tcp_state", "tcp_reset", "tcp_retransmit"])
    with running(cfg) as pair:
        assert all(p["loaded"] for p in pair[0].stats()["probes"].values())
        yield pair


def _in_ns(ns: str, code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                            stdout=subprocess.PIPE, text=True)


def test_accepted_connection(tcp: tuple[EbpfSource, Collector], netns: tuple[str, int]) -> None:
    _, sink = tcp
    ns, inode = netns
    server = _in_ns(ns, SERVER)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    client = _in_ns(ns, CLIENT, str(port))
    assert client.wait(10) == 0 and server.wait(10) == 0

    def mine(kind: str) -> list[dict]:
        return sink.wait(lambda e: event("tcp_state", kind=kind, netns=inode)(e) and port in (
            e["metadata"]["sport"], e["metadata"]["dport"]))

    [listen] = mine("listen")
    assert listen["metadata"]["sport"] == port and listen["metadata"]["owner_pid"] == server.pid
    [conn] = mine("connect")
    meta = conn["metadata"]
    assert (meta["daddr"], meta["dport"], meta["saddr"]) == ("127.0.0.1", port, "127.0.0.1")
    assert meta["family"] == "inet" and meta["oldstate"] == "SYN_SENT"
    assert meta["owner_pid"] == client.pid and meta["owner_comm"].startswith("python")
    assert (conn["level"], conn["component"]) == ("INFO", "IPC_MANAGER")
    client_port = meta["sport"]
    [acc] = mine("accept")
    assert (acc["metadata"]["sport"], acc["metadata"]["dport"]) == (port, client_port)
    assert acc["metadata"]["oldstate"] == "SYN_RECV"
    closes = sink.wait(lambda e: event("tcp_state", kind="close", netns=inode)(e)
                       and {e["metadata"]["sport"], e["metadata"]["dport"]} == {port,
                                                                                client_port},
                       count=2)
    assert len(closes) == 2
    assert all(c["metadata"]["duration_ns"] > 0 for c in closes)
    assert any(c["metadata"]["owner_pid"] == client.pid for c in closes)
    [stop] = mine("listen_close")
    assert stop["metadata"]["sport"] == port


def test_refused_connection(tcp: tuple[EbpfSource, Collector], netns: tuple[str, int]) -> None:
    _, sink = tcp
    ns, inode = netns
    client = _in_ns(ns, REFUSED)
    assert client.stdout is not None
    port = int(client.stdout.readline())
    assert client.wait(10) == 0
    [failed] = sink.wait(lambda e: event("tcp_state", kind="connect_failed", netns=inode,
                                         dport=port)(e))
    assert failed["level"] == "WARNING" and failed["metadata"]["owner_pid"] == client.pid
    assert failed["metadata"]["newstate"] == "CLOSE"
    [sent] = sink.wait(lambda e: event("tcp_reset", direction="sent", sport=port)(e))
    assert sent["metadata"]["saddr"] == "127.0.0.1" and sent["metadata"]["netns"] == inode
    assert sent["metadata"]["dport"] == failed["metadata"]["sport"]
    [got] = sink.wait(lambda e: event("tcp_reset", direction="received", dport=port)(e))
    assert got["metadata"]["netns"] == inode and got["level"] == "WARNING"
    assert got["component"] == "IPC_MANAGER" and "tcp reset received" in got["message"]
