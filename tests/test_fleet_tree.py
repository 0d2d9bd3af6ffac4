"""The fleet as a tree, small version: an origin, two relays (each a site that also runs the real
server role on its own address, exporting its `published` snapshot) and two sites behind each
relay, every node in its own network namespace on a shaped link. The full tree with figures is
`bench/fleet_tree.py`.

Each scenario asserts that every node ends publishing exactly the origin's library (digests,
manifests) under the origin's current revision, and that no node ever published a torn or
half-copied snapshot (a watcher walks every published tree while the syncs run). The tests run
in file order and share one tree: each scenario starts from the state the previous one left.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import library
from tests.fleet import tree_scenarios as scenarios
from tests.fleet.netns import LOSS_TOLERANT, Fleet, LinkProfile, list_namespaces
from tests.fleet.tree import TreeRun
from tests.harness import sshd as sshd_harness

pytestmark = pytest.mark.fleet

MB = 1 << 20
RELAY = LinkProfile("datacenter", 50_000, 20, 0.0)
# The site profiles, rates raised so the file runs in a few minutes on 2 cores.
SITES = [LinkProfile("office", 10_000, 80, 0.5), LinkProfile("dsl", 8_000, 300, 2.0)]
ITEMS, DISK = 3, 2 * MB
OVERDUE_AFTER = 20  # the down site's schedule period, seconds (report_grace 1 s, no delay)


@pytest.fixture(scope="module")
def tree(fixtures_dir: Path) -> Iterator[TreeRun]:
    work = sshd_harness.make_work_dir("fleet-tree")
    lib = work / "library"
    library.make_library(lib, items=ITEMS, disk_size=DISK, fixtures_dir=fixtures_dir)
    try:
        with Fleet(6, tag="tt", **LOSS_TOLERANT) as fleet:
            run = TreeRun(fleet, work, lib, settle=2.0, report_grace=1.0)
            first = scenarios.build(run, relay_profile=RELAY, site_profiles=[SITES, SITES],
                                    short_schedule=OVERDUE_AFTER, random_delay=2)
            for outcome in first:
                assert outcome.problems == [], outcome.problems
            yield run
        assert not [ns for ns in list_namespaces() if ns.startswith(fleet.base)], \
            "the fleet left namespaces behind"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _assert_clean(outcome) -> None:
    assert outcome.problems == [], "\n".join(outcome.problems[:20])
    assert outcome.extra["watcher_passes"] > 0  # the torn-snapshot watcher really ran


def test_a_revision_reaches_every_site_through_the_relays(tree: TreeRun,
                                                          fixtures_dir: Path) -> None:
    outcome = scenarios.new_revision(tree, fixtures_dir=fixtures_dir, fraction=0.03, seed=2,
                                     random_delay=2)
    _assert_clean(outcome)
    change: library.Change = outcome.extra["change"]
    # only the two relays pulled from the origin: about twice the change, far below one
    # pull per site (6 nodes)
    assert outcome.extra["origin_tx_bytes"] < 2 * 1.4 * change.new_bytes, outcome.extra
    tree.tree_bytes = outcome.extra["origin_tx_bytes"]  # for the flat comparison below


def test_a_relay_restored_from_an_old_backup_rolls_no_site_back(tree: TreeRun,
                                                                fixtures_dir: Path) -> None:
    relay = tree.relay_nodes()[0]
    outcome = scenarios.stale_relay(tree, relay, fixtures_dir=fixtures_dir, fraction=0.03,
                                    seed=3)
    assert outcome.problems == [], "\n".join(outcome.problems[:20])
    assert sorted(outcome.extra["said"]) == ["site-a0", "site-a1"]


def test_a_template_copied_in_slowly_is_published_only_once_declared(
        tree: TreeRun, fixtures_dir: Path) -> None:
    outcome = scenarios.slow_copy(tree, fixtures_dir=fixtures_dir, name="tmpl-slow",
                                  disk_size=3 * MB, rate=1 * MB)
    _assert_clean(outcome)
    assert outcome.extra["declared_serial"] is not None
    # a relay pulled while the copy ran, saw a library that was not the declared revision and
    # published nothing then
    assert outcome.extra["refused"], "no relay pulled during the copy"


def test_the_origin_sees_every_site_and_the_one_whose_link_is_down(
        tree: TreeRun, fixtures_dir: Path) -> None:
    outcome = scenarios.fleet_view(tree, down=tree.sites[-1], fixtures_dir=fixtures_dir,
                                   seed=4, overdue_after=OVERDUE_AFTER + 1)
    assert outcome.problems == [], "\n".join(outcome.problems[:20])
    assert len(outcome.extra["final"]["sites"]) >= len(tree.sites)


def test_the_tree_sends_less_from_the_origin_than_flat(tree: TreeRun,
                                                      fixtures_dir: Path) -> None:
    """The same kind of revision, every node pulling from the origin directly: the origin sends
    it once per node instead of once per relay."""
    tree.set_flat(True)
    try:
        outcome = scenarios.new_revision(tree, fixtures_dir=fixtures_dir, fraction=0.03,
                                         seed=5, random_delay=2)
    finally:
        tree.set_flat(False)
    _assert_clean(outcome)
    flat = outcome.extra["origin_tx_bytes"]
    assert flat > 2 * getattr(tree, "tree_bytes", flat), (flat, getattr(tree, "tree_bytes", None))
