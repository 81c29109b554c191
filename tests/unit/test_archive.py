"""Archiving a partition removes the files of the segments it archived and no others (a
restore of the same partition may have put segments beside them), then the partition's
directory once empty."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_compaction import _filled, _files, _own_files
from tests.unit.test_store_search import entries


def test_archiving_removes_only_the_archived_segments_files(tmp_path: Path) -> None:
    st, loop = _filled(tmp_path, entries(600), 3, compact_segments=100)
    try:
        segs = list(st._segments)
        assert len(segs) == 3 and len({s.partition for s in segs}) == 1
        part = segs[0].partition
        name = st._archive(part, segs[:1])
        assert _files(tmp_path) == _own_files(segs[1]) | _own_files(segs[2])
        assert [s.path for s in st._segments] == [s.path for s in segs[1:]]
        assert st.archive_list()[0]["name"] == name and st.archive_list()[0]["records"] == 200
        second = st._archive(part, segs[1:])
        assert second == f"{part}.2.tar" and _files(tmp_path) == set()
        assert not (tmp_path / "segments" / part).exists()
        assert st.archive_restore(part)["records"] == 600
        assert sum(s.rows for s in st._segments) == 600
    finally:
        loop.run_until_complete(st.close())
        loop.close()
