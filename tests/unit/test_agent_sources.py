"""File tailing (rotation, truncation, restart) and syslog (both RFCs, UDP and TCP, real
clients: `logger` and Python's SysLogHandler)."""

from __future__ import annotations

import calendar
import logging
import logging.handlers
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sources.files import FilesSource
from agent.sources.syslog import SyslogSource, frames, parse


def _messages(src: FilesSource, path: Path) -> list[str]:
    return [e["message"] for e in src.poll(str(path))]


def test_tail_rotation_truncation_restart(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    state = tmp_path / "pos.json"
    log.write_text("one\ntwo\npart")
    src = FilesSource([str(tmp_path / "*.log")], state)
    assert _messages(src, log) == ["one", "two"]
    with open(log, "a") as f:
        f.write("ial\nthree\n")
    assert _messages(src, log) == ["partial", "three"]
    with open(log, "a") as f:
        f.write("four\n")
    log.rename(tmp_path / "app.log.1")            # rotation: rename, then a new file
    log.write_text("five\n")
    assert _messages(src, log) == ["four", "five"]
    src._save()
    again = FilesSource([str(tmp_path / "*.log")], state)   # restart: position kept
    assert _messages(again, log) == []
    with open(log, "a") as f:
        f.write("six\n")
    assert _messages(again, log) == ["six"]
    log.write_text("new\n")                        # truncation (copytruncate style)
    assert _messages(again, log) == ["new"]
    assert again.counters["truncations"] == 1


def test_truncated_and_rewritten_past_the_offset_is_read_again(tmp_path: Path) -> None:
    """copytruncate on a busy service: by the next look the new lines have outgrown the
    old offset. Seen by the bytes before the offset, at run time and across a restart."""
    log = tmp_path / "app.log"
    state = tmp_path / "pos.json"

    def tail(state: Path = state) -> FilesSource:
        return FilesSource([str(log)], state, multiline=False)

    log.write_text("".join(f"old line {i}\n" for i in range(5)))
    src = tail()
    assert len(_messages(src, log)) == 5
    new = [f"new line {i}" for i in range(8)]
    with open(log, "r+") as f:                       # truncate, then more than before
        f.truncate(0)
        f.write("".join(ln + "\n" for ln in new))
    assert _messages(src, log) == new
    assert src.counters["truncations"] == 1
    with open(log, "a") as f:                        # appending is not a rewrite
        f.write("appended\n")
    assert _messages(src, log) == ["appended"]
    assert src.counters["truncations"] == 1
    src._save()
    log.write_text("".join(f"while down {i}\n" for i in range(12)))   # agent stopped
    again = tail()
    assert _messages(again, log) == [f"while down {i}" for i in range(12)]
    again._save()
    assert _messages(tail(), log) == []                                 # and not twice


@pytest.mark.parametrize("damage", [b"", b"{not json", b"[1, 2]", b'{"x": 5}',
                                    b'{"x": [1, 2, 3]}', b'{"x": [1, 2, "zz"]}',
                                    b'{"x": [1]}', b'{"x": ["a", "b"]}'])
def test_a_damaged_position_state_reads_files_from_their_start(tmp_path: Path,
                                                                damage: bytes) -> None:
    """Whatever the state file holds, the agent starts: files are read from their start
    (records twice rather than lost)."""
    log = tmp_path / "app.log"
    log.write_text("one\ntwo\n")
    state = tmp_path / "pos.json"
    state.write_bytes(damage)
    src = FilesSource([str(tmp_path / "*.log")], state)
    assert _messages(src, log) == ["one", "two"]
    src._save()
    assert _messages(FilesSource([str(tmp_path / "*.log")], state), log) == []


def test_tailed_lines_take_their_header_fields(tmp_path: Path) -> None:
    logs = Path(__file__).resolve().parents[1] / "data" / "logs"
    log = tmp_path / "auth.log"
    shutil.copy(logs / "auth.log", log)
    src = FilesSource([str(log)], tmp_path / "pos.json", multiline_wait_s=0.3)
    got = src.poll(str(log))        # the last entry waits for lines that could join it
    time.sleep(0.4)
    got += src.poll(str(log))
    assert [(e["host"], e["process"], e["pid"], e["level"]) for e in got] == [
        ("bastion", "sshd", 4242, "INFO"), ("bastion", "sshd", 4242, "ERROR"),
        ("bastion", "CRON", 5001, "INFO"), ("bastion", "sudo", 5100, "INFO")]
    at = calendar.timegm((2026, 11, 30, 21, 14, 15)) * 10**9      # 22:14:15+01:00
    assert [e["timestamp"] - at for e in got] == [3_000_000, 2_120_000_000, 46_000_000_000,
                                                  135_500_000_000]
    assert got[0]["message"].startswith("Failed password for invalid user admin from")
    before = time.time_ns()
    raw = FilesSource([str(log)], tmp_path / "pos2.json", parse=False).poll(str(log))
    assert [e["message"] for e in raw] == log.read_text().splitlines()
    assert {e["process"] for e in raw} == {"auth.log"} and raw[0]["timestamp"] >= before
    plain = tmp_path / "plain.log"                 # no headers: one entry per line, at once
    plain.write_text("alpha\n  beta\ngamma\n")
    assert _messages(FilesSource([str(plain)], tmp_path / "pos3.json"), plain) == [
        "alpha", "  beta", "gamma"]


def test_tailed_traceback_joins_its_line_and_survives_a_restart(tmp_path: Path) -> None:
    log, state = tmp_path / "worker.log", tmp_path / "pos.json"
    head = "2026-11-30 21:00:00,250 ERROR worker: job 17 failed\n"
    trace = 'Traceback (most recent call last):\n  File "w.py", line 3, in run\n'
    log.write_text(head + trace)
    src = FilesSource([str(log)], state, multiline_wait_s=30)
    assert src.poll(str(log)) == []                 # held: more of it may come
    with open(log, "a") as f:
        f.write("ValueError: bad in")                 # and a partial line
    assert src.poll(str(log)) == []
    src._save()                                     # stopped here: nothing handed on
    again = FilesSource([str(log)], state, multiline_wait_s=30)
    with open(log, "a") as f:
        f.write("put\n\n2026-11-30 21:00:01,000 INFO worker: job 18 done\n")
    got = again.poll(str(log))
    assert [e["message"] for e in got] == [
        "ERROR worker: job 17 failed\n" + trace + "ValueError: bad input"]
    assert got[0]["level"] == "ERROR"
    again._save()
    third = FilesSource([str(log)], state, multiline_wait_s=0)
    assert [e["message"] for e in third.poll(str(log))] == ["INFO worker: job 18 done"]
    third._save()
    third.multiline_wait_s = 30
    with open(log, "a") as f:
        f.write("2026-11-30 21:00:02,000 WARNING worker: job 19 slow\n")
    assert third.poll(str(log)) == []
    log.rename(tmp_path / "worker.log.1")           # rotation hands on what was held
    log.write_text("2026-11-30 21:00:03,000 INFO worker: job 20 done\n")
    assert [e["message"] for e in third.poll(str(log))] == ["WARNING worker: job 19 slow"]
    third._save()
    fourth = FilesSource([str(log)], state, multiline_wait_s=0)
    assert [e["message"] for e in fourth.poll(str(log))] == ["INFO worker: job 20 done"]


def test_a_deleted_file_hands_on_what_was_held(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("2026-11-30 21:00:00 ERROR boom\n  at frame 1\npartial line")
    src = FilesSource([str(log)], tmp_path / "pos.json", multiline_wait_s=30)
    assert src.poll(str(log)) == []
    log.unlink()
    assert [e["message"] for e in src.poll(str(log))] == [
        "ERROR boom\n  at frame 1\npartial line"]
    assert src.poll(str(log)) == []


def test_compressed_rotated_files_a_glob_catches_are_skipped(tmp_path: Path) -> None:
    import gzip
    (tmp_path / "syslog").write_text("Dec  1 10:00:00 h app: live line\n")
    (tmp_path / "syslog.2.gz").write_bytes(gzip.compress(b"Nov 30 10:00:00 h app: old\n"))
    src = FilesSource([str(tmp_path / "syslog*")], tmp_path / "pos.json", multiline_wait_s=0)
    got = [e["message"] for p in src.paths() for e in src.poll(p)]
    assert got == ["live line"] and src.counters["compressed_skipped"] == 1
    assert [e for p in src.paths() for e in src.poll(p)] == []    # and not read later


def test_syslog_parsing_both_rfcs() -> None:
    e = parse(b"<34>Oct 11 22:14:15 mymachine su[231]: 'su root' failed for lonvick")
    assert (e["host"], e["process"], e["pid"], e["level"]) == ("mymachine", "su", 231,
                                                               "SECURITY")
    assert e["message"] == "'su root' failed for lonvick"
    e = parse(b'<165>1 2003-10-11T22:14:15.003Z host.example app 42 ID47 '
              b'[exampleSDID@32473 iut="3"] An application event')
    assert (e["host"], e["process"], e["pid"], e["level"]) == ("host.example", "app", 42,
                                                               "INFO")
    assert e["message"] == "An application event"
    assert e["timestamp"] == 1065910455003000000
    assert parse(b"no header at all")["message"] == "no header at all"
    msgs, rest = frames(b"11 <13>hello 1<13>nl line\n9 <13>x")
    assert msgs == [b"<13>hello 1", b"<13>nl line"] and rest == b"9 <13>x"


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("logger") is None, reason="logger (bsdutils) missing")
def test_syslog_udp_and_tcp_from_real_clients() -> None:
    udp, tcp = _free(socket.SOCK_DGRAM), _free(socket.SOCK_STREAM)
    src = SyslogSource([f"127.0.0.1:{udp}"], [f"127.0.0.1:{tcp}"])
    got: list[dict] = []
    lock = threading.Lock()

    def emit(entries: list[dict]) -> None:
        with lock:
            got.extend(entries)
    src.start(emit)
    try:
        subprocess.run(["logger", "-n", "127.0.0.1", "-P", str(udp), "-d", "--rfc5424",
                        "-t", "udpapp", "over udp 5424"], check=True)
        subprocess.run(["logger", "-n", "127.0.0.1", "-P", str(tcp), "-T", "--rfc3164",
                        "-t", "tcpapp", "-p", "user.err", "over tcp 3164"], check=True)
        h = logging.handlers.SysLogHandler(("127.0.0.1", tcp), socktype=socket.SOCK_STREAM)
        h.append_nul = False
        rec = logging.LogRecord("py", logging.WARNING, __file__, 1, "from python %d", (7,),
                                None)
        h.setFormatter(logging.Formatter("pyapp: %(message)s\n"))
        h.emit(rec)
        h.close()
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        src.stop()
    by = {e["process"]: e for e in got}
    assert by["udpapp"]["message"] == "over udp 5424"
    assert by["udpapp"]["metadata"]["rfc"] == 5424
    assert by["tcpapp"]["message"] == "over tcp 3164" and by["tcpapp"]["level"] == "ERROR"
    assert "from python 7" in by["pyapp"]["message"] or any(
        "from python 7" in e["message"] for e in got)
    assert os.getpid() > 0


def test_journal_record_to_entry() -> None:
    """Fields of journalctl -o json records (as journalctl prints them) → entries."""
    from agent.sources.journal import to_entry
    e = to_entry({"__REALTIME_TIMESTAMP": "1796181449202749",
                  "_SOURCE_REALTIME_TIMESTAMP": "1796181449200001", "PRIORITY": "5",
                  "SYSLOG_FACILITY": "4", "SYSLOG_IDENTIFIER": "sshd", "_COMM": "sshd",
                  "_PID": "812", "_HOSTNAME": "web1", "_SYSTEMD_UNIT": "ssh.service",
                  "_TRANSPORT": "syslog", "MESSAGE": "Failed password for root"}, "me")
    assert (e["timestamp"], e["level"], e["process"], e["pid"], e["host"]) == (
        1796181449200001000, "SECURITY", "sshd", 812, "web1")
    assert e["metadata"] == {"unit": "ssh.service", "transport": "syslog", "priority": 5,
                             "facility": 4}
    e = to_entry({"__REALTIME_TIMESTAMP": "1796181449202749", "_COMM": "app",
                  "SYSLOG_PID": "9", "MESSAGE": [104, 105, 255], "_EXE": "/usr/bin/app",
                  "_TRANSPORT": "stdout"}, "me")
    assert (e["timestamp"], e["level"], e["process"], e["pid"], e["host"], e["message"]) == (
        1796181449202749000, "INFO", "app", 9, "me", "hi\ufffd")
    assert e["metadata"]["exe"] == "/usr/bin/app"
    e = to_entry({"__REALTIME_TIMESTAMP": "1", "PRIORITY": "x", "MESSAGE": None}, "me")
    assert (e["level"], e["message"], e["process"], e["pid"]) == ("INFO", "", "", 0)


def test_a_source_that_fails_is_started_again(tmp_path: Path) -> None:
    """A tailed path that cannot be read any more (here a directory where the file was:
    reading it fails) ended the files source's thread, and the agent collected nothing
    more from files. The source is started again, and goes on once the file is back."""
    log = tmp_path / "app.log"
    log.write_text("one\n")
    src = FilesSource([str(log)], tmp_path / "pos.json", poll_s=0.05, multiline=False)
    got: list[str] = []
    lock = threading.Lock()

    def emit(entries: list[dict]) -> None:
        with lock:
            got.extend(e["message"] for e in entries)

    def wait(cond: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 15
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.05)
    src.start(emit)
    try:
        wait(lambda: "one" in got)
        log.unlink()
        log.mkdir()                                  # stat works, reading fails
        (log / "x").write_bytes(b"x" * 10_000)
        wait(lambda: src.counters["restarts"] >= 1)
        shutil.rmtree(log)
        log.write_text("two\n")
        wait(lambda: "two" in got)
    finally:
        src.stop()
    assert got == ["one", "two"] and src.counters["restarts"] >= 1
