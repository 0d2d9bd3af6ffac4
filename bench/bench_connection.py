#!/usr/bin/env python3
"""One SSH connection per run: handshakes and wall time with `sync.share_connection` on and off.

One site of the fleet harness (tests/fleet/: network namespaces, the real server role, the
real `library-syncer sync`) on the satellite profile pulls a small library. Each round runs,
for each setting in turn (the order alternating between rounds), a small-change run (1% of one
disk rewritten at the server) and then a no-change run. Handshakes are counted from the server
sshd's own log ("Accepted publickey" lines: one per authenticated connection) before and after
each run; the wall time is the client's, bytes are whole frames on the site's interface.

Needs root (network namespaces). Example (the figures in docs/benchmarks.md):
    sudo LSYNC_TEST_ROOT=/work/bench-data .venv/bin/python bench/bench_connection.py --rounds 5
Writes bench/results/bench_connection.<profile>.json (see bench/results.py).
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

from tests.fleet import library  # noqa: E402
from tests.fleet.netns import PROFILES, Fleet  # noqa: E402
from tests.fleet.sites import FleetRun, Site  # noqa: E402
from tests.harness import fixtures  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402

# What the figures depend on (the shared SSH connection and the runs that use it), as files under
# library_syncer/: bench/report.py marks them in docs/benchmarks.md when one of these changed
# after they were measured.
MEASURES = [
    "sync/sshmux.py", "sync/ssh.py", "sync/run.py", "sync/rsync.py", "sync/transfer.py",
    "sync/runner.py", "sync/failover.py",
]
# The network the figures were measured on (issue 24: the packet-level WAN replaced the
# latency relay above TCP): a change there also marks the figures.
HARNESS = ["tests/fleet/netns.py", "tests/harness/wan.py", "tests/harness/wanemu.c"]

MB = 1 << 20
ACCEPTED = "Accepted publickey"


def handshakes(run: FleetRun) -> int:
    log = run.sshd_dir / "sshd.log"
    return log.read_text(errors="replace").count(ACCEPTED) if log.exists() else 0


def one_run(run: FleetRun, site: Site, share: bool, kind: str) -> dict[str, Any]:
    run.set_sync_settings(site, share_connection=share)
    before = handshakes(run)
    result = run.sync(site)
    time.sleep(0.5)  # sshd writes its log line as the session starts; let the file catch up
    row = {"share_connection": share, "kind": kind, "ok": result.ok, "seconds": result.seconds,
           "handshakes": handshakes(run) - before, "rx_bytes": result.rx_bytes,
           "tx_bytes": result.tx_bytes}
    print(f"  share_connection={str(share).lower():5} {kind:9} {result.seconds:6.2f} s, "
          f"{row['handshakes']} handshake(s), rx {result.rx_bytes / MB:.2f} MB"
          + ("" if result.ok else f" FAILED ({result.returncode}): {result.tail[-2:]}"),
          flush=True)
    return row


def rounds(run: FleetRun, site: Site, count: int, fraction: float) -> list[dict[str, Any]]:
    rows = []
    item = sorted(p.name for p in run.library.iterdir() if p.is_dir())[0]
    for number in range(count):
        order = [True, False] if number % 2 == 0 else [False, True]
        print(f"round {number}", flush=True)
        for share in order:
            library.change_item(run.library, item, fraction=fraction, seed=100 + 2 * number
                                + share)
            for kind in ("small change", "no change"):
                rows.append({"round": number, **one_run(run, site, share, kind)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="satellite", choices=sorted(PROFILES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=3)
    parser.add_argument("--disk-mb", type=float, default=2.0)
    parser.add_argument("--fraction", type=float, default=0.01,
                        help="share of one disk rewritten before each small-change run")
    args = parser.parse_args()
    work = sshd_harness.make_work_dir("bench-connection")
    date = datetime.now(timezone.utc)
    lib = work / "library"
    built = fixtures.build(work / "fixtures")
    library.make_library(lib, items=args.items, disk_size=int(args.disk_mb * MB),
                         fixtures_dir=built)
    profile, size = PROFILES[args.profile], library.library_size(lib)
    print(f"connection bench: 1 site, {profile.describe()}, library {size / MB:.1f} MB in "
          f"{args.items} items")
    try:
        with Fleet(1, tag="c") as fleet:
            run = FleetRun(fleet, work, lib)
            site = run.add_site(profile, io_timeout=30, retry_budget=600)
            run.start_server()
            run.trust_server()
            first = run.sync(site)
            assert first.ok, first.tail
            rows = rounds(run, site, args.rounds, args.fraction)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {"profile": profile.describe(), "rounds": args.rounds, "items": args.items,
               "library_bytes": size,
               "disk_mb": args.disk_mb, "fraction": args.fraction, "runs": rows}
    results.record("bench_connection", args.profile, figures, root=True, started=date)
    return 0


if __name__ == "__main__":
    sys.exit(main())
