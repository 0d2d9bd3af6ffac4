#!/usr/bin/env python3
"""Fleet poll benchmark (issue 15 item 5): how long a new revision takes from the origin to the
last site of a tree when every node polls (`library-syncer sync --if-changed` every P), against
every node running its full sync on a schedule S ≫ P only, in the same run; and what the checks
cost the origin while nothing changes.

Origin → relays (datacenter link) → sites (the issue's dsl/office/satellite profiles), every node
in its own network namespace (tests/fleet/tree.py). Each node's timer is a loop thread in
compressed time (tests/fleet/poll_scenario.py): poll = a random first moment, then every P plus a
random tenth of P; schedule = the same calendar time k·S for every node plus a random delay. In
order:

  1. quiet: every node polls for `--quiet-periods` × P while nothing changes; at the origin the
     SSH logins (its sshd log, "Accepted publickey") and bytes (its interface counters) per
     check that reached it (the relays' checks);
  2. poll: a revision declared at a random moment of a period; time until each node publishes
     it, and until `server sites --json` at the origin shows each site with it; `--revisions`
     times (each its own random moment);
  3. schedule: the same kind of revisions, every node on its schedule only.

Where a revision lands in the schedule's cycle decides most of the schedule-only figure, so one
sample says little: the table has every revision, the summary the medians.

Needs root. Example (the figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/fleet_poll.py --relays 2 --sites-per-relay 4
Writes bench/results/fleet_poll.<sites>sites-p<P>-s<S>.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402

from tests.fleet import library, tree, tree_scenarios  # noqa: E402
from tests.fleet import poll_scenario as poll  # noqa: E402
from tests.fleet.netns import Fleet  # noqa: E402
from tests.fleet.tree import TreeRun  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402

# What the figures depend on (polling and reports through the tree), as files under
# library_syncer/: bench/report.py marks them in docs/benchmarks.md when one of these changed
# after they were measured.
MEASURES = [
    "sync/poll.py", "sync/run.py", "sync/rsync.py", "sync/report.py", "server/trace.py",
    "server/reports.py", "server/dispatch.py", "sync/failover.py", "sync/runner.py",
]
# The network the figures were measured on (issue 24: the packet-level WAN replaced the
# latency relay above TCP): a change there also marks the figures.
HARNESS = ["tests/fleet/netns.py", "tests/harness/wan.py", "tests/harness/wanemu.c"]

MB = 1 << 20
RELAY = tree.RELAY_PROFILE


def _finite(value: float | None) -> float | None:
    return None if value is None or value == float("inf") else value


def _brief(outcome: dict) -> dict:
    keep = ("mode", "period", "random_delay", "serial", "changed_bytes", "published", "viewed",
            "transfer_seconds", "runs", "full_runs", "seconds")
    row = {k: outcome[k] for k in keep}
    row.update(last_site_published=_finite(outcome["last_site_published"]),
               last_relay_published=_finite(outcome["last_relay_published"]),
               last_site_viewed=_finite(outcome["last_site_viewed"]),
               problems=len(outcome["problems"]), problem_lines=outcome["problems"][:10])
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relays", type=int, default=2)
    parser.add_argument("--sites-per-relay", type=int, default=4)
    parser.add_argument("--library-mb", type=int, default=8)
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--fraction", type=float, default=0.03)
    parser.add_argument("--period", type=float, default=20.0, help="P, seconds")
    parser.add_argument("--schedule", type=float, default=120.0, help="S, seconds")
    parser.add_argument("--random-delay", type=float, default=30.0,
                        help="the schedule's random delay, seconds")
    parser.add_argument("--quiet-periods", type=float, default=3.0)
    parser.add_argument("--revisions", type=int, default=3, help="revisions per mode")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = sshd_harness.make_work_dir("bench-fleet-poll")
    lib, built = library.bench_library(work, size_mb=args.library_mb, items=args.items)
    date = datetime.now(timezone.utc)
    library_bytes = library.library_size(lib)
    site_profiles = tree.site_profiles(args.relays, args.sites_per_relay)
    sites = args.relays * args.sites_per_relay
    rng = random.Random(args.seed)
    P, S = args.period, args.schedule
    print(f"poll tree: origin, {args.relays} relays, {sites} sites; P = {P:g} s, S = {S:g} s "
          f"(+ up to {args.random_delay:g} s); library {library_bytes / MB:.1f} MB")
    started = time.monotonic()
    try:
        with Fleet(args.relays + sites, tag="bp") as fleet:
            run = TreeRun(fleet, work, lib, settle=2.0, report_grace=1.0)
            setup = tree_scenarios.build(run, relay_profile=RELAY, site_profiles=site_profiles,
                                         short_schedule=60, random_delay=3)
            setup_problems = sum(len(o.problems) for o in setup)
            quiet = poll.quiet_cost(run, period=P, seconds=args.quiet_periods * P,
                                    seed=args.seed)
            print(f"== quiet: {quiet['checks']} checks, {quiet['origin_checks']} at the origin, "
                  f"{quiet['origin_logins']} logins, {quiet['origin_bytes_per_check']} B/check")
            polled, scheduled = [], []
            for number in range(args.revisions):
                polled.append(poll.reach(
                    run, mode="poll", period=P, fixtures_dir=built, fraction=args.fraction,
                    seed=10 + number, timeout=4 * P + 120, view_timeout=4 * P + 60,
                    declare_after=rng.uniform(0, P)))
                print(f"== poll {number + 1}: last site {polled[-1]['last_site_published']:.1f} s, "
                      f"view {polled[-1]['last_site_viewed']}, "
                      f"problems {polled[-1]['problems'][:5]}")
            for number in range(args.revisions):
                scheduled.append(poll.reach(
                    run, mode="schedule", period=S, random_delay=args.random_delay,
                    fixtures_dir=built, fraction=args.fraction, seed=20 + number,
                    timeout=3 * S + 120, view_timeout=3 * S + 120,
                    declare_after=rng.uniform(0, S)))
                print(f"== schedule {number + 1}: last site "
                      f"{scheduled[-1]['last_site_published']:.1f} s, view "
                      f"{scheduled[-1]['last_site_viewed']}, "
                      f"problems {scheduled[-1]['problems'][:5]}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    figures = {"relays": args.relays, "sites": sites, "relay_profile": RELAY.describe(),
               "site_profiles": sorted({p.describe() for ps in site_profiles for p in ps}),
               "library_bytes": library_bytes, "fraction": args.fraction, "period": P,
               "schedule": S, "random_delay": args.random_delay,
               "setup_problems": setup_problems,
               "quiet": {k: v for k, v in quiet.items() if k != "check_seconds"},
               "quiet_check_seconds_max": max(quiet["check_seconds"], default=None),
               "revisions": args.revisions,
               "poll": [_brief(o) for o in polled],
               "poll_bound": max(poll.poll_bound(o) for o in polled),
               "view_bound": max(poll.view_bound(o) for o in polled),
               "scheduled": [_brief(o) for o in scheduled],
               "total_seconds": time.monotonic() - started}
    figures["quiet"]["problems"] = len(quiet["problems"])
    results.record("fleet_poll", f"{sites}sites-p{P:g}-s{S:g}", figures, root=True, started=date)
    problems = setup_problems + figures["quiet"]["problems"] + \
        sum(o["problems"] for o in figures["poll"] + figures["scheduled"])
    print(f"last site published: poll {[o['last_site_published'] for o in figures['poll']]} "
          f"(bound {figures['poll_bound']:.1f} s), schedule "
          f"{[o['last_site_published'] for o in figures['scheduled']]}; problems {problems}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
