"""mohlog.parent: a process notices its parent is gone (real processes, real reparenting)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mohlog import parent

ROOT = Path(__file__).resolve().parents[2]

# B watches its parent A and writes a file when A is gone; A starts B, then waits for a line.
_B = ("import os, sys, time\nsys.path.insert(0, sys.argv[1])\nfrom mohlog import parent\n"
      "mark = sys.argv[2]\n"
      "parent.watch(os.getppid(), lambda: open(mark, 'w').write('gone'), every_s=0.05)\n"
      "print('watching', flush=True)\ntime.sleep(30)\n")
_A = ("import subprocess, sys\n"
      "b = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2], sys.argv[3]],"
      " stdout=subprocess.PIPE, text=True)\n"
      "b.stdout.readline()\nprint(b.pid, flush=True)\nsys.stdin.readline()\n")


def test_watch_calls_back_once_the_parent_is_gone(tmp_path: Path) -> None:
    mark = tmp_path / "gone"
    a = subprocess.Popen([sys.executable, "-c", _A, _B, str(ROOT), str(mark)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert a.stdout is not None and a.stdin is not None
    b = int(a.stdout.readline())
    try:
        time.sleep(0.3)
        assert not mark.exists()                # A alive: nothing yet
        a.kill()
        a.wait()
        deadline = time.monotonic() + 10
        # (B creates the file, then writes it: wait for the words, not the file)
        while not (mark.exists() and mark.read_text() == "gone") and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert mark.exists() and mark.read_text() == "gone"
    finally:
        try:
            os.kill(b, 9)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("value", ["", "x12", "-1"])
def test_watch_from_env_needs_a_pid(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(parent.PARENT_ENV, value)
    assert parent.watch_from_env(lambda: None) is False


def test_watch_from_env_watches_the_named_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parent.PARENT_ENV, str(os.getppid()))
    called: list[int] = []
    assert parent.watch_from_env(lambda: called.append(1)) is True
    time.sleep(0.6)
    assert called == []                         # our parent is still there
