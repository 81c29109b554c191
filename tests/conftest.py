"""Shared fixtures and skip rules (privileged, shared data, embeddings)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
LOGHUB = SHARED_DATA / "loghub"
TEST_DATA = Path(__file__).resolve().parent / "data"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    skip_root = pytest.mark.skip(reason="needs root (real eBPF probes)")
    skip_data = pytest.mark.skip(reason=f"{LOGHUB} is absent")
    for item in items:
        if "privileged" in item.keywords and not is_root:
            item.add_marker(skip_root)
        if "data" in item.keywords and not LOGHUB.is_dir():
            item.add_marker(skip_data)


@pytest.fixture
def loghub() -> Path:
    if not LOGHUB.is_dir():
        pytest.skip(f"{LOGHUB} is absent")
    return LOGHUB
