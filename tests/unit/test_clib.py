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
