"""The C helper loader: compiles and caches a source, and says no (for the numpy twin)
when there is no compiler or the source does not build."""

from __future__ import annotations

import ctypes
import logging
import shutil
from pathlib import Path

import pytest

from mohlog import clib


def _declare(lib: ctypes.CDLL) -> None:
    lib.seven.restype = ctypes.c_int


def test_compiles_once_and_caches_beside_the_source(tmp_path: Path) -> None:
    src = tmp_path / "seven.c"
    src.write_text("int seven(void) { return 7; }\n")
    lib = clib.load(src, _declare)
    assert lib is not None and lib.seven() == 7
    assert len(list(tmp_path.glob("_seven-*.so"))) == 1
    assert clib.load(src, _declare) is lib
    again = tmp_path / "again" / "seven.c"               # a new version of the source
    again.parent.mkdir()
    (again.parent / "_seven-0000000000000000.so").write_bytes(b"an earlier build")
    again.write_text("int seven(void) { return 7 * 1; }\n")
    lib2 = clib.load(again, _declare)
    assert lib2 is not None and lib2.seven() == 7
    assert [p.name for p in again.parent.glob("_seven-*.so")] != \
        ["_seven-0000000000000000.so"]
    assert len(list(again.parent.glob("_seven-*.so"))) == 1   # the earlier one is gone


def test_no_compiler_or_a_broken_source_gives_none(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    src = tmp_path / "nocc.c"
    src.write_text("int seven(void) { return 7; }\n")
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING):
        m.setattr(shutil, "which", lambda name: None)
        assert clib.load(src, _declare) is None
    assert "no C compiler" in caplog.text and "using numpy" in caplog.text
    bad = tmp_path / "bad.c"
    bad.write_text("int seven(void) { return 7 }\n")
    assert clib.load(bad, _declare) is None
    missing = tmp_path / "missing.c"
    missing.write_text("int eight(void) { return 8; }\n")
    assert clib.load(missing, _declare) is None      # a function the declaration names


def test_a_build_beside_that_cannot_be_loaded_is_built_again_in_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user's build beside the source (root's, unreadable to the hub's user; here
    one that is not a library) is passed over: the helper is built in ~/.cache/mohlog.
    Builds are world-readable (code, not data), so the next user can load them."""
    import hashlib
    import stat

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    src = tmp_path / "eight.c"
    src.write_text("int eight(void) { return 8; }\n")
    name = f"_eight-{hashlib.sha256(src.read_bytes()).hexdigest()[:16]}.so"
    (tmp_path / name).write_bytes(b"not a shared object")

    def declare(lib: ctypes.CDLL) -> None:
        lib.eight.restype = ctypes.c_int
    lib = clib.load(src, declare)
    assert lib is not None and lib.eight() == 8
    cached = tmp_path / "home" / ".cache" / "mohlog" / name
    assert cached.exists() and stat.S_IMODE(cached.stat().st_mode) == 0o755
    other = tmp_path / "nine.c"
    other.write_text("int nine(void) { return 9; }\n")
    assert clib.load(other, lambda lib: None) is not None
    assert stat.S_IMODE(next(tmp_path.glob("_nine-*.so")).stat().st_mode) == 0o755
