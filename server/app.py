"""The hub's HTTP API (aiohttp): ingest, query, tail, stats, export, templates, tokens."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

from mohlog import log
from mohlog.errors import InvalidInput, MohlogError, NotFound, TooLarge
from server.auth import TokenStore, required_role
from server.config import HubConfig
from server.keys import CONFIG, REGISTRY, STORE, TOKENS
from server.store import LogQuery, Store
from server.store.export import FORMATS
from server.store.metrics import memory_gauges

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EXTRA_ROUTE_MODULES = ("server.semantic",)
_CTYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv",
           "parquet": "application/vnd.apache.parquet"}
HTTP_SECONDS = web.AppKey("http_seconds", Histogram)
REFUSALS_SAID = web.AppKey("refusals_said", list)    # times of refusals logged, last minute


def jsonify(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(err: MohlogError) -> web.Response:
    return jsonify(err.to_dict(), err.status)


@web.middleware
async def errors_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as ``{"error": {"code", "message", ...}}`` with its status."""
    try:
        return await handler(request)
    except MohlogError as err:
        return error_response(err)
    except web.HTTPRequestEntityTooLarge as err:
        return error_response(TooLarge(f"request body too large: {err.text}"))
    except web.HTTPException as err:
        if err.status < 400:
            raise
        code = err.reason.lower().replace(" ", "_")
        return jsonify({"error": {"code": code, "message": err.reason}}, err.status)
    except asyncio.CancelledError:
        raise
    except Exception as err:  # noqa: BLE001 - reported in the one error shape, logged
        log.hub.exception("internal error on %s %s", request.method, request.path)
        return jsonify({"error": {"code": "internal", "message": f"{type(err).__name__}"}}, 500)


@web.middleware
async def audit_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An audit trail in the hub's log: every admin request (tokens, archive, retention)
    with the token that made it and the outcome, and refused requests (401/403) with
    where they came from, at most 20 a minute (a scan or a brute force floods the log
    otherwise). Never a token's secret: its id and name only."""
    response = await handler(request)
    status = response.status
    token = request.get("token")
    who = f"{token.id} ({token.name})" if token is not None else "-"
    if status in (401, 403):
        now = time.monotonic()
        said = request.app[REFUSALS_SAID]
        said[:] = [t for t in said if now - t < 60]
        if len(said) < 20:
            said.append(now)
            log.hub.warning("refused %s %s from %s: %d", request.method, request.path,
                            request.remote, status)
    elif required_role(request.method, request.path) == "admin":
        log.hub.info("admin %s %s by token %s from %s: %d", request.method, request.path,
                     who, request.remote, status)
    return response


@web.middleware
async def auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    need = required_role(request.method, request.path)
    if need is not None:
        request["token"] = request.app[TOKENS].authorize(
            request.headers.get("Authorization"), need)
    return await handler(request)


@web.middleware
async def timing_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    t0 = time.perf_counter()
    try:
        return await handler(request)
    finally:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        request.app[HTTP_SECONDS].labels(request.method, name).observe(time.perf_counter() - t0)


routes = web.RouteTableDef()


async def run(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return jsonify({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


SMALL_BODY = 16 << 10       # bytes, uncompressed bodies only


PREALLOCATED_BODY = 16 << 20  # bytes: larger bodies are read as they come (memory on arrival)


async def _body(request: web.Request) -> bytes | bytearray:
    """The request body. One of a stated length above SMALL_BODY (up to
    PREALLOCATED_BODY) is read into a buffer of that size, chunk by chunk as it arrives:
    ``request.read()`` grows a buffer and then copies it, two more passes over a bulk
    sender's ~1 MB batches on the event loop."""
    n = request.content_length
    if n is None or n <= SMALL_BODY or n > PREALLOCATED_BODY:
        return await request.read()
    buf = bytearray(n)
    got = 0
    with memoryview(buf) as view:
        while got < n:
            chunk = await request.content.readany()
            if not chunk:
                raise InvalidInput(f"the body ended after {got} of the {n} bytes its "
                                   "Content-Length announced", reason="short body")
            view[got:got + len(chunk)] = chunk
            got += len(chunk)
    return buf


@routes.post("/api/v1/logs")
async def ingest(request: web.Request) -> web.Response:
    store = request.app[STORE]
    limit = request.app[CONFIG].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"body of {request.content_length} bytes exceeds {limit}", limit=limit)
    body = await _body(request)
    args = (body, request.headers.get("Content-Encoding"), request.headers.get("Content-Type"))
    # A small plain body is parsed at once (~0.1 ms): a thread hop would cost more.
    small = len(body) <= SMALL_BODY and not args[1]
    batch = store.parse(*args) if small else await run(request, store.parse, *args)
    res = await store.append(batch, request.headers.get("Idempotency-Key"))
    out: dict[str, Any] = {"accepted": res.accepted, "duplicate": res.duplicate}
    if batch.warnings:
        out["warnings"] = batch.warnings
    return jsonify(out)


@routes.get("/api/v1/logs")
async def search(request: web.Request) -> web.Response:
    q = LogQuery.from_params(request.query)
    store = request.app[STORE]
    page = await run(request, store.search, q)
    out: dict[str, Any] = {"records": page.records, "next_cursor": page.next_cursor}
    if page.next_cursor is None:        # the last page: say where more may be
        archived = await run(request, store.archived_overlapping, q.start, q.end)
        if archived:
            out["archived"] = archived
    return jsonify(out)


@routes.post("/api/v1/query")
async def query(request: web.Request) -> web.Response:
    try:
        spec = orjson.loads(await request.read())
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"query body is not JSON: {err}") from err
    return jsonify(await run(request, request.app[STORE].query, spec))


@routes.get("/api/v1/stats")
async def stats(request: web.Request) -> web.Response:
    return jsonify(await run(request, request.app[STORE].stats))


@routes.get("/api/v1/tail")
async def tail(request: web.Request) -> web.StreamResponse:
    q = LogQuery.from_params(request.query)
    sub = request.app[STORE].subscribe(q)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    await resp.write(b": mohlog tail\n\n")
    told = 0                # records not shown (the reader fell behind), said so far
    try:
        while True:
            try:
                recs = await asyncio.wait_for(sub.queue.get(), timeout=15)
            except TimeoutError:
                recs = []
            if sub.dropped > told:          # a "dropped" event: how many were not shown
                await resp.write(b"event: dropped\ndata: " +
                                 orjson.dumps({"dropped": sub.dropped - told}) + b"\n\n")
                told = sub.dropped
            if recs is None:                # the hub is stopping: end the stream
                await resp.write_eof()
                break
            if not recs:
                await resp.write(b": keep-alive\n\n")
                continue
            await resp.write(b"".join(b"data: " + orjson.dumps(r) + b"\n\n" for r in recs))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        sub.close()
    return resp


@routes.get("/api/v1/export")
async def export(request: web.Request) -> web.StreamResponse:
    fmt = request.query.get("format", "ndjson")
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}", valid=list(FORMATS))
    q = LogQuery.from_params(request.query)
    chunks = request.app[STORE].export(q, fmt)
    # The first chunk before the answer starts: an error in the query is then a 400; one
    # later (a segment gone unreadable) can only cut the stream short (clients see an
    # incomplete transfer; mohlog export keeps no partial file).
    chunk = await run(request, next, chunks, None)
    resp = web.StreamResponse(headers={"Content-Type": _CTYPES[fmt],
                                       "Content-Disposition": f"attachment; filename=logs.{fmt}"})
    await resp.prepare(request)
    try:
        while chunk is not None:
            if chunk:
                await resp.write(chunk)
            chunk = await run(request, next, chunks, None)
    except ConnectionResetError:
        raise                           # the client went away
    except Exception as err:  # noqa: BLE001 - the status is sent: end the stream badly
        log.hub.error("export cut short: %s", err)
        if request.transport is not None:
            request.transport.close()
        return resp
    await resp.write_eof()
    return resp


@routes.get("/api/v1/templates")
async def templates(request: web.Request) -> web.Response:
    q = LogQuery.from_params(request.query)
    rows = await run(request, request.app[STORE].template_stats, q)
    return jsonify({"templates": rows})


@routes.get("/api/v1/templates/{tid}")
async def template(request: web.Request) -> web.Response:
    try:
        tid = int(request.match_info["tid"])
    except ValueError as err:
        raise InvalidInput("template id must be an integer") from err
    store = request.app[STORE]
    params = dict(request.query)
    q = LogQuery.from_params(params)
    family = store.miner.family(tid) if tid in store.miner.templates() else {tid}
    from server.store.query import Filter
    rows = []
    for t in family:
        q.filters = [*LogQuery.from_params(params).filters, Filter("template_id", "=", str(t))]
        rows += await run(request, store.template_stats, q)
    info = store.miner.templates().get(tid)
    if info is None and not rows:
        raise NotFound(f"no template {tid}")
    return jsonify({"template_id": tid, "template": info.text if info else None,
                    "parent": store.miner.parent_of(tid) if info else None,
                    "count": sum(r["count"] for r in rows),
                    "first_seen": min((r["first_seen"] for r in rows), default=None),
                    "last_seen": max((r["last_seen"] for r in rows), default=None),
                    "hosts": sorted({h for r in rows for h in r["hosts"]}),
                    "example": rows[0]["example"] if rows else None})


@routes.get("/api/v1/archive")
async def archive_list(request: web.Request) -> web.Response:
    return jsonify({"archives": await run(request, request.app[STORE].archive_list)})


@routes.post("/api/v1/archive/{name}/restore")
async def archive_restore(request: web.Request) -> web.Response:
    return jsonify(await run(request, request.app[STORE].archive_restore,
                             request.match_info["name"]))


@routes.post("/api/v1/retention")
async def retention(request: web.Request) -> web.Response:
    return jsonify(await run(request, request.app[STORE].enforce_retention))


@routes.get("/api/v1/tokens")
async def token_list(request: web.Request) -> web.Response:
    return jsonify({"tokens": request.app[TOKENS].list()})


@routes.post("/api/v1/tokens")
async def token_create(request: web.Request) -> web.Response:
    try:
        spec = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"body is not JSON: {err}") from err
    if not isinstance(spec, dict):
        raise InvalidInput("body must be a JSON object with role (and name, token)")
    return jsonify(request.app[TOKENS].create(str(spec.get("role", "")),
                                              str(spec.get("name", "")), spec.get("token")), 201)


@routes.delete("/api/v1/tokens/{ident}")
async def token_revoke(request: web.Request) -> web.Response:
    return jsonify(request.app[TOKENS].revoke(request.match_info["ident"]))


async def end_tails(app: web.Application) -> None:
    """On shutdown: live tails end now (else the hub waits for their clients to go)."""
    app[STORE].end_subscriptions()


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[STORE].open()
    yield
    await app[STORE].close()


def init(cfg: HubConfig) -> web.Application:
    """The app factory: store, tokens, metrics, routes and the optional extra modules."""
    app = web.Application(middlewares=[audit_mw, errors_mw, timing_mw, auth_mw],
                          client_max_size=cfg.max_body_bytes)
    cfg.data.mkdir(mode=0o700, parents=True, exist_ok=True)     # (dirlock.private)
    registry = CollectorRegistry()
    app[CONFIG] = cfg
    app[REGISTRY] = registry
    app[REFUSALS_SAID] = []
    app[HTTP_SECONDS] = Histogram("mohlog_http_request_seconds", "HTTP request latency",
                                  ["method", "route"], registry=registry)
    app[STORE] = Store(cfg.store_config(), registry)
    memory_gauges(registry, app[STORE].cache_sizes())
    app[TOKENS] = TokenStore(cfg.data)
    app.add_routes(routes)
    app.on_shutdown.append(end_tails)
    app.cleanup_ctx.append(store_ctx)
    _extra_modules(app, cfg)
    return app


def _extra_modules(app: web.Application, cfg: HubConfig) -> None:
    for name in EXTRA_ROUTE_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError as err:
            log.hub.info("optional module %s not loaded: %s", name, err)
            continue
        if hasattr(mod, "setup"):
            mod.setup(app, cfg)
        else:
            app.add_routes(mod.routes)
            if hasattr(mod, "ctx"):
                app.cleanup_ctx.append(mod.ctx)
