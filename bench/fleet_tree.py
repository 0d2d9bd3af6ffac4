#!/usr/bin/env python3
"""Fleet tree benchmark: origin → relays → sites in network namespaces, the real server role at
the origin and at every relay (dispatcher, reports), `library-syncer sync` at every node.

The relays are on a datacenter link; the sites behind them cycle through the issue's profiles
(dsl 2 Mbit/s + 300 ms RTT + 2% loss, office 10 Mbit/s + 80 ms + 0.5%, satellite 5 Mbit/s +
600 ms + 1%). Scenarios, in order (tests/fleet/tree_scenarios.py), each checked for convergence
of every node to the origin's revision (digests) and for torn or half-copied snapshots:

  1. a new revision through the relays; bytes leaving the origin (its interface counters);
  2. relay-a restored from a backup one revision old: its sites keep what they have (exit 11);
  3. a template copied into the origin's library slowly while nodes pull: published only once
     the origin's trace declared it;
  4. `server sites --json` at the origin after a revision, the last site's link down;
  5. the same kind of revision as 1, every node pulling from the origin directly (flat): bytes
     leaving the origin, against 1.

Needs root. Example (the figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/fleet_tree.py --relays 2 --sites-per-relay 10 --library-mb 24
Writes bench/results/fleet_tree.<sites>sites-<MB>mb.json (see bench/results.py).
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

from tests.fleet import library, tree  # noqa: E402
from tests.fleet import tree_scenarios as scenarios  # noqa: E402
from tests.fleet.netns import Fleet  # noqa: E402
from tests.fleet.scenarios import Outcome  # noqa: E402
from tests.fleet.tree import TreeRun, site_profiles  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402

# What the figures depend on (the pull through relays, the trace and the reports), as files under
# library_syncer/: bench/report.py marks them in docs/benchmarks.md when one of these changed
# after they were measured.
MEASURES = [
    "sync/run.py", "sync/rsync.py", "sync/trace_check.py", "sync/snapshot.py", "sync/report.py",
    "server/trace.py", "server/reports.py", "server/dispatch.py", "sync/failover.py",
    "sync/transfer.py", "sync/runner.py",
]
# The network the figures were measured on (issue 24: the packet-level WAN replaced the
# latency relay above TCP): a change there also marks the figures.
HARNESS = ["tests/fleet/netns.py", "tests/harness/wan.py", "tests/harness/wanemu.c"]

MB = 1 << 20
RELAY = tree.RELAY_PROFILE
SHORT_SCHEDULE = 30  # the last site's schedule period (s), so it becomes overdue in the run


def summary(run: TreeRun, outcome: Outcome, label: str) -> dict[str, Any]:
    row = {"label": label, "seconds": outcome.seconds, "problems": len(outcome.problems),
           "origin_tx_bytes": outcome.extra.get("origin_tx_bytes", 0),
           "changed_bytes": outcome.changed_bytes,
           "nodes": [{"node": run.names[r.site], "returncode": r.returncode,
                      "seconds": r.seconds, "rx_bytes": r.rx_bytes} for r in outcome.results]}
    print(f"== {label}: {outcome.seconds:.0f} s, origin sent "
          f"{row['origin_tx_bytes'] / MB:.2f} MB, change {outcome.changed_bytes / MB:.2f} MB, "
          f"problems {len(outcome.problems)}")
    for problem in outcome.problems[:10]:
        print("   ", problem)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relays", type=int, default=2)
    parser.add_argument("--sites-per-relay", type=int, default=10)
    parser.add_argument("--library-mb", type=int, default=24)
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--fraction", type=float, default=0.03)
    parser.add_argument("--random-delay", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = sshd_harness.make_work_dir("bench-fleet-tree")
    lib, built = library.bench_library(work, size_mb=args.library_mb, items=args.items)
    date = datetime.now(timezone.utc)
    library_bytes = library.library_size(lib)
    profiles = site_profiles(args.relays, args.sites_per_relay)
    disk = args.library_mb * MB // args.items  # each item's disk
    sites = args.relays * args.sites_per_relay
    print(f"tree: origin, {args.relays} relays ({RELAY.describe()}), {sites} sites; library "
          f"{library_bytes / MB:.1f} MB in {args.items} items")
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        with Fleet(args.relays + sites, tag="bt") as fleet:
            run = TreeRun(fleet, work, lib, settle=3.0, report_grace=1.0)
            for outcome in scenarios.build(run, relay_profile=RELAY, site_profiles=profiles,
                                           short_schedule=SHORT_SCHEDULE,
                                           random_delay=args.random_delay):
                rows.append(summary(run, outcome, outcome.name))
            tree = scenarios.new_revision(run, fixtures_dir=built, fraction=args.fraction,
                                          seed=2, random_delay=args.random_delay)
            rows.append(summary(run, tree, "new revision through the relays"))
            stale = scenarios.stale_relay(run, run.relay_nodes()[0], fixtures_dir=built,
                                          fraction=args.fraction, seed=3)
            rows.append(summary(run, stale, "relay-a restored from a backup one revision old"))
            said = sorted({line.split("library-syncer: ")[-1] for lines in
                           stale.extra["said"].values() for line in lines})
            notes.append(f"Stale relay: {len(stale.extra['said'])} sites behind it exited with "
                         f"status 11, each with one line: `{said[0] if said else '—'}`.")
            slow = scenarios.slow_copy(run, fixtures_dir=built, name="tmpl-slow",
                                       disk_size=min(disk, 8 * MB), rate=1 * MB)
            rows.append(summary(run, slow, "a template copied in at 1 MB/s while nodes pull"))
            notes.append(f"Slow copy: relays that pulled during the copy and published nothing "
                         f"then: {', '.join(slow.extra['refused']) or 'none'}; the template was "
                         f"published by every node only under serial "
                         f"{slow.extra['declared_serial']} ({slow.extra['observations']} "
                         f"observations of published snapshots holding it, none earlier).")
            view = scenarios.fleet_view(run, down=run.sites[-1], fixtures_dir=built, seed=4,
                                        overdue_after=SHORT_SCHEDULE + 1)
            rows.append(summary(run, view, "fleet view, last site's link down"))
            down = run.names[run.sites[-1].index]
            first_row = next(r for r in view.extra["views"][0]["sites"] if r["site"] == down)
            last_row = next(r for r in view.extra["views"][1]["sites"] if r["site"] == down)
            notes.append(
                f"Fleet view (`server sites --json` at the origin): "
                f"{len(view.extra['views'][0]['sites'])} rows; {down} (link down) serial "
                f"{first_row['serial']} against {view.extra['serial']} (lag {first_row['lag']}), "
                f"overdue {str(last_row['overdue']).lower()} after {last_row['age_seconds']} s "
                f"(schedule every {SHORT_SCHEDULE} s, grace 1 s).")
            run.set_flat(True)
            flat = scenarios.new_revision(run, fixtures_dir=built, fraction=args.fraction,
                                          seed=5, random_delay=args.random_delay)
            run.set_flat(False)
            rows.append(summary(run, flat, "same kind of revision, every node from the origin"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    figures = {"relays": args.relays, "sites": sites, "relay_profile": RELAY.describe(),
               "site_profiles": sorted({p.describe() for ps in profiles for p in ps}),
               "library_bytes": library_bytes,
               "library_mb": args.library_mb, "fraction": args.fraction,
               "tree_origin_bytes": tree.extra["origin_tx_bytes"],
               "flat_origin_bytes": flat.extra["origin_tx_bytes"],
               "tree_change_bytes": tree.changed_bytes, "flat_change_bytes": flat.changed_bytes,
               "total_seconds": time.monotonic() - started, "scenarios": rows, "notes": notes}
    results.record("fleet_tree", f"{sites}sites-{args.library_mb}mb", figures, root=True,
                   started=date)
    problems = sum(r["problems"] for r in rows)
    print(f"origin bytes per revision: tree {figures['tree_origin_bytes'] / MB:.2f} MB, flat "
          f"{figures['flat_origin_bytes'] / MB:.2f} MB; problems {problems}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
