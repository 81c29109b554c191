"""Ships batches to the hub (Arrow IPC or NDJSON, zstd; Idempotency-Key = batch id), through
the spool: the body is sent as the spool compressed it.

Order is kept: while anything waits in the spool, new batches go behind it. A batch is
removed from the spool only when the hub acknowledged it (200, also as a duplicate). 5xx,
507, timeouts and connection errors keep it and retry with back-off; 401/403 keep it and
log loudly (a token problem an operator must fix; the token file, when there is one, is
read again at each refusal, so writing a valid token there is enough: no restart); other
4xx mean the hub will never take it: it is counted as rejected and dropped.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from agent.spool import Batch, Spool
from mohlog import log


class HubSink:
    name = "hub"

    def __init__(self, url: str, token: str | None, spool: Spool, timeout: float = 30.0,
                 token_file: str | None = None) -> None:
        self.url = url.rstrip("/") + "/api/v1/logs"
        self.token = token
        self.token_file = token_file
        self._auth_said = 0.0
        self.spool = spool
        self.timeout = timeout
        self.counters: Counter[str] = Counter()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_shipped: Callable[[int], None] = lambda n: None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sink-hub", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)

    def submit(self, batch: Batch) -> None:
        """Hand a batch over: it goes to the spool first (durable), the thread ships it."""
        self.spool.push(batch)
        self._wake.set()

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            item = self.spool.peek()
            if item is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            seq, batch = item
            try:
                outcome = self.send(batch)
            except Exception:  # noqa: BLE001 - the thread must outlive one answer
                # (an answer that is not the hub's: a proxy's HTML page with a 200...)
                self.counters["retries"] += 1
                if self.counters["retries"] % 20 == 1:
                    log.agent.exception("shipping a batch failed; it waits in the spool")
                outcome = "retry"
            if outcome == "again":              # a new token: at once
                continue
            if outcome in ("ok", "rejected"):
                self.spool.remove(seq)
                backoff = 0.2
                continue
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def send(self, batch: Batch) -> str:
        body = batch.compressed()
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": batch.content_type, "Content-Encoding": "zstd",
            "Idempotency-Key": batch.id, **({"Authorization": f"Bearer {self.token}"}
                                            if self.token else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                res = orjson.loads(resp.read())
        except urllib.error.HTTPError as err:
            return self._refused(batch, err)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            self.counters["retries"] += 1
            if self.counters["retries"] % 20 == 1:
                log.agent.warning("hub unreachable (%s); batches wait in the spool", err)
            return "retry"
        self.counters["batches_shipped"] += 1
        self.counters["records_shipped"] += batch.records
        if res.get("duplicate"):
            self.counters["batches_duplicate"] += 1
        self.on_shipped(batch.records)
        return "ok"

    def _refused(self, batch: Batch, err: urllib.error.HTTPError) -> str:
        detail = err.read()[:500].decode(errors="replace")
        if err.code in (401, 403):
            self.counters["auth_errors"] += 1
            if self._new_token():
                return "again"
            if time.monotonic() - self._auth_said > 60:     # once a minute
                self._auth_said = time.monotonic()
                where = f"; put a valid ingest token in {self.token_file} (read again at " \
                    "each refusal)" if self.token_file else ""
                log.agent.error("hub refused our token (%d): %s; %d batches wait in the "
                                "spool%s", err.code, _message(detail), self.spool.batches,
                                where)
            return "retry"
        if 400 <= err.code < 500 and err.code not in (408, 429):
            self.counters["batches_rejected"] += 1
            self.counters["records_rejected"] += batch.records
            log.agent.error("hub rejected batch %s (%d): %s", batch.id, err.code, detail)
            return "rejected"
        self.counters["retries"] += 1
        return "retry"

    def _new_token(self) -> bool:
        """Read the token file again; True when it holds another token (now in use)."""
        if not self.token_file:
            return False
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError:
            return False
        if not token or token == self.token:
            return False
        self.token = token
        log.agent.info("token file %s changed: using the new token", self.token_file)
        return True

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.spool.batches and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.spool.batches == 0


def _message(detail: str) -> str:
    """The hub's error message out of its JSON answer (else the answer as it is)."""
    try:
        return str(orjson.loads(detail)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return detail
