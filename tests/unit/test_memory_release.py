"""Memory freed by a burst of work goes back to the system (mohlog.memory.release_unused)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mohlog import memory

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: 200 MB of 64 KB blocks (glibc's heap, not mmap), each with
# a small block kept after it, so freeing them leaves holes glibc keeps.
PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from mohlog.memory import release_unused

def rss():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) * 1024

keep, junk = [], []
for _ in range(3200):
    junk.append(bytearray(64 << 10))
    keep.append(bytearray(1000))
del junk
before = rss()
release_unused()
print(before, rss())
"""


@pytest.mark.skipif(getattr(memory.libc(), "malloc_trim", None) is None,
                    reason="not glibc: no malloc_trim")
def test_release_unused_gives_freed_heap_back() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    before, after = map(int, out.split())
    assert before - after > 100e6, (before, after)     # ~200 MB was held after the del


def test_release_unused_never_raises() -> None:
    memory.release_unused()
    memory.release_unused()
