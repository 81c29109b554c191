import pytest

from mohlog.errors import InvalidInput
from mohlog.model import COMPONENTS, LEVEL_RANK, LEVELS, Entry, check_component, check_level


def test_levels_and_components_match_spec() -> None:
    assert set(LEVELS) == {
        "TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL",
        "SECURITY", "PERFORMANCE", "AI_INFERENCE",
    }
    assert set(COMPONENTS) == {
        "KERNEL", "MEMORY_MANAGER", "PROCESS_MANAGER", "IPC_MANAGER", "AI_ENGINE",
        "WEB_RUNTIME", "P2P_NETWORK", "PLUGIN", "APPLICATION",
    }
    assert LEVEL_RANK["SECURITY"] > LEVEL_RANK["CRITICAL"] > LEVEL_RANK["ERROR"]
    assert LEVEL_RANK["TRACE"] == 0


def test_unknown_level_lists_valid_ones() -> None:
    with pytest.raises(InvalidInput) as err:
        check_level("LOUD")
    assert "LOUD" in err.value.message
    assert err.value.to_dict()["error"]["valid_levels"] == list(LEVELS)
    with pytest.raises(InvalidInput) as err2:
        check_component("NOPE")
    assert "valid_components" in err2.value.to_dict()["error"]


def test_entry_roundtrip() -> None:
    e = Entry("hello", level="ERROR", component="KERNEL", metadata={"a": 1})
    d = e.to_dict()
    assert len(d["id"]) == 32 and d["timestamp"] > 1_600_000_000 * 10**9
    assert Entry.from_dict(d) == e


def test_new_ids_vectorised_are_unique_and_like_new_id() -> None:
    from mohlog.model import new_id, new_ids
    before = new_id()
    buf = new_ids(1000)
    ids = [buf[i * 32:(i + 1) * 32].decode() for i in range(1000)]
    after = new_id()
    assert len(set(ids)) == 1000 and all(len(i) == 32 for i in ids)
    assert all(int(i, 16) >= 0 for i in ids)
    assert before < ids[0] < ids[-1] < after  # same prefix, counters keep counting
    assert ids == sorted(ids)
    first = 2**40 - 2                     # the replay form: given prefix and first counter
    buf = new_ids(5, "0123456789abcdef", first)
    assert [buf[i * 32:(i + 1) * 32].decode() for i in range(5)] == \
        [f"0123456789abcdef{first + i:016x}" for i in range(5)]
    for first in (0, 9, 2**63 + 12345, 2**64 - 300, 0x0123456789ABCDEF):  # every digit
        buf = new_ids(300, "f" * 16, first)
        assert buf == "".join(f"{'f' * 16}{first + i:016x}" for i in range(300)).encode()
