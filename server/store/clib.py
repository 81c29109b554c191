"""C helpers of the store (``native/NAME.c``), compiled with the system's C compiler at
first use and cached beside their source or in ~/.cache/mohlog. Every helper has a numpy
twin giving the same result, used (and said once in the log) when no compiler is found."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from mohlog import log

_DIR = Path(__file__).with_name("native")
_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL | None] = {}


def load(name: str, declare: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """The compiled ``native/<name>.c`` with its functions' signatures set by ``declare``,
    or None when it cannot be built."""
    with _lock:
        if name in _libs:
            return _libs[name]
        lib = None
        try:
            lib = _build(_DIR / f"{name}.c")
            declare(lib)
        except (OSError, AttributeError, subprocess.SubprocessError) as err:
            log.store.warning("%s: cannot build the C helper (%s); using numpy", name, err)
            lib = None
        _libs[name] = lib
        return lib


def _build(src_path: Path) -> ctypes.CDLL:
    src = src_path.read_bytes()
    name = f"_{src_path.stem}-{hashlib.sha256(src).hexdigest()[:16]}.so"
    so = src_path.parent / name
    for d in (src_path.parent, Path.home() / ".cache" / "mohlog"):
        so = d / name
        if so.exists():
            break
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise OSError("no C compiler (cc/gcc) on PATH")
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=d, suffix=".so")
        except OSError:
            continue
        os.close(fd)
        try:
            subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(src_path)],
                           check=True, capture_output=True, timeout=120)
            os.replace(tmp, so)
        finally:
            Path(tmp).unlink(missing_ok=True)
        break
    return ctypes.CDLL(str(so))
