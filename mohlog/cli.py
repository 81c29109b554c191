"""The ``mohlog`` command. Each subcommand lives in the module that owns it and
exposes ``main(argv: list[str]) -> int``; it is imported only when used, so the
hub never imports torch and the SDK never imports bcc."""

from __future__ import annotations

import importlib
import os
import sys

from mohlog import memory

SERVER_COMMANDS = ("hub", "run")  # their processes get memory.tune_allocators()
COMMANDS: dict[str, tuple[str, str]] = {
    "hub": ("server.cli", "run the hub (ingest, store, query API)"),
    "run": ("mohlog.run", "start the hub and the local agent with defaults"),
    "agent": ("agent.cli", "run the host agent (eBPF probes, host logs, SDK socket)"),
    "ingest": ("server.client_cli", "send files (plain lines or NDJSON) to a hub"),
    "search": ("server.client_cli", "search a hub (words, phrases, regex, fields, --semantic)"),
    "tail": ("server.client_cli", "follow new matching entries live"),
    "stats": ("server.client_cli", "counts per component/level/host, bytes, rates"),
    "patterns": ("server.client_cli", "the kinds of messages (templates) among matches"),
    "export": ("server.client_cli", "export matching entries as ndjson, csv or parquet"),
    "token": ("server.client_cli", "create, list or revoke access tokens"),
    "archive": ("server.client_cli", "list or restore archived partitions"),
    "templates": ("embeddings.cli", "mine templates: one message per stdin line -> JSONL"),
}


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
        memory.tune_allocators()   # before the command's module imports pyarrow
    module = importlib.import_module(COMMANDS[name][0])
    if module.__name__ == "server.client_cli":
        rest = [name, *rest]
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
