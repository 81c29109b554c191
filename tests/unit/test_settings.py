"""Settings: the hub's address as a URL or HOST:PORT alone; values of the wrong type
refused at start (agent and hub)."""

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


def test_settings_of_the_wrong_type_are_refused_at_start(tmp_path: Path) -> None:
    """A hub or agent given a setting of the wrong type stops at once naming it, instead of
    starting and failing at its first use (retention every minute, a filter per entry)."""
    from server.config import load as hub_load
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nretention_age_s = "one day"\n')
    with pytest.raises(InvalidInput, match=r"setting retention_age_s must be a duration "
                                           r"such as 3600, 90m, 12h, 30d or 2w, not 'one day'"):
        hub_load(cfg, {})
    cfg.write_text('[hub]\nretention_age_s = true\n')
    with pytest.raises(InvalidInput, match=r"hub setting retention_age_s must be an integer "
                                           r"or unset, not True"):
        hub_load(cfg, {})
    cfg.write_text('[hub]\narchive_bytes = "10 gigs"\n')
    with pytest.raises(InvalidInput, match=r"archive_bytes must be a size such as"):
        hub_load(cfg, {})
    cfg.write_text('[hub]\nembeddings = "no"\n')
    with pytest.raises(InvalidInput, match="embeddings must be true or false"):
        hub_load(cfg, {})
    cfg.write_text('[hub]\nflush_interval_s = 2\narchive_bytes = 1000000\ndata = "/srv/x"\n')
    got = hub_load(cfg, {})
    assert got.flush_interval_s == 2 and got.archive_bytes == 1_000_000
    assert got.data == Path("/srv/x")
    with pytest.raises(InvalidInput, match="batch_max_records must be an integer"):
        load(None, {"batch_max_records": "10"})
    with pytest.raises(InvalidInput, match="regex must be text, not 5"):
        load(None, {"drop": [{"field": "level", "regex": 5}]})
    with pytest.raises(InvalidInput, match=r"unknown key\(s\) \['feld'\]"):
        load(None, {"drop": [{"feld": "level", "regex": "x"}]})
    assert load(None, {"drop": [{"field": "level", "regex": "DEBUG"}]}).drop[0].regex == "DEBUG"


@pytest.mark.parametrize(("age", "seconds"), [
    ("3600", 3600), ("90m", 5400), ("12h", 43_200), ("30d", 2_592_000), ("2w", 1_209_600),
    ("1.5h", 5400), (" 7D ", 604_800), (86_400, 86_400)])
@pytest.mark.parametrize(("size", "nbytes"), [
    ("1000000", 1_000_000), ("500M", 500 << 20), ("10G", 10 << 30), ("10GB", 10 << 30),
    ("2TiB", 2 << 40), ("512k", 512 << 10), (123, 123)])
def test_retention_and_archive_limits_take_units(tmp_path: Path, age: object, seconds: int,
                                                 size: object, nbytes: int) -> None:
    """``--retention-age 30d --retention-bytes 10G`` as an SRE types them (and in the
    settings file); numbers stay seconds and bytes."""
    from server.cli import parser
    from server.config import load as hub_load
    args = parser().parse_args(["--retention-age", str(age), "--retention-bytes", str(size),
                                "--archive-age", str(age), "--archive-bytes", str(size)])
    cfg = hub_load(None, {k: v for k, v in vars(args).items() if k != "log_level"})
    assert (cfg.retention_age_s, cfg.archive_age_s) == (seconds, seconds)
    assert (cfg.retention_bytes, cfg.archive_bytes) == (nbytes, nbytes)
    toml = tmp_path / "hub.toml"

    def quoted(v: object) -> str:
        return f'"{v}"' if isinstance(v, str) else str(v)
    toml.write_text(f"[hub]\nretention_age_s = {quoted(age)}\n"
                    f"retention_bytes = {quoted(size)}\n")
    got = hub_load(toml, {})
    assert (got.retention_age_s, got.retention_bytes) == (seconds, nbytes)


def test_agent_sizes_take_units() -> None:
    cfg = load(None, {"spool_max_bytes": "2G", "batch_max_bytes": "4M"})
    assert (cfg.spool_max_bytes, cfg.batch_max_bytes) == (2 << 30, 4 << 20)
    with pytest.raises(InvalidInput, match="spool_max_bytes must be a size"):
        load(None, {"spool_max_bytes": "lots"})
