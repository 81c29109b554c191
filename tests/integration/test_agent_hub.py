"""A real agent process (no eBPF: files, syslog, SDK socket) shipping to a real hub,
including a hub outage: everything arrives exactly once, in order per source."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Hub, free_port, start_agent

pytestmark = pytest.mark.integration


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait(cond, timeout: float = 30) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _count(hub: Hub, q: str) -> int:
    return len(hub.all_ids(q))


def test_agent_ships_files_syslog_sdk_through_a_hub_outage(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub", {}, listen=f"127.0.0.1:{free_port()}").start()
    app_log, sock = tmp_path / "app.log", tmp_path / "sdk.sock"
    app_log.write_text("".join(f"line {i}\n" for i in range(100)))
    mport, sport = free_port(), free_port()
    agent = start_agent(hub, tmp_path, {"files": [str(app_log)], "sdk_socket": str(sock),
                                        "syslog_udp": [f"127.0.0.1:{sport}"],
                                        "journal": False},
                        "--metrics-listen", f"127.0.0.1:{mport}")
    try:
        _wait(lambda: _count(hub, "f=source=file") == 100)
        hub.stop()
        with open(app_log, "a") as f:
            f.writelines(f"line {i}\n" for i in range(100, 300))
        subprocess.run([sys.executable, "-c", "from mohlog import sdk\n"
                        "for i in range(50): sdk.log_write('WARNING', 'APPLICATION', "
                        "'sdk %d', i)\nsdk.flush(5)"], cwd=ROOT, check=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT),
                            "MOHLOG_SDK_SOCKET": str(sock)})
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"<11>1 - box app 7 - - syslog during outage", ("127.0.0.1", sport))
        _wait(lambda: _metric(mport, "mohlog_agent_spool_batches") > 0)
        hub.start()
        _wait(lambda: _metric(mport, "mohlog_agent_spool_batches") == 0, 60)
        msgs = [r["message"] for r in _records(hub, "f=source=file")]
        assert msgs == [f"line {i}" for i in range(300)]
        assert sorted(r["message"] for r in _records(hub, "f=source=sdk")) == \
            sorted(f"sdk {i}" for i in range(50))
        sys_rec = _records(hub, "f=source=syslog")
        assert [r["message"] for r in sys_rec] == ["syslog during outage"]
        assert sys_rec[0]["level"] == "ERROR" and sys_rec[0]["host"] == "box"
        assert _metric(mport, "mohlog_agent_shipped_total") == 351
    finally:
        agent.terminate()
        assert agent.wait(30) == 0
        hub.stop()


def test_a_refused_token_is_replaced_by_writing_the_token_file(tmp_path: Path) -> None:
    """Token rotation on a fleet: the agent's token is revoked, its batches wait in the
    spool; a new token written to its token file is used at the next refusal, without a
    restart, and everything arrives once, in order."""
    hub = Hub(tmp_path / "hub", {}, listen=f"127.0.0.1:{free_port()}").start()
    app_log, mport = tmp_path / "app.log", free_port()
    app_log.write_text("".join(f"line {i}\n" for i in range(10)))
    _, first = hub.request("POST", "/api/v1/tokens", b'{"role": "ingest", "name": "old"}')
    agent = start_agent(hub, tmp_path, {"files": [str(app_log)], "journal": False},
                        "--metrics-listen", f"127.0.0.1:{mport}", token_value=first["token"])
    try:
        _wait(lambda: _count(hub, "f=source=file") == 10)
        assert hub.request("DELETE", "/api/v1/tokens/old")[0] == 200
        with open(app_log, "a") as f:
            f.writelines(f"line {i}\n" for i in range(10, 20))
        _wait(lambda: _metric(mport, "mohlog_agent_spool_batches") > 0)
        time.sleep(1)
        assert _count(hub, "f=source=file") == 10              # refused: waiting
        _, new = hub.request("POST", "/api/v1/tokens", b'{"role": "ingest", "name": "new"}')
        tmp = tmp_path / "token.tmp"
        tmp.write_text(new["token"] + "\n")
        tmp.replace(tmp_path / "token")
        _wait(lambda: _metric(mport, "mohlog_agent_spool_batches") == 0, 60)
        assert [r["message"] for r in _records(hub, "f=source=file")] == \
            [f"line {i}" for i in range(20)]
        assert agent.poll() is None                             # the same process
    finally:
        agent.terminate()
        assert agent.wait(30) == 0
        hub.stop()


def _records(hub: Hub, q: str) -> list[dict]:
    recs, cursor = [], None
    while True:
        page = hub.search(q + "&sort=asc&limit=1000" + (f"&cursor={cursor}" if cursor else ""))
        recs += page["records"]
        cursor = page["next_cursor"]
        if not cursor:
            return recs


def test_a_second_agent_on_the_same_state_is_refused(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub", {}).start()
    first = start_agent(hub, tmp_path, {"journal": False, "sdk_socket": ""})
    try:
        state = tmp_path / "state"
        deadline = time.monotonic() + 30
        while not (state / "lock").exists() or not (state / "lock").read_text().strip():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        second = subprocess.run(
            [sys.executable, "-m", "mohlog.cli", "agent", "--hub", hub.url, "--token-file",
             str(tmp_path / "token"), "--state-dir", str(state), "--no-ebpf"], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
            timeout=60)
        assert second.returncode == 2
        assert f"state directory {state} is in use by another agent (pid {first.pid})" in \
            second.stderr, second.stderr
        assert first.poll() is None
        first.kill()
        first.wait()
        again = start_agent(hub, tmp_path, {"journal": False, "sdk_socket": ""})
        try:
            deadline = time.monotonic() + 30
            while (state / "lock").read_text().strip() != str(again.pid):
                assert again.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            again.terminate()
            assert again.wait(30) == 0
    finally:
        if first.poll() is None:
            first.kill()
        hub.stop()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to run the agent as another user (setpriv)")
def test_an_agent_run_by_an_ordinary_user(tmp_path: Path) -> None:
    """The agent as a user without privileges (uid 65534): what it may not read (the
    kernel log under kernel.dmesg_restrict) is skipped with a note, not a traceback; its C
    helpers load (built again in its own ~/.cache when the ones beside the sources are
    not readable); its files are shipped."""
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "env", f"PYTHONPATH={ROOT}", sys.executable, "-c",
                            "import os, sys, agent.main, mohlog.clib; "
                            "os.listdir(os.path.join(sys.argv[1], 'server', 'store', 'native'))",
                            str(ROOT)], cwd="/", capture_output=True, timeout=60)
    if probe.returncode:                # a checkout under a directory closed to others
        pytest.skip(f"the checkout {ROOT} is not readable by uid 65534")
    hub = Hub(tmp_path / "hub", {}, listen=f"127.0.0.1:{free_port()}").start()
    work = Path(tempfile.mkdtemp(prefix="mohlog-user-"))  # (pytest's tmp is root's, 0700)
    (work / "home").mkdir(parents=True)
    app_log = work / "app.log"
    app_log.write_text("".join(f"user line {i}\n" for i in range(20)))
    (work / "agent.json").write_text(json.dumps({
        "ebpf": False, "kmsg": True, "journal": False, "files": [str(app_log)],
        "sdk_socket": str(work / "sdk.sock"), "batch_max_delay_s": 0.2}))
    (work / "token").write_text(hub.token)
    for p in [work, *work.iterdir()]:
        p.chmod(0o777 if p.is_dir() else 0o666)
    proc = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env",
         f"HOME={work / 'home'}", f"PYTHONPATH={ROOT}", sys.executable, "-m", "mohlog.cli",
         "agent", "--hub", hub.url, "--token-file", str(work / "token"), "--state-dir",
         str(work / "state"), "--config", str(work / "agent.json")],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: _count(hub, "f=source=file") == 20, 60)
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "using numpy" not in err, err
    running = next(ln for ln in err.splitlines() if "agent running" in ln)
    if Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() == "1":
        assert "/dev/kmsg) is not readable by this user" in err
        assert "kmsg" not in running
    assert "files" in running and "sdk" in running, running
    # the hub's C helpers, for the same user (root's builds beside the sources may be
    # unreadable to it: it builds its own in ~/.cache/mohlog)
    home = Path(tempfile.mkdtemp(prefix="mohlog-user-home-"))
    home.chmod(0o777)
    check = ("import sys; from pathlib import Path; from mohlog import clib; "
             "srcs = sorted(p for d in ('server', 'embeddings', 'agent', 'mohlog') "
             "for p in Path(sys.argv[1], d).glob('**/native/*.c')); "
             "bad = [s.name for s in srcs if clib.load(s, lambda lib: None) is None]; "
             "print(len(srcs), bad)")
    try:
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              "env", f"HOME={home}", f"PYTHONPATH={ROOT}", sys.executable,
                              "-c", check, str(ROOT)], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert out.returncode == 0 and out.stdout.split(" ", 1)[1].strip() == "[]", out
    assert int(out.stdout.split()[0]) >= 4, out.stdout
