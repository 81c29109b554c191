"""``mohlog agent``: run the host agent."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from agent.config import DEFAULT_HUB, load
from mohlog import log, parent
from mohlog.errors import MohlogError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mohlog agent", description="Run the mohlog host agent.")
    p.add_argument("--config", type=Path, help="JSON or TOML settings (docs/agent.md)")
    p.add_argument("--hub", help=f"hub URL (default {DEFAULT_HUB})")
    p.add_argument("--token", help="ingest token (prefer --token-file)")
    p.add_argument("--token-file", help="file holding the ingest token")
    p.add_argument("--state-dir", help="spool, positions, caches (default /var/lib/mohlog-agent)")
    p.add_argument("--list-probes", action="store_true", help="list the eBPF probes and exit")
    p.add_argument("--dump-bpf", action="store_true", help="print the probes' C and flags")
    p.add_argument("--no-ebpf", action="store_true", help="no eBPF probes (no root needed)")
    p.add_argument("--probes", help="comma-separated probes to load (default: all)")
    p.add_argument("--metrics-listen", help="HOST:PORT of /metrics (default 127.0.0.1:7481)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    log.setup(args.log_level)
    try:
        if args.list_probes:
            return list_probes()
        cfg = load(args.config, {"hub": args.hub, "token": args.token,
                                 "token_file": args.token_file, "state_dir": args.state_dir,
                                 "metrics_listen": args.metrics_listen,
                                 "ebpf": False if args.no_ebpf else None})
        if args.probes:
            cfg.ebpf_config = {**cfg.ebpf_config, "probes": args.probes.split(",")}
        if args.dump_bpf:
            from agent.sources.ebpf import EbpfConfig, dump_bpf
            print(dump_bpf(EbpfConfig(**cfg.ebpf_config)))
            return 0
        if cfg.ebpf and os.geteuid() != 0:
            print("mohlog agent: eBPF probes need root; run as root or pass --no-ebpf",
                  file=sys.stderr)
            return 2
        return run(cfg)
    except MohlogError as err:
        print(f"mohlog agent: {err.message}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"mohlog agent: {err} (bcc comes from Debian's python3-bpfcc; "
              "or pass --no-ebpf)", file=sys.stderr)
        return 2


def list_probes() -> int:
    from agent.sources.ebpf import list_probes as probes
    for p in probes():
        on = "on " if p["default"] else "off"
        print(f"{p['name']:<16} {on} {', '.join(p['tracepoints'])}\n    {p['description']}")
    return 0


def run(cfg) -> int:  # noqa: ANN001 - AgentConfig
    from agent import tuning
    from agent.main import Agent
    tuning.skip_optional_imports()  # this process is the agent's alone: no numpy, no pandas
    done = threading.Event()
    # Before the state directory is locked: a stop from then on is a clean one (it was
    # the default action, exit -15, when it came while the agent was being set up).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    agent = Agent(cfg)
    if parent.watch_from_env(done.set):     # under `mohlog run`: stop when it is gone
        log.agent.info("agent started by pid %s: it stops when that process is gone",
                       os.environ[parent.PARENT_ENV])
    agent.start()
    print(json.dumps({"agent": "running", "hub": cfg.hub,
                      "metrics": cfg.metrics_listen or None}), file=sys.stderr, flush=True)
    done.wait()
    log.agent.info("agent stopping")
    agent.stop()
    return 0
