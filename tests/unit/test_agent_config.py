"""The agent's settings: the hub's address is taken as a URL or as HOST:PORT alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load
from mohlog.errors import InvalidInput


def test_hub_address_with_or_without_scheme(tmp_path: Path) -> None:
    assert load(None, {"hub": "10.0.0.7:7480"}).hub == "http://10.0.0.7:7480"
    assert load(None, {"hub": "https://hub.example:7480/"}).hub == "https://hub.example:7480"
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[agent]\nhub = "[::1]:7480"\n')
    assert load(cfg, {}).hub == "http://[::1]:7480"
    with pytest.raises(InvalidInput, match="hub URL must be http://HOST:PORT"):
        load(None, {"hub": "ftp://10.0.0.7"})
