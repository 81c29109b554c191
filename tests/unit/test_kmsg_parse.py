"""/dev/kmsg records -> KERNEL entries, and the resume position (no root: a regular file
stands in for /dev/kmsg where only its position matters)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.sources import kmsg


def test_parse_kernel_record_with_fields() -> None:
    raw = (b"3,1234,5678901,-,caller=T42;usb 1-1: device descriptor read/64, error -71\n"
           b" SUBSYSTEM=usb\n DEVICE=c189:1\n")
    rec = kmsg.parse_record(raw)
    assert (rec.priority, rec.facility, rec.seq, rec.usec, rec.continued) == (
        3, 0, 1234, 5678901, False)
    assert rec.text == "usb 1-1: device descriptor read/64, error -71"
    assert rec.fields == {"SUBSYSTEM": "usb", "DEVICE": "c189:1"}


def test_parse_escapes_and_continuation() -> None:
    rec = kmsg.parse_record(b"14,7,100,c;tab\\x09here \\x5c done\n")
    assert rec.text == "tab\there \\ done" and rec.continued and rec.facility == 1


@pytest.mark.parametrize("raw", [b"", b"garbage", b"1,2;x", b"a,b,c,-;x"])
def test_parse_rejects_non_records(raw: bytes) -> None:
    with pytest.raises(ValueError):
        kmsg.parse_record(raw)


@pytest.mark.parametrize(("pri", "level"), [
    (0, "CRITICAL"), (1, "CRITICAL"), (2, "CRITICAL"), (3, "ERROR"), (4, "WARNING"),
    (5, "INFO"), (6, "INFO"), (7, "DEBUG")])
def test_priority_to_level(pri: int, level: str) -> None:
    rec = kmsg.parse_record(f"{pri},1,2000,-;oops\n".encode())
    entry = kmsg.to_entry(rec, "h1", 1_000_000)
    assert entry["level"] == level and entry["component"] == "KERNEL"
    assert entry["metadata"]["priority"] == pri and entry["timestamp"] == 2_000_000 + 1_000_000


def test_user_record_tag_and_pid() -> None:
    rec = kmsg.parse_record(b"12,9,10,-;myapp[4321]: started\n SUBSYSTEM=x\n")
    e = kmsg.to_entry(rec, "h1", 0, source="ebpf")
    assert (e["process"], e["pid"], e["message"], e["source"]) == (
        "myapp", 4321, "myapp[4321]: started", "ebpf")
    assert e["metadata"] == {"event": "printk", "priority": 4, "priority_name": "warning",
                             "facility": "user", "seq": 9, "kernel_usec": 10,
                             "subsystem": "x"}
    kernel = kmsg.to_entry(kmsg.parse_record(b"6,1,1,-;eth0: link up\n"), "h1", 0)
    assert (kernel["process"], kernel["pid"]) == ("kernel", 0)


def _reader(tmp_path: Path, state: dict | None) -> kmsg.KmsgReader:
    fake = tmp_path / "kmsg"
    fake.write_bytes(b"")
    state_file = tmp_path / "kmsg.json"
    if state is not None:
        state_file.write_text(json.dumps(state))
    return kmsg.KmsgReader(state_file, path=str(fake))


def test_resume_skips_seen_and_counts_gaps(tmp_path: Path) -> None:
    reader = _reader(tmp_path, {"boot_id": kmsg.boot_id(), "seq": 10})
    assert reader.last_seq == 10
    assert reader.take(b"6,9,1,-;old\n") is None and reader.take(b"6,10,1,-;old\n") is None
    assert reader.take(b"6,11,1,-;new\n")["message"] == "new"
    assert reader.take(b"6,15,1,-;after a gap\n") is not None
    assert reader.take(b"not a record") is None
    assert reader.stats() == {"records": 2, "lost": 3, "bad": 1, "last_seq": 15}
    reader.close()  # saves the position
    saved = json.loads((tmp_path / "kmsg.json").read_text())
    assert saved == {"boot_id": kmsg.boot_id(), "seq": 15}


def test_state_of_another_boot_reads_everything(tmp_path: Path) -> None:
    reader = _reader(tmp_path, {"boot_id": "another-boot", "seq": 500})
    assert reader.last_seq == -1
    assert reader.take(b"6,3,1,-;from this boot\n") is not None
    reader.close()


def test_no_state_starts_fresh(tmp_path: Path) -> None:
    reader = _reader(tmp_path, None)
    assert reader.last_seq == -1 and reader.take(b"6,77,1,-;x\n") is not None
    assert reader.stats()["lost"] == 0
    reader.close()
