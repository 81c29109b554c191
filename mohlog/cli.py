"""The ``mohlog`` command. Each subcommand lives in the module that owns it and
exposes ``main(argv: list[str]) -> int``; it is imported only when used, so the
hub never imports torch and the SDK never imports bcc."""

from __future__ import annotations

import ctypes
import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "hub": ("server.cli", "run the hub (ingest, store, query API)"),
    "run": ("mohlog.run", "start the hub and the local agent with defaults"),
    "agent": ("agent.cli", "run the host agent (eBPF probes, host logs, SDK socket)"),
    "ingest": ("server.client_cli", "send files (plain lines or NDJSON) to a hub"),
    "search": ("server.client_cli", "search a hub (words, phrases, regex, fields, --semantic)"),
    "tail": ("server.client_cli", "follow new matching entries live"),
    "stats": ("server.client_cli", "counts per component/level/host, bytes, rates"),
    "export": ("server.client_cli", "export matching entries as ndjson, csv or parquet"),
    "token": ("server.client_cli", "create, list or revoke access tokens"),
    "archive": ("server.client_cli", "list or restore archived partitions"),
    "templates": ("embeddings.cli", "mine templates: one message per stdin line -> JSONL"),
}


# The hub allocates and frees large buffers all the time (Arrow batches, numpy arrays).
# Handed back to the kernel at once, they come back as page faults on zeroed pages, and
# as transparent huge pages (numpy and mimalloc ask for them) each fault zeroes 2 MB:
# ~10 % of the hub's CPU at ~900k records/s. So: Arrow's allocator (mimalloc) keeps freed
# memory 10 s before returning it (read when pyarrow loads: set before any import of it;
# a value in the environment wins), glibc's keeps blocks, and the hub's memory is not
# backed by huge pages (system time ~7.5 -> ~4.4 s of ~36 s in 20 s bench runs).
ALLOCATOR_ENV = {"MIMALLOC_PURGE_DELAY": "10000"}
SERVER_COMMANDS = ("hub", "run")
PR_SET_THP_DISABLE = 41


def tune_allocators() -> bool:
    """Set ALLOCATOR_ENV (unless set); let glibc's malloc (numpy's) keep blocks of up
    to 32 MB in its heaps and 256 MB free at their top instead of unmapping them; turn
    transparent huge pages off for this process (and its children). True when glibc took
    the settings."""
    for key, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(key, value)
    huge_pages(False)
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                    and libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):   # not glibc
        return False


def huge_pages(on: bool) -> bool:
    """Transparent huge pages on or off for this process and the children it starts
    from now (Linux >= 3.15). The hub's child that runs the embedding model turns them
    back on: its memory is the model's, allocated once. False where unsupported."""
    try:
        return ctypes.CDLL("libc.so.6").prctl(PR_SET_THP_DISABLE, int(not on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def usage() -> str:
    lines = ["usage: mohlog COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "mohlog COMMAND --help for a command's options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mohlog: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if name in SERVER_COMMANDS and os.environ.get("MOHLOG_ALLOCATOR_TUNING", "1") != "0":
        tune_allocators()
    module = importlib.import_module(COMMANDS[name][0])
    if module.__name__ == "server.client_cli":
        rest = [name, *rest]
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
