"""The kernel log source on its own: records from /dev/kmsg, and a restart that resumes
after the last record handed on (nothing twice, nothing missed while it was down)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from agent.sources.kmsg import KmsgConfig, KmsgSource
from tests.privileged.ebpf_helpers import Collector

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


def _write(text: str, pri: int = 6) -> None:
    with open("/dev/kmsg", "w") as kmsg:
        kmsg.write(f"<{pri}>{text}\n")


def _run(state: Path, texts_after_start: list[str], expect: int, marker: str) -> list[dict]:
    src = KmsgSource(KmsgConfig(state_file=str(state), poll_interval_s=0.05))
    sink = Collector()
    src.start(sink)
    try:
        for text in texts_after_start:
            _write(text)
        found = sink.wait(lambda e: marker in e["message"], count=expect, timeout=10)
        time.sleep(0.3)
        return sink.find(lambda e: marker in e["message"]) or found
    finally:
        src.stop()


def test_resume_across_restart(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    state = tmp_path / "kmsg.json"
    first = _run(state, [f"mohlog-kmsg[{os.getpid()}]: one {marker}"], 1, marker)
    assert [e["message"].split()[-2] for e in first] == ["one"]
    assert first[0]["source"] == "kmsg" and first[0]["level"] == "INFO"
    assert first[0]["metadata"]["facility"] == "user"
    _write(f"mohlog-kmsg: two {marker}", pri=3)  # while no reader runs
    second = _run(state, [f"mohlog-kmsg: three {marker}"], 2, marker)
    assert [e["message"].split()[-2] for e in second] == ["two", "three"]
    assert second[0]["level"] == "ERROR"
    assert second[0]["metadata"]["seq"] > first[0]["metadata"]["seq"]
