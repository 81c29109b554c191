"""Reading a settings file given explicitly on the command line (JSON or TOML)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from mohlog.errors import InvalidInput


def read_settings(path: Path, section: str) -> dict[str, Any]:
    """The object in ``path`` (``.toml`` is TOML, anything else JSON); a top-level
    ``[section]`` table is used when present. Errors name the file and the reason."""
    try:
        text = path.read_text()
    except OSError as err:
        raise InvalidInput(f"cannot read config {path}: {err}") from err
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise InvalidInput(f"config {path} is not valid: {err}") from err
    if not isinstance(data, dict):
        raise InvalidInput(f"config {path} must hold an object")
    return data.get(section, data)


def hub_url(url: str) -> str:
    """A hub's address as a URL: ``HOST:PORT`` alone (as ``--listen`` takes it) means
    ``http://HOST:PORT``; a scheme other than http or https is an error."""
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"hub URL must be http://HOST:PORT or https://HOST:PORT, not {url!r}")
    return url.rstrip("/")
