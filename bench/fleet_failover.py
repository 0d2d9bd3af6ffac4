#!/usr/bin/env python3
"""Fleet failover benchmark: a relay lost mid-transfer, its sites fail over to the origin.

The tree of bench/fleet_tree.py (origin → relays → sites in network namespaces, the real server
role at the origin and at every relay), every site listing its relay then the origin in
`sync.upstreams` (tests/fleet/failover_scenario.py). Relays on a datacenter link, sites cycling
through the issue's profiles (dsl, office, satellite). Two rounds, each a new revision that every
relay publishes before every site pulls at once:

  1. relay-a's sshd and every session it forked killed once the first of its sites has received
     a quarter of the change;
  2. relay-b's link taken down at the same point.

Each round checks that every node converges to the origin's revision (SHA256 of every file,
manifests), that the watcher never saw a torn snapshot, that every run exited 0, and that each
site's last-run.json names the upstream that served it (the origin, the relay skipped, for the
sites that were transferring from the lost relay); then the relay comes back and serves its sites
again. Figures: time from the loss to each affected site's convergence; bytes the affected sites
received beyond the change, against the sites behind the other relay on the same profile.

Needs root. Example (the figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/fleet_failover.py --sites-per-relay 6 --library-mb 16
Writes bench/results/fleet_failover.<sites>sites-<MB>mb.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402

from tests.fleet import failover_scenario as scenario  # noqa: E402
from tests.fleet import library, tree  # noqa: E402
from tests.fleet.netns import Fleet  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402

# What the figures depend on (the failover between upstreams and the pull), as files under
# library_syncer/: bench/report.py marks them in docs/benchmarks.md when one of these changed
# after they were measured.
MEASURES = [
    "sync/run.py", "sync/rsync.py", "sync/ssh.py", "sync/sshmux.py", "sync/snapshot.py",
    "sync/trace_check.py", "server/dispatch.py", "server/trace.py", "sync/failover.py",
    "sync/transfer.py", "sync/retry.py", "sync/runner.py",
]
# The network the figures were measured on (issue 24: the packet-level WAN replaced the
# latency relay above TCP): a change there also marks the figures.
HARNESS = ["tests/fleet/netns.py", "tests/harness/wan.py", "tests/harness/wanemu.c"]

MB = 1 << 20
RELAY = tree.RELAY_PROFILE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites-per-relay", type=int, default=6)
    parser.add_argument("--library-mb", type=int, default=16)
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--added-mb", type=int, default=6)
    parser.add_argument("--fraction", type=float, default=0.03)
    parser.add_argument("--retry-budget", type=float, default=30.0)
    parser.add_argument("--kill-after", type=float, default=0.25)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    relays = 2
    work = sshd_harness.make_work_dir("bench-fleet-failover")
    lib, built = library.bench_library(work, size_mb=args.library_mb, items=args.items)
    date = datetime.now(timezone.utc)
    library_bytes = library.library_size(lib)
    site_profiles = tree.site_profiles(relays, args.sites_per_relay, rotate=False)
    sites = relays * args.sites_per_relay
    print(f"failover: origin, {relays} relays ({RELAY.describe()}), {sites} sites; library "
          f"{library_bytes / MB:.1f} MB in {args.items} items")
    started = time.monotonic()
    rounds: list[dict[str, Any]] = []
    try:
        with Fleet(relays + sites, tag="bf") as fleet:
            run = scenario.FailoverTree(fleet, work, lib, settle=3.0, report_grace=1.0)
            first = scenario.build_failover(run, relay_profile=RELAY,
                                            site_profiles=site_profiles,
                                            retry_budget=args.retry_budget)
            setup_problems = sum(len(o.problems) for o in first)
            for k, how in enumerate(("kill", "link")):
                outcome = scenario.relay_lost(run, run.relay_nodes()[k], fixtures_dir=built,
                                              fraction=args.fraction,
                                              added_size=args.added_mb * MB, seed=10 + k,
                                              how=how, kill_after=args.kill_after)
                e = outcome.extra
                row = {"how": how, "relay": e["relay"], "seconds": outcome.seconds,
                       "loss_at": e["loss_at"], "changed_bytes": outcome.changed_bytes,
                       "converge_after_loss": e["converge_after_loss"],
                       "origin_tx_bytes": e["origin_tx_bytes"], "back_seconds": e["back_seconds"],
                       "problems": len(outcome.problems), "problem_lines": outcome.problems[:10],
                       "sites": e["sites"]}
                rounds.append(row)
                hit = [s for s in e["sites"] if s["affected"]]
                print(f"== relay lost ({how}) at {e['loss_at']:.1f} s: {len(hit)} sites failed "
                      f"over, converged {e['converge_after_loss'] or 0:.1f} s after the loss; "
                      f"problems {len(outcome.problems)}")
                for s in e["sites"]:
                    print(f"   {s['node']:10} {s['profile']:9} affected={s['affected']!s:5} "
                          f"rx {s['rx_bytes'] / MB:6.2f} MB beyond change "
                          f"{s['resent_bytes'] / MB:6.2f} MB  {s['seconds']:5.1f} s  "
                          f"{s['upstream']}")
                for problem in outcome.problems[:10]:
                    print("   ", problem)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    figures = {"relays": relays, "sites": sites, "relay_profile": RELAY.describe(),
               "site_profiles": sorted({p.describe() for ps in site_profiles for p in ps}),
               "library_bytes": library_bytes, "library_mb": args.library_mb,
               "added_mb": args.added_mb, "fraction": args.fraction,
               "retry_budget": args.retry_budget, "kill_after": args.kill_after,
               "setup_problems": setup_problems,
               "total_seconds": time.monotonic() - started, "rounds": rounds}
    results.record("fleet_failover", f"{sites}sites-{args.library_mb}mb", figures, root=True,
                   started=date)
    problems = setup_problems + sum(r["problems"] for r in rounds)
    print(f"problems {problems}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
