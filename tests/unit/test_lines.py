"""Headers of plain log lines (mohlog.lines): each format on real lines, year inference,
local time, levels, and the loghub corpora checked against their structured CSVs."""

from __future__ import annotations

import calendar
import csv
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mohlog import lines
from mohlog.lines import LineParser, Records, level_of

LOGHUB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "loghub"
NOW = calendar.timegm((2026, 12, 2, 3, 0, 0)) * 10**9     # 2026-12-02T03:00:00Z


def utc(*fields: int, ns: int = 0) -> int:
    return calendar.timegm(fields) * 10**9 + ns


def local(*fields: int, ns: int = 0) -> int:
    return int(time.mktime((*fields, 0, 0, -1))) * 10**9 + ns


def parse(line: str) -> dict:
    return LineParser(lambda: NOW).parse(line)


def test_rsyslog_rfc3339() -> None:
    got = parse("2026-12-01T13:18:10.123456+01:00 web1 sshd[812]: Accepted password for "
                "bob from 10.0.0.7 port 5123 ssh2")
    assert got == {"format": "rfc3339", "timestamp": utc(2026, 12, 1, 12, 18, 10, ns=123456000),
                   "host": "web1", "process": "sshd", "pid": 812,
                   "message": "Accepted password for bob from 10.0.0.7 port 5123 ssh2"}
    got = parse("2026-12-01T13:18:10Z web1 kernel: [ 12.5] eth0: link up")
    assert (got["timestamp"], got["process"], got["message"]) == (
        utc(2026, 12, 1, 13, 18, 10), "kernel", "[ 12.5] eth0: link up")
    assert "pid" not in got


def test_bsd_syslog_year_is_the_latest_not_ahead() -> None:
    got = parse("Dec  1 13:18:10 web1 sudo[77]: pam_unix(sudo:session): session opened")
    assert got["timestamp"] == local(2026, 12, 1, 13, 18, 10)
    assert (got["host"], got["process"], got["pid"]) == ("web1", "sudo", 77)
    assert got["message"] == "pam_unix(sudo:session): session opened"
    # two days ahead of now at most, else last year's
    assert parse("Dec  3 10:00:00 h a: x")["timestamp"] == local(2026, 12, 3, 10, 0, 0)
    assert parse("Dec 30 10:00:00 h a: x")["timestamp"] == local(2025, 12, 30, 10, 0, 0)
    # a tag with a space: the host, then the rest of the line
    got = parse("Jun 19 04:09:11 combo syslogd 1.4.1: restart.")
    assert (got["host"], got["message"], "process" in got) == (
        "combo", "syslogd 1.4.1: restart.", False)


def test_apache_nginx_clf_logcat() -> None:
    got = parse("[Sun Dec 04 04:47:44 2005] [error] mod_jk child workerEnv in error state 6")
    assert (got["timestamp"], got["level"], got["message"]) == (
        local(2005, 12, 4, 4, 47, 44), "ERROR", "mod_jk child workerEnv in error state 6")
    got = parse("[Tue Dec 01 13:18:10.551 2026] [proxy:warn] [pid 41:tid 99] AH01144: busy")
    assert (got["timestamp"], got["level"], got["pid"], got["tid"], got["message"]) == (
        local(2026, 12, 1, 13, 18, 10, ns=551_000_000), "WARNING", 41, 99, "AH01144: busy")
    assert parse("[Tue Dec 01 13:18:10 2026] [core:trace3] x")["level"] == "TRACE"
    got = parse("2026/12/01 13:18:10 [crit] 1234#0: *5 open() failed (24: Too many open files)")
    assert (got["timestamp"], got["level"], got["pid"], got["tid"], got["message"]) == (
        local(2026, 12, 1, 13, 18, 10), "CRITICAL", 1234, 0,
        "*5 open() failed (24: Too many open files)")
    line = '10.0.0.7 - bob [01/Dec/2026:13:18:10 -0500] "GET /a HTTP/1.1" 200 512 "-" "curl"'
    got = parse(line)
    assert (got["timestamp"], got["message"], "level" in got) == (
        utc(2026, 12, 1, 18, 18, 10), line, False)
    got = parse("03-17 16:13:38.811  1702  2395 E ActivityManager : ANR in com.x")
    assert (got["timestamp"], got["level"], got["pid"], got["tid"], got["process"],
            got["message"]) == (local(2026, 3, 17, 16, 13, 38, ns=811_000_000), "ERROR", 1702,
                                2395, "ActivityManager", "ANR in com.x")


def test_iso_forms() -> None:
    got = parse("2026-12-01 13:18:10 status installed libc-bin:amd64 2.36-9")   # dpkg
    assert got == {"format": "iso", "timestamp": local(2026, 12, 1, 13, 18, 10),
                   "message": "status installed libc-bin:amd64 2.36-9"}
    got = parse("2026-12-01 13:18:10,042 WARNING urllib3.connectionpool: Retrying")
    assert (got["timestamp"], got["level"]) == (local(2026, 12, 1, 13, 18, 10, ns=42_000_000),
                                                "WARNING")
    got = parse("2026-12-01 13:18:10.120 UTC [4711] FATAL:  password authentication failed")
    assert (got["timestamp"], got["pid"], got["level"], got["message"]) == (
        utc(2026, 12, 1, 13, 18, 10, ns=120_000_000), 4711, "CRITICAL",
        "FATAL:  password authentication failed")
    got = parse('2026-12-01T13:18:10.5-03:00 level=error msg="disk full"')
    assert (got["timestamp"], got["level"]) == (utc(2026, 12, 1, 16, 18, 10, ns=500_000_000),
                                                "ERROR")
    got = parse("17/06/09 20:10:40 INFO spark.SecurityManager: Changing view acls")
    assert (got["timestamp"], got["level"]) == (local(2017, 6, 9, 20, 10, 40), "INFO")
    got = parse("081109 203615 148 WARN dfs.DataNode: Slow BlockReceiver")
    assert (got["timestamp"], got["level"], got["pid"]) == (local(2008, 11, 9, 20, 36, 15),
                                                            "WARNING", 148)


def test_not_a_date_is_not_parsed() -> None:
    for line in ("2026-13-01 00:00:00 month 13", "2026-02-30 10:00:00 no such day",
                 "2026-12-01 25:00:00 hour 25", "1234 5678 just numbers", "",
                 "worker 3 finished job 21"):
        got = parse(line)
        assert "timestamp" not in got and "format" not in got, line
    assert parse("2024-02-29 10:00:00 leap day")["timestamp"] == local(2024, 2, 29, 10, 0, 0)


def test_levels_from_the_first_words() -> None:
    cases = {"ERROR something broke": "ERROR", "error: kex_exchange_identification": "ERROR",
             "[warn] slow": "WARNING", "<Info> up": "INFO", "app [DEBUG] x": "DEBUG",
             "ts=1 level=warn msg=x": "WARNING", 'lvl="crit" x': "CRITICAL",
             "W: not a level": None, "info about the thing": None,
             "Accepted password for ERROR from": None, "FATAL": "CRITICAL",
             "the ERROR word": "ERROR", "a b c ERROR": None}
    for msg, want in cases.items():
        assert level_of(msg) == want, msg


def test_fields_carry_the_time_to_lines_without_a_header() -> None:
    p = LineParser(lambda: NOW)
    assert "timestamp" not in p.fields("before any header")
    first = p.fields("2026-12-01 13:18:10 ERROR java.lang.IllegalStateException: boom")
    trace = p.fields("\tat com.example.Worker.run(Worker.java:42)")
    assert first["level"] == "ERROR" and "format" not in first
    assert trace == {"timestamp": first["timestamp"],
                     "message": "\tat com.example.Worker.run(Worker.java:42)"}


def test_records_join_lines_without_a_header() -> None:
    rec = Records(LineParser(lambda: NOW), max_lines=5)
    out = []
    lines = ["orphan before any header", "2026-12-01 10:00:00 ERROR boom", "Traceback:",
             "", "  frame 1", "", "2026-12-01 10:00:01 INFO next", "a", "b", "c", "d", "e"]
    held = []
    for n, line in enumerate(lines, 1):
        out += rec.add(line, len(line) + 1, n)
        held.append(rec.pending_bytes)
    assert held[8] == sum(len(x) + 1 for x in lines[6:9])       # "INFO next", a, b held
    out += rec.flush()
    t = local(2026, 12, 1, 10, 0, 0)
    assert [(f["message"], f.get("timestamp"), f.get("level"), size, tag)
            for f, size, tag in out] == [
        ("orphan before any header", None, None, 25, 1),
        ("ERROR boom\nTraceback:\n\n  frame 1", t, "ERROR",
         sum(len(x) + 1 for x in lines[1:6]), 2),        # blank lines inside kept, after not
        ("INFO next\na\nb\nc\nd", t + 10**9, "INFO",
         sum(len(x) + 1 for x in lines[6:11]), 7),
        ("e", t + 10**9, None, 2, 12)]                    # past max_lines: a line of its own
    assert rec.flush() == [] and rec.pending_bytes == 0


def test_naive_times_are_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/usr/share/zoneinfo/America/New_York").exists():
        pytest.skip("no tzdata")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    lines._local_hour.cache_clear()
    try:
        assert parse("2026-07-01 12:00:00 summer")["timestamp"] == utc(2026, 7, 1, 16, 0, 0)
        assert parse("2026-01-01 12:00:00 winter")["timestamp"] == utc(2026, 1, 1, 17, 0, 0)
        assert parse("2026-01-01T12:00:00Z z")["timestamp"] == utc(2026, 1, 1, 12, 0, 0)
    finally:
        monkeypatch.undo()
        time.tzset()
        lines._local_hour.cache_clear()


# ---- loghub: every line against the fields of its structured CSV ---------------------
def _rows(name: str) -> Iterator[tuple[str, dict[str, str]]]:
    log = LOGHUB / name / f"{name}_2k.log"
    if not log.exists():
        pytest.skip(f"{log} absent")
    with open(log, encoding="utf-8", errors="replace") as f:
        raw = f.read().splitlines()
    with open(LOGHUB / name / f"{name}_2k.log_structured.csv", encoding="utf-8",
              errors="replace", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(raw)
    yield from zip(raw, rows, strict=True)


def _wall(ts: int) -> tuple[int, ...]:
    t = time.localtime(ts // 10**9)
    return (t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


_MON = {m: i for i, m in lines.MONTHS.items()}


def _expected(name: str, r: dict[str, str]) -> tuple[tuple[int, ...], str | None, int | None]:
    """(month, day, h, m, s), level, pid that the CSV gives for a line of ``name``."""
    def hms(s: str) -> tuple[int, ...]:
        return tuple(int(x) for x in s.replace(",", ".").split(".")[0].split(":"))
    if name == "Android":
        mo, d = r["Date"].split("-")
        return ((int(mo), int(d), *hms(r["Time"])), lines._LOGCAT[r["Level"]], int(r["Pid"]))
    if name == "Apache":
        _, mon, d, t, _ = r["Time"].split()
        return ((lines.MONTHS[mon], int(d), *hms(t)), lines.LEVEL_NAMES[r["Level"].upper()],
                None)
    if name == "HDFS":
        d, t = r["Date"], r["Time"].zfill(6)
        return ((int(d[2:4]), int(d[4:6]), int(t[:2]), int(t[2:4]), int(t[4:])),
                lines.LEVEL_NAMES[r["Level"]], int(r["Pid"]))
    if name == "Linux":
        return ((lines.MONTHS[r["Month"]], int(r["Date"]), *hms(r["Time"])), None,
                int(r["PID"]) if r["PID"] else None)
    if name == "OpenSSH":
        return ((lines.MONTHS[r["Date"]], int(r["Day"]), *hms(r["Time"])), None,
                int(r["Pid"]))
    if name == "Spark":
        _, mo, d = r["Date"].split("/")
        return ((int(mo), int(d), *hms(r["Time"])), lines.LEVEL_NAMES[r["Level"]], None)
    assert name == "Zookeeper"
    _, mo, d = r["Date"].split("-")
    return ((int(mo), int(d), *hms(r["Time"])), lines.LEVEL_NAMES[r["Level"]], None)


@pytest.mark.data
@pytest.mark.parametrize("name", ["Android", "Apache", "HDFS", "Linux", "OpenSSH", "Spark",
                                  "Zookeeper"])
def test_loghub_lines_match_their_structured_fields(name: str) -> None:
    p = LineParser(lambda: NOW)
    n = 0
    for line, row in _rows(name):
        got = p.parse(line)
        wall, level, pid = _expected(name, row)
        assert "timestamp" in got, line
        assert _wall(got["timestamp"]) == wall, line
        assert got["message"].strip().endswith(row["Content"].strip()), line
        if level is not None:
            assert got.get("level") == level, line
        if pid is not None:
            assert got.get("pid") == pid, line
        n += 1
    assert n == 2000
    assert os.environ.get("TZ") != "America/New_York"    # the local-time test cleaned up
