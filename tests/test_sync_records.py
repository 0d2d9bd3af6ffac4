"""Issue 13, state and bookkeeping: what a run records (last-run.json, metrics) tells the truth
about the run and about the published library, and prune keeps what was really published.
Real sshd/rrsync/rsync, real filesystems (tmpfs mounts where a disk must fail)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from library_syncer.base.errors import DiskFull
from library_syncer.sync import layout as layout_module
from library_syncer.sync import snapshot
from library_syncer.sync import staging as staging_module
from library_syncer.sync.layout import Layout
from library_syncer.sync.ova import prepare_ovas
from tests.fleet.checks import snapshot_problems
from tests.test_sync_helpers import (
    add_iso_item,
    add_ovf_item,
    items,
    last_run,
    published,
    sync,
    write_config,
)


def _gauges(prom: Path) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(prom.read_text()):
        for sample in family.samples:
            label = sample.labels.get("outcome")
            found[sample.name + (f"[{label}]" if label else "")] = sample.value
    return found


def test_an_unexpected_error_is_recorded_as_an_error_not_an_interruption(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    """A bug or an unexpected system error exits 1 ("internal error"): the record says the same
    (outcome error, the exception's class), never "interrupted"/130."""
    add_ovf_item(server_library, fixtures_dir)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    folder = server_library / "appliance"
    folder.mkdir(mode=0o755)
    (folder / "appliance.ova").write_bytes(
        (fixtures_dir / "ovf" / "ttylinux-pc_i486-16.1.ova").read_bytes())
    (state / "ova" / "appliance").write_text("a file where the run wants a folder")

    result = sync(config)

    assert result.returncode == 1, result.stderr
    assert "internal error: FileExistsError" in result.stderr
    assert "Traceback" not in result.stderr
    record = last_run(state)
    assert (record["outcome"], record["exit_status"]) == ("error", 1), record
    assert record["message"].startswith("internal error: FileExistsError")


def test_metrics_describe_the_published_library_after_a_failed_run(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    """A network failure must not blank the dashboards: the library gauges are read from the
    published snapshot, which the failed run did not change; the run gauges say it failed."""
    add_ovf_item(server_library, fixtures_dir)
    add_iso_item(server_library, "tools", 300_000)
    prom = work_dir / "library_syncer.prom"
    config = write_config(work_dir, sshd, client_key[0], metrics=prom)
    assert sync(config).returncode == 0
    before = _gauges(prom)
    assert before["library_syncer_library_version"] == int(
        json.loads((published(work_dir / "state") / "lib.json").read_text())["version"])
    assert before["library_syncer_library_items"] == 2
    listed = sum(f["size"] for item in items(published(work_dir / "state")).values()
                 for f in item["files"])
    assert before["library_syncer_library_size_bytes"] == listed
    add_iso_item(server_library, "new", 1000)
    sshd.stop()
    try:
        result = sync(config)
    finally:
        sshd.start()

    assert result.returncode == 5, result.stderr
    after = _gauges(prom)
    for name in ("library_syncer_library_version", "library_syncer_library_items",
                 "library_syncer_library_size_bytes",
                 "library_syncer_last_success_timestamp_seconds"):
        assert after.get(name) == before[name], name
    assert after["library_syncer_last_run_exit_status"] == 5
    assert after["library_syncer_last_run_outcome[network]"] == 1


def test_an_unreadable_last_run_record_is_said_and_last_success_recovered(
        work_dir, sshd, client_key, server_library):
    add_iso_item(server_library, "tools", 1000)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    made = layout_module.made_at(published(state).name)
    (state / "last-run.json").write_text("{ torn")
    sshd.stop()
    try:
        result = sync(config)
    finally:
        sshd.start()

    assert result.returncode == 5
    warned = [line for line in result.stderr.splitlines() if "last-run.json is unreadable" in line]
    assert len(warned) == 1 and f"recovered from the published snapshot: {made}" in warned[0]
    assert last_run(state)["last_success"] == made


def _snapshot(layout: Layout, name: str, data: bytes) -> None:
    (layout.staging / "x").mkdir(parents=True)
    (layout.staging / "x" / "a.iso").write_bytes(data)
    snapshot.publish(layout, name)


def test_an_unpublished_snapshot_is_taken_back_and_prune_keeps_what_was_published(tmp_path):
    """A run that died between the rename and the switch left the newest snapshot unpublished.
    It never counts as published: prune keeps the published ones, and the next run takes the
    orphan back as its staging (complete: nothing fetched again)."""
    layout = Layout(tmp_path / "state")
    layout.prepare()
    first = layout_module.new_name(layout)
    _snapshot(layout, first, b"1")
    second = layout_module.new_name(layout)
    _snapshot(layout, second, b"2")
    orphan = layout_module.new_name(layout)  # the crash: renamed, never switched
    (layout.staging / "x").mkdir(parents=True)
    (layout.staging / "x" / "a.iso").write_bytes(b"3")
    os.replace(layout.staging, layout.snapshots / orphan)
    assert layout.unpublished() == [orphan]

    staging = staging_module.begin(layout)  # the next run

    assert (staging / "x" / "a.iso").read_bytes() == b"3"
    assert not (layout.snapshots / orphan).exists()
    third = layout_module.new_name(layout)
    snapshot.publish(layout, third)
    stale = "000002-20000101T000000Z"  # never published, older: an older version's crash
    (layout.snapshots / stale).mkdir()

    assert sorted(snapshot.prune(layout, 2)) == sorted([first, stale])
    assert sorted(layout.snapshot_names()) == sorted([second, third])
    assert (layout.published / "x" / "a.iso").read_bytes() == b"3"


@pytest.fixture
def busy_mount(tmp_path):
    mounts = []

    def mount(path: Path, size: str = "1m") -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       check=True)
        mounts.append(path)

    yield mount, mounts
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_snapshot_that_cannot_be_removed_is_said_and_not_reported_removed(tmp_path, busy_mount,
                                                                             caplog):
    mount, mounts = busy_mount
    layout = Layout(tmp_path / "state")
    layout.prepare()
    names = []
    for data in (b"1", b"2", b"3"):
        names.append(layout_module.new_name(layout))
        _snapshot(layout, names[-1], data)
    mount(layout.snapshots / names[0] / "busy")  # rmdir fails: EBUSY

    removed = snapshot.prune(layout, 2)

    assert removed == []
    assert any("could not remove old snapshot " + names[0] in r.getMessage()
               for r in caplog.records)
    leftover = layout.snapshots / (snapshot.REMOVING + names[0])
    assert leftover.is_dir() and names[0] not in layout.snapshot_names()
    subprocess.run(["umount", "-l", str(leftover / "busy")], check=True)
    mounts.clear()
    assert snapshot.prune(layout, 2) == [names[0]]  # the next prune finishes the job
    assert not leftover.exists()


def _malformed_ova() -> bytes:
    """A pax archive whose GNU sparse map is not numbers: Python's tarfile raises ValueError."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("broken.ovf")
        info.size = 5
        info.pax_headers = {"GNU.sparse.map": "abc,def", "GNU.sparse.size": "5"}
        archive.addfile(info, io.BytesIO(b"hello"))
    return buf.getvalue()


def test_a_malformed_ova_costs_one_item_not_the_run(work_dir, sshd, client_key, server_library,
                                                    fixtures_dir):
    add_ovf_item(server_library, fixtures_dir)
    folder = server_library / "broken"
    folder.mkdir(mode=0o755)
    (folder / "broken.ova").write_bytes(_malformed_ova())
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"

    result = sync(config)

    assert result.returncode == 6, result.stderr
    assert "item 'broken' left out" in result.stderr and "Traceback" not in result.stderr
    assert set(items(published(state))) == {"ttylinux"}
    assert snapshot_problems(published(state)) == []
    assert last_run(state)["outcome"] == "verify"


def test_disk_full_while_unpacking_an_ova_stops_the_run(tmp_path, fixtures_dir, busy_mount):
    """ENOSPC while unpacking is the disk's fault, not the archive's: the run stops with
    DiskFull (recognised by errno) instead of publishing the library without the item.
    (Today's code matched the message text, which this also passes: the errno is what counts.)"""
    mount, _ = busy_mount
    layout = Layout(tmp_path / "state")
    layout.prepare()
    staging = tmp_path / "small"  # the space check sees the state's disk; staging fills up
    mount(staging, "4m")
    (staging / "appliance").mkdir()
    ova = fixtures_dir / "ovf" / "ttylinux-pc_i486-16.1.ova"
    (staging / "appliance" / "appliance.ova").write_bytes(ova.read_bytes())
    with open(staging / "filler", "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass

    with pytest.raises(DiskFull) as error:
        prepare_ovas(layout, staging, None)

    assert "unpacking appliance/appliance.ova: no space left on device" in str(error.value)
    assert "\n" not in str(error.value)
    assert not [p for p in (staging / "appliance").iterdir() if p.suffix == ".vmdk"]
