"""Process-wide tuning of the agent for event storms (100k+ entries/s through Python) in
bounded memory (bar: 50,000 entries/s shipped in <= 200 MB resident).

- **Garbage collector.** Every entry is a few dicts, and a batch keeps ~10k of them alive:
  with the default thresholds (700, 10, 10) the collector runs hundreds of times a second,
  each pass walking the young entries, and a full pass every few seconds walks everything
  (25-37 ms, freeing nothing: entries die by reference counting). ``gc.freeze()`` moves
  what start-up created out of the collector's sight, and a first threshold of 100,000
  makes passes ~150x rarer; cycles are still collected.
- **malloc.** glibc gives the top of the heap back to the kernel once 128 kB are free, so
  every batch's buffers (serialised records, the IPC stream) would be faulted in again
  page by page (measured: +0.4-1 us per record). The trim threshold (64 MB), top pad
  (8 MB) and mmap threshold (32 MB) keep a batch's working heap while a storm's backlog is
  worked off; once the pipeline keeps up again it calls ``trim()`` (malloc_trim) after
  each batch, which hands every free page back, also those inside the heap that no trim
  threshold reaches. At most 2 malloc arenas: each thread (eBPF reader, pipeline, sink,
  metrics) would otherwise get a 64 MB arena of its own that keeps what it once needed.
- **Imports.** The agent writes Arrow streams itself (agent/arrow_writer.py); pyarrow is
  loaded only to drop levels from spooled Arrow batches when the spool is full, and then
  it would import numpy and pandas too (~60 MB resident) when it finds them. The agent
  uses neither, so its process skips them (``skip_optional_imports``).
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

from mohlog.memory import libc, trim

__all__ = ["trim", "tune_gc", "tune_malloc"]

GC_THRESHOLDS = (100_000, 50, 100)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
MALLOC_SETTINGS = ((M_ARENA_MAX, 2), (M_TRIM_THRESHOLD, 64 << 20), (M_TOP_PAD, 8 << 20),
                   (M_MMAP_THRESHOLD, 32 << 20))
SKIPPED_IMPORTS = ("pandas", "numpy")


def tune_gc() -> None:
    """Freeze what exists now and raise the collector's thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def tune_malloc() -> bool:
    """glibc's arenas, trim threshold, top pad, mmap threshold; False when not on glibc.
    Best before the threads start: a thread keeps the arena it first allocated from."""
    mallopt = getattr(libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all([mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS])


class _SkipImports:
    """Meta path finder refusing SKIPPED_IMPORTS (pyarrow treats them as not installed)."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name.partition(".")[0] in SKIPPED_IMPORTS:
            raise ImportError(f"{name} is not used by the agent (agent/tuning.py)")
        return None


def skip_optional_imports() -> bool:
    """Make numpy and pandas unimportable in this process (the agent's own: the hub and
    tests need them); False when one is imported already."""
    if any(name in sys.modules for name in SKIPPED_IMPORTS):
        return False
    if not any(isinstance(f, _SkipImports) for f in sys.meta_path):
        sys.meta_path.insert(0, _SkipImports())
    return True


def tune() -> None:
    tune_malloc()
    tune_gc()
