"""Process enrichment against the fake /proc tree in tests/data/proc."""

from __future__ import annotations

from pathlib import Path

from agent.enrich.net import NetInfo
from agent.enrich.proc import ProcCache, container_id

PROC = Path(__file__).resolve().parents[1] / "data" / "proc"


def test_process_context_from_fake_proc() -> None:
    cache = ProcCache(str(PROC))
    e = {"pid": 4242, "metadata": {"event": "exec"}}
    cache(e)
    p = e["context"]["proc"]
    assert p["exe"] == "/usr/bin/python3.11"
    assert p["cmdline"] == "/usr/bin/python3 -m worker --queue jobs"
    assert p["uid"] == 0 and p["user"] == "root" and p["ppid"] == 4000
    assert p["parents"] == [4000, 1]
    assert p["container_id"] == "0123456789abcdef" * 4
    assert p["start_time"] == 1_790_000_000 * 10**9 + 12345 * 10**9 // 100


def test_gone_process_keeps_what_the_kernel_gave() -> None:
    cache = ProcCache(str(PROC))
    e = {"pid": 999999, "metadata": {"comm": "short", "ppid": 4000, "uid": 0, "cgroup_id": 7}}
    cache(e)
    assert e["context"]["proc"] == {"gone": True, "comm": "short", "ppid": 4000, "uid": 0,
                                    "cgroup_id": 7, "user": "root"}


def test_cache_hits_and_exec_refresh() -> None:
    cache = ProcCache(str(PROC))
    for _ in range(5):
        cache({"pid": 4242, "metadata": {}})
    assert cache.misses == 1 and cache.hits == 4
    cache({"pid": 4242, "metadata": {"event": "exec"}})
    assert cache.misses == 2
    cache({"pid": 0})  # kernel threads / unknown pid: untouched
    assert cache.misses == 2


def test_exec_event_takes_the_uid_the_kernel_gave() -> None:
    cache = ProcCache(str(PROC))
    e = {"pid": 4242, "metadata": {"event": "exec", "uid": 1000}}
    cache(e)
    assert e["context"]["proc"]["uid"] == 1000  # /proc/4242/status says 0
    other = {"pid": 4242, "metadata": {"event": "fork", "uid": 1000}}
    ProcCache(str(PROC))(other)  # not an exec: /proc/4242/status
    assert other["context"]["proc"]["uid"] == 0


def test_parent_chain_from_the_cache() -> None:
    cache = ProcCache(str(PROC))
    assert cache.lookup(4000)["parents"] == [1]
    e = {"pid": 4242, "metadata": {}}
    cache(e)
    assert e["context"]["proc"]["parents"] == [4000, 1]


def test_container_ids() -> None:
    cid = "ab" * 32
    assert container_id(f"/kubepods/burstable/pod1/cri-containerd-{cid}.scope") == cid
    assert container_id(f"/docker/{cid}") == cid
    assert container_id(f"/machine.slice/libpod-{cid}.scope") == cid
    assert container_id("/user.slice/user-1000.slice") is None


def test_network_context_for_loopback() -> None:
    net = NetInfo()
    e = {"metadata": {"event": "tcp_state", "saddr": "127.0.0.1"}}
    net(e)
    assert e["context"]["net"]["ifname"] == "lo"
    assert "127.0.0.1/8" in e["context"]["net"]["addresses"]
    other = {"metadata": {"event": "exec"}}
    net(other)
    assert "context" not in other


def test_many_gives_what_one_by_one_gives_with_one_lookup_per_pid() -> None:
    def batch() -> list[dict]:
        return [{"pid": 4242, "metadata": {"event": "open_fail"}},
                {"pid": 999999, "metadata": {"comm": "a", "uid": 0}},
                {"pid": 0, "metadata": {}},
                {"pid": 4242, "metadata": {"event": "open_fail"}},
                {"pid": 999999, "metadata": {"comm": "b", "uid": 0}},
                {"pid": 4242, "metadata": {"event": "exec"}},
                {"pid": 4242, "metadata": {"event": "open_fail"}}]
    one, many = batch(), batch()
    single = ProcCache(str(PROC))
    for e in one:
        single(e)
    cache = ProcCache(str(PROC))
    cache.many(many)
    assert many == one
    assert many[0]["context"]["proc"] is many[3]["context"]["proc"]
    assert many[4]["context"]["proc"]["comm"] == "b" and "context" not in many[2]
    assert cache.misses == 3  # 4242, 999999, then the exec's refresh
