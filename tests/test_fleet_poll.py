"""Change polling in the tree, small version (issue 15 item 5): an origin, one relay and two sites
in network namespaces, every node running `library-syncer sync --if-changed` every P seconds (a
loop per node doing what library-syncer-poll.timer would, compressed: P = 10 s). The full
version, with the schedule-only comparison, is `bench/fleet_poll.py`.

- While nothing changes, each check that reaches the origin costs it exactly one SSH login (its
  sshd log) and a few kB (its interface counters).
- A new revision is published by every node within one period (plus its random tenth) per tree
  level plus the transfers, and no node ever published a torn snapshot meanwhile.
- The origin's fleet view (`server sites --json`) shows every site with the new serial within the
  same bound plus one period: a site reports to its relay at the end of its run, and the relay's
  next check (which finds the origin unchanged) forwards it over the check's own connection.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import library, tree_scenarios
from tests.fleet import poll_scenario as poll
from tests.fleet.netns import LOSS_TOLERANT, Fleet, LinkProfile, list_namespaces
from tests.fleet.tree import TreeRun
from tests.harness import sshd as sshd_harness

pytestmark = pytest.mark.fleet

MB = 1 << 20
P = 10.0  # the poll period, seconds (standing for minutes)
RELAY = LinkProfile("datacenter", 50_000, 20, 0.0)
SITES = [LinkProfile("office", 10_000, 80, 0.5), LinkProfile("dsl", 8_000, 300, 2.0)]


@pytest.fixture(scope="module")
def tree(fixtures_dir: Path) -> Iterator[TreeRun]:
    work = sshd_harness.make_work_dir("fleet-poll")
    lib = work / "library"
    library.make_library(lib, items=2, disk_size=1 * MB, fixtures_dir=fixtures_dir)
    try:
        with Fleet(3, tag="tp", **LOSS_TOLERANT) as fleet:
            run = TreeRun(fleet, work, lib, settle=2.0, report_grace=1.0)
            for outcome in tree_scenarios.build(run, relay_profile=RELAY, site_profiles=[SITES],
                                                short_schedule=60):
                assert outcome.problems == [], outcome.problems
            yield run
        assert not [ns for ns in list_namespaces() if ns.startswith(fleet.base)], \
            "the fleet left namespaces behind"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_check_that_finds_nothing_costs_the_origin_one_login(tree: TreeRun) -> None:
    cost = poll.quiet_cost(tree, period=P, seconds=2.5 * P, seed=1)
    assert cost["problems"] == [], cost["problems"]
    assert cost["origin_checks"] >= 2, cost
    assert cost["origin_logins"] == cost["origin_checks"], cost  # one SSH session per check
    assert cost["origin_bytes_per_check"] < 30_000, cost


@pytest.fixture(scope="module")
def polled(tree: TreeRun, fixtures_dir: Path) -> dict:
    return poll.reach(tree, mode="poll", period=P, fixtures_dir=fixtures_dir, fraction=0.03,
                      seed=2, timeout=60, view_timeout=90, declare_after=P / 2)


def test_a_revision_reaches_every_site_within_a_period_per_level(polled: dict) -> None:
    assert polled["problems"] == [], "\n".join(polled["problems"][:20])
    assert polled["watcher_passes"] > 0
    bound = poll.poll_bound(polled)
    assert polled["last_site_published"] <= bound, (polled["published"], bound, polled)


def test_the_origin_sees_every_site_with_the_revision_one_relay_period_later(polled: dict
                                                                              ) -> None:
    bound = poll.view_bound(polled)
    assert polled["last_site_viewed"] <= bound, (polled["viewed"], polled["published"], bound)
    forwards = [r for r in polled["loop_runs"] if r["forwarded"]]
    assert forwards and all(r["node"] in polled["relays"] for r in forwards), forwards
