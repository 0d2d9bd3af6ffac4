"""Crash consistency (issue 13): a real sync (real sshd/rrsync/rsync) is killed with SIGKILL at
each step boundary, then run again. Whatever the instant, the published library is a complete
earlier or later version, the next run converges to what a crash-free site publishes, its
record tells the truth (the change is reported by the run that publishes it), and no staging
tree, unpublished snapshot or half-pruned one survives to cost disk.

The kill comes from the run itself (`LIBRARY_SYNCER_CRASH_AT=<point>`, the one test seam in
shipped code, sync/crash_seam.py): the process group dies at once, rsync and ssh with it, as when
systemd kills the unit or the power goes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet.checks import snapshot_problems
from tests.test_sync_helpers import (
    REPO,
    add_iso_item,
    add_ovf_item,
    last_run,
    published,
    sync,
    write_config,
)

# (point, whether the crashed run had switched `published` to the new version)
POINTS = [("listed", False), ("transfer", False), ("transferred", False), ("ovas", False),
          ("manifests", False), ("renamed", False), ("switched", True), ("prune", True)]
CHANGED = ["appliance2", "big", "tools"]  # v1 → v2: two items added, one removed
STATE_ENTRIES = {"published", "snapshots", "ova", "cache", "last-run.json", "sync.lock",
                 "last-report.json"}


def _add_ova_item(library: Path, fixtures: Path, name: str) -> None:
    folder = library / name
    folder.mkdir(mode=0o755)
    (folder / f"{name}.ova").write_bytes(
        (fixtures / "ovf" / "ttylinux-pc_i486-16.1.ova").read_bytes())


def _crash(config: Path, point: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIBRARY_SYNCER_CRASH_AT": point}
    return subprocess.run([sys.executable, "-m", "library_syncer", "sync", "--config",
                           str(config), "--no-retry"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env, start_new_session=True)


def _version(snapshot: Path) -> int:
    return int(json.loads((snapshot / "lib.json").read_text())["version"])


def _content(snapshot: Path) -> dict[str, str]:
    """Every template file of a snapshot (not the manifests: their ids are the site's own, nor
    the page, nor the hidden state): path → SHA256."""
    found = {}
    for path in sorted(snapshot.rglob("*")):
        rel = path.relative_to(snapshot)
        if path.is_file() and rel.parts[0] != ".library-syncer" and path.suffix != ".json" \
                and str(rel) != "index.html":
            found[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _ids(snapshot: Path) -> dict[str, tuple[str, str]]:
    data = json.loads((snapshot / "items.json").read_text())
    return {i["name"]: (i["version"], [f["etag"] for f in i["files"]]) for i in data["items"]}


def _unique_bytes(*roots: Path) -> int:
    seen, total = set(), 0
    for root in roots:
        for path in root.rglob("*"):
            st = path.lstat()
            if path.is_file() and not path.is_symlink() and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def _snapshots(state: Path) -> set[str]:
    return {p.name for p in (state / "snapshots").iterdir()}


@pytest.mark.parametrize(("point", "switched"), POINTS, ids=[p for p, _ in POINTS])
def test_a_crash_at_any_step_leaves_a_complete_library_and_the_next_run_heals(
        point, switched, work_dir, sshd, client_key, server_library, fixtures_dir):
    add_iso_item(server_library, "tools", 100_000)
    add_ovf_item(server_library, fixtures_dir)
    _add_ova_item(server_library, fixtures_dir, "appliance")
    state, control = work_dir / "state", work_dir / "control"
    limit = {"bandwidth_limit": "1000"} if point == "transfer" else {}
    config = write_config(work_dir, sshd, client_key[0], state=state, **limit)
    assert sync(config).returncode == 0
    assert sync(config).returncode == 0  # two snapshots: the next publication prunes one
    first = published(state)
    version = _version(first)
    assert len(_snapshots(state)) == 2
    control_config = write_config(work_dir, sshd, client_key[0], state=control)
    assert sync(control_config).returncode == 0
    # v2: two items added (one an OVA: the archive store moves before the switch), one removed
    add_iso_item(server_library, "big", 3 << 20, seed=3)
    _add_ova_item(server_library, fixtures_dir, "appliance2")
    (server_library / "tools" / "tools.iso").unlink()
    (server_library / "tools").rmdir()
    assert sync(control_config).returncode == 0
    config = write_config(work_dir, sshd, client_key[0], state=state, **limit)

    crashed = _crash(config, point)

    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    assert f"crash point {point} reached" in crashed.stderr
    now = published(state)
    assert snapshot_problems(now) == [], "a torn library is published"
    if switched:
        assert now != first and _version(now) > version
    else:
        assert now == first and _version(now) == version and _content(now) == _content(first)
    crashed_snapshot = now.name
    write_config(work_dir, sshd, client_key[0], state=state)  # full speed

    healed = sync(config)

    assert healed.returncode == 0, healed.stderr
    snap = published(state)
    record = last_run(state)
    assert snapshot_problems(snap) == []
    assert _content(snap) == _content(published(control)), "not what a crash-free site has"
    assert _ids(snap) == _ids(published(control))
    assert _version(snap) == record["library_version"] > version
    # The change is reported by the run that publishes it (after the switch: the crashed run).
    assert record["items_changed"] == ([] if switched else CHANGED), record
    if point not in ("listed", "transfer"):
        assert record["bytes_received"] < 500_000, "fetched again what had arrived"
    # What stays: the published snapshot and the one published before it, nothing else.
    assert _snapshots(state) == {snap.name, crashed_snapshot if switched else first.name}
    assert set(os.listdir(state)) <= STATE_ENTRIES, os.listdir(state)
    assert sorted(p.name for p in (state / "ova").iterdir()) == ["appliance", "appliance2"]
    used = _unique_bytes(state / "snapshots", state / "ova")
    expected = _unique_bytes(control / "snapshots", control / "ova")
    assert used <= expected + 64_000, f"{used} bytes on disk, a crash-free site uses {expected}"

    again = sync(config)  # and it stays converged

    assert again.returncode == 0 and last_run(state)["items_changed"] == []
    assert last_run(state)["library_version"] == record["library_version"]
