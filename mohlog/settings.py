"""Reading a settings file given explicitly on the command line (JSON or TOML)."""

from __future__ import annotations

import json
import re
import tomllib
import types
import typing
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


def check_types(cls: type, values: dict[str, Any], what: str) -> None:
    """Settings ``values`` for the dataclass ``cls`` have the types its fields declare
    (ints for ints, a number for floats, true/false for bools, text for paths...): a
    wrong one is an error naming the setting, not a hub or agent that starts and then
    fails at its first use (a retention pass every minute with ``retention_age_s = "1d"``)."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        want = hints.get(name)
        if want is not None and not _fits(value, want):
            raise InvalidInput(f"{what} setting {name} must be {_describe(want)}, "
                               f"not {value!r}", setting=name)


def _fits(value: Any, want: Any) -> bool:
    origin = typing.get_origin(want)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(want))
    if want is type(None):
        return value is None
    if want is bool:
        return isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if want is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if want is str:
        return isinstance(value, str)
    if want is Path:
        return isinstance(value, str | Path)
    if origin in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is dict:
        return isinstance(value, dict)
    return True                                 # other types are checked where used


def _describe(want: Any) -> str:
    if typing.get_origin(want) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(want))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "text",
             Path: "a path", type(None): "unset"}
    if want in names:
        return names[want]
    origin = typing.get_origin(want)
    return {list: "a list", tuple: "a list", dict: "a table"}.get(origin, str(want))


# Nanoseconds of each unit of time, for every duration mohlog reads (settings, relative
# query times, time-series intervals).
UNIT_NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
           "h": 3600 * 10**9, "d": 86_400 * 10**9, "w": 7 * 86_400 * 10**9}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", re.I)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", re.I)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def duration_s(value: Any, name: str) -> Any:
    """Seconds from ``"30d"``, ``"12h"``, ``"90m"``, ``"2w"`` or a number (seconds); any
    other value is returned as it is (for ``check_types`` to name)."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise InvalidInput(f"setting {name} must be a duration such as 3600, 90m, 12h, "
                               f"30d or 2w, not {value!r}", setting=name)
        return int(float(m.group(1)) * UNIT_NS[(m.group(2) or "s").lower()] // 10**9)
    return value


def size_bytes(value: Any, name: str) -> Any:
    """Bytes from ``"10G"``, ``"500MB"``, ``"2TiB"`` or a number (bytes); K, M, G, T, P
    are powers of 1024 (as ``du -h`` counts), with or without B/iB."""
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise InvalidInput(f"setting {name} must be a size such as 1000000, 500M, 10G "
                               f"or 2T, not {value!r}", setting=name)
        return int(float(m.group(1)) * 1024 ** _POWERS[m.group(2).lower()])
    return value
