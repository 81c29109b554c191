"""Archiving a partition removes the files of the segments it archived and no others (a
restore of the same partition may have put segments beside them), then the partition's
directory once empty; archives are deleted past archive_age_s or archive_bytes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server.store.engine import _archive_order
from server.store.query import LogQuery
from tests.unit.test_compaction import _files, _filled, _own_files
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


def test_logs_are_not_for_every_user(tmp_path: Path) -> None:
    """A data directory the hub makes is 0700; an existing one open to every user loses
    those rights; archives are 0600 (segments and the WAL were already)."""
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    st, loop = _filled(existing, entries(200), 1, compact_segments=100)
    try:
        assert existing.stat().st_mode & 0o777 == 0o750
        name = st._archive(st._segments[0].partition, list(st._segments))
        assert (existing / "archive" / name).stat().st_mode & 0o777 == 0o600
    finally:
        loop.run_until_complete(st.close())
        loop.close()
    fresh = tmp_path / "a" / "fresh"
    st, loop = _filled(fresh, entries(200), 1)
    try:
        assert fresh.stat().st_mode & 0o777 == 0o700
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_archives_are_deleted_past_their_age_or_the_archive_bytes(tmp_path: Path) -> None:
    """``archive_bytes``: the oldest archives (by their newest record) go until the rest
    fit; ``archive_age_s``: archives whose newest record is older go. A retention pass
    does both and says which it deleted."""
    st, loop = _filled(tmp_path, entries(600), 3, compact_segments=100)
    try:
        segs = list(st._segments)
        names = [st._archive(segs[0].partition, [s]) for s in segs]
        listed = sorted(st.archive_list(), key=lambda a: a["max_ts"])
        assert sorted(a["name"] for a in listed) == sorted(names)
        total = sum(a["bytes"] for a in listed)
        st.cfg = dataclasses.replace(st.cfg, archive_bytes=total - 1)
        assert st.enforce_retention() == {"archived": [], "deleted": [listed[0]["name"]]}
        assert [a["name"] for a in st.archive_list()] == sorted(
            (a["name"] for a in listed[1:]), key=lambda n: _archive_order(Path(n)))
        assert st.archived_overlapping(None, None) == [segs[0].partition]
        st.cfg = dataclasses.replace(st.cfg, archive_bytes=None, archive_age_s=10**9)
        assert st.enforce_retention()["deleted"] == []          # younger than 30 years
        st.cfg = dataclasses.replace(st.cfg, archive_age_s=86_400)
        assert sorted(st.enforce_retention()["deleted"]) == sorted(a["name"] for a in listed[1:])
        assert st.archive_list() == [] and st.archived_overlapping(None, None) == []
    finally:
        loop.run_until_complete(st.close())
        loop.close()


def test_a_search_is_not_held_up_by_a_restore(tmp_path: Path) -> None:
    """The archive's spans a search names (``archived_overlapping``) are read beside a
    restore in progress, not after it (it holds the restore lock while it writes)."""
    st, loop = _filled(tmp_path, entries(600), 2, compact_segments=100)
    try:
        part = st._segments[0].partition
        st._archive(part, list(st._segments))
        with st._restore_lock, ThreadPoolExecutor(1) as pool:   # "a restore" in progress
            assert pool.submit(st.archived_overlapping, None, None).result(10) == [part]
        name = st.archive_list()[0]["name"]
        (tmp_path / "archive" / name).rename(tmp_path / name)      # taken away by hand
        assert st.archived_overlapping(None, None) == []
        assert st.stats()["archive"]["archives"] == 0
        (tmp_path / name).rename(tmp_path / "archive" / name)      # and put back
        assert st.archived_overlapping(None, None) == [part]
        assert st.archive_restore(part)["records"] == 600
        assert st.archived_overlapping(None, None) == []
    finally:
        loop.run_until_complete(st.close())
        loop.close()


@pytest.mark.privileged
def test_an_archive_the_disk_cannot_hold_leaves_no_part_file(tmp_path: Path) -> None:
    """Archiving onto a full disk fails without a half-written archive taking the room
    that is left, and the partition stays served."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        st, loop = _filled(mnt / "data", entries(3000), 2, compact_segments=100)
        try:
            free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
            (mnt / "filler").write_bytes(b"\0" * max(0, free - 4096))
            segs = list(st._segments)
            with pytest.raises(OSError):
                st._archive(segs[0].partition, segs)
            assert list((mnt / "data" / "archive").iterdir()) == []
            assert [s.path for s in st._segments] == [s.path for s in segs]
            assert len(st.search(LogQuery(limit=100_000)).records) == 3000
        finally:
            loop.run_until_complete(st.close())
            loop.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
