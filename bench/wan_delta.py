#!/usr/bin/env python3
"""Poor links at link rate (issue 24), the delta: 5% of a 1 GiB disk rewritten, synced to a site
that has the previous version, on the packet-level WAN, per profile (C and D by default).

A delta of one file is one rsync session over one SSH channel: neither the extra streams nor
the byte ranges of sync/streams.py apply (the file has a basis at the site), so what lifts it is
the origin's congestion control alone. Each client's site is first seeded with the previous
version over an unshaped link (a copy kept aside and put back before each run), then the link
takes the profile and the client syncs the new version:
  - "today" is the baseline's code (bench/wan_after.py's BEFORE) with the origin on CUBIC;
  - plain `rsync -a -e ssh`, the baseline's code and this checkout's code with the origin on
    BBR (the server package's default), and this checkout's code on CUBIC.
The library is declared (a signed-less revision document: the trace service's tick) for each
version, as the server role's trace timer would.

Measures as bench/wan_baseline.py's one_run, with the rewritten bytes as the "file": seconds
from start to end (the product publishes before it exits), payload received, first byte. A run
still going after --box seconds is stopped ("boxed"): its speed-up is then a lower bound.

Needs root. Example (the figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/wan_delta.py --profiles CD --disk-mb 1024 --box 300
Writes bench/results/wan_delta.<disk>mib.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402
import wan_after  # noqa: E402
import wan_baseline  # noqa: E402
from bench_verify import export  # noqa: E402

from tests.fleet import library  # noqa: E402
from tests.fleet.netns import Fleet, LinkProfile  # noqa: E402
from tests.fleet.sites import FleetRun, Site  # noqa: E402
from tests.harness import fixtures, wan  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402
from tests.harness.iperf import iperf3  # noqa: E402

# What the figures depend on, as files under library_syncer/ (bench/report.py marks the figures
# when one of these changed after they were measured: read as literals), and the harness.
MEASURES = ["sync/run.py", "sync/rsync.py", "sync/ssh.py", "sync/sshmux.py", "sync/transfer.py",
            "sync/declared.py", "sync/ranges.py", "server/dispatch.py", "server/sshd.py"]
HARNESS = ["tests/harness/wanemu.c", "tests/harness/wan.py", "tests/fleet/netns.py",
           "tests/fleet/library.py", "bench/wan_baseline.py", "bench/wan_after.py"]
MB = wan_baseline.MB
UNSHAPED = LinkProfile("seed (unshaped)")
# (origin algorithm, client): "today" first, then the default the server package sets
RUNS = [("cubic", "before"), ("cubic", "now"), ("bbr", "plain"), ("bbr", "before"),
        ("bbr", "now")]


class Versions:
    """The origin's library at version 1 or 2, swapped by renaming folders (the server serves
    the path `live`; each version keeps its own declared revision document)."""

    def __init__(self, live: Path) -> None:
        self.live, self.current = live, 2

    def aside(self, version: int) -> Path:
        return self.live.with_name(f"{self.live.name}-v{version}")

    def use(self, version: int) -> None:
        if version != self.current:
            self.live.rename(self.aside(self.current))
            self.aside(version).rename(self.live)
            self.current = version


def build(work: Path, disk_bytes: int, fraction: float) -> tuple[Versions, int]:
    """Version 1 (declared), set aside; version 2 = `fraction` of its disk rewritten (declared
    again, the next serial). Returns the versions and the bytes rewritten."""
    lib = work / "library"
    built = fixtures.build(work / "fixtures")
    library.make_library(lib, items=1, disk_size=disk_bytes, fixtures_dir=built)
    print(f"version 1 declared: revision {wan_after.declare(work, lib)}", flush=True)
    versions = Versions(lib)
    subprocess.run(["cp", "-a", str(lib), str(versions.aside(1))], check=True)
    item = next(p.name for p in lib.iterdir() if p.is_dir() and not p.name.startswith("."))
    time.sleep(1.1)  # a later second: plain rsync's quick check compares whole seconds
    changed = library.change_item(lib, item, fraction=fraction, seed=7)
    print(f"version 2 declared: revision {wan_after.declare(work, lib)} "
          f"({changed / MB:.1f} MiB rewritten)", flush=True)
    return versions, changed


def seed(run: FleetRun, site: Site, clients: dict[str, wan_baseline.Command | None],
         versions: Versions, disk_bytes: int, keep: Path) -> None:
    """Each client's first copy of version 1 over an unshaped link, kept in keep/<client>."""
    versions.use(1)
    run.fleet.shape(site.index, UNSHAPED)
    for client, command in clients.items():
        row = wan_baseline.one_run(run, site, client, disk_bytes, 600, 1e9, command=command)
        if not row["ok"]:
            raise SystemExit(f"seeding {client}: the first copy failed (see {site.dir})")
        subprocess.run(["cp", "-a", str(site.state), str(keep / client)], check=True)
    versions.use(2)


def restore(keep: Path, client: str):
    def prepare(site: Site) -> None:
        subprocess.run(["cp", "-a", str(keep / client), str(site.state)], check=True)
    return prepare


def measure(profile: wan.WanProfile, versions: Versions, work: Path, args: argparse.Namespace,
            changed: int, clients: dict[str, wan_baseline.Command | None]) -> dict[str, Any]:
    print(f"== {profile.describe()}", flush=True)
    folder = work / profile.name[0]
    with Fleet(1, tag=f"wd{profile.name[0]}", origin_cc="cubic", site_cc="cubic") as fleet:
        run = FleetRun(fleet, folder, versions.live)
        run.work.mkdir()
        site = run.add_site(UNSHAPED, io_timeout=60, retry_budget=args.box)
        run.start_server()
        run.trust_server()
        keep = folder / "seeded"
        keep.mkdir()
        wanted = {client for _, client in args.runs}
        seed(run, site, {c: clients[c] for c in clients if c in wanted}, versions,
             args.disk_mb * MB, keep)
        fleet.shape(site.index, wan_baseline.fleet_profile(profile))
        bbr4 = iperf3(fleet.iperf_path(site.index), seconds=args.iperf_seconds, streams=4,
                      congestion="bbr")
        print(f"    iperf3: 4 BBR {bbr4.bps / 1e6:.2f} Mbit/s", flush=True)
        runs: list[dict[str, Any]] = []
        for origin, client in args.runs:
            fleet.pin_origin(origin)
            if not runs or runs[-1]["origin"] != origin:
                print(f"  origin on {origin}", flush=True)
            row = wan_baseline.one_run(run, site, client, changed, args.box, profile.rate_bps,
                                       command=clients[client], prepare=restore(keep, client))
            runs.append({"origin": origin, **row})
        fleet.pin_origin("cubic")
    return {"profile": profile.describe(), "rate_kbit": profile.rate_kbit,
            "rtt_ms": profile.rtt_ms, "loss_pct": profile.loss_pct,
            "iperf_bbr4_pct": 100 * bbr4.bps / profile.rate_bps, "runs": runs,
            "speedup": speedup(runs)}


def speedup(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Today's seconds (the baseline's code, origin on CUBIC) ÷ now's (origin on BBR); a lower
    bound when today's run was stopped by the box."""
    by = {(r["origin"], r["client"]): r for r in runs}
    today, now = by.get(("cubic", "before")), by.get(("bbr", "now"))
    if today is None or now is None or not now["ok"] or not (today["ok"] or today["boxed"]):
        return None
    return {"ratio": today["seconds"] / now["seconds"], "lower_bound": today["boxed"]}


def parse_runs(text: str) -> tuple[str, str]:
    origin, _, client = text.partition(":")
    if origin not in ("cubic", "bbr") or client not in wan_after.CLIENTS:
        raise argparse.ArgumentTypeError(f"{text}: expected ORIGIN:CLIENT, e.g. bbr:now")
    return origin, client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="CD")
    parser.add_argument("--disk-mb", type=int, default=1024)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--box", type=float, default=300, help="seconds a run may take")
    parser.add_argument("--iperf-seconds", type=float, default=10)
    parser.add_argument("--runs", nargs="+", type=parse_runs, default=RUNS,
                        help="ORIGIN:CLIENT pairs, in order (default: %(default)s)")
    parser.add_argument("--config", help="the results file's name (default <disk>mib); a "
                        "partial re-run gets its own, so the full table stays")
    args = parser.parse_args()
    date = datetime.now(timezone.utc)
    work = sshd_harness.make_work_dir("wan-delta")
    figures: dict[str, Any] = {"disk_bytes": args.disk_mb * MB, "fraction": args.fraction,
                               "box_s": args.box, "site_cc": "cubic",
                               "before": wan_after.BEFORE, "profiles": []}
    try:
        versions, changed = build(work, args.disk_mb * MB, args.fraction)
        figures["changed_bytes"] = changed
        clients = {"plain": None, "before": wan_after.product(export(wan_after.BEFORE,
                                                                     work / "before")),
                   "now": wan_after.product(ROOT)}
        for name in args.profiles:
            figures["profiles"].append(measure(wan.PROFILES[name], versions, work, args,
                                               changed, clients))
            results.record("wan_delta", args.config or f"{args.disk_mb}mib", figures,
                           root=True, started=date)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
