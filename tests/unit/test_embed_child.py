"""The embedding child's life: the model loads under SCHED_IDLE and goes on at the normal
policy (the child's nice level) after ``idle_load_s`` or when a query hurries it, so a host
whose cores are kept busy still gets its model; a stop during the load does not wait for
it; the child ends with its owner, even one killed with -9. Real threads, real scheduler
calls, real processes (the policy tests in a separate interpreter: the test process keeps
its own policy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.procs import ends, ends_after_killing, killed_on_error, running

ROOT = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent("""
    import json, os, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from embeddings.model import _set_policy, _unidle_when

    def policies():  # of the main thread and the one made under SCHED_IDLE
        return sorted({os.sched_getscheduler(t)
                       for t in (threading.main_thread().native_id, worker.native_id)})

    out = {"IDLE": os.SCHED_IDLE, "OTHER": os.SCHED_OTHER}
    for case in ("timeout", "hurry", "done"):
        done, hurry = threading.Event(), threading.Event()
        seconds = 0.3 if case == "timeout" else 60.0
        watchdog = threading.Thread(target=_unidle_when, args=(done, hurry, seconds))
        watchdog.start()
        assert _set_policy("SCHED_IDLE")
        stop = threading.Event()
        worker = threading.Thread(target=stop.wait)     # made under SCHED_IDLE: inherits it
        worker.start()
        before = policies()
        if case == "hurry":
            hurry.set()
        if case == "done":
            done.set()
        watchdog.join(5)
        time.sleep(0.1)
        out[case] = {"before": before, "after": policies(),
                     "watchdog_left": not watchdog.is_alive()}
        stop.set()
        worker.join()
        done.set()
        assert _set_policy("SCHED_OTHER")
    print(json.dumps(out))
""")


def _may_leave_sched_idle() -> bool:
    """Leaving SCHED_IDLE needs root (or an RLIMIT_NICE that allows it)."""
    probe = ("import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
             "os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))\n")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no SCHED_IDLE here")
def test_load_leaves_sched_idle_after_the_delay_or_when_hurried() -> None:
    if not _may_leave_sched_idle():
        pytest.skip("this user may not leave SCHED_IDLE (needs root or RLIMIT_NICE)")
    got = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT)], capture_output=True,
                         text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    out = json.loads(got.stdout)
    idle, other = out["IDLE"], out["OTHER"]
    # after the delay, or at once when hurried: every thread back, the one made while
    # idle included
    for case in ("timeout", "hurry"):
        assert out[case]["before"] == [idle], out
        assert out[case]["after"] == [other], out
        assert out[case]["watchdog_left"], out
    # a load that finished first: the watchdog leaves without touching anything
    assert out["done"]["before"] == [idle] and out["done"]["after"] == [idle], out
    assert out["done"]["watchdog_left"], out


@pytest.mark.embeddings
def test_loaded_child_runs_every_thread_at_its_nice_level() -> None:
    pytest.importorskip("sentence_transformers")
    if not _may_leave_sched_idle():
        pytest.skip("this user may not leave SCHED_IDLE (needs root or RLIMIT_NICE)")
    from embeddings.model import DIM, ProcessEmbedder
    emb = ProcessEmbedder(threads=1, nice=10, idle_load_s=60.0)
    try:
        emb.hurry()             # a query came before the load began: the load is hurried
        emb.load()
        assert emb._hurry is not None and emb._hurry.is_set()
        assert emb.embed(["disk full on /var"]).shape == (1, DIM)
        [pid] = emb.child_pids()
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        assert {os.sched_getscheduler(t) for t in tids} == {os.SCHED_OTHER}
        assert os.getpriority(os.PRIO_PROCESS, pid) == 10
    finally:
        emb.close()


@pytest.mark.embeddings
def test_stopping_during_the_model_load_does_not_wait_for_it(tmp_path: Path) -> None:
    """A hub stopped while its child is still importing torch and loading the model: the
    child is killed, the service stops, the index is saved; the load is not waited for."""
    pytest.importorskip("sentence_transformers")
    from embeddings.service import EmbeddingService
    svc = EmbeddingService(tmp_path / "emb", lambda: {1: "disk <*> is full"},
                           in_process=False, poll_s=0.1)
    svc.start()
    deadline = time.monotonic() + 30
    while not svc.embedder.child_pids() and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.05)
    [pid] = svc.embedder.child_pids()  # type: ignore[union-attr]
    svc.stop()
    assert not svc.ready                        # stopped before the model was loaded
    assert svc._thread is not None and not svc._thread.is_alive()
    assert ends(pid, 5), f"embedding child {pid} still running"
    assert (tmp_path / "emb").exists()


@pytest.mark.embeddings
def test_child_ends_when_its_hub_is_killed() -> None:
    """kill -9 of the process that owns the embedding child: the child (the model's
    memory) does not outlive it."""
    pytest.importorskip("sentence_transformers")
    code = ("import sys, time\nsys.path.insert(0, sys.argv[1])\n"
            "from embeddings.model import ProcessEmbedder\n"
            "e = ProcessEmbedder()\ne.load()\nprint(e.child_pids()[0], flush=True)\n"
            "time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code, str(ROOT)], stdout=subprocess.PIPE,
                             text=True)
    with killed_on_error(owner):
        assert owner.stdout is not None
        child = int(owner.stdout.readline())
        assert running(child)
    assert ends_after_killing(owner, child, 20), f"embedding child {child} outlived its owner"
