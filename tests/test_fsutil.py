"""Atomic writes and symlink switches: readers see old or new content, never a mix."""

from __future__ import annotations

import os
import threading

from library_syncer.base.fsutil import atomic_symlink, atomic_write, write_if_changed


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "lib.json"
    atomic_write(path, "one", mode=0o640)
    atomic_write(path, "two")
    assert path.read_text() == "two"
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["lib.json"]


def test_atomic_write_breaks_hard_links(tmp_path):
    """A file shared by hard link with a published snapshot must never be changed in place."""
    published = tmp_path / "published.json"
    published.write_text("old")
    staged = tmp_path / "staged.json"
    os.link(published, staged)
    atomic_write(staged, "new")
    assert published.read_text() == "old"
    assert staged.read_text() == "new"


def test_write_if_changed_keeps_mtime_when_equal(tmp_path):
    path = tmp_path / "items.json"
    assert write_if_changed(path, "same")
    before = os.stat(path).st_mtime_ns
    assert not write_if_changed(path, "same")
    assert os.stat(path).st_mtime_ns == before
    assert write_if_changed(path, "other")


def test_concurrent_reader_never_sees_partial_content(tmp_path):
    path = tmp_path / "lib.json"
    contents = [b"a" * 300_000, b"b" * 300_000]
    atomic_write(path, contents[0])
    bad: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = path.read_bytes()
            if data not in contents:
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(200):
        atomic_write(path, contents[i % 2], sync_dir=False)
    stop.set()
    thread.join()
    assert bad == []


def test_atomic_symlink_switch(tmp_path):
    (tmp_path / "snap1").mkdir()
    (tmp_path / "snap2").mkdir()
    link = tmp_path / "published"
    atomic_symlink("snap1", link)
    assert os.readlink(link) == "snap1"
    atomic_symlink("snap2", link)
    assert os.readlink(link) == "snap2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["published", "snap1", "snap2"]
