"""Semantic search, templates and clusters through a real hub (real MiniLM model)."""

from __future__ import annotations

import time
import urllib.parse

import pytest

from tests.integration.conftest import Hub, entry

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")
pytestmark = [pytest.mark.integration, pytest.mark.embeddings]

LINES = [
    ("web1", "Connection refused to 10.0.0.{i} port 5432"),
    ("web2", "Failed password for root from 192.168.1.{i} port 22 ssh2"),
    ("db1", "Out of memory: Killed process {i} (postgres)"),
    ("db1", "Checkpoint complete: wrote {i} buffers"),
]


def _loading(hub: Hub) -> bool:
    status, st = hub.request("GET", "/api/v1/embeddings")
    return status == 200 and not st["model_ready"]


def _ingest_while_loading(hub: Hub) -> None:
    base = time.time_ns() - 10**9
    rows = []
    for i in range(40):
        for j, (host, msg) in enumerate(LINES):
            rows.append(entry(i * 10 + j, host=host, message=msg.format(i=i + 1),
                              timestamp=base + i * 10 + j))
    # The model loads in the background (seconds): batches sent meanwhile are acknowledged.
    acked_during_load, n = 0, 0
    assert _loading(hub), "model already loaded before the first ingest"
    deadline = time.monotonic() + 120
    while _loading(hub) and time.monotonic() < deadline:
        extra = [entry(10_000 + n, host="load", message=f"warmup batch {n} sent",
                       timestamp=base - 10**6 + n)]
        assert hub.ingest(extra)[0] == 200
        n += 1
        acked_during_load += _loading(hub)  # still loading after the ack
    assert acked_during_load >= 1
    assert hub.ingest(rows)[0] == 200


def _wait_ready(hub: Hub, n: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, st = hub.request("GET", "/api/v1/embeddings")
        if status == 200 and st["model_ready"] and st["indexed"] >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"embeddings not ready: {st}")


def _semantic(hub: Hub, **params: object) -> tuple[int, dict]:
    return hub.request("GET", "/api/v1/search/semantic?" + urllib.parse.urlencode(params))


def test_semantic_search_templates_clusters(make_hub) -> None:
    hub = make_hub(embeddings=True)
    _ingest_while_loading(hub)
    _wait_ready(hub, len(LINES))
    status, res = _semantic(hub, q="database server ran out of RAM", k=2, lines=3)
    assert status == 200 and res["model_ready"]
    top = res["results"][0]
    assert top["template"] == "Out of memory: Killed process <*> (postgres)"
    assert len(top["lines"]) == 3 and top["lines"][0]["message"] == \
        "Out of memory: Killed process 40 (postgres)"
    # field filter: only templates with lines on web2
    _, res = _semantic(hub, q="login attempt with a wrong password", k=4, host="web2")
    assert [r["template"] for r in res["results"]] == [
        "Failed password for root from <*> port <*> ssh2"]
    # a time range before everything: nothing
    _, res = _semantic(hub, q="connection refused", end="1000")
    assert res["results"] == []
    # hybrid: an exact word lifts its template
    _, res = _semantic(hub, q="checkpoint", k=1)
    assert res["results"][0]["template"].startswith("Checkpoint complete")
    assert res["results"][0]["lexical"] == 1.0
    assert _semantic(hub, q="")[0] == 400
    _, tl = hub.request("GET", "/api/v1/templates?host=db1")
    assert sorted(t["count"] for t in tl["templates"]) == [40, 40]
    tid = res["results"][0]["template_id"]
    status, one = hub.request("GET", f"/api/v1/templates/{tid}")
    assert status == 200 and one["template"].startswith("Checkpoint complete")
    assert hub.request("GET", "/api/v1/templates/12345")[0] == 404
    _, cl = hub.request("GET", "/api/v1/clusters")
    assert sum(c["size"] for c in cl["clusters"]) >= len(LINES)


def test_semantic_search_off_is_503(make_hub) -> None:
    hub = make_hub(embeddings=False)
    status, err = _semantic(hub, q="anything")
    assert status == 503 and err["error"]["code"] == "semantic_search_off"
    assert '"embeddings": false' in err["error"]["message"]


def test_semantic_search_off_says_how_to_install(monkeypatch) -> None:
    """A hub without the embedding packages (what ``make run`` alone sets up) answers
    semantic queries with the command that installs them."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from server import semantic
    from server.config import HubConfig
    monkeypatch.setattr(semantic, "available", lambda: False)
    app = web.Application()
    semantic.setup(app, HubConfig())
    assert semantic.SERVICE not in app
    req = make_mocked_request("GET", "/api/v1/search/semantic?q=x", app=app)
    with pytest.raises(semantic.SemanticOff, match="make setup-embeddings"):
        semantic._service(req)


def test_model_load_waits_for_a_heavy_ingest_or_a_query(make_hub) -> None:
    """A hub started into an ingest above embeddings_defer_rate keeps the model unloaded
    (GET /api/v1/embeddings says so) until a semantic query asks for it (503 meanwhile)."""
    hub = make_hub(embeddings=True, embeddings_defer_rate=1, flush_interval_s=0.5)
    base = time.time_ns() - 10**9
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 4:
        rows = [entry(n + j, message=LINES[j % 4][1].format(i=n + j), timestamp=base + n + j)
                for j in range(20)]
        assert hub.ingest(rows)[0] == 200
        n += 20
        time.sleep(0.1)
    _, st = hub.request("GET", "/api/v1/embeddings")
    assert st["model_deferred"] and not st["model_ready"], st
    status, err = _semantic(hub, q="database out of memory")
    assert status == 503 and "loading" in err["error"]["message"]
    _wait_ready(hub, len(LINES))
    status, res = _semantic(hub, q="database server ran out of RAM", k=1)
    assert status == 200 and res["results"][0]["template"].startswith("Out of memory")
