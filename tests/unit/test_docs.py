"""Every setting a user can set is documented (README for the hub, docs/ for the agent)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from server.config import HubConfig
from server.store import StoreConfig

ROOT = Path(__file__).resolve().parents[2]


def test_every_hub_and_store_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for cls in (HubConfig, StoreConfig):
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in readme, f"{cls.__name__}.{f.name} not documented"


def test_every_ebpf_setting_is_in_probes_doc() -> None:
    from agent.sources.ebpf import EbpfConfig
    doc = (ROOT / "docs" / "probes.md").read_text()
    for f in dataclasses.fields(EbpfConfig):
        assert f"`{f.name}`" in doc, f"EbpfConfig.{f.name} not documented"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("```")[1]
    lines = [ln.split("#")[0].strip() for ln in head.strip().splitlines()[1:]]
    assert lines[:2] == ["make run", "make test"]


def test_every_agent_setting_is_in_agent_doc() -> None:
    from agent.config import AgentConfig
    doc = (ROOT / "docs" / "agent.md").read_text()
    for f in dataclasses.fields(AgentConfig):
        assert f"`{f.name}`" in doc, f"AgentConfig.{f.name} not documented"
