"""``mohlog hub``: run the hub."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from mohlog import log
from mohlog.errors import MohlogError
from server.app import init
from server.config import DEFAULT_DATA, DEFAULT_LISTEN, HubConfig, load
from server.keys import STORE, TOKENS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mohlog hub", description="Run the mohlog hub.")
    p.add_argument("--config", type=Path, help="JSON or TOML settings file (see README)")
    p.add_argument("--data", type=Path, help=f"data directory (default {DEFAULT_DATA})")
    p.add_argument("--listen", help=f"HOST:PORT (default {DEFAULT_LISTEN}; port 0: any free)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    p.add_argument("--retention-age", dest="retention_age_s", metavar="AGE",
                   help="archive partitions older than this (seconds, or 90m, 12h, 30d, 2w)")
    p.add_argument("--retention-bytes", dest="retention_bytes", metavar="SIZE",
                   help="archive the oldest partitions beyond this many stored bytes "
                        "(or 500M, 10G, 2T: powers of 1024)")
    p.add_argument("--archive-age", dest="archive_age_s", metavar="AGE",
                   help="delete archives whose newest record is older than this (as "
                        "--retention-age)")
    p.add_argument("--archive-bytes", dest="archive_bytes", metavar="SIZE",
                   help="delete the oldest archives beyond this size (as --retention-bytes)")
    p.add_argument("--no-embeddings", action="store_false", dest="embeddings", default=None,
                   help="do not start the embedding service")
    p.add_argument("--log-level", default="INFO")
    return p


def ssl_context(cfg: HubConfig) -> ssl.SSLContext | None:
    if cfg.tls_cert is None and cfg.tls_key is None:
        return None
    if cfg.tls_cert is None or cfg.tls_key is None:
        raise MohlogError("TLS needs both --tls-cert and --tls-key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise MohlogError(f"cannot load TLS certificate/key: {err}") from err
    return ctx


async def serve(cfg: HubConfig, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    app = init(cfg)
    app[STORE].lock()       # before anything of the data directory is written
    admin = app[TOKENS].ensure_admin()
    ctx = ssl_context(cfg)
    # auto_decompress off: the store decodes zstd/gzip itself, bounded by max_body_bytes.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
    await runner.setup()
    host, port = cfg.host_port()
    site = web.TCPSite(runner, host, port, ssl_context=ctx, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    scheme = "https" if ctx else "http"
    url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{bound}"
    log.hub.info("hub listening", extra={"url": url, "data": str(cfg.data),
                                         "admin_token_file": str(admin)})
    print(f"mohlog hub: {url}  data: {cfg.data}  admin token: {admin}", file=sys.stderr,
          flush=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if ready:
        ready.set()
    await stop.wait()
    log.hub.info("hub stopping")
    await runner.cleanup()


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    log.setup(args.log_level)
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "log_level")}
    try:
        cfg = load(args.config, overrides)
        asyncio.run(serve(cfg))
    except MohlogError as err:
        print(f"mohlog hub: {err.message}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"mohlog hub: {err}", file=sys.stderr)
        return 1
    return 0
