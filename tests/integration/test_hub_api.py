"""The hub over real sockets: ingest, errors, auth, dedup, paging, queries, export, tail."""

from __future__ import annotations

import collections
import gzip
import io
import json
import threading
import time
import urllib.request

import orjson
import pyarrow.parquet as pq
import pytest
import zstandard

from mohlog.model import iso_utc
from tests.integration.conftest import Hub, entry

pytestmark = pytest.mark.integration


def test_ingest_plain_zstd_gzip_round_trip(hub: Hub) -> None:
    batches = [[entry(i) for i in range(k * 100, k * 100 + 100)] for k in range(3)]
    bodies = [b"\n".join(orjson.dumps(e) for e in b) for b in batches]
    assert hub.request("POST", "/api/v1/logs", bodies[0]) == (
        200, {"accepted": 100, "duplicate": False})
    z = zstandard.ZstdCompressor().compress(bodies[1])
    assert hub.request("POST", "/api/v1/logs", z, {"Content-Encoding": "zstd"})[0] == 200
    g = gzip.compress(bodies[2])
    assert hub.request("POST", "/api/v1/logs", g, {"Content-Encoding": "gzip"})[0] == 200
    ids = hub.all_ids("")
    assert sorted(ids) == sorted(e["id"] for b in batches for e in b)
    rec = hub.search("q=request+150+from")["records"]
    assert [r["id"] for r in rec] == ["e00000150"]
    assert rec[0]["metadata"] == {"n": 150} and rec[0]["message"].startswith("request 150 ")
    assert rec[0]["template_id"] is None  # mined when the memory tail becomes a segment
    time.sleep(1.5)
    rec = hub.search("q=request+150+from")["records"]
    assert isinstance(rec[0]["template_id"], int) and rec[0]["message"].startswith("request 150")
    # from segments (messages as template + parameters): words, a phrase across a parameter
    # boundary, part of a parameter, a regex
    assert [r["id"] for r in hub.search('q="request+150+from"')["records"]] == ["e00000150"]
    assert [r["id"] for r in hub.search('q="st+150+fr"')["records"]] == ["e00000150"]
    assert {r["id"] for r in hub.search("q=10.1.150.150&limit=1000")["records"]} == {
        "e00000150"}
    assert len(hub.search('q="took+9+ms"&limit=1000')["records"]) == 3  # 9, 106, 203
    assert [r["id"] for r in hub.search("q=/request+15[0]+from/")["records"]] == ["e00000150"]
    # a bare word matches whole words only; a phrase matches anywhere
    import re
    whole = {e["id"] for b in batches for e in b if re.search(r"(?<![0-9A-Za-z])15(?![0-9A-Za-z])",
                                                              e["message"])}
    assert {r["id"] for r in hub.search("q=15&limit=1000")["records"]} == whole
    assert "e00000015" in whole and "e00000150" not in whole
    assert {r["id"] for r in hub.search('q="request+15"&limit=1000')["records"]} == {
        f"e{i:08d}" for i in (15, *range(150, 160))}


def test_malformed_line_names_line_and_stores_nothing(hub: Hub) -> None:
    body = orjson.dumps(entry(1)) + b"\n" + orjson.dumps(entry(2)) + b"\n{oops\n"
    status, err = hub.request("POST", "/api/v1/logs", body)
    assert status == 400
    assert err["error"]["code"] == "invalid_input" and err["error"]["line"] == 3
    assert "line 3" in err["error"]["message"]
    assert hub.search("")["records"] == []


def test_unknown_level_and_component_list_valid_ones(hub: Hub) -> None:
    status, err = hub.ingest([entry(1), entry(2, level="LOUD")])
    assert status == 400 and err["error"]["line"] == 2
    assert "SECURITY" in err["error"]["valid"] and "AI_INFERENCE" in err["error"]["valid"]
    status, err = hub.ingest([entry(1, component="NOPE")])
    assert status == 400 and "P2P_NETWORK" in err["error"]["valid"]
    status, err = hub.ingest([{"level": "INFO", "component": "KERNEL"}])
    assert status == 400 and "message" in err["error"]["message"]
    assert hub.search("")["records"] == []


def test_timestamps_in_another_unit_are_stored_with_a_warning(hub: Hub) -> None:
    """Milliseconds (or seconds, microseconds) where nanoseconds go: the batch is stored as
    sent (refusing it would lose its records) and the answer, the log and a metric say
    what it looks like."""
    ms = 1_733_000_000_123
    status, res = hub.ingest([entry(1), entry(2, timestamp=ms), entry(3, timestamp=ms // 1000)])
    assert status == 200 and res["accepted"] == 3, res
    assert res["warnings"] == [
        "2 record(s) dated before 2000, stored as sent; line 2: timestamp 1733000000123 is "
        "1970-01-01T00:28:53Z (it looks like milliseconds): timestamps are nanoseconds since "
        "1970-01-01 UTC"]
    status, res = hub.ingest([entry(4, timestamp=1_733_000_000)])
    assert "(it looks like seconds)" in res["warnings"][0]
    assert "warnings" not in hub.ingest([entry(5)])[1]
    assert len(hub.all_ids("")) == 5
    _, text = hub.request("GET", "/metrics")
    assert b"mohlog_records_dated_before_2000_total 3.0" in text
    deadline = time.monotonic() + 10
    while not any("timestamps look wrong" in ln for ln in hub.output) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    said = [ln for ln in hub.output if "timestamps look wrong" in ln]
    assert len(said) == 1 and "milliseconds" in said[0]            # once a minute at most
    # a sender's clock years ahead: stored, with a warning (they would sort first in every
    # search and outlive any retention by age)
    ahead = time.time_ns() + 400 * 86_400 * 10**9
    status, res = hub.ingest([entry(6), entry(7, timestamp=ahead)])
    assert status == 200 and res["accepted"] == 2, res
    assert res["warnings"] == [
        "1 record(s) dated more than a day after the hub's clock, stored as sent; line 2: "
        f"timestamp {ahead} is {iso_utc(ahead)}: is the sender's clock right?"]
    assert "warnings" not in hub.ingest([entry(8, timestamp=time.time_ns() + 3600 * 10**9)])[1]
    _, text = hub.request("GET", "/metrics")
    assert b"mohlog_records_dated_in_the_future_total 1.0" in text


def test_too_large_is_413(make_hub) -> None:
    hub = make_hub(max_body_bytes=10_000)
    body = b"\n".join(orjson.dumps(entry(i)) for i in range(200))
    status, err = hub.request("POST", "/api/v1/logs", body)
    assert status == 413 and err["error"]["code"] == "too_large"
    bomb = zstandard.ZstdCompressor().compress(b"\n".join(
        orjson.dumps(entry(1, message="x" * 5000)) for _ in range(10)))
    assert len(bomb) < 10_000
    status, err = hub.request("POST", "/api/v1/logs", bomb, {"Content-Encoding": "zstd"})
    assert status == 413
    assert hub.search("")["records"] == []


def test_a_body_cut_short_stores_nothing_and_a_whole_one_is_stored(hub: Hub) -> None:
    """A bulk body (above 16 KB, read into a buffer of its Content-Length) whose sender
    stops half-way: nothing of it is stored and the hub goes on; then the same body whole,
    and a gzip one of that size, are stored entire."""
    import socket
    from urllib.parse import urlsplit

    batch = [entry(i) for i in range(400)]
    body = b"\n".join(orjson.dumps(e) for e in batch)
    assert len(body) > 16 << 10
    url = urlsplit(hub.url)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:
        s.sendall((f"POST /api/v1/logs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                   f"{hub.token}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                  + body[:len(body) // 2])
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert not reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert hub.request("GET", "/healthz", token=None)[0] == 200
    assert hub.search("limit=1000")["records"] == []
    assert hub.request("POST", "/api/v1/logs", body) == (
        200, {"accepted": 400, "duplicate": False})
    more = [entry(i) for i in range(400, 2400)]
    g = gzip.compress(b"\n".join(orjson.dumps(e) for e in more))
    assert len(g) > 16 << 10
    assert hub.request("POST", "/api/v1/logs", g, {"Content-Encoding": "gzip"})[0] == 200
    assert sorted(hub.all_ids("")) == sorted(e["id"] for e in batch + more)


def test_a_body_that_is_not_its_content_encoding_is_400(hub: Hub) -> None:
    """Bytes that are not the zstd or gzip they claim to be, small and bulk (the two ways a
    body is read), and an encoding the hub does not take: a 400 that says so, nothing
    stored."""
    import os

    for size in (100, 100_000):
        junk = os.urandom(size)
        for enc, says in (("zstd", "not valid zstd"), ("gzip", "not valid gzip"),
                          ("br", "unsupported content-encoding")):
            status, err = hub.request("POST", "/api/v1/logs", junk, {"Content-Encoding": enc})
            assert status == 400 and says in err["error"]["message"], (size, enc, err)
    assert hub.search("limit=10")["records"] == []


def test_auth_required_and_roles(hub: Hub) -> None:
    assert hub.request("GET", "/healthz", token=None) == (200, {"status": "ok"})
    status, err = hub.request("GET", "/api/v1/logs", token=None)
    assert status == 401 and err["error"]["code"] == "unauthorized"
    assert hub.request("GET", "/api/v1/stats", token="mohlog_wrong_token_value")[0] == 401
    assert hub.request("GET", "/metrics", token=None)[0] == 401
    _, made = hub.request("POST", "/api/v1/tokens", json.dumps({"role": "read"}).encode())
    read = made["token"]
    _, made = hub.request("POST", "/api/v1/tokens", json.dumps({"role": "ingest"}).encode())
    ingest = made["token"]
    status, err = hub.ingest([entry(1)], token=read)
    assert status == 403 and err["error"]["code"] == "forbidden"
    assert hub.ingest([entry(1)], token=ingest)[0] == 200
    assert hub.request("GET", "/api/v1/logs", token=ingest)[0] == 403
    assert hub.request("GET", "/api/v1/logs", token=read)[0] == 200
    assert hub.request("GET", "/api/v1/tokens", token=read)[0] == 403
    for weak in ("short", 12345678901234567890123456, "x" * 23):   # a given value: ≥ 24
        status, err = hub.request("POST", "/api/v1/tokens",
                                  json.dumps({"role": "read", "token": weak}).encode())
        assert status == 400 and "at least 24" in err["error"]["message"], (weak, err)
    tid = made["id"]
    assert hub.request("DELETE", f"/api/v1/tokens/{tid}")[0] == 200
    assert hub.ingest([entry(2)], token=ingest)[0] == 401
    assert (hub.data / "admin.token").stat().st_mode & 0o777 == 0o600
    assert hub.token not in (hub.data / "tokens.json").read_text()
    logs = "".join(hub.output)
    assert "token" in logs  # the hub does log token events...
    for secret in (hub.token, read, ingest):  # ...but never a token itself
        assert secret not in logs


def test_replayed_batch_is_deduplicated_across_restart(hub: Hub) -> None:
    batch = [entry(i) for i in range(50)]
    assert hub.ingest(batch, key="batch-1")[1] == {"accepted": 50, "duplicate": False}
    assert hub.ingest(batch, key="batch-1")[1] == {"accepted": 50, "duplicate": True}
    time.sleep(1.5)  # let a segment flush happen, then restart
    hub.stop()
    hub.start()
    assert hub.ingest(batch, key="batch-1")[1]["duplicate"] is True
    assert len(hub.all_ids("")) == 50
    # a key reused for another batch (a sender's counter restarted) is refused, not
    # acknowledged as a replay: its records would never be stored
    status, err = hub.ingest([entry(i) for i in range(100, 130)], key="batch-1")
    assert status == 409 and err["error"]["code"] == "conflict", err
    assert "named a batch of 50 records already; this one has 30" in err["error"]["message"]
    assert len(hub.all_ids("")) == 50


def test_cursor_paging_returns_every_record_once(hub: Hub) -> None:
    for k in range(5):
        hub.ingest([entry(i) for i in range(k * 400, k * 400 + 400)], key=f"k{k}")
        if k == 2:
            time.sleep(1.2)  # some records in segments, some in memory
    ids = []
    cursor = None
    while True:
        page = hub.search("limit=137" + (f"&cursor={cursor}" if cursor else ""))
        ids += [r["id"] for r in page["records"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(ids) == 2000 and len(set(ids)) == 2000
    asc = hub.search("limit=5&sort=asc")["records"]
    assert [r["id"] for r in asc] == [f"e{i:08d}" for i in range(5)]


def test_field_filters_and_text(hub: Hub) -> None:
    rows = [entry(i, level=["INFO", "WARNING", "ERROR", "CRITICAL"][i % 4]) for i in range(400)]
    hub.ingest(rows)
    got = hub.search("f=level>=ERROR&limit=1000")["records"]
    assert len(got) == 200 and {r["level"] for r in got} == {"ERROR", "CRITICAL"}
    got = hub.search("host=h1&f=pid<102&limit=1000")["records"]
    want = [e for e in rows if e["host"] == "h1" and e["pid"] < 102]
    assert sorted(r["id"] for r in got) == sorted(e["id"] for e in want)
    got = hub.search("host=h1&host=H2&pid=101&pid=104&limit=1000")["records"]  # any of them
    want = [e for e in rows if e["host"] in ("h1", "h2") and e["pid"] in (101, 104)]
    assert sorted(r["id"] for r in got) == sorted(e["id"] for e in want) and want
    status, err = hub.request("GET", "/api/v1/logs?level=ERROR&level=nope")
    assert status == 400 and "ERROR" in err["error"]["valid"]
    got = hub.search("f=process+contains+AP&limit=1000")["records"]
    assert len(got) == 400
    assert hub.search("f=process+contains+AP&case=1")["records"] == []
    assert hub.search("f=process+contains+AP&case=TRUE")["records"] == []
    assert len(hub.search("f=process+contains+AP&case=false&limit=1000")["records"]) == 400
    status, err = hub.request("GET", "/api/v1/logs?f=process+contains+AP&case=maybe")
    assert status == 400 and err["error"]["param"] == "case", err     # not read as false
    for case, n in ((False, 400), (True, 0), ("false", 400)):
        status, res = hub.request("POST", "/api/v1/query", orjson.dumps(
            {"filters": ["process contains AP"], "case": case, "limit": 1000}))
        assert status == 200 and len(res["records"]) == n, (case, res)
    status, err = hub.request("POST", "/api/v1/query", b'{"case": "maybe"}')
    assert status == 400 and err["error"]["param"] == "case", err
    got = hub.search("f=metadata.n>=390&limit=1000")["records"]
    assert sorted(r["metadata"]["n"] for r in got) == list(range(390, 400))
    got = hub.search('q="request+17+from"')["records"]
    assert [r["id"] for r in got] == ["e00000017"]
    got = hub.search("q=/request+1[0-9]+from/&limit=1000")["records"]
    assert len(got) == 10
    status, err = hub.request("GET", "/api/v1/logs?f=nosuch=1")
    assert status == 400 and "valid" in err["error"]
    assert hub.request("GET", "/api/v1/logs?q=/([/")[0] == 400
    # regexes are RE2 (linear time), checked at once: no lookaround nor backreference
    for bad in ("q=/(%3F%3Drequest)r/", "q=/(a)%5C1/", "f=metadata.n+regex+(%3F!1)"):
        status, err = hub.request("GET", f"/api/v1/logs?{bad}")
        assert status == 400 and "RE2 syntax" in err["error"]["message"], (bad, err)
    # a pattern that backtracks for ever in Python's engine, against a long metadata
    # value: answered at once, and the hub goes on (it used to hold the GIL for good)
    hub.ingest([entry(5000, metadata={"user": "a" * 40 + "b"})])
    status, res = hub.request("GET", "/api/v1/logs?f=metadata.user+regex+(a%2B)%2B%24")
    assert status == 200 and res["records"] == [], res
    got = hub.search("f=metadata.user+regex+%5Ea%2Bb%24")["records"]
    assert [r["id"] for r in got] == ["e00005000"]
    status, err = hub.request("GET", '/api/v1/logs?q="request+17')   # a quote left open
    assert status == 400 and "unterminated phrase" in err["error"]["message"], err
    assert hub.search('q=say"hi"')["records"] == []                   # a quote inside a word
    status, err = hub.request("GET", "/api/v1/logs?start=2000&end=1000")
    assert status == 400 and err["error"]["message"] == "start is after end", err
    status, err = hub.request("POST", "/api/v1/query",
                              b'{"type": "aggregation", "start": 2000, "end": 1000}')
    assert status == 400 and err["error"]["message"] == "start is after end", err
    got = hub.search("f=level>=6&limit=1000")["records"]        # a rank (6: ERROR) and up
    assert len(got) == 200
    for bad in ("level>=NOPE", "level=warn", "component!=KERNELS"):
        status, err = hub.request("GET", f"/api/v1/logs?f={bad}")
        assert status == 400 and err["error"]["message"].startswith("unknown "), err
        assert "APPLICATION" in err["error"]["valid"] or "ERROR" in err["error"]["valid"]
    status, err = hub.request("GET", "/api/v1/logs?f=level=NOPE")
    assert err["error"]["valid"] == ["TRACE", "DEBUG", "INFO", "AI_INFERENCE", "PERFORMANCE",
                                     "WARNING", "ERROR", "CRITICAL", "SECURITY"]
    assert len(hub.search("f=level+contains+ERR&limit=1000")["records"]) == 100


def test_structured_queries(hub: Hub) -> None:
    rows = [entry(i, level=["INFO", "ERROR"][i % 2]) for i in range(300)]
    hub.ingest(rows)
    spec = {"type": "aggregation", "group_by": ["level"],
            "metrics": [{"op": "count"}, {"op": "max", "field": "pid"},
                        {"op": "avg", "field": "metadata.n"}]}
    status, res = hub.request("POST", "/api/v1/query", json.dumps(spec).encode())
    assert status == 200
    by = {r["level"]: r for r in res["rows"]}
    assert by["INFO"]["count"] == 150 and by["ERROR"]["count"] == 150
    assert by["ERROR"]["avg_metadata.n"] == sum(range(1, 300, 2)) / 150
    assert by["INFO"]["max_pid"] == max(e["pid"] for e in rows if e["level"] == "INFO")
    spec = {"type": "time_series", "interval": "1s", "filters": ["level=ERROR"]}
    _, res = hub.request("POST", "/api/v1/query", json.dumps(spec).encode())
    assert sum(r["count"] for r in res["rows"]) == 150
    spec = {"type": "search", "filters": {"host": "h2"}, "limit": 5}
    _, res = hub.request("POST", "/api/v1/query", json.dumps(spec).encode())
    assert len(res["records"]) == 5 and {r["host"] for r in res["records"]} == {"h2"}
    spec = {"type": "aggregation", "group_by": ["host"], "filters": {"host": ["h0", "h2"]}}
    _, res = hub.request("POST", "/api/v1/query", json.dumps(spec).encode())
    assert {r["host"]: r["count"] for r in res["rows"]} == {"h0": 100, "h2": 100}
    spec = {"type": "search", "filters": {"host": []}}
    status, err = hub.request("POST", "/api/v1/query", json.dumps(spec).encode())
    assert status == 400 and "empty list" in err["error"]["message"]
    status, err = hub.request("POST", "/api/v1/query", b'{"type": "nope"}')
    assert status == 400 and "time_series" in err["error"]["valid"]
    for bad in ({"type": "time_series", "interval": "0m"},        # made no buckets
                {"type": "search", "q": 5}, {"type": "aggregation", "group_by": [1]},
                {"type": "aggregation", "group_by": {"a": 1}},
                {"type": "aggregation", "metrics": ["count"]},
                {"type": "aggregation", "metrics": [{"op": "sum", "field": 5}]},
                {"type": "aggregation", "metrics": [{"op": "avg", "field": "host"}]},
                {"type": "aggregation", "metrics": [{"op": "sum", "field": "message"}]}):
        status, err = hub.request("POST", "/api/v1/query", json.dumps(bad).encode())
        assert status == 400, (bad, err)                # (some were 500s: TypeError)
    assert "pid" in err["error"]["valid"] and "metadata.<key>" in err["error"]["valid"]
    for path in ("/api/v1/logs?pid=abc", "/api/v1/export?pid=abc", "/api/v1/logs?f=tid!=x"):
        status, err = hub.request("GET", path)      # export: a 400, not a stream cut short
        assert status == 400 and "not an integer" in err["error"]["message"], (path, err)


def test_aggregations_sort_and_limit_their_rows(hub: Hub) -> None:
    """Top N by a metric (sort "-count", limit N, rows_total saying how many there were),
    by the keys descending, or by a metric ascending; on both the pre-aggregate path
    (counts by host) and the general one (max of pid by process); misspelt keys and
    unknown sort columns are 400s naming the valid ones."""
    rows = [entry(i, host=f"h{i % 7}", process=f"p{i % 5}", pid=i) for i in range(700)
            if i % 7 >= i % 3]                 # uneven counts per host
    hub.ingest(rows)

    def query(spec: dict) -> tuple[int, dict]:
        return hub.request("POST", "/api/v1/query", json.dumps(spec).encode())
    per_host = collections.Counter(e["host"] for e in rows)
    _, res = query({"type": "aggregation", "group_by": ["host"], "sort": "-count",
                    "limit": 3})
    assert [(r["host"], r["count"]) for r in res["rows"]] == sorted(
        per_host.items(), key=lambda kv: -kv[1])[:3]
    assert res["rows_total"] == 7
    _, res = query({"type": "aggregation", "group_by": ["host"], "sort": "desc"})
    assert [r["host"] for r in res["rows"]] == sorted(per_host, reverse=True)
    assert "rows_total" not in res
    spec = {"type": "aggregation", "group_by": ["process"],
            "metrics": [{"op": "max", "field": "pid"}], "sort": ["max_pid"], "limit": 2}
    _, res = query(spec)
    top = {}
    for e in rows:
        top[e["process"]] = max(top.get(e["process"], 0), e["pid"])
    assert [(r["process"], r["max_pid"]) for r in res["rows"]] == sorted(
        top.items(), key=lambda kv: kv[1])[:2]
    status, err = query({"type": "aggregation", "group_by": ["host"],
                         "aggregations": [{"op": "count"}]})
    assert status == 400 and "metrics" in err["error"]["valid"]
    status, err = query({"type": "aggregation", "group_by": ["host"], "sort": "-pid"})
    assert status == 400 and "-count" in err["error"]["valid"]
    assert hub.request("POST", "/api/v1/query", b"not json")[0] == 400


def test_export_formats(hub: Hub) -> None:
    hub.ingest([entry(i) for i in range(250)])
    status, nd = hub.request("GET", "/api/v1/export?format=ndjson")
    assert status == 200 and len(nd.splitlines()) == 250
    status, csv = hub.request("GET", "/api/v1/export?format=csv&host=h0")
    assert status == 200 and len(csv.decode().splitlines()) == 1 + 84
    status, pqb = hub.request("GET", "/api/v1/export?format=parquet")
    t = pq.read_table(io.BytesIO(pqb))
    assert t.num_rows == 250 and "message" in t.column_names
    assert hub.request("GET", "/api/v1/export?format=xml")[0] == 400


def test_stats_templates_metrics(make_hub) -> None:
    first, last = entry(0)["timestamp"], entry(89)["timestamp"]
    mem = make_hub("mem", flush_interval_s=3600)
    mem.ingest([entry(i) for i in range(90)])
    _, st = mem.request("GET", "/api/v1/stats")           # all of them still in memory
    assert (st["records_in_memory"], st["segments"]) == (90, 0)
    assert (st["oldest"], st["newest"]) == (first, last)
    _, text = mem.request("GET", "/metrics")
    tail = [ln for ln in text.decode().splitlines() if ln.startswith(
        'mohlog_cache_bytes{cache="memory_tail"}')]
    assert float(tail[0].split()[-1]) > 90 * 50                # 90 records held
    mem.stop()
    hub = make_hub()
    hub.ingest([entry(i) for i in range(90)])
    deadline = time.time() + 30
    while hub.request("GET", "/api/v1/stats")[1]["records_in_memory"] and \
            time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)                                  # the segment's indexes beside it
    _, st = hub.request("GET", "/api/v1/stats")
    assert st["records"] == 90 and st["by_host"] == {"h0": 30, "h1": 30, "h2": 30}
    assert st["segments"] >= 1 and st["stored_bytes"] > 0
    assert (st["oldest"], st["newest"]) == (first, last)
    segs = hub.data / "segments"
    index = sum(p.stat().st_size for p in segs.rglob("*.arrow")) + \
        (hub.data / "templates.json").stat().st_size
    assert st["index_bytes"] == index
    assert st["compression_ratio"] == round(st["raw_bytes"] / (st["stored_bytes"] + index), 2)
    _, tp = hub.request("GET", "/api/v1/templates")
    assert tp["templates"][0]["count"] == 90
    assert "<*>" in tp["templates"][0]["template"]
    tid = tp["templates"][0]["template_id"]
    status, one = hub.request("GET", f"/api/v1/templates/{tid}")
    assert status == 200, one
    assert one["count"] == 90 and one["hosts"] == ["h0", "h1", "h2"]
    assert one["example"] == entry(89)["message"]           # the newest of them
    assert one["first_seen"] == first and one["last_seen"] == last
    _, tp = hub.request("GET", "/api/v1/templates?host=h1")  # filters apply, example too
    assert tp["templates"][0]["count"] == 30
    assert tp["templates"][0]["example"] == entry(88)["message"]       # 88 % 3 == 1
    _, text = hub.request("GET", "/metrics")
    text = text.decode()
    assert "mohlog_records_received_total 90.0" in text
    assert "mohlog_wal_fsync_seconds_count" in text and "mohlog_query_seconds" in text
    # where the hub's memory goes
    values = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
              for ln in text.splitlines() if ln and not ln.startswith("#")}
    assert values["process_resident_memory_bytes"] > 50e6
    assert values["process_open_fds"] > 3
    assert any(k.startswith("mohlog_arrow_allocated_bytes{backend=") for k in values)
    for cache in ("word_index", "rollups", "footers", "memory_tail"):
        assert f'mohlog_cache_bytes{{cache="{cache}"}}' in values
    assert values['mohlog_cache_bytes{cache="word_index"}'] > 0      # the segment's
    assert values['mohlog_cache_bytes{cache="footers"}'] > 0


def test_live_tail_streams_new_matching_entries(hub: Hub) -> None:
    got: list[dict] = []
    req = urllib.request.Request(hub.url + "/api/v1/tail?f=level=ERROR",
                                 headers={"Authorization": f"Bearer {hub.token}"})
    resp = urllib.request.urlopen(req, timeout=30)

    def read() -> None:
        for line in resp:
            if line.startswith(b"data: "):
                got.append(orjson.loads(line[6:]))
                if len(got) == 2:
                    return
    t = threading.Thread(target=read, daemon=True)
    t.start()
    time.sleep(0.5)
    hub.ingest([entry(1, level="INFO"), entry(2, level="ERROR"), entry(3, level="ERROR")])
    t.join(20)
    resp.close()
    assert [r["id"] for r in got] == ["e00000002", "e00000003"]


def test_many_live_tails_each_get_their_matches_in_order(hub: Hub) -> None:
    """60 tails on three queries (20 alike each): every tail gets its query's records of
    several batches, in the order they were acknowledged, and none of another query's.
    (Matched apart from the request that brought them: its answer no longer waits for
    the tails.)"""
    import asyncio

    import aiohttp

    queries = {"errors": "f=level=ERROR", "h1": "host=h1", "word": "q=request"}
    batches = [[entry(i, level=["INFO", "ERROR"][i % 2]) for i in range(k * 30, k * 30 + 30)]
               for k in range(5)]
    every = [e for b in batches for e in b]
    want = {"errors": [e["id"] for e in every if e["level"] == "ERROR"],
            "h1": [e["id"] for e in every if e["host"] == "h1"],
            "word": [e["id"] for e in every]}
    auth = {"Authorization": f"Bearer {hub.token}"}

    async def main() -> dict[str, list[list[str]]]:
        got: dict[str, list[list[str]]] = {name: [] for name in queries}
        opened = 0

        async def tail(s: aiohttp.ClientSession, name: str) -> None:
            nonlocal opened
            ids: list[str] = []
            got[name].append(ids)
            async with s.get(f"{hub.url}/api/v1/tail?{queries[name]}", headers=auth) as r:
                opened += 1
                async for line in r.content:
                    if line.startswith(b"data: "):
                        ids.append(orjson.loads(line[6:])["id"])
                        if len(ids) == len(want[name]):
                            return

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            tasks = [asyncio.create_task(tail(s, name)) for name in queries for _ in range(20)]
            while opened < len(tasks):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            for b in batches:
                body = b"\n".join(orjson.dumps(e) for e in b)
                async with s.post(f"{hub.url}/api/v1/logs", data=body, headers=auth) as r:
                    assert r.status == 200
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return got

    got = asyncio.run(main())
    for name, tails in got.items():
        assert len(tails) == 20
        for ids in tails:
            assert ids == want[name], name


def test_a_tail_that_falls_behind_is_told_how_many_it_missed(hub: Hub) -> None:
    """A reader too slow for what matches (here: not reading while 1,100 large records
    come) loses records past its queue; the stream then says how many (``event:
    dropped``), so that none is missed silently. Shown + said dropped = every match."""
    from server.client import Client

    events: list[tuple[str, dict]] = []
    c = Client(hub.url, hub.token, timeout=120)
    stream = c.sse("/api/v1/tail", {"q": "behind"}, lambda n, d: events.append((n, d)))
    big = "x" * (64 << 10)
    n = 1100
    for i in range(n):                  # ~70 MB: more than the sockets' buffers hold
        status, _ = hub.ingest([entry(i, message=f"behind {i} {big}")])
        assert status == 200
    shown: list[int] = []

    def read() -> None:
        for r in stream:
            shown.append(int(r["message"].split()[1]))
            if len(shown) + sum(d["dropped"] for _, d in events) >= n:
                return
    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(90)                          # (never told: it would wait for them for ever)
    dropped = sum(d["dropped"] for name, d in events if name == "dropped")
    assert dropped > 0 and len(shown) + dropped == n, (len(shown), dropped, events)
    assert shown == sorted(shown)                  # in order, what was shown


def test_no_malformed_query_is_a_server_error(hub: Hub) -> None:
    """Every key of a structured query given values of every JSON type, and odd values
    to the GET endpoints: each is answered (200 or a 4xx saying why), never a 500."""
    hub.ingest([entry(1), entry(2, metadata={"n": 5, "s": "x"})])
    values = [5, "x", None, True, [1], {"a": 1}, -1, 1e308, "", [[1, 2, 3]],
              [{"field": 1, "op": "=", "value": 2}], ["level=INFO", 5]]
    keys = ["type", "start", "end", "q", "case", "filters", "group_by", "metrics",
            "interval", "sort", "limit", "cursor"]
    failed = []
    for key in keys:
        for value in values:
            for kind in ("search", "aggregation", "time_series"):
                spec = {key: value} if key == "type" else {"type": kind, key: value}
                status, body = hub.request("POST", "/api/v1/query", orjson.dumps(spec))
                if status >= 500:
                    failed.append((spec, status, body))
    odd = ["start=1e999", "end=-99999d", "start=-99999999999999d", "end=9999-01-01",
           "start=99999999999999999999999", "limit=1e3", "f=pid>abc", "f=timestamp<abc",
           "f=metadata.n>abc", "f=metadata.=x", "f=template_id=abc", "host=%00", "q=/%00/",
           "cursor=" + "A" * 500, "f=level", "f=", "pid=abc", "template_id=-1"]
    for query in odd:
        for path in ("/api/v1/logs", "/api/v1/export", "/api/v1/templates"):
            status, body = hub.request("GET", f"{path}?{query}")
            if status >= 500:
                failed.append((path, query, status, body))
    assert failed == []
