"""Memory settings of the hub's process (``mohlog hub`` and ``mohlog run`` apply them before
anything imports pyarrow; see ``mohlog.cli``)."""

from __future__ import annotations

import ctypes
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
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                    and libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):   # not glibc
        return False


def huge_pages(on: bool) -> bool:
    """Transparent huge pages on or off for this process and the children it starts
    from now (Linux >= 3.15). The hub's child that runs the embedding model turns them
    back on: its memory is the model's, allocated once. False where unsupported."""
    try:
        return ctypes.CDLL("libc.so.6").prctl(PR_SET_THP_DISABLE, int(not on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
