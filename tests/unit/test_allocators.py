"""The hub's allocator settings: set before pyarrow loads, a value already in the
environment kept, glibc's thresholds taken."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from mohlog import cli, memory

CHECK = ("from mohlog import memory; ok = memory.tune_allocators(); import os, re; "
         "thp = re.search(r'THP_enabled:\\s*(\\d)', open('/proc/self/status').read()); "
         "print(ok, os.environ['MIMALLOC_PURGE_DELAY'], thp.group(1) if thp else '-')")


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(env: dict[str, str]) -> list[str]:
    return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True,
                          text=True, check=True, cwd=ROOT).stdout.split()


def test_tune_sets_the_environment_and_glibc() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MIMALLOC_PURGE_DELAY"}
    ok, delay, thp = _run(env)
    assert delay == memory.ALLOCATOR_ENV["MIMALLOC_PURGE_DELAY"]
    assert thp in ("0", "-")  # huge pages off (where the kernel says)
    if os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") or os.path.exists(
            "/lib/aarch64-linux-gnu/libc.so.6"):
        assert ok == "True"
    # a value given by the user wins
    assert _run({**env, "MIMALLOC_PURGE_DELAY": "5"})[1] == "5"


def test_huge_pages_back_on_for_a_child() -> None:
    """The embedding child turns huge pages back on (the hub's setting is inherited)."""
    code = ("from mohlog import memory as m; import re; m.huge_pages(False); "
            "a = m.huge_pages(True); "
            "print(a, re.search(r'THP_enabled:\\s*(\\d)', open('/proc/self/status').read())"
            ".group(1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    if out[0] == "False":
        pytest.skip("no PR_SET_THP_DISABLE here")
    assert out == ["True", "1"]


@pytest.mark.parametrize("command,switch,tuned", [
    ("hub", None, True), ("run", None, True), ("search", None, False), ("hub", "0", False)])
def test_server_commands_tune_before_importing(monkeypatch: pytest.MonkeyPatch, command: str,
                                               switch: str | None, tuned: bool) -> None:
    seen: list[bool] = []
    monkeypatch.delenv("MIMALLOC_PURGE_DELAY", raising=False)
    if switch is None:
        monkeypatch.delenv("MOHLOG_ALLOCATOR_TUNING", raising=False)
    else:
        monkeypatch.setenv("MOHLOG_ALLOCATOR_TUNING", switch)
    monkeypatch.setattr(memory, "tune_allocators",
                        lambda: os.environ.__setitem__("MIMALLOC_PURGE_DELAY", "1") or True)

    def fake_import(name: str) -> types.ModuleType:
        seen.append("MIMALLOC_PURGE_DELAY" in os.environ)  # at import time
        mod = types.ModuleType(name)
        mod.main = lambda argv: 0  # type: ignore[attr-defined]
        return mod
    monkeypatch.setattr(cli.importlib, "import_module", fake_import)
    assert cli.main([command]) == 0
    assert seen == [tuned]
