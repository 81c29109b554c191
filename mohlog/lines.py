"""The header of a plain log line: its time, level, host, process, pid and thread.

``mohlog ingest`` and the agent's file tailing send a plain line with the fields its
header holds instead of the time it was read. Recognised headers, tried in this order
(the first that matches wins, so a line parses the same whatever came before it):

============  =========================================================================
rfc3339       ``2026-12-01T13:18:10.123456+01:00 web1 sshd[812]: msg`` (rsyslog's
              default on Debian 12, journalctl -o short-iso)
bsd           ``Dec  1 13:18:10 web1 sshd[812]: msg`` (RFC 3164 files; the year is the
              latest one that does not put the line more than two days in the future)
apache        ``[Sun Dec 04 04:47:44 2005] [notice] msg``, ``[... 2026] [core:error]
              [pid 12:tid 34] msg`` (Apache error log)
nginx         ``2026/12/01 13:18:10 [error] 1234#5678: msg`` (nginx error log)
clf           ``10.0.0.7 - - [01/Dec/2026:13:18:10 +0000] "GET / HTTP/1.1" 200 ...``
              (access logs: the line is kept whole)
logcat        ``03-17 16:13:38.811  1702  2395 D WindowManager: msg`` (Android)
iso           ``2026-12-01 13:18:10,123 ...``, ``2026-12-01T13:18:10Z ...``,
              ``2026-12-01 13:18:10.123 UTC [812] LOG: ...`` (dpkg, Python logging,
              PostgreSQL, most applications)
yymmdd        ``17/06/09 20:10:40 INFO ...`` (log4j's yy/MM/dd), ``081109 203615 148 INFO
              ...`` (HDFS: then a thread number, taken as the pid)
============  =========================================================================

A time without a zone is local time. The message is the rest of the line after the
header (after the tag for syslog forms, the whole line for access logs). A level is taken
from the format (syslog has none in files) or else from the first words of the message:
``ERROR``, ``[error]``, ``warn:``, ``<INFO>``, ``level=error``. Lines that match no header
keep the defaults they are given: the time they were read, the level asked for.

``Records`` groups a file's lines into entries: the lines without a header after a line
with one (a traceback) are part of its entry.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}

# Level names found in log lines (upper-cased) → mohlog levels.
LEVEL_NAMES = {
    "TRACE": "TRACE", "FINEST": "TRACE", "FINER": "TRACE",
    "DEBUG": "DEBUG", "DBG": "DEBUG", "FINE": "DEBUG",
    "INFO": "INFO", "INF": "INFO", "NOTICE": "INFO", "LOG": "INFO",
    "WARN": "WARNING", "WARNING": "WARNING", "WRN": "WARNING",
    "ERROR": "ERROR", "ERR": "ERROR", "EROR": "ERROR",
    "CRIT": "CRITICAL", "CRITICAL": "CRITICAL", "FATAL": "CRITICAL", "SEVERE": "CRITICAL",
    "ALERT": "CRITICAL", "EMERG": "CRITICAL", "EMERGENCY": "CRITICAL", "PANIC": "CRITICAL",
}
_LOGCAT = {"V": "TRACE", "D": "DEBUG", "I": "INFO", "W": "WARNING", "E": "ERROR",
           "F": "CRITICAL", "A": "CRITICAL"}

_FRAC = r"(?P<frac>[.,]\d{1,9})?"
_TIME = r"(?P<H>\d\d):(?P<M>\d\d):(?P<S>\d\d)" + _FRAC
_TAG = r"(?P<host>\S+) (?P<tag>[^:\[\s]{1,64})(?:\[(?P<pid>\d+)\])?:(?: (?P<msg>.*)|$)"
_MON = r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"

_FORMATS: list[tuple[str, re.Pattern[str]]] = [
    ("rfc3339", re.compile(r"(?P<y>\d{4})-(?P<m>\d\d)-(?P<d>\d\d)T" + _TIME +
                           r"(?P<tz>Z|[+-]\d\d:?\d\d) " + _TAG, re.S)),
    ("bsd", re.compile(_MON + r" {1,2}(?P<d>\d{1,2}) " + _TIME + r" " + _TAG, re.S)),
    ("bsd", re.compile(_MON + r" {1,2}(?P<d>\d{1,2}) " + _TIME + r" (?P<host>\S+) +"
                       r"(?P<tag>[^:\[]{1,64}?)\[(?P<pid>\d+)\]:(?: (?P<msg>.*)|$)", re.S)),
    ("bsd", re.compile(_MON + r" {1,2}(?P<d>\d{1,2}) " + _TIME + r" (?P<host>\S+) +(?P<msg>.*)",
                       re.S)),          # tags with a space: "-- root[2421]:", "syslogd 1.4.1:"
    ("apache", re.compile(r"\[[A-Z][a-z]{2} " + _MON + r" (?P<d>\d\d) " + _TIME +
                          r" (?P<y>\d{4})\] \[(?:[\w-]+:)?(?P<level>[a-z]+)\d?\] "
                          r"(?:\[pid (?P<pid>\d+)(?::tid (?P<tid>\d+))?\] )?(?P<msg>.*)",
                          re.S)),
    ("nginx", re.compile(r"(?P<y>\d{4})/(?P<m>\d\d)/(?P<d>\d\d) " + _TIME +
                         r" \[(?P<level>[a-z]+)\] (?P<pid>\d+)#(?P<tid>\d+): (?P<msg>.*)", re.S)),
    ("clf", re.compile(r"\S+ \S+ \S+ \[(?P<d>\d\d)/" + _MON + r"/(?P<y>\d{4}):" + _TIME +
                       r" (?P<tz>[+-]\d{4})\] \"", re.S)),
    ("logcat", re.compile(r"(?P<m>\d\d)-(?P<d>\d\d) " + _TIME + r" +(?P<pid>\d+) +(?P<tid>\d+)"
                          r" (?P<level>[VDIWEFA]) (?P<tag>[^:]*?) *: (?P<msg>.*)", re.S)),
    ("iso", re.compile(r"(?P<y>\d{4})-(?P<m>\d\d)-(?P<d>\d\d)[T ]" + _TIME +
                       r"(?:(?P<tz>Z|[+-]\d\d:?\d\d)| (?P<utc>UTC|GMT))?"
                       r"(?:[ \t]+(?:\[(?P<pid>\d+)\] )?(?P<msg>.*)|$)", re.S)),
    ("yymmdd", re.compile(r"(?P<yy>\d\d)(?:/(?P<m>\d\d)/(?P<d>\d\d) " + _TIME +
                          r"|(?P<m2>\d\d)(?P<d2>\d\d) (?P<H2>\d\d)(?P<M2>\d\d)(?P<S2>\d\d)"
                          r" (?P<pid>\d+)) (?P<msg>.*)", re.S)),
]
_YEARLESS = ("bsd", "logcat")
_UNSEEN: Any = object()

_LEVEL_WORD = re.compile(r"(?:[\[<(]?(?P<w>[A-Za-z]{3,9})[\]>)]?:?|"
                         r"(?:level|lvl|severity)=\"?(?P<kv>[A-Za-z]{3,9})\"?,?)$")


COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"),
                     (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"))


def compression_of(head: bytes) -> str | None:
    """The compression a file's first bytes name (gzip, zstd, xz, bzip2), or None."""
    return next((kind for magic, kind in COMPRESSION_MAGIC if head.startswith(magic)), None)


class LineParser:
    """Parses lines; ``now_ns`` gives the year of year-less forms (default: the clock at
    each call)."""

    def __init__(self, now_ns: Callable[[], int] = time.time_ns) -> None:
        self.now_ns = now_ns
        self.last_ts: int | None = None
        self._seconds: dict[tuple[Any, ...], int | None] = {}

    def fields(self, line: str, parsed: dict[str, Any] | None = None) -> dict[str, Any]:
        """The entry fields of one line of a file: ``message`` (the rest after the
        header), the ``timestamp`` of its header or else of the last line that had one
        (a stack trace's lines keep the time of the line they follow; none before the
        first), and level, host, process, pid, tid when the line gives them. ``parsed``:
        what ``parse(line)`` gave, when the caller has it."""
        out = self.parse(line) if parsed is None else parsed
        out.pop("format", None)
        out.setdefault("message", line)
        if "timestamp" in out:
            self.last_ts = out["timestamp"]
        elif self.last_ts is not None:
            out["timestamp"] = self.last_ts
        return out

    def parse(self, line: str) -> dict[str, Any]:
        """The fields the header of ``line`` gives ({} when none): timestamp (ns), level,
        host, process, pid, tid, message, and ``format`` (its name)."""
        for name, rx in _FORMATS:
            m = rx.match(line)
            if m is not None:
                out = _fields(name, m, line, self.now_ns, self._seconds)
                if out is not None:
                    return out
        level = level_of(line)
        return {"level": level} if level else {}


class Records:
    """The lines of one file grouped into records. A line with a header starts a record;
    the lines after it without one (a traceback, a wrapped message, blank lines between)
    are added to its message, up to ``max_lines`` lines or ``max_bytes``. A line without a
    header and no record before it is a record of its own (``LineParser.fields``), so a
    file without headers gives one record per line. Each record comes as (fields, raw
    bytes of its lines, the ``tag`` of its first line): a tailer saves its position before
    the bytes of the record it holds, ``mohlog ingest`` tags lines with their numbers."""

    def __init__(self, parser: LineParser | None = None, max_lines: int = 1000,
                 max_bytes: int = 1 << 20) -> None:
        self.parser = parser or LineParser()
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self._head: dict[str, Any] | None = None
        self._tag: Any = None
        self._more: list[str] = []
        self.pending_bytes = 0      # raw bytes of the record held
        self.since = 0.0            # time.monotonic() when it started

    def add(self, line: str, raw_bytes: int, tag: Any = None
            ) -> list[tuple[dict[str, Any], int, Any]]:
        """The records ``line`` (of ``raw_bytes`` bytes in the file) completes."""
        parsed = self.parser.parse(line) if line.strip() else {}
        if "format" not in parsed:
            if self._head is None:
                return [(self.parser.fields(line, parsed), raw_bytes, tag)] \
                    if line.strip() else []
            if len(self._more) + 1 < self.max_lines and \
                    self.pending_bytes + raw_bytes <= self.max_bytes:
                self._more.append(line)
                self.pending_bytes += raw_bytes
                return []
            return [*self.flush(), (self.parser.fields(line, parsed), raw_bytes, tag)]
        out = self.flush()
        self._head, self._tag = self.parser.fields(line, parsed), tag
        self.pending_bytes, self.since = raw_bytes, time.monotonic()
        return out

    def flush(self) -> list[tuple[dict[str, Any], int, Any]]:
        """The record held, if any (its lines end it)."""
        if self._head is None:
            return []
        head = self._head
        while self._more and not self._more[-1].strip():
            self._more.pop()                      # blank lines after it: not part of it
        if self._more:
            head["message"] = "\n".join([head["message"], *self._more])
        out = [(head, self.pending_bytes, self._tag)]
        self._head, self._tag, self._more, self.pending_bytes = None, None, [], 0
        return out


def level_of(msg: str) -> str | None:
    """The level named by one of the first three words of ``msg``: an upper-case level
    name, or one in any case inside brackets or before a colon, or ``level=...``."""
    for word in msg.split(None, 3)[:3]:
        m = _LEVEL_WORD.match(word)
        if m is None:
            continue
        w = m.group("w")
        if w is not None:
            decorated = word != w
            if (decorated or w.isupper()) and w.upper() in LEVEL_NAMES:
                return LEVEL_NAMES[w.upper()]
        elif m.group("kv").upper() in LEVEL_NAMES:
            return LEVEL_NAMES[m.group("kv").upper()]
    return None


def _fields(name: str, m: re.Match[str], line: str, now_ns: Callable[[], int],
            seconds: dict[tuple[Any, ...], int | None]) -> dict[str, Any] | None:
    """The fields of a line ``m`` matched (None when its date is not one); ``seconds``
    caches the epoch second of a header's time text (lines of a second share it)."""
    g = m.groupdict()
    tz = "Z" if g.get("utc") else g.get("tz")
    key = (name, line[:m.end("S") if g["S"] is not None else m.end("S2")], tz,
           now_ns() // 86_400_000_000_000 if name in _YEARLESS else 0)
    secs = seconds.get(key, _UNSEEN)
    if secs is _UNSEEN:
        if len(seconds) > 4096:
            seconds.clear()
        secs = seconds[key] = _seconds(name, g, tz, now_ns)
    if secs is None:
        return None
    frac = g.get("frac")
    ns = secs * 1_000_000_000 + (int(frac[1:].ljust(9, "0")) if frac else 0)
    out: dict[str, Any] = {"format": name, "timestamp": ns}
    msg = line if name == "clf" else (g.get("msg") or "")
    out["message"] = msg
    lv = g.get("level")
    if lv is not None:
        level = _LOGCAT[lv] if name == "logcat" else _apache_level(lv)
    else:
        level = level_of(msg) if name != "clf" else None
    if level:
        out["level"] = level
    if g.get("host") is not None:
        out["host"] = g["host"]
    if g.get("tag"):
        out["process"] = g["tag"]
    if g.get("pid"):
        out["pid"] = int(g["pid"])
    if g.get("tid"):
        out["tid"] = int(g["tid"])
    return out


def _seconds(name: str, g: dict[str, Any], tz: str | None, now_ns: Callable[[], int]
             ) -> int | None:
    """Seconds since the epoch of a matched header's date and time (None if invalid)."""
    if name == "yymmdd":
        year = 2000 + int(g["yy"])
        if g["m2"] is not None:
            mon, day, hms = int(g["m2"]), int(g["d2"]), (g["H2"], g["M2"], g["S2"])
        else:
            mon, day, hms = int(g["m"]), int(g["d"]), (g["H"], g["M"], g["S"])
    else:
        mon = MONTHS[g["mon"]] if g.get("mon") else int(g["m"])
        day, hms = int(g["d"]), (g["H"], g["M"], g["S"])
        year = int(g["y"]) if g.get("y") else 0
    hour, minute, sec = (int(x) for x in hms)
    if not (1 <= mon <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and sec <= 60) \
            or year and day > calendar.monthrange(year, mon)[1]:
        return None
    offset = None if tz is None else _offset(tz)
    if year:
        return _epoch(year, mon, day, hour, minute, sec, offset)
    now = now_ns() // 1_000_000_000      # no year: the latest one not over two days ahead
    year = time.gmtime(now).tm_year
    secs = _epoch(year, mon, day, hour, minute, sec, offset)
    if secs > now + 2 * 86400:
        secs = _epoch(year - 1, mon, day, hour, minute, sec, offset)
    return secs


def _apache_level(word: str) -> str | None:
    w = word.upper()
    if w.startswith("TRACE"):
        return "TRACE"
    return LEVEL_NAMES.get(w)


def _offset(tz: str) -> int:
    """Seconds east of UTC of ``Z``, ``+01:00``, ``-0500``."""
    if tz == "Z":
        return 0
    sign = -1 if tz[0] == "-" else 1
    digits = tz[1:].replace(":", "")
    return sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)


def _epoch(year: int, mon: int, day: int, hour: int, minute: int, sec: int,
           offset: int | None) -> int:
    """Seconds since the epoch of a wall-clock time at ``offset`` (local time if None)."""
    if offset is not None:
        return calendar.timegm((year, mon, day, hour, minute, sec)) - offset
    return _local_hour(year, mon, day, hour) + minute * 60 + sec


@lru_cache(maxsize=4096)
def _local_hour(year: int, mon: int, day: int, hour: int) -> int:
    return int(time.mktime((year, mon, day, hour, 0, 0, 0, 0, -1)))
