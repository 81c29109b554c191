"""The SDK without an agent: level filters, lazy formatting, handlers, validation,
bounded buffer and drop counting, the logging.Handler, fork safety."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mohlog import sdk
from mohlog.model import FIELDS, Entry


@pytest.fixture
def client(tmp_path: Path) -> sdk.Client:
    """A client whose agent socket does not exist and that has no hub."""
    cfg = sdk.SdkConfig(socket_path=str(tmp_path / "absent.sock"), hub_url=None,
                        buffer_size=50, exit_flush_timeout_s=0.1, flush_interval_s=0.01)
    c = sdk.Client(cfg)
    yield c
    c.shutdown(0.1)


def capture(c: sdk.Client, level: str = "TRACE") -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    assert c.register_handler(level, seen.append)
    return seen


def test_level_filter_per_component(client: sdk.Client) -> None:
    seen = capture(client)
    assert client.set_level("APPLICATION", "WARNING")
    assert not client.write("INFO", "APPLICATION", "dropped", ())
    assert client.write("WARNING", "APPLICATION", "kept", ())
    assert client.write("SECURITY", "APPLICATION", "kept too", ())
    assert client.write("DEBUG", "AI_ENGINE", "other component keeps its level", ())
    assert [e["message"] for e in seen] == ["kept", "kept too", "other component keeps its level"]


def test_set_level_for_all_components(client: sdk.Client) -> None:
    assert client.set_level("*", "ERROR")
    assert not client.write("WARNING", "KERNEL", "x", ())
    assert client.write("ERROR", "KERNEL", "x", ())


def test_formatting_is_lazy_and_exact(client: sdk.Client) -> None:
    calls = []

    class Costly:
        def __str__(self) -> str:
            calls.append(1)
            return "costly"

    seen = capture(client)
    client.set_level("APPLICATION", "INFO")
    client.write("DEBUG", "APPLICATION", "value %s", (Costly(),))
    assert calls == []
    client.write("INFO", "APPLICATION", "user %s id %d ratio %.2f", ("ann", 42, 0.5))
    client.write("INFO", "APPLICATION", "100% literal without args", ())
    assert seen[0]["message"] == "user ann id 42 ratio 0.50"
    assert seen[1]["message"] == "100% literal without args"


def test_bad_format_never_raises(client: sdk.Client) -> None:
    seen = capture(client)
    assert client.write("INFO", "APPLICATION", "%d apples", ("many",))
    assert seen[0]["message"].startswith("%d apples")
    assert client.stats()["format_errors"] == 1


def test_entry_fields(client: sdk.Client) -> None:
    seen = capture(client)
    client.write("ERROR", "WEB_RUNTIME", "boom", ())
    entry = seen[0]
    assert set(entry) == set(FIELDS)
    assert entry["source"] == "sdk" and entry["pid"] == os.getpid()
    assert entry["level"] == "ERROR" and entry["component"] == "WEB_RUNTIME"
    assert len(entry["id"]) == 32 and isinstance(entry["timestamp"], int)


def test_handlers_called_at_their_level_and_above(client: sdk.Client) -> None:
    errors = capture(client, "ERROR")
    everything = capture(client, "TRACE")
    for level in ("DEBUG", "WARNING", "ERROR", "CRITICAL", "SECURITY"):
        client.write(level, "APPLICATION", level, ())
    assert [e["level"] for e in errors] == ["ERROR", "CRITICAL", "SECURITY"]
    assert len(everything) == 5
    assert client.unregister_handler(errors.append)
    client.write("CRITICAL", "APPLICATION", "after", ())
    assert len(errors) == 3


def test_handler_not_called_for_filtered_entries(client: sdk.Client) -> None:
    seen = capture(client)
    client.set_level("APPLICATION", "ERROR")
    client.write("WARNING", "APPLICATION", "filtered", ())
    assert seen == []


def test_failing_handler_is_counted_not_raised(client: sdk.Client) -> None:
    def bad(entry: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    client.register_handler("INFO", bad)
    assert client.write("INFO", "APPLICATION", "still written", ())
    assert client.stats()["handler_errors"] == 1
    assert "handler bug" in client.stats()["last_error"]


@pytest.mark.parametrize("entry, reason", [
    ({"level": "INFO"}, "message"),
    ({"message": "m", "level": "LOUD"}, "unknown level"),
    ({"message": "m", "component": "NOPE"}, "unknown component"),
    ({"message": "m", "colour": "red"}, "unknown fields"),
    ({"message": "m", "timestamp": "yesterday"}, "timestamp"),
    ({"message": "m", "pid": True}, "pid"),
    ({"message": "m", "metadata": [1, 2]}, "metadata"),
    ("just a string", "dict"),
])
def test_structured_entries_validated(client: sdk.Client, entry: Any, reason: str) -> None:
    assert client.write_structured(entry) is False
    stats = client.stats()
    assert stats["invalid"] == 1 and reason in stats["last_error"]


def test_structured_defaults_and_entry_objects(client: sdk.Client) -> None:
    seen = capture(client)
    assert client.write_structured({"message": "m", "metadata": {"k": 1}})
    assert client.write_structured(Entry(message="from Entry", level="SECURITY", source="app"))
    first, second = seen
    assert set(first) == set(FIELDS)
    assert first["level"] == "INFO" and first["component"] == "APPLICATION"
    assert first["source"] == "sdk" and first["metadata"] == {"k": 1}
    assert second["level"] == "SECURITY" and second["source"] == "app"


def test_unknown_level_or_component_in_log_write(client: sdk.Client) -> None:
    assert client.write("LOUD", "APPLICATION", "x", ()) is False
    assert client.write("INFO", "NOWHERE", "x", ()) is False
    assert client.stats()["invalid"] == 2
    assert client.set_level("NOWHERE", "INFO") is False
    assert client.set_level("KERNEL", "LOUD") is False


def test_nothing_listening_calls_return_and_drops_are_counted(client: sdk.Client) -> None:
    results = [client.write("INFO", "APPLICATION", "n %d", (i,)) for i in range(200)]
    assert results.count(True) == 50 and results.count(False) == 150
    stats = client.stats()
    assert stats["dropped_buffer_full"] == 150 and stats["buffered"] == 50
    client.shutdown(0.05)
    stats = client.stats()
    assert stats["dropped_exit"] == 50 and stats["buffered"] == 0
    assert stats["dropped"] == 200 and stats["sent"] == 0
    assert client.write("INFO", "APPLICATION", "after shutdown", ()) is False


def test_logging_handler_maps_levels_and_extras(client: sdk.Client) -> None:
    seen = capture(client)
    logger = logging.getLogger("test_sdk.handler")
    logger.propagate = False
    logger.setLevel(1)
    logger.handlers[:] = [sdk.MohlogHandler(component="WEB_RUNTIME", client_=client)]
    logger.log(5, "very fine")
    logger.debug("dbg %s", "x")
    logger.info("info")
    logger.warning("warn", extra={"component": "AI_ENGINE", "metadata": {"model": "m1"}})
    logger.error("err")
    logger.critical("crit")
    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("failed")
    levels = [e["level"] for e in seen]
    assert levels == ["TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "ERROR"]
    assert seen[1]["message"] == "dbg x"
    assert seen[3]["component"] == "AI_ENGINE" and seen[3]["metadata"]["model"] == "m1"
    assert seen[0]["component"] == "WEB_RUNTIME"
    assert seen[2]["metadata"]["logger"] == "test_sdk.handler"
    assert "ValueError: bad value" in seen[6]["message"]
    assert all(set(e) == set(FIELDS) for e in seen)
    # plain extra fields (the usual way) become metadata too; not JSON: their text
    logger.info("paid", extra={"order": 77, "user": "bob", "path": Path("/x")})
    meta = seen[7]["metadata"]
    assert (meta["order"], meta["user"], meta["path"]) == (77, "bob", "/x")
    assert not {"msg", "args", "levelno", "exc_info", "created"} & set(meta)
    assert set(seen[2]["metadata"]) == {"logger", "file", "line", "function"}


def test_level_from_logging_rounds_custom_levels_down() -> None:
    assert sdk.level_from_logging(25) == "INFO"
    assert sdk.level_from_logging(45) == "ERROR"
    assert sdk.level_from_logging(60) == "CRITICAL"
    assert sdk.level_from_logging(0) == "TRACE"


def test_module_functions_use_env(tmp_path: Path) -> None:
    code = """
import os
from mohlog import sdk
seen = []
sdk.log_register_handler("WARNING", seen.append)
sdk.log_set_level("APPLICATION", "INFO")
assert not sdk.log_write("DEBUG", "APPLICATION", "no")
assert sdk.log_write("WARNING", "APPLICATION", "yes %d", 1)
assert sdk.log_write_structured({"message": "s", "level": "ERROR"})
assert [e["message"] for e in seen] == ["yes 1", "s"]
assert sdk.client().config.socket_path == os.environ["MOHLOG_SDK_SOCKET"]
print(sdk.stats()["buffered"])
"""
    env = {**os.environ, "MOHLOG_SDK_SOCKET": str(tmp_path / "none.sock"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("MOHLOG_HUB", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"


def test_fork_child_starts_clean(client: sdk.Client) -> None:
    for i in range(10):
        client.write("INFO", "APPLICATION", "parent %d", (i,))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: empty buffer, zeroed counters, own pid, writes work
        try:
            seen = capture(client)
            stats = client.stats()
            ok = client.write("INFO", "APPLICATION", "child", ())
            good = (stats["buffered"] == 0 and ok and seen[0]["pid"] == os.getpid()
                    and client.stats()["buffered"] == 1)
            os.write(write_fd, b"ok" if good else repr(stats).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    answer = os.read(read_fd, 1000)
    os.waitpid(pid, 0)
    os.close(read_fd)
    assert answer == b"ok"
    assert client.stats()["buffered"] == 10  # the parent keeps its own entries


@pytest.mark.parametrize("level, component, reason", [
    ("LOUD", "APPLICATION", "unknown level 'LOUD'"),
    ("INFO", "NOPE", "unknown component 'NOPE'"),
])
def test_log_write_names_what_is_unknown(client: sdk.Client, level: str, component: str,
                                         reason: str) -> None:
    assert client.write(level, component, "m", ()) is False
    assert client.stats()["last_error"] == reason


def test_a_server_that_does_not_speak_http_does_not_stop_the_sdk(tmp_path: Path) -> None:
    """The hub address points at something that answers garbage (a wrong port): the send
    fails and is retried; the SDK's sender thread goes on (it ended on the
    BadStatusLine) and ships once a real answer comes."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    answers = [b"SSH-2.0-OpenSSH_9.2\r\n"]
    got: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(1 << 20)
                while b"\r\n\r\n" not in data:
                    data += conn.recv(1 << 20)
                head, body = data.split(b"\r\n\r\n", 1)
                length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                                  if ln.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(1 << 20)
                if answers:
                    conn.sendall(answers.pop(0))
                    continue
                got.append(body)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    threading.Thread(target=serve, daemon=True).start()
    c = sdk.Client(sdk.SdkConfig(socket_path=str(tmp_path / "none.sock"),
                                 hub_url=f"127.0.0.1:{srv.getsockname()[1]}",
                                 flush_interval_s=0.01, retry_max_s=0.1))
    try:
        assert c.write("ERROR", "APPLICATION", "after garbage %d", (1,))
        assert c.flush(10)
        assert c.stats()["send_failures"] >= 1 and c.stats()["sent"] == 1
        assert b"after garbage 1" in got[0]
    finally:
        c.shutdown()
        srv.close()
