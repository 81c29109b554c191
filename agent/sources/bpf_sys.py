"""The few bpf() syscalls the agent makes itself, with ctypes and no bcc.

bcc (and the LLVM inside it) costs ~250 MB of resident memory once it has compiled the
probes, so the agent compiles and attaches them in a short-lived child process
(agent/sources/ebpf_loader.py) and keeps only file descriptors: ring buffers and counter
arrays are read through mmap, and these calls cover the rest — emptying the syscall-error
maps in one batch, and reading a program's recursion_misses.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_SYS_BPF = 321  # x86_64
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25
_PROG_INFO_SIZE, _PROG_INFO_MISSES = 232, 208  # struct bpf_prog_info (UAPI, append-only)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return int(ret) if ret >= 0 else -ctypes.get_errno()


class BatchDrainer:
    """Looks up and deletes every element of a hash map, in batches of ``max_entries``."""

    def __init__(self, map_fd: int, key_size: int, value_size: int, max_entries: int) -> None:
        self.fd, self.key_size, self.value_size = map_fd, key_size, value_size
        self.cap = max_entries
        self.keys = ctypes.create_string_buffer(key_size * max_entries)
        self.values = ctypes.create_string_buffer(value_size * max_entries)
        self.token_in = ctypes.create_string_buffer(8)
        self.token_out = ctypes.create_string_buffer(8)

    def drain(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            attr = _BatchAttr(
                in_batch=0 if first else ctypes.addressof(self.token_in),
                out_batch=ctypes.addressof(self.token_out),
                keys=ctypes.addressof(self.keys), values=ctypes.addressof(self.values),
                count=self.cap, map_fd=self.fd)
            ret = _bpf(_BPF_MAP_LOOKUP_AND_DELETE_BATCH, attr)
            self._collect(attr.count, out)
            if ret == -errno.ENOENT:
                return out
            if ret < 0:
                raise OSError(-ret, f"BPF_MAP_LOOKUP_AND_DELETE_BATCH: {os.strerror(-ret)}")
            ctypes.memmove(self.token_in, self.token_out, 8)
            first = False

    def _collect(self, count: int, out: list[tuple[bytes, bytes]]) -> None:
        keys, values = self.keys.raw, self.values.raw
        ks, vs = self.key_size, self.value_size
        for i in range(count):
            out.append((keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs]))


def prog_recursion_misses(prog_fd: int) -> int:
    """Times the kernel skipped this program because another BPF program (or a map syscall)
    was active on the CPU: events the probe never saw, invisible to its ring buffer."""
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    attr = _InfoAttr(bpf_fd=prog_fd, info_len=_PROG_INFO_SIZE, info=ctypes.addressof(info))
    if _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr) < 0 or attr.info_len < _PROG_INFO_MISSES + 8:
        return 0
    return int(struct.unpack_from("<Q", info.raw, _PROG_INFO_MISSES)[0])
