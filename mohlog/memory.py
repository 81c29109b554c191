"""Memory settings of the hub's process (``mohlog hub`` and ``mohlog run`` apply them before
anything imports pyarrow; see ``mohlog.cli``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

# The hub allocates and frees large buffers all the time (Arrow batches, numpy arrays).
# Handed back to the kernel at once, they come back as page faults on zeroed pages, and
# as transparent huge pages (numpy and mimalloc ask for them) each fault zeroes 2 MB:
# ~10 % of the hub's CPU at ~900k records/s. So: Arrow's allocator (mimalloc) keeps freed
# memory 10 s before returning it (read when pyarrow loads: set before any import of it;
# a value in the environment wins), glibc's keeps blocks, and the hub's memory is not
# backed by huge pages (system time ~7.5 -> ~4.4 s of ~36 s in 20 s bench runs).
ALLOCATOR_ENV = {"MIMALLOC_PURGE_DELAY": "10000"}
PR_SET_THP_DISABLE = 41


def tune_allocators() -> bool:
    """Set ALLOCATOR_ENV (unless set); let glibc's malloc (numpy's) keep blocks of up
    to 32 MB in its heaps and 256 MB free at their top instead of unmapping them; turn
    transparent huge pages off for this process (and its children). True when glibc took
    the settings."""
    for key, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(key, value)
    huge_pages(False)
    mallopt = getattr(libc(), "mallopt", None)
    if mallopt is None:                 # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 256 << 20))


def huge_pages(on: bool) -> bool:
    """Transparent huge pages on or off for this process and the children it starts
    from now (Linux >= 3.15). The hub's child that runs the embedding model turns them
    back on: its memory is the model's, allocated once. False where unsupported."""
    prctl = getattr(libc(), "prctl", None)
    return prctl is not None and prctl(PR_SET_THP_DISABLE, int(not on), 0, 0, 0) == 0


@functools.cache
def libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def trim() -> None:
    """Give the free pages of every malloc arena back to the kernel (glibc's malloc_trim:
    the top of each heap and whole free pages inside it, which a trim threshold never
    reaches)."""
    fn = getattr(libc(), "malloc_trim", None)
    if fn is not None:
        fn(0)


def release_unused() -> None:
    """Hand the memory a burst of work freed back to the system: Arrow's pool, then
    glibc's arenas. The hub keeps freed memory while it works (see ALLOCATOR_ENV and
    tune_allocators); its store calls this once its flushes and merges have been quiet
    for a few seconds. Measured after importing 3M lines: 1.0 GB resident with 2 MB in
    Arrow's pool and ~20 MB of Python objects; glibc's trim alone gave back 340 MB."""
    import pyarrow as pa  # (loaded by then; not at import: see above)
    pa.default_memory_pool().release_unused()
    trim()
