"""The origin trace (server/trace.py) on real files: a revision is declared only once the library
settled, with a serial that only grows, written where sites receive it and nothing lists it."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.server import trace

SETTLE = 120.0


def _config(tmp_path: Path, library: Path, name: str = "hq"):
    path = tmp_path / "settings.toml"
    path.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{tmp_path / "state"}"\n'
                    f'settle = "{SETTLE:.0f}s"\nname = "{name}"\n')
    return config_module.load(path)


def _item(library: Path, name: str, size: int = 4096) -> Path:
    path = library / name / f"{name}-disk1.vmdk"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def _later() -> float:
    return time.time() + SETTLE + 1


@pytest.fixture
def library(tmp_path: Path) -> Path:
    lib = tmp_path / "library"
    _item(lib, "ubuntu")
    return lib


def test_a_settled_library_is_declared_once_with_its_listing(tmp_path, library):
    config = _config(tmp_path, library)
    assert trace.tick(config).state == "settling"  # just written: not settled yet
    outcome = trace.tick(config, now=_later())
    assert (outcome.state, outcome.serial, outcome.files) == ("declared", 1, 1)
    declared = trace.read(library)
    assert declared is not None and declared.origin == "hq" and declared.serial == 1
    disk = library / "ubuntu" / "ubuntu-disk1.vmdk"
    assert declared.files == {"ubuntu/ubuntu-disk1.vmdk": (4096, disk.stat().st_mtime_ns)}
    assert (library / ".library-syncer" / "serial").read_text() == "hq 1\n"
    assert trace.tick(config, now=_later()).state == "unchanged"  # its own files are no change


def test_a_template_being_copied_in_is_not_a_revision_until_it_settles(tmp_path, library):
    config = _config(tmp_path, library)
    trace.tick(config, now=_later())
    disk = _item(library, "windows", 8192)
    # `cp -p` and rsync put the old mtime back at the end: the ctime still says "just now"
    os.utime(disk, ns=(1_000_000_000, 1_000_000_000))
    outcome = trace.tick(config)
    assert outcome.state == "settling" and 0 < outcome.settles_in <= SETTLE
    assert trace.read(library).serial == 1
    outcome = trace.tick(config, now=_later())
    assert (outcome.state, outcome.serial, outcome.files) == ("declared", 2, 2)
    assert trace.read(library).files["windows/windows-disk1.vmdk"] == (8192, 1_000_000_000)


def test_while_settling_the_origin_tells_the_sites_which_revision_comes_and_when(
        tmp_path, library):
    config = _config(tmp_path, library)
    trace.tick(config, now=_later())
    assert trace.read_pending(library) is None
    _item(library, "windows")
    now = time.time()
    outcome = trace.tick(config, now=now)
    pending = trace.read_pending(library)
    assert outcome.state == "settling"
    assert (pending.origin, pending.serial) == ("hq", 2)
    assert now < pending.due <= now + SETTLE + 1  # a second: the notice's time is in seconds
    assert trace.scan(library).newest_change_ns / 1e9 < now  # the notice is no change itself

    assert trace.tick(config, now=_later()).state == "declared"
    assert trace.read_pending(library) is None


def test_a_change_undone_before_it_settled_withdraws_the_notice(tmp_path, library):
    config = _config(tmp_path, library)
    trace.tick(config, now=_later())
    disk = _item(library, "windows")
    trace.tick(config)
    assert trace.read_pending(library).serial == 2
    shutil.rmtree(disk.parent)
    outcome = trace.tick(config, now=_later())
    assert (outcome.state, outcome.serial) == ("unchanged", 1)
    assert trace.read_pending(library) is None


@pytest.mark.parametrize("text", ["", "x" * 5000, '{"format": 1, "origin": "hq", "serial": 0, '
                                  '"due": "2026-01-01T00:00:00+00:00"}',
                                  '{"format": 2, "origin": "hq", "serial": 3, "due": "now"}'])
def test_a_malformed_settling_notice_is_no_notice(tmp_path, text):
    (tmp_path / trace.TRACE_DIR).mkdir()
    (tmp_path / trace.TRACE_DIR / trace.SETTLING_FILE).write_text(text)
    assert trace.read_pending(tmp_path) is None


def test_a_deleted_item_is_a_change(tmp_path, library):
    config = _config(tmp_path, library)
    _item(library, "old")
    trace.tick(config, now=_later())
    shutil.rmtree(library / "old")
    assert trace.tick(config).state == "settling"  # the library folder's ctime moved
    outcome = trace.tick(config, now=_later())
    assert outcome.state == "declared" and list(trace.read(library).files) == [
        "ubuntu/ubuntu-disk1.vmdk"]


def test_the_serial_never_goes_back(tmp_path, library):
    config = _config(tmp_path, library)
    trace.tick(config, now=_later())
    old_backup = (library / ".library-syncer" / "trace.json").read_text()
    for name in ("a", "b"):
        _item(library, name)
        trace.tick(config, now=_later())
    assert trace.read(library).serial == 3
    # the library restored from an old backup, trace included
    (library / ".library-syncer" / "trace.json").write_text(old_backup)
    _item(library, "c")
    assert trace.tick(config, now=_later()).serial == 4
    # the trace folder lost too: the state directory still knows the last serial
    shutil.rmtree(library / ".library-syncer")
    assert trace.tick(config, now=_later()).serial == 5


def test_a_trace_from_another_origin_is_replaced_by_ours(tmp_path, library):
    trace.tick(_config(tmp_path, library, name="old-hq"), now=_later())
    outcome = trace.tick(_config(tmp_path, library, name="hq"), now=_later())
    assert outcome.state == "declared" and trace.read(library).origin == "hq"


@pytest.mark.parametrize("text", [
    "", "[]", '{"format": 2}', '{"format": 1, "origin": "", "serial": 1, "time": "t", "files": []}',
    '{"format": 1, "origin": "hq", "serial": -1, "time": "t", "files": []}',
    '{"format": 1, "origin": "hq", "serial": true, "time": "t", "files": []}',
    '{"format": 1, "origin": "hq", "serial": 1, "time": "t", "files": [["a", "1", 2]]}',
])
def test_a_malformed_trace_is_refused(text):
    with pytest.raises(ValueError):
        trace.Trace.from_json(text)


def test_the_command_says_what_it_did(tmp_path, library):
    import subprocess
    import sys

    config = tmp_path / "settings.toml"
    _config(tmp_path, library)
    result = subprocess.run([sys.executable, "-m", "library_syncer", "server", "trace", "-c",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "library changing: revision 1 is declared once nothing changed" in result.stderr
    missing = tmp_path / "missing.toml"
    missing.write_text(f'[server]\nlibrary = "{tmp_path / "nope"}"\n')
    result = subprocess.run([sys.executable, "-m", "library_syncer", "server", "trace", "-c",
                             str(missing)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "the library folder does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_manifests_never_list_the_trace(tmp_path, library):
    from library_syncer.manifest import vcsp

    trace.tick(_config(tmp_path, library), now=_later())
    vcsp.build(library, name="lib", state=vcsp.StatePlace.folder(tmp_path / "manifest-state"))
    listed = json.dumps(json.loads((library / "items.json").read_text()))
    assert ".library-syncer" not in listed and "trace" not in listed
    assert [i["name"] for i in json.loads((library / "items.json").read_text())["items"]] == [
        "ubuntu"]


def test_a_relay_never_declares_revisions_of_its_own(tmp_path):
    """A relay's server role exports its published snapshot: the origin's trace there is
    carried down unchanged, never rewritten under the relay's name."""
    state = tmp_path / "site-state"
    snapshot = state / "snapshots" / "000001"
    _item(snapshot, "ubuntu")
    (state / "published").symlink_to("snapshots/000001")
    origin = _config(tmp_path, snapshot, name="hq")
    trace.tick(origin, now=_later())  # as the origin wrote it (carried by the pull)
    before = (snapshot / ".library-syncer" / "trace.json").read_bytes()
    path = tmp_path / "relay.toml"
    path.write_text(f'[server]\nlibrary = "{state / "published"}"\nname = "relay"\n'
                    f'state_dir = "{tmp_path / "relay-srv"}"\n[paths]\nstate_dir = "{state}"\n')
    outcome = trace.tick(config_module.load(path), now=_later())
    assert outcome.state == "relay" and outcome.serial == 1
    assert "a relay declares no revisions of its own" in outcome.line()
    assert (snapshot / ".library-syncer" / "trace.json").read_bytes() == before
