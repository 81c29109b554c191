"""``mohlog run``: the hub and the local agent together, with defaults that just work."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from mohlog import log, parent
from mohlog.dirlock import DirLock
from mohlog.errors import MohlogError


def default_data() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/mohlog")
    return Path.home() / ".local/share/mohlog"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mohlog run",
                                description="Start the hub and the local agent.")
    p.add_argument("--data", type=Path, default=None,
                   help="data directory (default /var/lib/mohlog as root, else "
                        "~/.local/share/mohlog)")
    p.add_argument("--listen", default="127.0.0.1:7480", help="hub address HOST:PORT")
    p.add_argument("--no-agent", action="store_true", help="start the hub alone")
    p.add_argument("--agent-args", default="", help="extra arguments for the agent")
    p.add_argument("--log-level", default="INFO")
    return p


def agent_token(data: Path) -> Path:
    """An ingest-only token for the local agent, kept in DATA/agent.token (0600)."""
    from server.auth import TokenStore
    tokens = TokenStore(data)
    path = data / "agent.token"
    if path.exists() and tokens.check(path.read_text().strip()):
        return path
    secret = tokens.create("ingest", "local agent (mohlog run)")["token"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


def agent_command(url: str, data: Path, token_file: Path, extra: str) -> list[str]:
    # The hub's own syscalls and file opens would feed back into the logs: filter its pid
    # in the kernel.
    cfg = data / "agent.json"
    if not cfg.exists():
        cfg.write_text(json.dumps({"state_dir": str(data / "agent")}, indent=2))
    settings = json.loads(cfg.read_text())
    settings["exclude_pids"] = [os.getpid()]
    cfg.write_text(json.dumps(settings, indent=2))
    cmd = [sys.executable, "-m", "mohlog.cli", "agent", "--hub", url, "--config", str(cfg),
           "--token-file", str(token_file), "--state-dir", str(data / "agent")]
    if os.geteuid() != 0:
        cmd.append("--no-ebpf")
    return cmd + extra.split()


def agent_metrics(extra: str, settings: Path) -> str:
    """HOST:PORT of the local agent's /metrics as the agent resolves it (its own flag
    parser and settings loader): --metrics-listen in ``extra``, else the settings file
    (--config in ``extra``, else DATA/agent.json), else the default."""
    from agent.cli import parser
    from agent.config import AgentConfig
    from agent.config import load as load_agent
    try:
        flags, _ = parser().parse_known_args(extra.split())
        return load_agent(flags.config or settings,
                          {"metrics_listen": flags.metrics_listen}).metrics_listen
    except (MohlogError, SystemExit):   # the agent itself says what is wrong
        return AgentConfig.metrics_listen


async def run(args: argparse.Namespace) -> int:
    from server.cli import serve
    from server.config import load
    data = args.data or default_data()
    data.mkdir(mode=0o700, parents=True, exist_ok=True)   # (dirlock.private)
    cfg = load(None, {"data": data, "listen": args.listen})
    probe = DirLock(data)           # another hub on it: stop before writing its tokens
    probe.acquire()
    probe.release()
    token_file = None if args.no_agent else agent_token(data)
    ready, stop = asyncio.Event(), asyncio.Event()
    hub = asyncio.create_task(serve(cfg, ready, stop))
    await asyncio.wait([hub, asyncio.create_task(ready.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    if hub.done():
        return hub.result() or 1
    host, port = cfg.host_port()
    url = f"http://{host}:{port}"
    print(f"mohlog run: hub at {url} (data {data}); admin token in {data / 'admin.token'}",
          file=sys.stderr, flush=True)
    agent = None
    if not args.no_agent and importlib.util.find_spec("agent.main") is not None:
        assert token_file is not None
        # killed with -9, this process could not stop the agent: it stops when we are gone
        agent = subprocess.Popen(agent_command(url, data, token_file, args.agent_args),
                                 env={**os.environ, parent.PARENT_ENV: str(os.getpid())})
        metrics = agent_metrics(args.agent_args, data / "agent.json")
        print(f"mohlog run: local agent pid {agent.pid} (metrics http://{metrics}/metrics)",
              file=sys.stderr, flush=True)
    elif not args.no_agent:
        print("mohlog run: the agent is not installed; hub only", file=sys.stderr)
    loop = asyncio.get_running_loop()

    async def shutdown() -> None:
        # The agent first, so its last batches reach the hub, then the hub.
        if agent is not None and agent.poll() is None:
            agent.terminate()
            await loop.run_in_executor(None, _wait, agent)
        stop.set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(shutdown()))
    try:
        await hub
    finally:
        if agent is not None and agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
    return 0


def _wait(proc: subprocess.Popen) -> None:
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    log.setup(args.log_level)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0
    except MohlogError as err:           # the data directory in use, bad settings
        print(f"mohlog run: {err.message}", file=sys.stderr)
        return 2
    except OSError as err:               # the address in use
        print(f"mohlog run: {err}", file=sys.stderr)
        return 1
