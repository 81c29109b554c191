"""``mohlog ingest|search|tail|stats|export|token|archive``: the hub's command-line client."""

from __future__ import annotations

import argparse
import bz2
import datetime as dt
import gzip
import http.client
import io
import itertools
import json
import lzma
import os
import queue
import re
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import xxhash
import zstandard

from mohlog import journal
from mohlog.errors import MohlogError
from mohlog.lines import Records, compression_of
from mohlog.model import iso_utc, new_id
from server.client import DEFAULT_HUB, Client, HubError, find_token


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub", default=os.environ.get("MOHLOG_HUB", DEFAULT_HUB),
                   help=f"hub URL (default $MOHLOG_HUB or {DEFAULT_HUB})")
    p.add_argument("--token", help="bearer token (default $MOHLOG_TOKEN)")
    p.add_argument("--token-file", help="file holding the token (default: the admin.token of "
                   "/var/lib/mohlog or ~/.local/share/mohlog)")
    p.add_argument("--cacert", help="CA bundle to verify an HTTPS hub")
    p.add_argument("--insecure", action="store_true", help="do not verify the HTTPS certificate")


def filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", "--since", dest="start",
                   help="ns, ISO-8601 (your zone unless it says) or relative (-15m, -2h, -1d)")
    p.add_argument("--end", "--until", dest="end", help="ns, ISO-8601 or relative")
    p.add_argument("-f", "--filter", action="append", default=[], dest="f",
                   help="FIELD<op>VALUE, ops = != < <= > >= ' contains ' ' regex ' (repeat)")
    p.add_argument("--host", action="append", help="only this host (repeat: any of them)")
    p.add_argument("--case", action="store_true", help="case-sensitive text matching")


def client(args: argparse.Namespace) -> Client:
    return Client(args.hub, find_token(args.token, args.token_file), args.cacert, args.insecure)


def query_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"f": args.f}
    for name in ("start", "end", "host"):
        if getattr(args, name, None):
            params[name] = getattr(args, name)
    for name in ("start", "end"):
        if name in params:
            params[name] = local_time(params[name])
    if getattr(args, "q", None):
        params["q"] = args.q
    if getattr(args, "sort", "desc") != "desc":
        params["sort"] = args.sort
    if args.case:
        params["case"] = "1"
    return params


def local_time(text: str) -> str:
    """An ISO-8601 time without an offset given on the command line is in the user's
    zone (as journalctl --since reads it): it is sent with that offset, since the hub reads
    such times as UTC. Anything else (ns, -15m, an offset already) is sent as it is."""
    if text.strip().lstrip("-").isdigit():
        return text
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return text
    return when.astimezone().isoformat() if when.tzinfo is None else text


# ---- ingest ------------------------------------------------------------------
BINARY_SNIFF = 8192     # bytes looked at for a NUL (as grep and git tell binary files)


class BinaryFile(MohlogError):
    """A file of binary data (wtmp, a journal file, an image) given to ingest."""


def cmd_ingest(args: argparse.Namespace) -> int:
    paths = log_files(args.files)
    c = client(args)
    total = [0, 0]
    skipped = 0
    for path in paths:
        try:
            sent, again = ingest_file(c, path, args)
        except BinaryFile as err:       # (`mohlog ingest /var/log` meets wtmp, btmp...)
            print(err.message, file=sys.stderr)
            skipped += 1
            continue
        except OSError as err:
            raise MohlogError(f"{path}: {err.strerror or err} (ingested before it: "
                              f"{total[0]} records)") from err
        total[0] += sent
        total[1] += again
    print(f"ingested {total[0]} records" + (
        f" ({total[1]} of them already in the hub from an earlier run: not stored twice)"
        if total[1] else "") + (f"; {skipped} binary file(s) skipped" if skipped else ""),
        file=sys.stderr)
    return 1 if skipped and skipped == len(paths) else 0


def log_files(names: list[str]) -> list[Path]:
    """The files to ingest: each name (a file, a pipe such as ``<(zcat x)``), or the
    regular files directly in a directory (sorted); a missing one is an error before
    anything is sent."""
    out: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.is_file())
        elif name == "-" or path.exists():
            out.append(path)
        else:
            raise MohlogError(f"{name}: no such file")
    return out


_SUFFIXES = (".gz", ".zst", ".xz", ".bz2")


@contextmanager
def open_log(path: Path) -> Iterator[IO[bytes]]:
    """The bytes of a log file ('-': stdin), decompressed when it is gzip, zstd, xz or
    bzip2 (told by its first bytes: rotated logs are often ``auth.log.2.gz``)."""
    raw: Any = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
    kind = None
    try:
        head = raw.peek(8)[:8] if hasattr(raw, "peek") else b""
        kind = compression_of(head)
        if kind == "gzip":
            yield gzip.GzipFile(fileobj=raw)
        elif kind == "zstd":
            yield io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(
                raw, read_across_frames=True))
        elif kind == "xz":
            yield lzma.LZMAFile(raw)
        elif kind == "bzip2":
            yield bz2.BZ2File(raw)
        else:
            yield raw
    except (EOFError, OSError, lzma.LZMAError, zstandard.ZstdError) as err:
        if kind is None:                # a plain file's read error: the caller names it
            raise
        raise MohlogError(f"{path}: corrupt {kind} data: {err}") from err
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


IDLE_S = 1.0        # a pipe quiet this long: what it gave is sent (mohlog ingest -)


def _live(path: Path) -> bool:
    """Is ``path`` a stream that may stay open and quiet (stdin, a FIFO, a socket)?"""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode if str(path) == "-" else \
            path.stat().st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


def _lines(f: IO[bytes], live: bool) -> Iterator[bytes | None]:
    """The lines of ``f``; from a live stream (``tail -f x | mohlog ingest -``) also None
    each time no byte came for IDLE_S, so what was read is sent instead of waiting for a
    full batch. (A thread reads, since a pipe's read blocks.)"""
    if not live:
        yield from f
        return
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=64)

    def pump() -> None:
        try:
            while chunk := f.read1(1 << 16):     # type: ignore[attr-defined]
                chunks.put(chunk)
            chunks.put(None)
        except BaseException as err:  # noqa: BLE001 - handed to the reading thread
            chunks.put(err)
    threading.Thread(target=pump, name="ingest-read", daemon=True).start()
    partial = b""
    while True:
        try:
            chunk = chunks.get(timeout=IDLE_S)
        except queue.Empty:
            yield None
            continue
        if isinstance(chunk, BaseException):
            raise chunk
        if chunk is None:
            break
        *whole, partial = (partial + chunk).split(b"\n")
        for line in whole:
            yield line + b"\n"
    if partial:
        yield partial


def entries(path: Path, args: argparse.Namespace, read: list[int] | None = None
            ) -> Iterator[dict[str, Any] | None]:
    """The entries of a file: NDJSON lines as they are (journal records, as
    ``journalctl -o json`` prints them, made entries: mohlog.journal); plain lines with the time,
    level, host, process and pid their header gives (mohlog.lines), the flags' values
    for what it does not, and the lines without a header after one (a traceback) in its
    entry; with ``--raw`` one entry per plain line, as it is. A line starting with ``{``
    that is not JSON is an error in a file of JSON lines, text in a file of plain ones.
    ``read[0]`` counts the (decompressed) bytes read so far. A live stream gone quiet
    yields the entry it holds, then None (send what you have)."""
    host = args.host or os.uname().nodename
    records = Records()
    plain_seen = False
    name = "stdin" if str(path) == "-" else \
        path.name[:-len(path.suffix)] if path.suffix in _SUFFIXES else path.name

    def plain(fields: dict[str, Any], n: int) -> dict[str, Any]:
        doc = {"level": args.level, "component": args.component, "source": "file",
               "host": host, "process": name, "message": "",
               "metadata": {"file": str(path), "line": n}}
        doc.update(fields)
        return doc

    with open_log(path) as f:
        head = f.peek(BINARY_SNIFF)[:BINARY_SNIFF] if hasattr(f, "peek") else b""
        if b"\0" in head:
            shown = "standard input" if str(path) == "-" else path
            raise BinaryFile(f"{shown}: skipped: binary data, not log lines (a NUL byte in "
                             f"its first {BINARY_SNIFF // 1024} KB; a UTF-16 text file: "
                             "iconv -f UTF-16 -t UTF-8 first)")
        n = 0
        for raw in _lines(f, _live(path)):
            if raw is None:
                yield from (plain(r, at) for r, _, at in records.flush())
                yield None
                continue
            n += 1
            if read is not None:
                read[0] += len(raw)
            line = raw.rstrip(b"\r\n")
            if line.lstrip().startswith(b"{"):
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError as err:
                    if not plain_seen:
                        raise MohlogError(f"{path}:{n}: invalid JSON: {err}") from err
                else:
                    if isinstance(doc, dict):
                        yield from (plain(r, at) for r, _, at in records.flush())
                        yield journal.to_entry(doc, host) if journal.is_record(doc) else doc
                        continue
            text = line.decode("utf-8", "replace")
            plain_seen = plain_seen or bool(line.strip())
            if args.raw:
                if line.strip():
                    yield plain({"message": text}, n)
                continue
            yield from (plain(r, at) for r, _, at in records.add(text, len(raw), n))
        yield from (plain(r, at) for r, _, at in records.flush())


def ingest_file(c: Client, path: Path, args: argparse.Namespace) -> tuple[int, int]:
    """Send a file's entries in batches; (records sent, of them already in the hub).
    A batch's Idempotency-Key comes from the file (path, inode, size and modification
    time), its place in the file and its bytes: ingesting the same unchanged file again
    (after a failure half-way, or twice by mistake) stores nothing twice, while a file
    changed since (grown, or written anew with the same lines: a daily "backup done") is
    stored again. Standard input and pipes get keys of their own run (``echo x | mohlog
    ingest -`` twice stores x twice)."""
    # the bar's whole: a plain file's size (a compressed one's decompressed size is unknown)
    read = [0]
    cctx = zstandard.ZstdCompressor(level=3)
    if str(path) != "-" and path.is_file():
        st = path.stat()
        size = 0 if _compressed(path) else st.st_size
        where = f"{path.resolve()}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
    else:
        size, where = 0, new_id()               # this run's: retries alike, runs not
    sent, again, batch, t0 = 0, 0, [], time.monotonic()
    warned = False

    def send(batch: list[bytes]) -> None:
        nonlocal sent, again, warned
        try:
            res = _send(c, batch, cctx, f"{where}\0{sent}")
        except HubError as err:
            line = err.details.get("line")
            if not isinstance(line, int) or not 1 <= line <= len(batch):
                raise
            # the hub names the line of its batch: say which record of the file it is
            why = _HUB_LINE.sub("", err.message)
            raise MohlogError(
                f"{path}: record {sent + line} refused: {why}; "
                f"nothing of its batch (records {sent + 1}..{sent + len(batch)}) was stored, "
                f"the {sent} before it were", record=batch[line - 1][:300].decode(
                    "utf-8", "replace"), **{k: v for k, v in err.details.items()
                                            if k not in ("line", "code")}) from err
        for w in res.get("warnings", [])[:1] if not warned else []:
            print(f"\n{path}: warning from the hub (batch from record {sent + 1}): {w}",
                  file=sys.stderr)
            warned = True
        n = int(res["accepted"])
        sent, again = sent + n, again + (n if res.get("duplicate") else 0)

    # Batches go out on a thread of their own, in order, while the next ones are read
    # and parsed (waiting for each answer took a quarter of the time).
    sender = _Sender(send)
    try:
        for doc in entries(path, args, read):
            if doc is None:             # a live stream gone quiet: send what it gave
                if batch:
                    sender.put(batch)
                    batch = []
                    _progress(path, sent, read[0], size, t0)
                continue
            batch.append(orjson.dumps(doc))
            if len(batch) >= args.batch:
                sender.put(batch)
                batch = []
                _progress(path, sent, read[0], size, t0)
        if batch:
            sender.put(batch)
    finally:
        sender.close()                  # waits for the batches handed over (or stops)
    _progress(path, sent, read[0], size, t0, end=True)
    return sent, again


class _Sender:
    """``send(batch)`` for each batch put, in order, on one thread; at most two wait. The
    first error stops it, and is raised by the next ``put`` or by ``close``."""

    def __init__(self, send: Callable[[list[bytes]], None]) -> None:
        self._send = send
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ingest-send", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._send(batch)
                except BaseException as err:  # noqa: BLE001 - raised on the main thread
                    self._error = err

    def put(self, batch: list[bytes]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(batch)

    def close(self) -> None:
        self._queue.put(None)
        while self._thread.is_alive():
            self._thread.join(0.2)      # (a join with a timeout lets ^C through)
        if self._error is not None:
            raise self._error


_HUB_LINE = re.compile(r"^hub refused \(\d+\): line \d+: ")


def _compressed(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return compression_of(f.read(8)) is not None
    except OSError:
        return False


def _send(c: Client, batch: list[bytes], cctx: zstandard.ZstdCompressor, place: str
          ) -> dict[str, Any]:
    """Send one batch (retried with the same key while the hub is away or busy); the
    hub's answer."""
    text = b"\n".join(batch)
    key = "ingest-" + xxhash.xxh3_128_hexdigest(place.encode() + b"\0" + text)
    body = cctx.compress(text)
    for attempt in range(6):
        try:
            return c.ingest(body, key)
        except HubError as err:
            if attempt == 5 or err.status and err.status < 500 and err.status != 429:
                raise
            time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


def _progress(path: Path, sent: int, read: int, size: int, t0: float, end: bool = False
              ) -> None:
    """On a terminal, a bar of the file's bytes read (when its size is known), records sent,
    rate and time left, redrawn in place; the last state once at the end in any case."""
    if not sys.stderr.isatty() and not end:
        return
    took = max(time.monotonic() - t0, 1e-6)
    rate = sent / took
    line = f"{path}: {sent} records ({rate:,.0f}/s)"
    if size and sys.stderr.isatty():
        done = min(read / size, 1.0)
        bar = "#" * int(done * 30)
        left = took * (1 - done) / done if done > 0 else 0.0
        line = (f"{path} [{bar:<30}] {done:4.0%}  {sent:,} records  {rate:,.0f}/s" +
                ("" if end else f"  {int(left) // 60}:{int(left) % 60:02d} left"))
    print(f"\r{line}\033[K" if sys.stderr.isatty() else line, end="\n" if end else "",
          file=sys.stderr, flush=True)


# ---- search / tail / stats / export --------------------------------------------
# Control characters but newline and tab (C0, DEL, C1): a log line may carry terminal
# escape sequences (a user name sent to sshd, a request path) that would retitle, clear
# or rewrite the reader's terminal. Shown as \xNN instead.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """``text`` with its control characters but newline and tab shown as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def fmt_record(r: dict[str, Any]) -> str:
    """One record for a person: its header, then the message; the lines after a
    message's first (a traceback) indented, so each record stands apart. Control
    characters are shown escaped (``visible``)."""
    ts = dt.datetime.fromtimestamp(r["timestamp"] / 1e9, dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
    message = visible((r["message"] or "").rstrip("\n")).replace("\n", "\n    ")
    return visible(f"{ts} {r['host']} {r['level']:<8} {r['component']:<15} "
                   f"{r['process']}: ") + message


def cmd_search(args: argparse.Namespace) -> int:
    c = client(args)
    if args.semantic:
        return _semantic(c, args)
    if args.count or args.by or args.every:
        return _count(c, args)
    # --all: every match, --limit records per request; else the first --limit
    paging = _Paging()
    recs = _records(c, {**query_params(args), "limit": min(args.limit, 10_000)}, paging)
    shown = 0
    for r in recs if args.all else itertools.islice(recs, args.limit):
        print(json.dumps(r) if args.json else fmt_record(r))
        shown += 1
    if not args.all and shown == args.limit and paging.more:
        print(f"note: the {'newest' if args.sort == 'desc' else 'oldest'} {shown} matches "
              "shown; --all for every match, --limit N for more", file=sys.stderr)
    if paging.archived:
        names = " ".join(paging.archived[:5]) + (" …" if len(paging.archived) > 5 else "")
        print(f"note: {len(paging.archived)} archived partition(s) in this time range were "
              f"not searched: {names} (mohlog archive restore PARTITION)", file=sys.stderr)
    return 0


def _count(c: Client, args: argparse.Namespace) -> int:
    """``--count [--by F]...``: one structured aggregation with the search's filters; the
    groups largest first, cut at --limit. With ``--every 5m``: a time series, one line
    per interval (and group), oldest first, empty intervals shown as 0."""
    if args.every:
        return _series(c, args)
    spec = {**_spec(args, "aggregation"), "group_by": args.by or [], "sort": "-count",
            "limit": args.limit}
    res = c.post_json("/api/v1/query", spec)
    rows = res["rows"]
    if args.json:
        for r in rows:
            print(json.dumps(r))
    elif not args.by:
        print(rows[0]["count"] if rows else 0)
    else:
        width = max([len(f"{r['count']:,}") for r in rows] or [1])
        for r in rows:
            key = visible("  ".join(str(r.get(b)) for b in args.by))
            print(f"{r['count']:>{width},}  {key}")
        if res.get("rows_total"):
            print(f"note: the {len(rows)} largest of {res['rows_total']} groups shown; "
                  "--limit N for more", file=sys.stderr)
    return 0


def _spec(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """A structured query of ``kind`` with the search's text, times and filters."""
    params = query_params(args)
    filters = list(params.get("f", []))
    spec: dict[str, Any] = {"type": kind, **{k: params[k] for k in ("q", "start", "end")
                                             if k in params}}
    if params.get("case"):
        spec["case"] = True
    if params.get("host"):                                  # any of them
        filters.append({"field": "host", "op": "=", "value": params["host"]})
    if filters:
        spec["filters"] = filters
    return spec


def _series(c: Client, args: argparse.Namespace) -> int:
    """``--count --every 5m [--by F]``: matches per interval, oldest first; the intervals
    between the first and the last with a match are all shown (0 when none)."""
    spec = {**_spec(args, "time_series"), "interval": args.every, "group_by": args.by or []}
    res = c.post_json("/api/v1/query", spec)
    rows, step = res["rows"], int(res["interval_ns"])
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if not rows:
        print("no matching records", file=sys.stderr)
        return 0
    by: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(int(r["bucket"]), []).append(r)
    width = max(len(f"{r['count']:,}") for r in rows)
    fmt = "%Y-%m-%dT%H:%M:%SZ" if step % 60_000_000_000 else "%Y-%m-%dT%H:%MZ"
    first, last = min(by), max(by)
    if (last - first) // step > 10_000:
        raise MohlogError(f"{(last - first) // step + 1} intervals of {args.every}: give a "
                          "larger --every or a shorter --start/--end")
    for b in range(first, last + 1, step):
        when = dt.datetime.fromtimestamp(b / 1e9, dt.UTC).strftime(fmt)
        for r in by.get(b) or [{"count": 0}]:
            key = visible("  ".join(str(r.get(f)) for f in args.by)) if args.by and \
                "bucket" in r else ""
            print(f"{when}  {r['count']:>{width},}" + (f"  {key}" if key else ""))
    return 0


@dataclass
class _Paging:
    """What the pages of a search said beyond their records."""
    archived: list[str] = field(default_factory=list)    # the last page's
    more: bool = False                  # the last page fetched had a next one


def _records(c: Client, params: dict[str, Any], paging: _Paging | None = None
             ) -> Iterator[dict[str, Any]]:
    """Every record a query matches, oldest or newest first as it asks, following the
    cursor (``params["limit"]`` a request; a request only when the one before is used).
    What the pages say beyond their records goes to ``paging``."""
    q = dict(params)
    while True:
        page = c.get("/api/v1/logs", q)
        if paging is not None:
            paging.archived = page.get("archived", [])
            paging.more = bool(page["next_cursor"])
        yield from page["records"]
        if not page["next_cursor"]:
            return
        q["cursor"] = page["next_cursor"]


def _semantic(c: Client, args: argparse.Namespace) -> int:
    params = {**query_params(args), "q": args.semantic, "k": args.k}
    res = c.get("/api/v1/search/semantic", params)
    if args.json:
        print(json.dumps(res))
        return 0
    for hit in res.get("results", []):
        print(f"{hit['score']:.3f}  {hit['template']}")
        for r in hit.get("lines", [])[:3]:
            print("    " + fmt_record(r))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """New matching records as they come. When the hub goes away (a restart), the tail
    says so, connects again (1 s, doubling to 10 s, between tries) and first prints the
    matching records stored meanwhile (from the newest time it printed), then goes on."""
    c = client(args)
    c.timeout = 3600 * 24
    if args.q and args.q_opt:
        raise MohlogError("give the query once (mohlog tail QUERY)")
    args.q = args.q or args.q_opt
    params = query_params(args)
    shown = _Shown(args)
    wait = 1.0
    try:
        while True:
            try:
                stream = c.sse("/api/v1/tail", params, _said_dropped)   # subscribed now
                wait = 1.0
                gap = set() if shown.newest is None else shown.gap(c, params)
                for r in stream:
                    if r["id"] not in gap:      # else the gap's fetch printed it already
                        shown.show(r)
                err = "the hub closed the stream"
            except HubError as e:
                if e.status and e.status < 500:
                    raise                       # refused (token, query): not a lost link
                err = e.message
            except (OSError, http.client.HTTPException, ValueError) as e:
                err = str(e) or type(e).__name__
            print(f"mohlog tail: {err}; connecting again in {wait:.0f} s", file=sys.stderr,
                  flush=True)
            time.sleep(wait)
            wait = min(10.0, wait * 2)
    except KeyboardInterrupt:
        pass
    return 0


def _said_dropped(name: str, data: dict[str, Any]) -> None:
    if name == "dropped":
        print(f"mohlog tail: {data.get('dropped')} matching records not shown: this tail "
              "fell behind the hub (a narrower query keeps up; mohlog search finds them)",
              file=sys.stderr, flush=True)


class _Shown:
    """What a tail printed: the newest time, and the ids printed at that time."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.newest: int | None = None
        self.at_newest: set[str] = set()

    def show(self, r: dict[str, Any]) -> None:
        print(json.dumps(r) if self.args.json else fmt_record(r), flush=True)
        if self.newest is None or r["timestamp"] > self.newest:
            self.newest, self.at_newest = r["timestamp"], {r["id"]}
        elif r["timestamp"] == self.newest:
            self.at_newest.add(r["id"])

    def gap(self, c: Client, params: dict[str, Any]) -> set[str]:
        """Print the matching records stored from the newest time printed on (what the
        tail missed while it was away), oldest first, but those printed already; their
        ids (the stream may bring some of them again)."""
        out: set[str] = set()
        since, before = self.newest, set(self.at_newest)
        for r in _records(c, {**params, "start": str(since), "sort": "asc", "limit": 1000}):
            out.add(r["id"])
            if not (r["timestamp"] == since and r["id"] in before):
                self.show(r)
        return out


def cmd_stats(args: argparse.Namespace) -> int:
    st = client(args).get("/api/v1/stats")
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(stats_text(st))
    return 0


def stats_text(st: dict[str, Any]) -> str:
    """The hub's stats for a person: what it holds, how much room it takes, what is wrong."""
    def size(n: int | None) -> str:
        x = float(n or 0)
        for unit in ("B", "KB", "MB", "GB", "TB"):
            if x < 1024 or unit == "TB":
                return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
            x /= 1024
        return ""

    def top(counts: dict[str, int], most: int = 6) -> str:
        items = sorted(counts.items(), key=lambda kv: -kv[1])
        shown = "  ".join(f"{visible(str(k))} {v:,}" for k, v in items[:most])
        return shown + (f"  (+{len(items) - most} more)" if len(items) > most else "")

    ratio = st.get("compression_ratio")
    parts = st.get("partitions") or []
    span = (f"{iso_utc(st['oldest'])} .. {iso_utc(st['newest'])}" if st.get("oldest") is not None
            else "none yet")
    stored = (f"{size(st['stored_bytes'])} + {size(st['index_bytes'])} of indexes for "
              f"{size(st['raw_bytes'])} as NDJSON" + (f" ({ratio}:1)" if ratio else "")
              if st["segments"] else
              "nothing in segments yet (records wait in memory and the write-ahead log "
              "until a flush)")
    lines = [
        f"records     {st['records']:,} ({st['records_in_memory']:,} in memory, "
        f"{size(st['wal_bytes'])} of write-ahead log)",
        f"time span   {span}",
        f"ingest      {st['ingest_rate']:,.0f} records/s (last 10 s)",
        f"stored      {stored}",
        f"segments    {st['segments']} in {len(parts)} partition(s)"
        + (f", {parts[0]} .. {parts[-1]}" if parts else "")
        + (f"; {st['segments_indexing']} still getting their parameter filters (rare "
           "phrases and regexes skip fewer row groups there until then)"
           if st.get("segments_indexing") else ""),
        f"templates   {st['templates']:,}",
        *([f"archive     {st['archive']['archives']} archive(s), "
           f"{size(st['archive']['bytes'])}, {st['archive']['records']:,} records "
           "(mohlog archive list)"] if st.get("archive", {}).get("archives") else []),
        f"levels      {top(st['by_level'], 9)}",
        f"components  {top(st['by_component'], 9)}",
        f"hosts       {top(st['by_host'])}",
    ]
    for bad in st.get("corrupt_segments") or []:
        lines.append(f"CORRUPT     segment {bad.get('path')} ({bad.get('rows', '?')} records): "
                     "fails its checksum, left out of queries")
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    c = client(args)
    resp = c.request("GET", "/api/v1/export", {**query_params(args), "format": args.format},
                     stream=True)
    target = Path(args.output) if args.output else None
    # A file is written beside its name and renamed once the export is whole: an export
    # cut short (the hub went away) leaves no truncated file that looks complete.
    part = target.with_name(f".{target.name}.part") if target else None
    out = open(part, "wb") if part else sys.stdout.buffer
    written = 0
    try:
        with resp:
            while chunk := resp.read(1 << 16):
                out.write(chunk)
                written += len(chunk)
        out.flush()
        if part and target:
            os.fsync(out.fileno())
            out.close()
            os.replace(part, target)
            print(f"exported {written:,} bytes to {target}", file=sys.stderr)
    except BrokenPipeError:
        raise                           # the reader went away (| head): not a failure
    except (OSError, http.client.HTTPException) as err:
        if part:
            out.close()
            part.unlink(missing_ok=True)
        raise MohlogError(f"export cut short after {written:,} bytes ({err!r})" + (
            f": {target} not written" if target else "")) from err
    return 0


# ---- token / archive ----------------------------------------------------------
def cmd_token(args: argparse.Namespace) -> int:
    c = client(args)
    if args.action == "create":
        res = c.post_json("/api/v1/tokens", {"role": args.role, "name": args.name or "",
                                             **({"token": args.value} if args.value else {})})
        print(res["token"])
        print(f"token {res['id']} ({res['role']}) created; it is shown only once",
              file=sys.stderr)
    elif args.action == "list":
        for t in c.get("/api/v1/tokens")["tokens"]:
            made = iso_utc(t["created"]) if isinstance(t.get("created"), int) else "?"
            print(f"{t['id']}  {t['role']:<7} {made}  {t['name']}")
    else:
        if not args.ident:
            raise MohlogError("token revoke needs a token id or name")
        t = c.request("DELETE", f"/api/v1/tokens/{urllib.parse.quote(args.ident, safe='')}")
        print(f"revoked {t['id']} ({t['role']}, {t['name']})")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    c = client(args)
    if args.action == "list":
        archives = c.get("/api/v1/archive")["archives"]
        for a in archives:
            if "error" in a:
                print(f"{a['name']}  {a['error']}")
                continue
            print(f"{a['name']:<20} {iso_utc(a['min_ts'])} .. {iso_utc(a['max_ts'])}  "
                  f"{a['records']} records  {a['bytes']} bytes")
        if not archives:
            print("no archives (partitions go to the archive when retention expires them)",
                  file=sys.stderr)
    else:
        if not args.name:
            raise MohlogError("archive restore needs a partition or an archive name "
                              "(see archive list)")
        c.timeout = 3600.0          # a large partition takes minutes to write back
        res = c.request("POST", "/api/v1/archive/"
                        f"{urllib.parse.quote(args.name, safe='')}/restore")
        what = ", ".join(res.get("archives") or [res["restored"]])
        print(f"restored {what}: {res['records']} records (left alone by retention until "
              f"{res.get('kept_until', '?')})")
    return 0


_NO_TEMPLATE = {True: "(not templated yet: received in the last seconds)",
                False: "(template unknown)"}


def cmd_patterns(args: argparse.Namespace) -> int:
    """The kinds of messages among the matching records: per template, how many, since
    and until when, on how many hosts, its text and its newest message; most frequent
    first (``GET /api/v1/templates``)."""
    params = {**query_params(args), "limit": args.limit}
    rows = client(args).get("/api/v1/templates", params)["templates"]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    width = max([len(f"{r['count']:,}") for r in rows] or [1])

    def when(ns: int) -> str:
        return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%m-%dT%H:%M")
    for r in rows:
        hosts = len(r["hosts"])
        print(f"{r['count']:>{width},}  {when(r['first_seen'])}..{when(r['last_seen'])}Z  "
              f"{hosts}{'+' if hosts >= 100 else ''} host{'s' if hosts != 1 else ''}  "
              f"{visible(r['template'] or _NO_TEMPLATE[r['template_id'] is None])}")
        if args.examples and r.get("example"):
            print("    e.g. " + visible(r["example"].split("\n", 1)[0]))
    if not rows:
        print("no matching records", file=sys.stderr)
    elif len(rows) == args.limit:
        print(f"note: the {len(rows)} most frequent shown; --limit N for more",
              file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return n


def parser(cmd: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"mohlog {cmd}")
    common(p)
    if cmd == "ingest":
        p.add_argument("files", nargs="+", help="plain-text or NDJSON files, maybe gzip/zstd/"
                       "xz/bzip2-compressed, or directories of them ('-': stdin)")
        p.add_argument("--level", default="INFO",
                       help="level of plain lines that do not name one")
        p.add_argument("--component", default="APPLICATION", help="component of plain lines")
        p.add_argument("--host", help="host of plain lines that do not name one "
                       "(default: this machine)")
        p.add_argument("--raw", action="store_true",
                       help="keep plain lines whole, stamped when received (no header parsing)")
        p.add_argument("--batch", type=_positive, default=5000, help="records per request")
    elif cmd in ("search", "tail", "export"):
        p.add_argument("q", nargs="?", help='words, "a phrase", /regex/')
        if cmd == "tail":                       # (its first form, kept)
            p.add_argument("--q", dest="q_opt", help=argparse.SUPPRESS)
        else:
            p.add_argument("--sort", choices=["desc", "asc"], default="desc",
                           help="newest first (desc, the default) or oldest first")
        filters(p)
        p.add_argument("--json", action="store_true", help="one JSON record per line")
        if cmd == "search":
            p.add_argument("--limit", type=_positive, default=100,
                           help="records shown (with --all: fetched per request)")
            p.add_argument("--all", action="store_true",
                           help="every match, following the cursor to the end")
            p.add_argument("--semantic", metavar="TEXT", help="semantic search (natural language)")
            p.add_argument("-k", type=int, default=10, help="templates for --semantic")
            p.add_argument("--count", action="store_true",
                           help="how many match, instead of the matches")
            p.add_argument("--by", action="append", metavar="FIELD",
                           help="with --count: per value of FIELD, largest first (repeat; "
                                "e.g. host, level, process, metadata.user)")
            p.add_argument("--every", metavar="INTERVAL",
                           help="with --count: per interval (10s, 5m, 1h, 1d), oldest "
                                "first: when did it start?")
        if cmd == "export":
            p.add_argument("--format", default="ndjson", choices=["ndjson", "csv", "parquet"])
            p.add_argument("-o", "--output", help="file (default stdout)")
    elif cmd == "patterns":
        p.add_argument("q", nargs="?", help='words, "a phrase", /regex/')
        filters(p)
        p.add_argument("--limit", type=_positive, default=20, help="templates shown")
        p.add_argument("--examples", action="store_true",
                       help="each template's newest matching message under it")
        p.add_argument("--json", action="store_true", help="one JSON object per template")
    elif cmd == "stats":
        p.add_argument("--json", action="store_true", help="the hub's answer as it is")
    elif cmd == "token":
        p.add_argument("action", choices=["create", "list", "revoke"])
        p.add_argument("ident", nargs="?", help="token id or name (revoke)")
        p.add_argument("--role", default="read", choices=["ingest", "read", "admin"])
        p.add_argument("--name", help="a label for the token")
        p.add_argument("--value", help="register this secret instead of generating one")
    elif cmd == "archive":
        p.add_argument("action", choices=["list", "restore"])
        p.add_argument("name", nargs="?", help="archive name (restore)")
    return p


COMMANDS = {"ingest": cmd_ingest, "search": cmd_search, "tail": cmd_tail, "stats": cmd_stats,
            "export": cmd_export, "token": cmd_token, "archive": cmd_archive,
            "patterns": cmd_patterns}


def main(argv: list[str]) -> int:
    cmd, rest = argv[0], argv[1:]
    args = parser(cmd).parse_args(rest)
    try:
        return COMMANDS[cmd](args)
    except MohlogError as err:
        print(f"mohlog {cmd}: {err.message}", file=sys.stderr)
        extra = {k: v for k, v in err.details.items() if k != "code"}
        if extra:
            print(f"  {extra}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
