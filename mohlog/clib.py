"""C helpers (``native/NAME.c`` beside the module using them), compiled with the system's
C compiler at first use and cached beside their source or in ~/.cache/mohlog. Every helper
has a numpy twin giving the same result, used (and said once in the log) when no compiler
is found."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

_lock = threading.Lock()
_libs: dict[Path, ctypes.CDLL | None] = {}


def load(src: Path, declare: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """The compiled C file ``src`` with its functions' signatures set by ``declare``, or
    None when it cannot be built."""
    with _lock:
        if src in _libs:
            return _libs[src]
        lib = None
        try:
            lib = _build(src)
            declare(lib)
        except (OSError, AttributeError, subprocess.SubprocessError) as err:
            logging.getLogger("mohlog.clib").warning(
                "%s: cannot build the C helper (%s); using numpy", src.name, err)
            lib = None
        _libs[src] = lib
        return lib


def _build(src_path: Path) -> ctypes.CDLL:
    """Load the build of ``src_path``'s current source, beside it or in ~/.cache/mohlog,
    building it where there is none (or where the one there cannot be loaded: another
    user's unreadable build). Builds are world-readable: code, not data."""
    src = src_path.read_bytes()
    name = f"_{src_path.stem}-{hashlib.sha256(src).hexdigest()[:16]}.so"
    last: OSError | None = None
    for d in (src_path.parent, Path.home() / ".cache" / "mohlog"):
        so = d / name
        if so.exists():
            try:
                return ctypes.CDLL(str(so))
            except OSError as err:          # (root built it 0700 before it said 0755)
                last = err
                continue
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise OSError("no C compiler (cc/gcc) on PATH")
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=d, suffix=".so")
        except OSError as err:
            last = err
            continue
        os.close(fd)
        try:
            subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(src_path)],
                           check=True, capture_output=True, timeout=120)
            os.chmod(tmp, 0o755)
            os.replace(tmp, so)
            for old in d.glob(f"_{src_path.stem}-*.so"):   # builds of earlier sources
                if old != so:                               # (a process using one keeps
                    old.unlink(missing_ok=True)             # its mapping)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return ctypes.CDLL(str(so))
    raise last or OSError(f"nowhere to build {name}")
