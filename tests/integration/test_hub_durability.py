"""Crash safety, corrupt segments, disk full, retention/archive/restore, TLS, CLI, mohlog run."""

from __future__ import annotations

import bz2
import calendar
import collections
import gzip
import lzma
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
from pathlib import Path

import orjson
import pytest
import zstandard

from tests.integration.conftest import ROOT, Hub, entry, free_port
from tests.procs import ends_after_killing, killed_on_error, running

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "mohlog.cli"]


def _arrow(batch: list[dict]) -> bytes:
    """An Arrow IPC stream (zstd buffers: the hub keeps such a body as received in its
    WAL); timestamps left out of every third record (the hub fills them)."""
    import pyarrow as pa
    t = pa.table({"id": [e["id"] for e in batch],
                  "timestamp": pa.array([None if i % 3 == 0 else e["timestamp"]
                                         for i, e in enumerate(batch)], pa.int64()),
                  **{k: [e[k] for e in batch] for k in ("level", "component", "host",
                                                        "source", "message")}})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema,
                           options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


def _post(hub: Hub, batch: list[dict], key: str, fmt: str) -> tuple[int, object]:
    if fmt == "arrow":
        return hub.request("POST", "/api/v1/logs", _arrow(batch), {
            "Idempotency-Key": key, "Content-Type": "application/vnd.apache.arrow.stream"})
    return hub.ingest(batch, key=key)


def _sender(hub: Hub, wid: int, acked: list[str], pending: list[list[dict]],
            stop: threading.Event, fmt: str = "ndjson") -> None:
    n = 0
    while not stop.is_set():
        batch = [entry(0, id=f"w{wid}-{n}-{i}", timestamp=time.time_ns() + i)
                 for i in range(200)]
        try:
            status, res = _post(hub, batch, f"w{wid}-{n}", fmt)
        except (urllib.error.URLError, ConnectionError, OSError):
            pending.append(batch)
            return
        if status != 200:
            pending.append(batch)
            return
        acked.extend(e["id"] for e in batch)
        n += 1


@pytest.mark.parametrize("fmt", ["ndjson", "arrow"])
def test_kill9_during_concurrent_ingest_loses_no_acknowledged_record(hub: Hub,
                                                                      fmt: str) -> None:
    acked: list[str] = []
    pending: list[list[dict]] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_sender, args=(hub, w, acked, pending, stop, fmt))
               for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.5)  # spans at least one segment flush (flush_interval_s 0.5)
    assert hub.proc is not None
    os.kill(hub.proc.pid, signal.SIGKILL)
    hub.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) > 1000
    hub.start()
    found = collections.Counter(hub.all_ids(""))
    missing = [i for i in acked if found[i] != 1]
    assert not missing, (f"{len(missing)} acknowledged ids not found exactly once (times "
                         f"found: {collections.Counter(found[i] for i in missing)})")
    assert all(n == 1 for n in found.values())
    for batch in pending:  # the clients retry what was in flight, same key
        wid, n = batch[0]["id"].split("-")[:2]
        assert _post(hub, batch, f"{wid}-{n}", fmt)[0] == 200
    found = collections.Counter(hub.all_ids(""))
    assert all(n == 1 for n in found.values())
    assert len(found) == len(acked) + sum(len(b) for b in pending)


def test_corrupt_segment_is_reported_skipped_and_the_rest_served(hub: Hub) -> None:
    hub.ingest([entry(i) for i in range(100)])
    time.sleep(1.5)
    hub.ingest([entry(i) for i in range(100, 200)])
    time.sleep(1.5)
    _, st = hub.request("GET", "/api/v1/stats")
    assert st["segments"] == 2
    hub.stop()
    segs = sorted((hub.data / "segments").rglob("*.parquet"))
    victim = segs[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    hub.start()
    _, st = hub.request("GET", "/api/v1/stats")
    assert len(st["corrupt_segments"]) == 1 and st["segments"] == 1
    assert len(hub.all_ids("")) == 100
    _, text = hub.request("GET", "/metrics")
    assert b"mohlog_segments_corrupt_total 1.0" in text
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([*CLI, "stats"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = dict(ln.split(None, 1) for ln in out.stdout.splitlines())
    assert lines["records"].startswith("100 (0 in memory")
    assert lines["segments"].startswith("1 in 1 partition(s)")
    assert lines["CORRUPT"] == (f"segment {victim.relative_to(hub.data / 'segments')} "
                                "(100 records): fails its checksum, left out of queries")


def test_retention_archives_and_cli_restores(make_hub) -> None:
    settings = {"retention_age_s": 86_400, "restore_keep_s": 10}
    hub = make_hub(**settings)
    old = time.time_ns() - 3 * 86_400 * 10**9
    hub.ingest([entry(i, timestamp=old + i) for i in range(50)])
    hub.ingest([entry(i, timestamp=time.time_ns()) for i in range(50, 80)])
    time.sleep(1.5)
    status, res = hub.request("POST", "/api/v1/retention")
    assert status == 200 and len(res["archived"]) == 1
    assert len(hub.all_ids("")) == 30
    # a record of the archived hour arriving later goes to a second archive of the
    # partition: the first one is not replaced
    hub.ingest([entry(80, timestamp=old + 100)])
    time.sleep(1.5)
    again = hub.request("POST", "/api/v1/retention")[1]["archived"]
    part = res["archived"][0].removesuffix(".tar")
    assert again == [f"{part}.2.tar"]
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([*CLI, "archive", "list"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    listed = [ln.split() for ln in out.stdout.splitlines()]
    assert [(x[0], x[4]) for x in listed] == [(f"{part}.tar", "50"), (f"{part}.2.tar", "1")]
    st = hub.request("GET", "/api/v1/stats")[1]["archive"]
    assert st["archives"] == 2 and st["records"] == 51 and st["bytes"] > 0
    out = subprocess.run([*CLI, "stats"], env=env, capture_output=True, text=True, timeout=60)
    assert "archive     2 archive(s), " in out.stdout and "51 records" in out.stdout
    # a search of the archived hour says where its records are; one of today does not
    day = 86_400 * 10**9
    assert hub.search(f"start={old - day}&end={old + day}")["archived"] == [part]
    assert "archived" not in hub.search(f"start={old + day}")
    out = subprocess.run([*CLI, "search", f"--start={old - day}", f"--end={old + day}"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "", out.stderr
    assert f"1 archived partition(s) in this time range were not searched: {part}" \
        in out.stderr
    restored = time.monotonic()
    out = subprocess.run([*CLI, "archive", "restore", part], env=env, capture_output=True,
                         text=True, timeout=60)          # a partition: all of its archives
    assert out.returncode == 0 and "51 records" in out.stdout, out.stderr
    assert "left alone by retention until" in out.stdout
    assert len(hub.all_ids("")) == 81
    assert not list((hub.data / "archive").glob("*.tar"))
    assert "archived" not in hub.search(f"start={old - day}&end={old + day}")
    assert hub.request("GET", "/api/v1/stats")[1]["archive"] == {
        "archives": 0, "bytes": 0, "records": 0}
    # still expired, but restored: retention leaves it for restore_keep_s, across a restart
    assert hub.request("POST", "/api/v1/retention")[1]["archived"] == []
    hub.stop()
    hub = make_hub(**settings)
    assert hub.request("POST", "/api/v1/retention")[1]["archived"] == []
    assert len(hub.all_ids("")) == 81
    assert time.monotonic() - restored < 10, "the checks above took too long to mean much"
    time.sleep(max(0.0, restored + 10.5 - time.monotonic()))
    assert hub.request("POST", "/api/v1/retention")[1]["archived"] == [f"{part}.tar"]
    assert len(hub.all_ids("")) == 30


def test_a_hub_started_with_retention_applies_it_at_once(make_hub, tmp_path: Path) -> None:
    """Retention set on a hub that already holds expired partitions: they are archived
    when it starts, not a retention interval (a minute) later."""
    hub = make_hub()
    old = time.time_ns() - 3 * 86_400 * 10**9
    hub.ingest([entry(i, timestamp=old + i) for i in range(50)])
    hub.ingest([entry(i, timestamp=time.time_ns()) for i in range(50, 60)])
    deadline = time.monotonic() + 30
    while hub.request("GET", "/api/v1/stats")[1]["records_in_memory"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    hub.stop()
    again = make_hub(retention_age_s=86_400)                # same data directory
    started = time.monotonic()
    while not list((again.data / "archive").glob("*.tar")):
        assert time.monotonic() - started < 20, "not archived at start"
        time.sleep(0.1)
    assert time.monotonic() - started < 20
    assert len(again.all_ids("")) == 10


def test_a_corrupt_archive_is_refused_and_kept(make_hub) -> None:
    """A segment failing its checksum: the restore is refused, nothing of it is left in
    the store, and the archive stays for another try."""
    hub = make_hub(retention_age_s=86_400)
    old = time.time_ns() - 3 * 86_400 * 10**9
    hub.ingest([entry(i, timestamp=old + i, message=f"archived record {i}")
                for i in range(200)])
    time.sleep(1.5)
    name = hub.request("POST", "/api/v1/retention")[1]["archived"][0]
    tar = hub.data / "archive" / name
    with tarfile.open(tar) as t:
        seg = next(m for m in t.getmembers() if m.name.endswith(".parquet"))
    data = bytearray(tar.read_bytes())
    data[seg.offset_data + seg.size // 2] ^= 0xFF    # inside the segment
    tar.write_bytes(bytes(data))
    before = sorted(p.relative_to(hub.data) for p in (hub.data / "segments").rglob("*"))
    status, res = hub.request("POST", f"/api/v1/archive/{name}/restore")
    assert status == 400 and "checksum" in res["error"]["message"], res
    assert sorted(p.relative_to(hub.data) for p in (hub.data / "segments").rglob("*")
                  ) == before
    assert tar.exists() and hub.all_ids("") == []
    status, res = hub.request("POST", "/api/v1/archive/nope/restore")
    assert status == 404 and name in res["error"]["valid"]


def test_cli_shows_control_characters_escaped(hub: Hub) -> None:
    """A log line may carry terminal escape sequences (a user name sent to sshd): search,
    count and stats show them as \\xNN, never as bytes that would retitle, clear or
    rewrite the reader's terminal. --json keeps the record as stored."""
    evil = "Invalid user \x1b]0;pwned\x07\x1b[2J\rroot\x9b from 10.0.0.9"
    hub.ingest([entry(1, message=evil, host="h\x1b[31m")])
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    outs = [subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                           timeout=60) for args in (["search", "Invalid"],
                                                    ["search", "--count", "--by", "host"],
                                                    ["stats"])]
    for out in outs:
        assert out.returncode == 0, out.stderr
        assert not any(c in out.stdout for c in "\x1b\x07\r\x9b"), repr(out.stdout)
    assert "Invalid user \\x1b]0;pwned\\x07\\x1b[2J\\x0droot\\x9b from" in outs[0].stdout
    assert "h\\x1b[31m" in outs[1].stdout and "h\\x1b[31m" in outs[2].stdout
    raw = subprocess.run([*CLI, "search", "Invalid", "--json"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert orjson.loads(raw.stdout)["message"] == evil


def test_cli_patterns_lists_the_kinds_of_messages(hub: Hub) -> None:
    """``mohlog patterns``: per template of the matching records, most frequent first,
    the count, time range, hosts, text and (--examples) the newest message."""
    rows = [entry(i, message=f"disk {i} full on /dev/sd{i % 3}") for i in range(30)] + \
        [entry(100 + i, message=f"session {4100 + i} closed", host="h9") for i in range(5)]
    hub.ingest(rows)
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([*CLI, "patterns", "--examples"], env=env, capture_output=True,
                         text=True, timeout=60)     # at once: maybe not mined yet, said so
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("35  ") and "not templated yet" in out.stdout or \
        out.stdout.startswith("30  "), out.stdout
    deadline = time.monotonic() + 30
    while hub.request("GET", "/api/v1/stats")[1]["records_in_memory"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    out = subprocess.run([*CLI, "patterns", "--examples"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("30  ") and "3 hosts" in lines[0] and "disk <*> full" in lines[0]
    assert lines[1] == "    e.g. disk 29 full on /dev/sd2"
    assert lines[2].startswith(" 5  ") and "1 host " in lines[2]
    assert "session <*> closed" in lines[2]
    out = subprocess.run([*CLI, "patterns", "--host", "h9", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    got = [orjson.loads(x) for x in out.stdout.splitlines()]
    assert [(g["count"], g["hosts"], g["example"]) for g in got] == [
        (5, ["h9"], "session 4104 closed")]


def test_cli_count_every_interval(hub: Hub) -> None:
    """``search --count --every 1m``: matches per minute, oldest first, the quiet minutes
    between shown as 0; ``--by`` splits each minute."""
    t0 = 1_700_000_040 * 10**9                                  # a whole minute
    rows = [entry(i, timestamp=t0 + m * 60 * 10**9 + i, level=lv)
            for i, (m, lv) in enumerate([(0, "ERROR"), (0, "ERROR"), (0, "INFO"),
                                         (3, "ERROR"), (4, "INFO")])]
    hub.ingest(rows)
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT), "TZ": "UTC"}
    out = subprocess.run([*CLI, "search", "-f", "level=ERROR", "--count", "--every", "1m"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["2023-11-14T22:14Z  2", "2023-11-14T22:15Z  0",
                                       "2023-11-14T22:16Z  0", "2023-11-14T22:17Z  1"]
    out = subprocess.run([*CLI, "search", "--count", "--every", "1m", "--by", "level"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines()[:2] == ["2023-11-14T22:14Z  2  ERROR",
                                           "2023-11-14T22:14Z  1  INFO"]
    assert out.stdout.splitlines()[-1] == "2023-11-14T22:18Z  1  INFO"


def test_cli_says_when_the_address_is_not_a_hub() -> None:
    """A wrong port (an SSH banner) or a proxy's login page (HTML with a 200): the CLI
    says so and exits 1, where it printed a traceback."""
    import socket
    import threading

    from tests.fake_http import answering
    ssh = socket.socket()
    ssh.bind(("127.0.0.1", 0))
    ssh.listen(1)

    def banner() -> None:
        conn, _ = ssh.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
    threading.Thread(target=banner, daemon=True).start()
    env = {**os.environ, "MOHLOG_TOKEN": "x", "PYTHONPATH": str(ROOT)}
    try:
        with answering([b"<html>please log in</html>"]) as page:
            for port, said in ((page.server_port, "did not answer as a mohlog hub"),
                               (ssh.getsockname()[1], "BadStatusLine")):
                out = subprocess.run([*CLI, "stats", "--hub", f"127.0.0.1:{port}"],
                                     env=env, capture_output=True, text=True, timeout=60)
                assert out.returncode == 1 and said in out.stderr, out.stderr
                assert "Traceback" not in out.stderr
    finally:
        ssh.close()


def test_cli_token_ingest_search(hub: Hub, tmp_path: Path) -> None:
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}

    def cli(*args: str, **kw: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], env={**env, **kw}, capture_output=True,
                              text=True, timeout=60)
    bare = cli("stats", MOHLOG_HUB=hub.url.removeprefix("http://"))   # HOST:PORT alone
    assert bare.returncode == 0 and bare.stdout.startswith("records "), bare.stderr
    bad = cli("stats", MOHLOG_HUB="ftp://" + hub.url.removeprefix("http://"))
    assert bad.returncode == 1 and "hub URL must be http://" in bad.stderr
    made = cli("token", "create", "--role", "ingest", "--name", "shipper")
    assert made.returncode == 0, made.stderr
    ingest_token = made.stdout.strip()
    listed = {ln.split()[-1]: ln.split() for ln in cli("token", "list").stdout.splitlines()}
    assert listed["shipper"][1] == "ingest"
    assert listed["shipper"][2].startswith(time.strftime("%Y-%m-%dT", time.gmtime()))
    logfile = tmp_path / "app.log"
    logfile.write_text("".join(f"worker {i} finished job {i * 7}\n" for i in range(300)))
    nd = tmp_path / "x.ndjson"
    nd.write_text(orjson.dumps(entry(999, message="ndjson line here")).decode() + "\n")
    out = cli("ingest", str(logfile), str(nd), MOHLOG_TOKEN=ingest_token)
    assert out.returncode == 0 and "ingested 301 records" in out.stderr, out.stderr
    out = cli("search", "finished job 2002", "--json")
    assert [orjson.loads(x)["message"] for x in out.stdout.splitlines()] == [
        "worker 286 finished job 2002"]
    out = cli("search", "-f", "process=x.ndjson", "--json")
    assert out.stdout == ""
    out = cli("search", "worker", "--all", "--limit", "40", "--json")   # 8 requests of 40
    assert sorted(orjson.loads(x)["message"] for x in out.stdout.splitlines()) == sorted(
        f"worker {i} finished job {i * 7}" for i in range(300))
    assert cli("search", "worker", "--count").stdout == "300\n"
    by = cli("search", "--count", "--by", "process", "--by", "level")
    assert by.stdout.splitlines() == ["300  app.log  INFO", "  1  app  INFO"], by.stderr
    top = cli("search", "--count", "--by", "process", "--limit", "1", "-f", "level=INFO")
    assert top.stdout == "300  app.log\n" and "the 1 largest of 2 groups" in top.stderr
    hosts = cli("search", "--count", "--host", "h0", "--host", "nowhere", "-f", "level=INFO")
    assert hosts.stdout == "1\n", hosts.stderr                # the NDJSON record's host
    some = cli("search", "worker", "--limit", "120")
    assert len(some.stdout.splitlines()) == 120
    assert "note: the newest 120 matches shown; --all for every match" in some.stderr
    oldest = cli("search", "worker", "--limit", "1", "--sort", "asc", "--json")
    assert orjson.loads(oldest.stdout)["message"] == "worker 0 finished job 0"
    assert "note: the oldest 1 matches shown" in oldest.stderr
    assert "matches shown" not in cli("search", "worker", "--limit", "400").stderr
    bad = cli("search", "worker", "--limit", "0")
    assert bad.returncode == 2 and "not a whole number" in bad.stderr
    assert "ndjson line here" in cli("search", "ndjson").stdout
    denied = cli("search", "x", MOHLOG_TOKEN=ingest_token)
    assert denied.returncode == 1 and "403" in denied.stderr
    assert cli("token", "revoke", "shipper").returncode == 0
    assert "shipper" not in cli("token", "list").stdout
    # names with spaces; the last admin token cannot be revoked, the one before can
    last = cli("token", "revoke", "admin (first start)")
    assert last.returncode == 1 and "409" in last.stderr and "last admin token" in last.stderr
    second = cli("token", "create", "--role", "admin", "--name", "night shift").stdout.strip()
    gone = cli("token", "revoke", "admin (first start)", MOHLOG_TOKEN=second)
    assert gone.returncode == 0 and "revoked" in gone.stdout, gone.stderr
    assert cli("stats").returncode == 1                     # the revoked one is refused
    assert cli("token", "revoke", "night shift", MOHLOG_TOKEN=second).returncode == 1
    assert "night shift" in cli("token", "list", MOHLOG_TOKEN=second).stdout
    # the audit trail: admin requests with the token that made them, refusals with where
    # they came from, no secret
    deadline = time.monotonic() + 10
    while not any("refused GET /api/v1/stats" in ln for ln in hub.output):
        assert time.monotonic() < deadline, hub.output
        time.sleep(0.05)
    log_text = "".join(hub.output)
    admins = [orjson.loads(ln)["msg"] for ln in hub.output if '"admin ' in ln]
    assert any(m.startswith("admin POST /api/v1/tokens by token ") and "(admin (first "
               "start)) from 127.0.0.1: 201" in m for m in admins), admins
    assert any(m.startswith("admin DELETE /api/v1/tokens/admin (first start) by "
               "token ") and "(night shift)" in m and m.endswith(": 200") for m in admins)
    assert "refused GET /api/v1/stats from 127.0.0.1: 401" in log_text
    assert second not in log_text and ingest_token not in log_text


def test_cli_ingest_of_the_same_file_again_stores_nothing_twice(hub: Hub, tmp_path: Path
                                                               ) -> None:
    """Batch keys come from the file (path, inode, size, mtime), place and bytes: a second
    run on the unchanged file (after a failure half-way, or by mistake) is acknowledged
    as already stored, also after a hub restart; a file changed since, even to the same
    lines, is stored again; so is standard input (`echo x | mohlog ingest -` twice)."""
    def ingest(*args: str) -> str:
        env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
               "PYTHONPATH": str(ROOT)}           # (the port changes with a restart)
        out = subprocess.run([*CLI, "ingest", *args, "--batch", "64"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stderr.splitlines()[-1]
    logfile = tmp_path / "app.log"
    logfile.write_text("".join(f"2026-11-30 21:00:{i % 60:02d} job {i} done\n"
                               for i in range(300)))
    assert ingest(str(logfile)) == "ingested 300 records"
    assert ingest(str(logfile)) == ("ingested 300 records (300 of them already in the hub "
                                    "from an earlier run: not stored twice)")
    hub.stop()
    hub.start()
    assert "(300 of them already in the hub" in ingest(str(logfile))
    assert len(hub.all_ids("")) == 300
    time.sleep(0.01)
    logfile.write_text(logfile.read_text())            # written anew, the same lines
    assert ingest(str(logfile)) == "ingested 300 records"
    assert len(hub.all_ids("")) == 600
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        out = subprocess.run([*CLI, "ingest", "-"], input="backup done\n", env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.stderr.splitlines()[-1] == "ingested 1 records", out.stderr
    backups = hub.search("q=backup")["records"]
    assert len(backups) == 2 and {r["process"] for r in backups} == {"stdin"}


def test_cli_ingest_from_a_pipe_sends_as_it_goes(hub: Hub) -> None:
    """``tail -f app.log | mohlog ingest -``: lines are sent once the pipe is quiet for a
    second (with the entry held for lines that may continue it), not when a batch fills
    or the pipe ends."""
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([*CLI, "ingest", "-"], env=env, stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        with killed_on_error(proc):
            assert proc.stdin is not None
            proc.stdin.write("2026-11-30 21:00:00 first line\n"
                             "2026-11-30 21:00:01 ERROR second line\n  a traceback line\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 20
            while len(hub.search("q=line")["records"]) < 2:
                assert time.monotonic() < deadline, "nothing sent while the pipe is open"
                time.sleep(0.2)
            got = {r["message"]: r["level"] for r in hub.search("q=line")["records"]}
            assert got == {"first line": "INFO",
                           "ERROR second line\n  a traceback line": "ERROR"}
            proc.stdin.write("2026-11-30 21:00:02 third line\n")
            proc.stdin.close()
            assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(hub.search("q=line")["records"]) == 3


def test_cli_ingest_names_the_refused_record_of_the_file(hub: Hub, tmp_path: Path) -> None:
    """The hub names the line of its batch; the CLI says which record of the file that is,
    shows it, and what was stored before it; nothing after it is sent (batches go out
    while the next are read: those already read are dropped)."""
    lines = [orjson.dumps(entry(i)).decode() for i in range(400)]
    lines[129] = lines[129].replace('"INFO"', '"LOUD"')             # record 130
    nd = tmp_path / "x.ndjson"
    nd.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([*CLI, "ingest", str(nd), "--batch", "64"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert (f"{nd}: record 130 refused: unknown level 'LOUD'; nothing of its batch "
            "(records 129..192) was stored, the 128 before it were") in out.stderr, out.stderr
    assert '"id":"e00000129"' in out.stderr and "SECURITY" in out.stderr
    assert len(hub.all_ids("")) == 128


def test_cli_ingest_draws_a_progress_bar_on_a_terminal(hub: Hub, tmp_path: Path) -> None:
    """On a terminal (a pty here) the bar of bytes read is redrawn per batch up to 100 %;
    without one, one summary line per file."""
    import pty
    logfile = tmp_path / "app.log"
    logfile.write_text("".join(f"2026-11-30 21:00:{i % 60:02d} job {i} done\n"
                               for i in range(20_000)))
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, "ingest", str(logfile), "--batch", "1000"], env=env,
                            stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:                         # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(60) == 0, shown
    frames = [f for f in shown.decode().split("\r") if "[" in f]
    assert len(frames) >= 20, shown
    percents = [int(f.split("]")[1].split("%")[0]) for f in frames]
    assert percents == sorted(percents) and percents[-1] == 100 and percents[0] < 10
    assert "20,000 records" in frames[-1] and "ingested 20000 records" in shown.decode()
    plain = subprocess.run([*CLI, "ingest", str(logfile), "--batch", "1000"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert plain.stderr.splitlines()[0].startswith(f"{logfile}: 20000 records (")
    assert "[" not in plain.stderr and "\r" not in plain.stderr


def test_cli_export_to_a_file_is_whole_or_absent(hub: Hub, tmp_path: Path) -> None:
    """``mohlog export -o F`` writes F only once the export is whole; a hub killed
    mid-export leaves no F (nor its part file) and a clear error."""
    for k in range(20):
        hub.ingest([entry(k * 10_000 + i, message=f"export line {k * 10_000 + i} " + "x" * 200)
                    for i in range(10_000)])
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    whole = tmp_path / "whole.ndjson"
    out = subprocess.run([*CLI, "export", "-o", str(whole), "-f", "metadata.n<1000"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"bytes to {whole}" in out.stderr, out.stderr
    assert sorted(orjson.loads(x)["metadata"]["n"] for x in whole.read_bytes().splitlines()
                  ) == list(range(1000))
    piped = subprocess.run(f"set -o pipefail; {' '.join(CLI)} export | head -1",
                           shell=True, executable="/bin/bash", env=env, capture_output=True,
                           text=True, timeout=120)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr   # | head: quiet
    assert orjson.loads(piped.stdout)["message"].startswith("export line ")
    cut = tmp_path / "cut.ndjson"
    part = tmp_path / ".cut.ndjson.part"
    proc = subprocess.Popen([*CLI, "export", "-o", str(cut)], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert part.exists(), "the export did not start"
    hub.stop(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "export cut short after" in err, err
    assert f"{cut} not written" in err and not cut.exists() and not part.exists()


def test_cli_ingest_takes_the_fields_of_line_headers(hub: Hub, tmp_path: Path) -> None:
    """Plain lines keep the time, host, process, pid and level their headers give; lines
    without one (a traceback) join the entry of the line before; --raw keeps lines whole."""
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return out

    def found(*args: str) -> list[dict]:
        return [orjson.loads(x) for x in cli("search", *args, "--json").stdout.splitlines()]

    logs = ROOT / "tests" / "data" / "logs"
    cli("ingest", str(logs / "auth.log"), str(logs / "worker.log"), "--host", "fallback")
    sshd = sorted(found("-f", "process=sshd"), key=lambda r: r["timestamp"])
    at = calendar.timegm((2026, 11, 30, 21, 14, 15)) * 10**9      # 22:14:15+01:00
    assert [(r["host"], r["pid"], r["timestamp"] - at) for r in sshd] == [
        ("bastion", 4242, 3_000_000), ("bastion", 4242, 2_120_000_000)]
    assert sshd[0]["message"].startswith("Failed password for invalid user admin")
    assert sshd[1]["level"] == "ERROR" and sshd[0]["level"] == "INFO"
    assert {r["host"] for r in found("--host", "bastion", "--host", "nowhere")} == {"bastion"}
    assert len(found("--host", "bastion", "--host", "fallback")) == len(found())
    window = found("--start", "2026-11-30T21:14:00Z", "--end", "2026-11-30T21:16:00Z")
    assert sorted(r["process"] for r in window) == ["CRON", "sshd", "sshd"]
    # a time without an offset: the user's zone on the command line, UTC in the API
    tokyo = subprocess.run([*CLI, "search", "--json", "--since", "2026-12-01T06:14:00",
                            "--until", "2026-12-01T06:16:00"],     # (--start/--end alike)
                           env={**env, "TZ": "Asia/Tokyo"}, capture_output=True, text=True,
                           timeout=60)
    assert sorted(orjson.loads(x)["id"] for x in tokyo.stdout.splitlines()) == sorted(
        r["id"] for r in window), tokyo.stderr
    api = hub.search("start=2026-11-30T21:14:00&end=2026-11-30T21:16:00")["records"]
    assert sorted(r["id"] for r in api) == sorted(r["id"] for r in window)
    worker = sorted(found("-f", "process=worker.log"), key=lambda r: r["timestamp"])
    t0 = int(time.mktime((2026, 11, 30, 21, 0, 0, 0, 0, -1))) * 10**9
    assert [(r["timestamp"] - t0, r["level"], r["host"], r["metadata"]["line"])
            for r in worker] == [(250_000_000, "ERROR", "fallback", 1),
                                 (1_000_000_000, "INFO", "fallback", 5)]
    assert worker[0]["message"] == "ERROR worker: job 17 failed\n" \
        "Traceback (most recent call last):\n" \
        '  File "worker.py", line 3, in run\n' \
        "ValueError: bad input"                 # the traceback in the entry of its line
    assert [r["message"] for r in found('"ValueError: bad input"')] == [worker[0]["message"]]
    shown = cli("search", '"ValueError: bad input"').stdout.splitlines()
    assert shown[0].endswith("worker.log: ERROR worker: job 17 failed")
    assert shown[1:] == ["    Traceback (most recent call last):",       # indented under it
                         '      File "worker.py", line 3, in run', "    ValueError: bad input"]
    assert sorted(r["process"] for r in found("-f", "level>=ERROR")) == ["sshd", "worker.log"]
    cli("ingest", str(logs / "journal.json"))       # journalctl -o json | mohlog ingest -
    journal = sorted(found("-f", "source=journal"), key=lambda r: r["timestamp"])
    assert [(r["process"], r["level"], r["host"], r["pid"], r["metadata"]["unit"])
            for r in journal] == [("backup.sh", "ERROR", "bastion", 777, "backup.service"),
                                  ("sshd", "SECURITY", "bastion", 4242, "ssh.service"),
                                  ("app", "INFO", "bastion", 901, None)]
    assert journal[0]["timestamp"] == 1796181449200001000       # when the program logged
    assert journal[2]["message"] == "binary \ufffd tail"
    raw = tmp_path / "raw.log"
    line = (logs / "auth.log").read_text().splitlines()[0]
    raw.write_text(line + "\n")
    before = time.time_ns()
    cli("ingest", "--raw", str(raw))
    got = found("-f", "process=raw.log")
    assert [r["message"] for r in got] == [line] and got[0]["timestamp"] >= before


def test_cli_ingests_compressed_rotated_logs(hub: Hub, tmp_path: Path) -> None:
    """gzip, zstd, xz and bzip2 files (told by their first bytes) are read decompressed,
    a directory's files all; a missing or truncated one is a clear error."""
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    text = (ROOT / "tests" / "data" / "logs" / "worker.log").read_bytes()
    files = {"worker.log.1.gz": gzip.compress(text), "worker.log.2.zst":
             zstandard.ZstdCompressor().compress(text), "worker.log.3.xz": lzma.compress(text),
             "worker.log.4.bz2": bz2.compress(text), "worker.log.5": text}
    rotated = tmp_path / "rotated"
    rotated.mkdir()
    for name, data in files.items():
        (rotated / name).write_bytes(data)
    out = subprocess.run([*CLI, "ingest", str(tmp_path / "missing.log"), str(rotated)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "missing.log: no such file" in out.stderr, out.stderr
    assert hub.all_ids("") == []                    # nothing sent before the error
    out = subprocess.run([*CLI, "ingest", str(rotated)], env=env,   # a directory: its files
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ingested 10 records" in out.stderr, out.stderr
    got = subprocess.run([*CLI, "search", '"job 17 failed"', "--json"], env=env,
                         capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert sorted(orjson.loads(x)["process"] for x in got) == [
        f"worker.log.{i}" for i in range(1, 6)]
    assert {orjson.loads(x)["message"].count("\n") for x in got} == {3}
    (tmp_path / "cut.log.gz").write_bytes(gzip.compress(text * 50)[:-40])
    out = subprocess.run([*CLI, "ingest", str(tmp_path / "cut.log.gz")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "corrupt gzip data" in out.stderr, out.stderr


def test_cli_ingest_skips_binary_files(hub: Hub, tmp_path: Path) -> None:
    """``mohlog ingest /var/log`` meets wtmp, btmp, lastlog: binary data (a NUL byte in
    the first 8 KB, also once decompressed) is skipped with a note, not stored as lines of
    garbage; the text files beside it are ingested. Only binary given: exit 1."""
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    logs = tmp_path / "log"
    logs.mkdir()
    wtmp = bytes(range(256)) * 200                  # NULs and every other byte
    (logs / "wtmp").write_bytes(wtmp)
    (logs / "btmp.1.gz").write_bytes(gzip.compress(wtmp))
    (logs / "auth.log").write_text("Dec  2 08:00:00 box sshd[7]: Accepted key for ops\n")
    out = subprocess.run([*CLI, "ingest", str(logs)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "wtmp: skipped: binary data" in out.stderr
    assert "btmp.1.gz: skipped: binary data" in out.stderr
    assert "ingested 1 records; 2 binary file(s) skipped" in out.stderr
    assert [r["message"] for r in hub.search("limit=10")["records"]] == ["Accepted key for ops"]
    out = subprocess.run([*CLI, "ingest", "-"], input="a\0b\n", env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "standard input: skipped" in out.stderr, out.stderr
    assert len(hub.all_ids("")) == 1


def test_a_second_hub_on_the_same_data_is_refused(make_hub, tmp_path: Path) -> None:
    """Two hubs on one data directory would replay and remove each other's files: the
    second stops at once, saying which process holds it; a hub killed with -9 holds
    nothing (the kernel drops the lock)."""
    first = make_hub()
    first.ingest([entry(i) for i in range(50)])
    for cmd in (["hub", "--data", str(first.data), "--listen", "127.0.0.1:0"],
                ["run", "--data", str(first.data), "--listen", "127.0.0.1:0", "--no-agent"]):
        out = subprocess.run([*CLI, *cmd, "--no-embeddings"] if cmd[0] == "hub" else
                             [*CLI, *cmd], capture_output=True, text=True, timeout=60,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert out.returncode == 2, out.stderr
        assert f"data directory {first.data} is in use by another hub (pid " \
            f"{first.proc.pid})" in out.stderr, out.stderr
    assert len(first.all_ids("")) == 50          # the first one untouched, still serving
    first.stop(signal.SIGKILL)
    again = make_hub()                           # same data: starts
    assert len(again.all_ids("")) == 50


def test_a_hub_with_a_live_tail_stops_at_once_and_the_tail_comes_back(tmp_path: Path
                                                                      ) -> None:
    """SIGTERM ends the hub's live tails, so it stops cleanly instead of waiting a minute
    for their clients; `mohlog tail` then connects again and first prints what was
    stored while it was away, nothing twice."""
    port, other = free_port(), free_port()
    hub = Hub(tmp_path / "data", {}, listen=f"127.0.0.1:{port}").start()
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    tail = subprocess.Popen([*CLI, "tail", "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(tail.stdout.readline, "")),
                     daemon=True).start()

    def seen(n: int) -> list[str]:
        deadline = time.monotonic() + 30
        while len(lines) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return [orjson.loads(x)["message"] for x in lines]
    try:
        with killed_on_error(tail):
            deadline, k = time.monotonic() + 30, 0
            while not lines:                # the tail is connected once it sees one
                assert time.monotonic() < deadline, "the tail printed nothing"
                hub.ingest([entry(100 + k, message="one")])
                k += 1
                time.sleep(0.5)
            assert hub.stop() == 0          # a clean exit, not a kill after 30 s
            t = max(orjson.loads(x)["timestamp"] for x in lines)
            away = Hub(tmp_path / "data", {}, listen=f"127.0.0.1:{other}").start()
            away.ingest([entry(1, message="two", timestamp=t + 10)])
            assert away.stop() == 0
            hub = Hub(tmp_path / "data", {}, listen=f"127.0.0.1:{port}").start()
            got = seen(len(set(lines)) + 1)
            assert got[-1] == "two", got    # the gap, fetched on connecting again
            hub.ingest([entry(2, message="three", timestamp=t + 20)])
            got = seen(len(lines) + 1)
            assert [m for m in got if m != "one"] == ["two", "three"], got
            assert len({orjson.loads(x)["id"] for x in lines}) == len(lines)
    finally:
        tail.terminate()
        err = tail.communicate(timeout=30)[1]
        hub.stop()
    assert "connecting again" in err, err


def test_tail_takes_its_query_as_search_does(hub: Hub) -> None:
    """``mohlog tail QUERY`` (as ``mohlog search QUERY``) prints only what matches."""
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    tail = subprocess.Popen([*CLI, "tail", "needle", "--json"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(tail.stdout.readline, "")),
                     daemon=True).start()
    try:
        with killed_on_error(tail):
            deadline, k = time.monotonic() + 30, 0
            while len(lines) < 2:
                assert time.monotonic() < deadline, "the tail printed nothing"
                hub.ingest([entry(2 * k, message="hay only"),
                            entry(2 * k + 1, message=f"a needle {k}")])
                k += 1
                time.sleep(0.3)
    finally:
        tail.terminate()
        tail.communicate(timeout=30)
    assert all(orjson.loads(x)["message"].startswith("a needle ") for x in lines), lines
    both = subprocess.run([*CLI, "tail", "a", "--q", "b"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert both.returncode == 1 and "give the query once" in both.stderr


def test_a_damaged_token_file_is_named_and_kept(make_hub, tmp_path: Path) -> None:
    """At start: the hub stops naming the file (it would otherwise make a new admin token
    and drop every other token). While running: the tokens known stay valid, an unknown
    one is a 401 (not a 500), and the log says why."""
    hub = make_hub()
    admin = hub.token
    tokens = hub.data / "tokens.json"
    good = tokens.read_bytes()
    tokens.write_bytes(good[: len(good) // 2])               # torn by hand
    assert hub.request("GET", "/api/v1/stats")[0] == 200     # known before: still valid
    assert hub.request("GET", "/api/v1/stats", token="mohlog_nope")[0] == 401
    deadline = time.monotonic() + 10
    while not any("tokens.json is damaged" in ln for ln in hub.output):
        assert time.monotonic() < deadline, hub.output
        time.sleep(0.05)
    hub.stop()
    out = subprocess.run([*CLI, "hub", "--data", str(hub.data), "--listen", "127.0.0.1:0",
                          "--no-embeddings"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and f"{tokens} is damaged" in out.stderr, out.stderr
    assert tokens.read_bytes() == good[: len(good) // 2]     # left for the operator
    assert (hub.data / "admin.token").read_text().strip() == admin


def test_tls(make_hub, tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    hub = make_hub(extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    assert hub.url.startswith("https://")
    env = {**os.environ, "MOHLOG_HUB": hub.url, "MOHLOG_TOKEN": hub.token,
           "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([*CLI, "stats", "--json", "--cacert", str(cert)], env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and '"records": 0' in ok.stdout, ok.stderr
    bad = subprocess.run([*CLI, "stats"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in bad.stderr


def test_mohlog_run_prints_url_and_token(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([*CLI, "run", "--no-agent", "--data", str(tmp_path / "d"),
                             "--listen", f"127.0.0.1:{port}"], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        lines = []
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "mohlog run: hub at" in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}" in text
        assert str(tmp_path / "d" / "admin.token") in text
        assert (tmp_path / "d" / "admin.token").exists()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_agent_of_mohlog_run_stops_when_run_is_killed(tmp_path: Path) -> None:
    """kill -9 of `mohlog run` (the hub in it): its local agent does not outlive it (a
    second `mohlog run` would otherwise capture beside a stray agent)."""
    port, metrics = free_port(), free_port()
    proc = subprocess.Popen(
        [*CLI, "run", "--data", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}",
         "--agent-args", f"--no-ebpf --metrics-listen 127.0.0.1:{metrics}"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    agent = 0
    with killed_on_error(proc):
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while not agent and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "mohlog run: local agent pid" in line:
                agent = int(line.split("pid")[1].split()[0])
                assert f"metrics http://127.0.0.1:{metrics}/metrics" in line
        assert agent and running(agent)
        deadline = time.monotonic() + 30          # the agent is up: its metrics answer
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", metrics), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        assert running(agent)
    assert ends_after_killing(proc, agent, 30), f"agent {agent} outlived `mohlog run`"


@pytest.mark.privileged
def test_disk_full_is_507_and_nothing_corrupted(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        hub = Hub(mnt / "data", {"flush_interval_s": 3600}).start()
        filler = mnt / "filler"
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        filler.write_bytes(b"\0" * max(0, free - 400_000))
        acked, status = [], 200
        for k in range(200):
            batch = [entry(k * 100 + i, message="x" * 200 + str(k * 100 + i))
                     for i in range(100)]
            status, res = hub.ingest(batch, key=f"b{k}")
            if status != 200:
                break
            acked += [e["id"] for e in batch]
        assert status == 507 and res["error"]["code"] == "insufficient_storage"
        assert acked
        filler.unlink()
        assert hub.ingest([entry(10**7)], key="after")[0] == 200
        hub.stop()
        hub.start()
        found = collections.Counter(hub.all_ids(""))
        assert all(found[i] == 1 for i in acked) and found[entry(10**7)["id"]] == 1
        hub.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
