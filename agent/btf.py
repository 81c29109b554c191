"""Kernel struct field offsets from the running kernel's BTF.

The kernel headers installed here (Debian's 6.1) do not match the running kernel (6.18):
a probe that reads ``task->real_parent->tgid`` through them reads the wrong bytes. So the
probes read struct fields with ``bpf_probe_read_kernel`` at ``base + OFFSET`` where each
OFFSET comes from ``/sys/kernel/btf/vmlinux`` (dumped by ``bpftool -j btf dump file``) and
is passed to the compiler as a ``-D`` macro (``FIELDS`` below names them).

The dump is ~17 MB of JSON; the offsets are cached in the state directory under the kernel
release and a hash of the BTF blob, so a restart or a new kernel is handled without
re-parsing when nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mohlog import log
from mohlog.errors import MohlogError

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

# macro name -> "struct_name.member.member..." (anonymous members are searched through)
FIELDS: dict[str, str] = {
    "OFF_TASK_REAL_PARENT": "task_struct.real_parent",
    "OFF_TASK_GROUP_LEADER": "task_struct.group_leader",
    "OFF_TASK_TGID": "task_struct.tgid",
    "OFF_TASK_START_TIME": "task_struct.start_time",
    "OFF_TASK_EXIT_CODE": "task_struct.exit_code",
    "OFF_TASK_MM": "task_struct.mm",
    "OFF_TASK_NSPROXY": "task_struct.nsproxy",
    "OFF_NSPROXY_NET_NS": "nsproxy.net_ns",
    "OFF_NET_NS_INUM": "net.ns.inum",
    "OFF_MM_ARG_START": "mm_struct.arg_start",
    "OFF_MM_ARG_END": "mm_struct.arg_end",
    "OFF_SOCK_NET": "sock.__sk_common.skc_net",
}


class BtfError(MohlogError):
    """BTF is missing or lacks a field a probe needs."""


class _Types:
    """The BTF type table of a ``bpftool -j`` dump, indexed by id and struct name."""

    def __init__(self, types: list[dict[str, Any]]) -> None:
        self.by_id = {t["id"]: t for t in types}
        self.structs: dict[str, dict[str, Any]] = {}
        for t in types:
            if t["kind"] in ("STRUCT", "UNION") and t.get("vlen") and t["name"] != "(anon)":
                self.structs.setdefault(t["name"], t)

    def resolve(self, type_id: int) -> dict[str, Any]:
        """Follow typedefs and qualifiers to the underlying type."""
        t = self.by_id[type_id]
        while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            t = self.by_id[t["type_id"]]
        return t

    def member_offset(self, struct: dict[str, Any], name: str) -> tuple[int, dict[str, Any]]:
        """(byte offset, member type) of ``name`` in ``struct``, searching anonymous members."""
        for m in struct.get("members", []):
            mtype = self.resolve(m["type_id"])
            if m["name"] == name:
                return m["bits_offset"] // 8, mtype
            if m["name"] == "(anon)" and mtype["kind"] in ("STRUCT", "UNION"):
                try:
                    inner, itype = self.member_offset(mtype, name)
                except KeyError:
                    continue
                return m["bits_offset"] // 8 + inner, itype
        raise KeyError(name)

    def offset(self, path: str) -> int:
        struct_name, *members = path.split(".")
        if struct_name not in self.structs:
            raise BtfError(f"struct {struct_name} not in BTF")
        current, total = self.structs[struct_name], 0
        for name in members:
            try:
                off, current = self.member_offset(current, name)
            except KeyError as err:
                raise BtfError(f"BTF: no member {name!r} in {path}") from err
            total += off
        return total


def btf_hash(btf_path: Path = VMLINUX_BTF) -> str:
    return hashlib.sha256(btf_path.read_bytes()).hexdigest()[:16]


def dump_types(btf_path: Path = VMLINUX_BTF) -> list[dict[str, Any]]:
    """The BTF types as bpftool prints them (``bpftool -j btf dump file PATH``)."""
    try:
        out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(btf_path)],
                             check=True, capture_output=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise BtfError(f"bpftool cannot dump {btf_path}: {err}") from err
    return json.loads(out)["types"]


def compute_offsets(types: list[dict[str, Any]], fields: dict[str, str]) -> dict[str, int]:
    table = _Types(types)
    return {macro: table.offset(path) for macro, path in fields.items()}


def offsets(state_dir: Path | None = None, btf_path: Path = VMLINUX_BTF,
            fields: dict[str, str] = FIELDS) -> dict[str, int]:
    """The field offsets of ``fields`` on the running kernel, cached in ``state_dir``."""
    if not btf_path.exists():
        raise BtfError(f"{btf_path} is missing: the kernel has no BTF (CONFIG_DEBUG_INFO_BTF)")
    cache = _cache_path(state_dir, btf_path)
    cached = _read_cache(cache, fields)
    if cached is not None:
        return cached
    result = compute_offsets(dump_types(btf_path), fields)
    if cache is not None:
        _write_cache(cache, result)
    log.bpf.info("BTF offsets computed from %s: %s", btf_path, result)
    return result


def cflags(values: dict[str, int]) -> list[str]:
    return [f"-D{name}={value}" for name, value in sorted(values.items())]


def _cache_path(state_dir: Path | None, btf_path: Path) -> Path | None:
    if state_dir is None:
        return None
    return Path(state_dir) / f"btf-offsets-{os.uname().release}-{btf_hash(btf_path)}.json"


def _read_cache(cache: Path | None, fields: Iterable[str]) -> dict[str, int] | None:
    if cache is None or not cache.exists():
        return None
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(f), int) for f in fields):
        return None
    return {f: data[f] for f in fields}


def _write_cache(cache: Path, values: dict[str, int]) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(values, indent=1, sort_keys=True))
        tmp.replace(cache)
    except OSError as err:
        log.bpf.warning("cannot cache BTF offsets in %s: %s", cache, err)
