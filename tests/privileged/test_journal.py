"""The journal source against a real systemd-journald, run for the test in a journal
namespace of its own (its socket under /run/systemd/journal.NS, removed afterwards):
fields of real entries, a restart resuming at the saved cursor, and a real agent shipping
journal entries to a real hub, whose journalctl ends when the agent is killed with -9."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sources.journal import JournalSource
from tests.integration.conftest import Hub, start_agent
from tests.privileged.ebpf_helpers import Collector
from tests.procs import ends_after_killing, killed_on_error

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]
JOURNALD = Path("/lib/systemd/systemd-journald")

# A child that writes native journal entries: argv[1] = socket, argv[2] = JSON list of
# {field: value} (a value that is a list of ints is sent as bytes, length-prefixed).
WRITER = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for fields in json.loads(sys.argv[2]):
    out = b""
    for k, v in fields.items():
        if isinstance(v, list):
            out += k.encode() + b"\n" + struct.pack("<Q", len(v)) + bytes(v) + b"\n"
        else:
            out += f"{k}={v}\n".encode()
    s.sendto(out, sys.argv[1])
print(__import__("os").getpid(), open("/proc/self/comm").read().strip())
"""


@pytest.fixture
def namespace() -> Iterator[str]:
    if not JOURNALD.exists() or shutil.which("journalctl") is None:
        pytest.skip("no systemd-journald / journalctl")
    ns = f"mohlogtest{os.getpid()}x{uuid.uuid4().hex[:6]}"
    made = [d for d in ("/var/log/journal", "/run/log/journal", "/run/log")
            if not Path(d).exists()]          # journald makes them: removed again after
    proc = subprocess.Popen([str(JOURNALD), ns], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    sock = Path(f"/run/systemd/journal.{ns}/socket")
    deadline = time.monotonic() + 10
    while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        if not sock.exists():
            err = proc.stderr.read().decode() if proc.poll() is not None else "timeout"
            pytest.skip(f"systemd-journald {ns} did not start: {err[-300:]}")
        yield ns
    finally:
        proc.terminate()
        proc.wait(10)
        machine = Path("/etc/machine-id").read_text().strip() \
            if Path("/etc/machine-id").exists() else ""
        for d in (f"/run/systemd/journal.{ns}", f"/var/log/journal/{machine}.{ns}",
                  f"/run/log/journal/{machine}.{ns}"):
            shutil.rmtree(d, ignore_errors=True)
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def write(ns: str, entries: list[dict]) -> tuple[int, str]:
    """Send ``entries`` to the journal of ``ns`` from a child process; its pid and name."""
    out = subprocess.run([sys.executable, "-c", WRITER, f"/run/systemd/journal.{ns}/socket",
                          json.dumps(entries)], capture_output=True, text=True, check=True,
                         timeout=30)
    pid, comm = out.stdout.split()
    return int(pid), comm


def ready(ns: str, sink: Collector, tag: str) -> None:
    """Write marker entries until the source (started from the journal's end) sees one."""
    deadline = time.monotonic() + 20
    while not sink.find(lambda e: e["message"].startswith(f"ready {tag}")):
        assert time.monotonic() < deadline, "the journal source saw nothing"
        write(ns, [{"MESSAGE": f"ready {tag}", "SYSLOG_IDENTIFIER": "t"}])
        time.sleep(0.3)


def test_journal_fields_and_resume_at_the_cursor(namespace: str, tmp_path: Path) -> None:
    state = tmp_path / "journal.json"
    tag = uuid.uuid4().hex[:8]
    src, sink = JournalSource(state, namespace), Collector()
    src.start(sink)
    try:
        ready(namespace, sink, tag)
        before = time.time_ns()
        pid, comm = write(namespace, [
            {"MESSAGE": f"Failed password for root from 10.0.0.9 port 22 ssh2 {tag}",
             "PRIORITY": 5, "SYSLOG_FACILITY": 10, "SYSLOG_IDENTIFIER": "sshd"},
            {"MESSAGE": f"disk full {tag}", "PRIORITY": 3, "SYSLOG_IDENTIFIER": "app",
             "MESSAGE_ID": "0123456789abcdef0123456789abcdef", "TID": 77},
            {"MESSAGE": [*f"bytes {tag} ".encode(), 0xff, 0xfe], "PRIORITY": 7}])
        # and one of the agent's own pid: skipped
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(f"MESSAGE=own {tag}\n".encode(), f"/run/systemd/journal.{namespace}/socket")
        got = sink.wait(lambda e: tag in e["message"] and not e["message"].startswith("ready"),
                        count=3)
        after = time.time_ns()
        time.sleep(0.5)
        got = sink.find(lambda e: tag in e["message"] and not e["message"].startswith("ready"))
        assert [e["message"] for e in got] == [
            f"Failed password for root from 10.0.0.9 port 22 ssh2 {tag}", f"disk full {tag}",
            f"bytes {tag} \ufffd\ufffd"]
        assert [(e["level"], e["process"], e["pid"], e["source"]) for e in got] == [
            ("SECURITY", "sshd", pid, "journal"), ("ERROR", "app", pid, "journal"),
            ("DEBUG", comm, pid, "journal")]
        assert all(before <= e["timestamp"] <= after for e in got)
        assert got[1]["tid"] == 77 and got[1]["metadata"]["message_id"] == \
            "0123456789abcdef0123456789abcdef"
        assert got[0]["metadata"]["transport"] == "journal" and \
            got[0]["metadata"]["facility"] == 10
        assert got[0]["host"] == os.uname().nodename
        assert src.counters["excluded"] >= 1
    finally:
        src.stop()
    assert json.loads(state.read_text())["cursor"]
    write(namespace, [{"MESSAGE": f"while down {tag} {i}", "SYSLOG_IDENTIFIER": "t"}
                      for i in range(3)])
    again, sink2 = JournalSource(state, namespace), Collector()
    again.start(sink2)
    try:
        sink2.wait(lambda e: "while down" in e["message"], count=3)
        time.sleep(0.5)
        seen = [e["message"] for e in sink2.find(lambda e: tag in e["message"])]
    finally:
        again.stop()
    assert seen == [f"while down {tag} {i}" for i in range(3)]     # nothing twice


def test_agent_ships_the_journal_and_its_journalctl_ends_with_it(namespace: str,
                                                                  tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub", {}).start()
    agent = start_agent(hub, tmp_path, {"kmsg": False, "sdk_socket": "",
                                        "journal_namespace": namespace})
    tag = uuid.uuid4().hex[:8]
    try:
        with killed_on_error(agent):
            deadline = time.monotonic() + 60
            while not hub.search(f"q={tag}&f=source=journal")["records"]:
                assert time.monotonic() < deadline, "no journal entry reached the hub"
                write(namespace, [{"MESSAGE": f"service started {tag}", "PRIORITY": 4,
                                   "SYSLOG_IDENTIFIER": "websvc"}])
                time.sleep(0.5)
            rec = hub.search(f"q={tag}&f=source=journal")["records"][0]
            assert (rec["level"], rec["process"]) == ("WARNING", "websvc")
            child = subprocess.run(["pgrep", "-f", f"journalctl.*{namespace}"],
                                   capture_output=True, text=True).stdout.split()
            assert len(child) == 1, f"journalctl of the agent: {child}"
            assert ends_after_killing(agent, int(child[0]), 10)
    finally:
        if agent.poll() is None:
            agent.kill()
        hub.stop()


def test_journalctl_killed_is_started_again_from_the_cursor(namespace: str,
                                                            tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    src, sink = JournalSource(tmp_path / "journal.json", namespace), Collector()
    src.start(sink)
    try:
        ready(namespace, sink, tag)
        write(namespace, [{"MESSAGE": f"before {tag} {i}"} for i in range(3)])
        assert len(sink.wait(lambda e: e["message"].startswith("before"), count=3)) == 3
        first = src.proc
        assert first is not None
        first.kill()                                   # journalctl dies
        write(namespace, [{"MESSAGE": f"after {tag} {i}"} for i in range(3)])
        got = sink.wait(lambda e: e["message"].startswith("after"), count=3, timeout=20)
        time.sleep(0.5)
        assert src.proc is not first and src.counters["restarts"] == 1
        msgs = [e["message"] for e in sink.find(lambda e: tag in e["message"] and
                                                 not e["message"].startswith("ready"))]
        assert msgs == [f"before {tag} {i}" for i in range(3)] + \
            [f"after {tag} {i}" for i in range(3)], got
    finally:
        src.stop()


def test_a_cursor_journalctl_cannot_seek_to_is_dropped(namespace: str, tmp_path: Path) -> None:
    state = tmp_path / "journal.json"
    state.write_text(json.dumps({"cursor": "s=not-a-cursor"}))    # a journal made anew
    tag = uuid.uuid4().hex[:8]
    src, sink = JournalSource(state, namespace), Collector()
    src.start(sink)
    try:
        ready(namespace, sink, tag)                 # reads again, from the end
        assert src.counters["cursor_resets"] == 1 and src.counters["restarts"] == 0
    finally:
        src.stop()
    assert json.loads(state.read_text())["cursor"] != "s=not-a-cursor"
