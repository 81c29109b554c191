"""The agent's own Arrow IPC writer (agent/arrow_writer.py) against pyarrow and the hub's
schema; the batch cut by batch_cut_records; the runtime tuning helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from agent import arrow_writer, tuning
from agent.config import AgentConfig
from agent.pipeline import Pipeline
from agent.spool import Batch

ROOT = Path(__file__).resolve().parents[2]


def _columns(n: int) -> list[list[Any]]:
    texts = ["", "plain", "é€😀 non-ASCII", "x" * 300, "line\nbreak \"quoted\""]
    cols: list[list[Any]] = []
    for k, (_name, typ) in enumerate(arrow_writer.FIELDS):
        if typ == "int64":
            col: list[Any] = [(i * 7919 + k) * (-1) ** i for i in range(n)]
            if n:
                col[n // 2] = 2**63 - 1
        else:
            col = [texts[(i + k) % len(texts)] + str(i) for i in range(n)]
        if k % 3 == 1:  # some columns with nulls, one all null, others none
            col = [None if i % 5 == 0 else v for i, v in enumerate(col)]
        if k == 7:
            col = [None] * n
        cols.append(col)
    return cols


def _expected(cols: list[list[Any]]) -> pa.Table:
    return pa.table({name: pa.array(col, pa.int64() if typ == "int64" else pa.string())
                     for col, (name, typ) in zip(cols, arrow_writer.FIELDS, strict=True)})


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000])
def test_stream_reads_back_with_pyarrow_as_written(n: int) -> None:
    cols = _columns(n)
    table = pa.ipc.open_stream(pa.py_buffer(arrow_writer.stream(cols))).read_all()
    table.validate(full=True)
    assert table.equals(_expected(cols))
    assert table.to_pylist() == _expected(cols).to_pylist()


def test_stream_schema_is_the_hubs() -> None:
    from server.store.batch import SCHEMA

    table = pa.ipc.open_stream(pa.py_buffer(arrow_writer.stream(_columns(3)))).read_all()
    assert table.schema.equals(SCHEMA)


@pytest.mark.parametrize(("index", "value", "error"), [
    (1, "not a number", TypeError), (6, 2**64, OverflowError), (6, 1.5, TypeError),
    (2, b"bytes", TypeError), (9, 17, TypeError), (9, "\ud800 lone surrogate", ValueError)])
def test_stream_refuses_values_its_column_does_not_take(index: int, value: Any,
                                                        error: type[Exception]) -> None:
    cols = _columns(4)
    cols[index][2] = value
    with pytest.raises(error):
        arrow_writer.stream(cols)


def test_batches_are_cut_at_batch_cut_records_and_take_the_queue() -> None:
    out: list[Batch] = []
    trims: list[int] = []
    cfg = AgentConfig(batch_cut_records=4, batch_max_records=10, batch_max_delay_s=3600.0)
    p = Pipeline(cfg, out.append, [])
    p.after_batch = lambda: trims.append(len(out))
    entries = [{"level": "INFO", "component": "APPLICATION", "source": "test",
                "message": f"m{i}"} for i in range(13)]
    p.accept(entries[:3])
    assert p._cut(False) is None  # 3 queued: not due yet
    p.accept(entries[3:])
    first = p._cut(False)  # 13 queued: due, takes batch_max_records
    assert first is not None and first.records == 10
    second = p._cut(False)
    assert second is None  # 3 left, below the cut
    p.start()
    p.stop()  # the rest goes at stop
    assert [b.records for b in out] == [3] and trims == [1]


def test_trim_and_malloc_settings_run() -> None:
    tuning.trim()
    assert tuning.tune_malloc() in (True, False)


def test_agent_process_skips_numpy_and_pandas() -> None:
    code = ("import sys\n"
            "from agent import tuning\n"
            "assert tuning.skip_optional_imports()\n"
            "from agent.spool import Batch, arrow_ipc\n"
            "import pyarrow as pa\n"
            "b = Batch('x', fmt='arrow', ipc=arrow_ipc(pa.table({'level': ['INFO', None]})))\n"
            "assert b.without('INFO')[0].records == 1\n"
            "assert 'numpy' not in sys.modules and 'pandas' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
