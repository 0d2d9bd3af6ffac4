"""The origin's trace service against whoever can write its library (a CI pipeline, an NFS
client): it follows no link in or to `.library-syncer`, reads nothing without a bound, and a
forged serial cannot push the serial to its end (issue 23, item 5)."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.base.errors import SyncerError
from library_syncer.base.revision import MAX_SERIAL, Revision
from library_syncer.server import trace

SETTLE = 120.0


@pytest.fixture
def config(tmp_path: Path):
    disk = tmp_path / "library" / "ubuntu" / "disk1.vmdk"
    disk.parent.mkdir(parents=True)
    disk.write_bytes(os.urandom(4096))
    path = tmp_path / "settings.toml"
    path.write_text(f'[server]\nlibrary = "{tmp_path / "library"}"\n'
                    f'state_dir = "{tmp_path / "state"}"\nsettle = "{SETTLE:.0f}s"\n'
                    'name = "hq"\n')
    return config_module.load(path)


def _later() -> float:
    return time.time() + SETTLE + 1


def test_a_symlinked_trace_folder_is_never_written_through(tmp_path, config):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (config.server.library / trace.TRACE_DIR).symlink_to(elsewhere)
    with pytest.raises(SyncerError, match="symbolic link"):
        trace.tick(config, now=_later())
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", [trace.TRACE_FILE, trace.SERIAL_FILE, trace.SETTLING_FILE])
def test_a_link_inside_the_trace_folder_is_replaced_not_followed(tmp_path, config, name):
    target = tmp_path / "precious"
    target.write_text("precious\n")
    folder = config.server.library / trace.TRACE_DIR
    folder.mkdir()
    (folder / name).symlink_to(target)
    trace.tick(config)  # settling: writes the notice
    trace.tick(config, now=_later())  # declares: writes the trace and the serial
    assert target.read_text() == "precious\n"
    assert trace.read(config.server.library).serial == 1


def test_a_trace_linked_to_dev_zero_is_no_endless_read(config):
    folder = config.server.library / trace.TRACE_DIR
    folder.mkdir()
    for name in (trace.TRACE_FILE, trace.SETTLING_FILE):
        (folder / name).symlink_to("/dev/zero")
    assert trace.read(config.server.library) is None
    assert trace.read_pending(config.server.library) is None
    assert trace.tick(config, now=_later()).state == "declared"


def test_a_huge_trace_is_not_read(config):
    folder = config.server.library / trace.TRACE_DIR
    folder.mkdir()
    with open(folder / trace.TRACE_FILE, "wb") as huge:  # sparse: no disk, no time
        huge.truncate(300 << 20)
    tracemalloc.start()
    try:
        assert trace.read(config.server.library) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # refused by its size: not one byte of it read


def _forge(config, serial: int) -> None:
    forged = Revision("hq", serial, "2026-12-01T00:00:00+00:00", {})
    (config.server.library / trace.TRACE_DIR / trace.TRACE_FILE).write_text(forged.to_json())


def test_a_forged_serial_in_the_library_does_not_move_the_origins(config):
    assert trace.tick(config, now=_later()).serial == 1
    _forge(config, MAX_SERIAL - 1)
    outcome = trace.tick(config, now=_later())
    assert (outcome.state, outcome.serial) == ("declared", 2)
    assert trace.read(config.server.library).serial == 2


def test_no_serial_past_the_bound_is_ever_declared(config):
    """A new origin (no record) adopts the serial on disk; at the bound it stops, saying how."""
    (config.server.library / trace.TRACE_DIR).mkdir()
    _forge(config, MAX_SERIAL - 1)
    with pytest.raises(SyncerError, match="no serial left"):
        trace.tick(config, now=_later())
    assert trace.read(config.server.library).serial == MAX_SERIAL - 1
