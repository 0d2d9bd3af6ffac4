"""A tree of sites: origin → relay → site, each hop rsync over SSH with a forced `rrsync -ro`.
The relay exports its *published* snapshot, the origin's trace travels down unchanged, and a
downstream pull sees one snapshot even when the relay switches meanwhile (real sshd, rsync)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from library_syncer.base import config as config_module
from library_syncer.server import trace
from tests.fleet.checks import snapshot_problems
from tests.harness import sshd as sshd_harness
from tests.harness.wait import wait_for
from tests.test_sync_faults import _start_sync, _temp_size
from tests.test_sync_helpers import published, random_bytes, sync, write_config

MB = 1 << 20


def _declare(work_dir: Path, library: Path) -> int:
    settings = work_dir / "origin.toml"
    settings.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{work_dir / "srv-state"}"'
                        '\nsettle = "60s"\nname = "hq"\n')
    return trace.tick(config_module.load(settings), now=time.time() + 61).serial


def _disk(library: Path, item: str, size: int, seed: int) -> None:
    path = library / item / f"{item}.vmdk"
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_bytes(random_bytes(size, seed))
    os.chmod(path, 0o644)


def _node(work_dir: Path, name: str) -> Path:
    folder = work_dir / name
    (folder / "client-ssh").mkdir(parents=True, exist_ok=True)
    return folder


def _revision(state: Path) -> tuple[str, int]:
    data = json.loads((published(state) / ".library-syncer" / "trace.json").read_text())
    return data["origin"], data["serial"]


def _files(snapshot: Path) -> dict[str, bytes]:
    return {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in snapshot.rglob("*.vmdk")}


class Tree:
    """origin (the `sshd` fixture) → relay (sync + its own sshd exporting `published`) → site."""

    def __init__(self, work_dir: Path, origin, client_key, keep: int) -> None:
        self.work_dir = work_dir
        relay_dir, site_dir = _node(work_dir, "relay"), _node(work_dir, "site")
        self.relay_state, self.site_state = relay_dir / "state", site_dir / "state"
        self.relay = write_config(relay_dir, origin, client_key[0], state=self.relay_state,
                                  keep_snapshots=keep)
        assert sync(self.relay).returncode == 0
        self.relay_sshd = sshd_harness.start_sshd(
            relay_dir / "sshd", authorized_lines=[sshd_harness.forced_rrsync_line(
                client_key[1], self.relay_state / "published")])
        self.site = write_config(site_dir, self.relay_sshd, client_key[0],
                                 state=self.site_state, bandwidth_limit="500",
                                 retry_budget="120s", retry_initial_delay="1s")

    def stop(self) -> None:
        self.relay_sshd.stop()


def test_the_origins_revision_travels_down_the_tree_unchanged(work_dir, sshd, client_key,
                                                                server_library):
    _disk(server_library, "ubuntu", 2 * MB, 1)
    _declare(work_dir, server_library)
    tree = Tree(work_dir, sshd, client_key, keep=2)
    try:
        assert sync(tree.site).returncode == 0
        assert _revision(tree.site_state) == _revision(tree.relay_state) == ("hq", 1)
        assert _files(published(tree.site_state)) == _files(published(tree.relay_state))
        _disk(server_library, "windows", 2 * MB, 2)
        _declare(work_dir, server_library)
        assert sync(tree.relay).returncode == 0
        assert sync(tree.site).returncode == 0
        assert _revision(tree.site_state) == ("hq", 2)
        assert snapshot_problems(published(tree.site_state)) == []
    finally:
        tree.stop()


def _switch_relay_during_site_pull(work_dir: Path, server_library: Path, tree: Tree) -> str:
    """Revision 2 (two new disks) reaches the relay; while the site pulls it slowly, revision 3
    reaches the relay, which switches (and prunes what it does not keep)."""
    _disk(server_library, "centos", 3 * MB, 2)
    _disk(server_library, "windows", 3 * MB, 3)
    _declare(work_dir, server_library)
    assert sync(tree.relay).returncode == 0
    _disk(server_library, "photon", 1 * MB, 4)
    _declare(work_dir, server_library)
    process = _start_sync(tree.site)
    wait_for(lambda: _temp_size(tree.site_state / "staging" / "centos") > 1 * MB, timeout=30,
             what="the site's pull of revision 2 to be under way")
    assert sync(tree.relay).returncode == 0  # revision 3 published at the relay
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    return stderr


def test_a_downstream_pull_reads_one_snapshot_while_the_relay_switches(
        work_dir, sshd, client_key, server_library):
    """The relay keeps its previous snapshot (keep_snapshots = 2): the site's session, which
    entered the snapshot `published` pointed at when it started, reads it to the end."""
    _disk(server_library, "ubuntu", 1 * MB, 1)
    _declare(work_dir, server_library)
    tree = Tree(work_dir, sshd, client_key, keep=2)
    try:
        assert sync(tree.site).returncode == 0
        stderr = _switch_relay_during_site_pull(work_dir, server_library, tree)
        assert _revision(tree.site_state) == ("hq", 2), stderr  # the one it started on, whole
        assert "what arrived is not" not in stderr
        snap = published(tree.site_state)
        assert sorted(_files(snap)) == ["centos/centos.vmdk", "ubuntu/ubuntu.vmdk",
                                        "windows/windows.vmdk"]
        assert snapshot_problems(snap) == []
    finally:
        tree.stop()


def test_a_snapshot_pruned_under_a_downstream_pull_is_retried_cleanly(
        work_dir, sshd, client_key, server_library):
    """The relay keeps one snapshot: the one the site is reading is removed mid-pull, its
    remaining files vanish, the pull is not the revision, nothing is published, and the retry
    pulls the new one whole."""
    _disk(server_library, "ubuntu", 1 * MB, 1)
    _declare(work_dir, server_library)
    tree = Tree(work_dir, sshd, client_key, keep=1)
    try:
        assert sync(tree.site).returncode == 0
        stderr = _switch_relay_during_site_pull(work_dir, server_library, tree)
        # the disk not yet sent vanished with the snapshot: what was linked there as its basis
        # is taken out again, never published as that disk
        assert "some files vanished" in stderr
        assert "what arrived is not revision 2 of hq" in stderr
        assert _revision(tree.site_state) == ("hq", 3)
        snap = published(tree.site_state)
        assert _files(snap) == _files(published(tree.relay_state))
        assert snapshot_problems(snap) == []
    finally:
        tree.stop()
