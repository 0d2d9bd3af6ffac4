"""A relay killed mid-transfer (issue 14, item 6), small version: an origin, two relays and one
site behind each, every site listing its relay then the origin in `sync.upstreams`. The full run
with figures is `bench/fleet_failover.py`; the scenario is tests/fleet/failover_scenario.py.

relay-a's sshd (and every session it forked) is killed while site-a0 pulls a new revision from
it: site-a0 fails over to the origin and converges; site-b0 (behind relay-b) is the baseline.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import failover_scenario as scenario
from tests.fleet import library
from tests.fleet.netns import LOSS_TOLERANT, Fleet, LinkProfile, list_namespaces
from tests.harness import sshd as sshd_harness

pytestmark = pytest.mark.fleet

MB = 1 << 20
RELAY = LinkProfile("datacenter", 50_000, 20, 0.0)
SITE = LinkProfile("office", 10_000, 80, 0.5)
ITEMS, DISK, ADDED = 3, 2 * MB, 4 * MB
RETRY_BUDGET = 16  # each site retries its relay for 8 s before it fails over to the origin


@pytest.fixture(scope="module")
def tree(fixtures_dir: Path) -> Iterator[scenario.FailoverTree]:
    work = sshd_harness.make_work_dir("fleet-failover")
    lib = work / "library"
    library.make_library(lib, items=ITEMS, disk_size=DISK, fixtures_dir=fixtures_dir)
    try:
        with Fleet(4, tag="fo", **LOSS_TOLERANT) as fleet:
            run = scenario.FailoverTree(fleet, work, lib, settle=2.0, report_grace=1.0)
            first = scenario.build_failover(run, relay_profile=RELAY,
                                            site_profiles=[[SITE], [SITE]],
                                            retry_budget=RETRY_BUDGET)
            for outcome in first:
                assert outcome.problems == [], outcome.problems
            yield run
        assert not [ns for ns in list_namespaces() if ns.startswith(fleet.base)], \
            "the fleet left namespaces behind"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_sites_of_a_relay_killed_mid_transfer_fail_over_to_the_origin(
        tree: scenario.FailoverTree, fixtures_dir: Path) -> None:
    # the first sync was served by each site's relay (upstream 0), nothing skipped
    for site in tree.leaf_nodes():
        record = scenario.last_run(site)
        assert (record["upstream"], record["upstream_index"], record["skipped"]) == \
            (scenario.RELAY_UPSTREAM, 0, []), record
    relay = tree.relay_nodes()[0]
    outcome = scenario.relay_lost(tree, relay, fixtures_dir=fixtures_dir, fraction=0.03,
                                  added_size=ADDED, seed=6, how="kill")
    assert outcome.problems == [], "\n".join(outcome.problems[:20])
    assert outcome.extra["watcher_passes"] > 0
    change: library.Change = outcome.extra["change"]
    hit = next(s for s in outcome.extra["sites"] if s["affected"])
    other = next(s for s in outcome.extra["sites"] if not s["affected"])
    assert hit["node"] == "site-a0" and other["node"] == "site-b0"
    assert hit["at_loss"] >= 0.25 * change.new_bytes  # the kill landed mid-transfer
    # the retries of the dead relay are bounded by its share of the budget
    assert hit["after_loss"] < RETRY_BUDGET + 30, hit
    # what arrived from the relay before the kill is kept: the origin does not send it all again
    assert hit["rx_bytes"] < other["rx_bytes"] + 0.75 * change.new_bytes, (hit, other)
