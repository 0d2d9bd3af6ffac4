#!/usr/bin/env python3
"""Fleet benchmark: 10+ remote sites on bad links pulling one library with `library-syncer sync`.

Every site runs in its own network namespace with the issue's link profiles (2 Mbit/s + 300 ms
RTT + 2% loss, 10 Mbit/s + 80 ms + 0.5%, satellite 5 Mbit/s + 600 ms + 1%), the real server role
runs in the server namespace. Scenarios, in order, each checked for convergence (digests) and
torn snapshots like tests/test_fleet.py, then figures:

  1. first sync of the whole library to every site at once (random delay compressed);
  2. a new template version (a fraction of one disk rewritten, an item added, one deleted),
     against the baseline of the same run: every changed/added file downloaded whole over HTTP
     through the same links (what vCenter's own subscription does);
  3. the next version again while a third of the links flap and sshd is killed and restarted:
     bytes re-sent compared with the clean version of scenario 2;
  4. one site with `sync.bandwidth_limit`: measured rate against the limit.

`--scenario monthly` runs instead the monthly template (issue 16): every site on the dsl
profile, `--sites` of them with `sync.find_basis = true` and as many with `false` (today's plain
--link-dest rsync), interleaved, all at once; the library is one template of `--library-mb`;
after the first sync, next month's version is published as a new item (a copy with its files
renamed and `--fraction` of its disk rewritten) and every site pulls it:
    sudo .venv/bin/python bench/fleet.py --scenario monthly --sites 3 --library-mb 16 \
        --fraction 0.05
Writes bench/results/fleet_monthly.<sites>sites-<MB>mb.json.

Needs root (network namespaces). Example (the figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/fleet.py --sites 10 --library-mb 200
Writes bench/results/fleet.<sites>sites-<MB>mb.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402

from tests.fleet import library, scenarios  # noqa: E402
from tests.fleet.netns import PROFILES, Fleet, LinkProfile  # noqa: E402
from tests.fleet.sites import FleetRun  # noqa: E402
from tests.harness import fixtures  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402

# What the figures depend on (the whole pull over bad links), as files under library_syncer/:
# bench/report.py marks them in docs/benchmarks.md when one of these changed after they were
# measured.
MEASURES = [
    "sync/run.py", "sync/rsync.py", "sync/ssh.py", "sync/sshmux.py", "sync/snapshot.py",
    "sync/basis.py", "server/dispatch.py", "server/sshd.py", "manifest/vcsp.py",
    "sync/transfer.py", "sync/runner.py", "sync/failover.py", "sync/staging.py",
]
# The network the figures were measured on (issue 24: the packet-level WAN replaced the
# latency relay above TCP): a change there also marks the figures.
HARNESS = ["tests/fleet/netns.py", "tests/harness/wan.py", "tests/harness/wanemu.c"]

MB = 1 << 20
CYCLE = ["dsl", "office", "satellite"]


def mb(count: float) -> str:
    return f"{count / MB:8.2f}"


def print_outcome(outcome: scenarios.Outcome, sites: list, *, against: int,
                  against_name: str) -> None:
    print(f"\n== {outcome.name}: converged in {outcome.seconds:.1f} s; server CPU "
          f"{outcome.server_cpu:.2f} s = {outcome.cpu_per_site_sync * 1000:.0f} ms per "
          f"site-sync; problems: {len(outcome.problems)}")
    for problem in outcome.problems[:10]:
        print("   !", problem)
    print(f"   {'site':>4} {'profile':<10} {'seconds':>8} {'rx MB':>8} {'tx MB':>8} "
          f"{'rx/' + against_name:>12}")
    for result in outcome.results:
        site = sites[result.site]
        print(f"   {result.site:>4} {site.profile.name:<10} {result.seconds:8.1f} "
              f"{mb(result.rx_bytes)} {mb(result.tx_bytes)} {result.rx_bytes / against:12.3f}")


def scenario_figures(outcome: scenarios.Outcome, sites: list, label: str, *, against: int,
                     against_name: str) -> dict[str, Any]:
    """One scenario for the results file: per site its profile, time and bytes received."""
    return {"name": outcome.name, "label": label, "seconds": outcome.seconds,
            "problems": len(outcome.problems), "server_cpu": outcome.server_cpu,
            "cpu_per_site_sync": outcome.cpu_per_site_sync, "against": against_name,
            "against_bytes": against,
            "sites": [{"site": r.site, "profile": sites[r.site].profile.name,
                       "seconds": r.seconds, "rx_bytes": r.rx_bytes, "tx_bytes": r.tx_bytes,
                       "ratio": r.rx_bytes / against} for r in outcome.results]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--library-mb", type=int, default=200, help="total size of the library")
    parser.add_argument("--items", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=0.02,
                        help="share of one disk rewritten by a new version (1-5%%)")
    parser.add_argument("--random-delay", type=float, default=10.0,
                        help="the timer's random delay, compressed to seconds")
    parser.add_argument("--flap-down", type=float, default=8.0, help="seconds a flapping link "
                        "stays down (longer than the 5 s I/O timeout: the transfer breaks)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--scenario", choices=("all", "monthly"), default="all",
                        help="monthly: the monthly template with find_basis on and off")
    args = parser.parse_args()
    if args.scenario == "monthly":
        return monthly(args)

    disk = args.library_mb * MB // args.items
    work = sshd_harness.make_work_dir("bench-fleet")
    lib = work / "library"
    built = fixtures.build(work / "fixtures")  # the descriptor the items are shaped on
    started, date = time.monotonic(), datetime.now(timezone.utc)
    figures: dict[str, Any] = {"sites": args.sites, "library_mb": args.library_mb,
                               "items": args.items, "fraction": args.fraction,
                               "profiles": CYCLE, "scenarios": [], "notes": []}
    library.make_library(lib, items=args.items, disk_size=disk, fixtures_dir=built)
    profiles = [PROFILES[CYCLE[i % len(CYCLE)]] for i in range(args.sites)]
    print(f"fleet: {args.sites} sites, library {library.library_size(lib) / MB:.0f} MB in "
          f"{args.items} items; profiles: " + "; ".join(PROFILES[n].describe() for n in CYCLE))
    try:
        with Fleet(args.sites, tag="b") as fleet:
            run = FleetRun(fleet, work, lib)
            for profile in profiles:
                run.add_site(profile, io_timeout=5, retry_budget=3600)
            run.start_server()
            run.start_http()
            run.trust_server()
            _run_scenarios(run, args, disk, built, figures)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    figures["wall_seconds"] = time.monotonic() - started
    print(f"\ntotal wall time {figures['wall_seconds']:.0f} s")
    results.record("fleet", f"{args.sites}sites-{args.library_mb}mb", figures, root=True,
                   started=date)
    return 0


def _run_scenarios(run: FleetRun, args: argparse.Namespace, disk: int, built: Path,
                   figures: dict[str, Any]) -> None:
    sites, found = run.sites, figures["scenarios"]
    first = scenarios.first_sync(run, random_delay=args.random_delay)
    print_outcome(first, sites, against=first.library_bytes, against_name="library")
    found.append(scenario_figures(first, sites, f"first sync, all {len(sites)} sites at once",
                                  against=first.library_bytes, against_name="library"))

    clean = scenarios.new_version(run, fraction=args.fraction, fixtures_dir=built,
                                  random_delay=args.random_delay, seed=2)
    change: library.Change = clean.extra["change"]
    print(f"\nnew version: {change.changed_bytes / MB:.2f} MB rewritten in {change.changed_item}"
          f" ({args.fraction:.0%} of its disk), {change.added_bytes / MB:.1f} MB item added, "
          f"{change.deleted_item} deleted; changed bytes = {change.new_bytes / MB:.2f} MB")
    print_outcome(clean, sites, against=change.new_bytes, against_name="changed")
    found.append(scenario_figures(
        clean, sites, f"new version: {args.fraction:.0%} of a {disk / MB:.0f} MB disk rewritten "
        f"({change.changed_bytes / MB:.2f} MB), {change.added_bytes / MB:.0f} MB item added, "
        "1 item deleted", against=change.new_bytes, against_name="changed bytes"))
    http_started = time.monotonic()
    http = scenarios.http_baseline(run, change, sites)
    http_seconds = time.monotonic() - http_started
    print(f"\n== baseline, same change as whole files over HTTP (vCenter subscription): "
          f"{http_seconds:.1f} s for all sites")
    print(f"   {'site':>4} {'profile':<10} {'seconds':>8} {'rx MB':>8} {'rsync/http bytes':>17} "
          f"{'rsync/http time':>16}")
    found.append({"name": "http", "label": "baseline: the same change as whole files over "
                  "HTTP (vCenter's own subscription)", "seconds": http_seconds, "problems": 0,
                  "against": "changed bytes", "against_bytes": change.new_bytes,
                  "sites": [{"site": w.site, "profile": sites[w.site].profile.name,
                             "seconds": w.seconds, "rx_bytes": w.rx_bytes,
                             "ratio": w.rx_bytes / change.new_bytes} for w in http]})
    byte_ratios = [d.rx_bytes / w.rx_bytes for d, w in zip(clean.results, http, strict=True)]
    time_ratios = [d.seconds / w.seconds for d, w in zip(clean.results, http, strict=True)]
    figures["notes"].append(
        f"Delta against full re-download (same run, same links): library-syncer received "
        f"{min(byte_ratios):.2f}–{max(byte_ratios):.2f} × the bytes of the HTTP baseline and "
        f"finished in {min(time_ratios):.2f}–{max(time_ratios):.2f} × its time.")
    for delta, whole in zip(clean.results, http, strict=True):
        print(f"   {delta.site:>4} {sites[delta.site].profile.name:<10} {whole.seconds:8.1f} "
              f"{mb(whole.rx_bytes)} {delta.rx_bytes / whole.rx_bytes:17.3f} "
              f"{delta.seconds / whole.seconds:16.3f}")

    flapping = list(range(0, len(sites), 3))
    flaps = [(i, MB, args.flap_down) for i in flapping]
    rough = scenarios.flaps_and_restart(run, fraction=args.fraction, fixtures_dir=built,
                                        flaps=flaps, kill_after=MB, down_for=4.0, seed=3)
    rough_change: library.Change = rough.extra["change"]
    print(f"\nflaps: sites {flapping} down {args.flap_down:g} s after 1 MB more")
    for event in rough.extra["events"]:
        print("   ", event)
    print_outcome(rough, sites, against=rough_change.new_bytes, against_name="changed")
    found.append(scenario_figures(
        rough, sites, f"next version while sshd is killed and restarted mid-transfer and "
        f"{len(flapping)} links go down {args.flap_down:g} s", against=rough_change.new_bytes,
        against_name="changed bytes"))
    resent = [r.rx_bytes - c.rx_bytes for r, c in zip(rough.results, clean.results, strict=True)]
    figures["notes"].append(
        f"Bytes re-sent after the cuts, compared with the clean version of the same size: "
        f"median {statistics.median(resent) / MB:.2f} MB, max {max(resent) / MB:.2f} MB per site "
        f"({max(resent) / rough_change.new_bytes:.1%} of the change).")
    print(f"   bytes re-sent against the clean version (same size of change): median "
          f"{statistics.median(resent) / MB:.2f} MB, max {max(resent) / MB:.2f} MB "
          f"({max(resent) / rough_change.new_bytes:.1%} of the change)")

    limit = "256K"
    bw = scenarios.bandwidth_limit(run, sites[1], limit=limit, item_bytes=min(disk, 16 * MB),
                                   fixtures_dir=built,
                                   profile=LinkProfile("unshaped", 0, sites[1].profile.rtt_ms))
    measured, wanted = bw.extra["measured_bps"], bw.extra["limit_bps"]
    print(f"\n== bandwidth limit {limit} on site 1: measured {measured / 1024:.0f} KiB/s of TCP "
          f"payload against {wanted / 1024:.0f} KiB/s ({measured / wanted - 1:+.1%}); "
          f"problems: {len(bw.problems)}")
    figures["notes"].append(
        f"Bandwidth limit {limit} on one site, unshaped link: measured "
        f"{measured / 1024:.0f} KiB/s of TCP payload ({measured / wanted - 1:+.1%}); "
        f"problems: {len(bw.problems)}.")


def monthly(args: argparse.Namespace) -> int:
    """The monthly template, find_basis on (even sites) and off (odd sites), dsl links."""
    work = sshd_harness.make_work_dir("bench-fleet-monthly")
    lib = work / "library"
    built = fixtures.build(work / "fixtures")
    date = datetime.now(timezone.utc)
    library.make_library(lib, items=1, disk_size=args.library_mb * MB, fixtures_dir=built)
    old = sorted(p.name for p in lib.iterdir())[0]
    profile = PROFILES["dsl"]
    print(f"monthly template: {2 * args.sites} sites ({profile.describe()}), find_basis on "
          f"even sites, off odd sites; one template of {library.library_size(lib) / MB:.1f} MB")
    try:
        with Fleet(2 * args.sites, tag="m") as fleet:
            run = FleetRun(fleet, work, lib)
            for i in range(2 * args.sites):
                site = run.add_site(profile, io_timeout=5, retry_budget=3600)
                run.set_sync_settings(site, find_basis=i % 2 == 0)
            run.start_server()
            run.trust_server()
            first = scenarios.first_sync(run, random_delay=args.random_delay)
            print_outcome(first, run.sites, against=first.library_bytes, against_name="library")
            month = scenarios.monthly_template(run, old=old, new=f"{old}-next",
                                               fraction=args.fraction, fixtures_dir=built,
                                               random_delay=args.random_delay)
            print_outcome(month, run.sites, against=month.extra["item_bytes"],
                          against_name="item")
            figures = monthly_figures(run, first, month, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results.record("fleet_monthly", f"{args.sites}sites-{args.library_mb}mb", figures,
                   root=True, started=date)
    return 0


def monthly_figures(run: FleetRun, first: scenarios.Outcome, month: scenarios.Outcome,
                    args: argparse.Namespace) -> dict[str, Any]:
    sites = [{"site": r.site, "find_basis": run.sites[r.site].settings["find_basis"],
              "seconds": r.seconds, "rx_bytes": r.rx_bytes, "tx_bytes": r.tx_bytes}
             for r in month.results]
    return {"profile": PROFILES["dsl"].describe(), "sites_per_setting": args.sites,
            "fraction": args.fraction, "library_mb": args.library_mb,
            "item_bytes": month.extra["item_bytes"], "changed_bytes": month.changed_bytes,
            "seconds": month.seconds, "problems": len(month.problems) + len(first.problems),
            "first_sync_seconds": first.seconds, "sites": sites}


if __name__ == "__main__":
    sys.exit(main())
