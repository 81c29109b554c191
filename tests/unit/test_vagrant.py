"""The Vagrant fleet definition validates and its provisioning script parses."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_provision_script_parses() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "vagrant" / "provision.sh")], check=True)


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant not installed")
def test_vagrantfile_validates(tmp_path: Path) -> None:
    work = tmp_path / "vagrant"
    shutil.copytree(ROOT / "vagrant", work, ignore=shutil.ignore_patterns(".tokens"))
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "home"), MOHLOG_AGENTS="3")
    out = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "agent3" in out.stdout
    token = (work / ".tokens" / "agent.token").read_text().strip()
    assert token.startswith("mohlog_") and len(token) > 40
    assert (work / ".tokens" / "agent.token").stat().st_mode & 0o077 == 0
