#!/usr/bin/env python3
"""Poor links at link rate (issue 24), the baseline: a first copy of a new 128 MiB file on the
packet-level WAN, per profile A–D, as % of the link rate, against iperf3 on the same link.

For each profile one site of the fleet harness (tests/fleet/: the real server role at the origin,
the site's link a packet-level WAN from tests/harness/wan.py, the site's senders pinned to CUBIC
per route) runs, with the origin's senders pinned per route to CUBIC (Debian's default) and then
to BBR:
  - the product (`library-syncer sync`, first copy: empty state) and
  - plain rsync over the same ssh (`rsync -a -e ssh`, through the same server sshd);
and, on the same link in the same run, iperf3 with 1 CUBIC stream and with 4 BBR streams.

Rate = file bytes ÷ time from the run's start to its end (the product publishes before it
exits), and the data-phase rate between 10% and 90% of the file's bytes (TCP payload on the
site's interface, sampled every 0.1 s); time to first byte = when 64 KiB of TCP payload had
arrived (well above the handshake and the listing, a small share of the file). A run still going
after --box seconds is stopped: its figures are over the time box ("boxed"), the run rate being
the payload that arrived ÷ the box.

Needs root. Example (the figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/wan_baseline.py --file-mb 128 --box 150
Writes bench/results/wan_baseline.<file>mib.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402

from tests.fleet import library  # noqa: E402
from tests.fleet.netns import Fleet, LinkProfile  # noqa: E402
from tests.fleet.sites import FleetRun, Site  # noqa: E402
from tests.harness import fixtures, wan  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402
from tests.harness.iperf import iperf3  # noqa: E402

# What the figures depend on, as files under library_syncer/ (bench/report.py marks the figures
# when one of these changed after they were measured), and the harness they were measured on.
MEASURES = ["sync/run.py", "sync/rsync.py", "sync/ssh.py", "server/sshd.py"]
HARNESS = ["tests/harness/wanemu.c", "tests/harness/wan.py", "tests/fleet/netns.py"]

MB = 1 << 20
FIRST_BYTE = 64 * 1024
CLIENTS = {"product": "library-syncer", "plain": "rsync"}
Command = Callable[[Site], tuple[list[str], dict[str, str] | None]]  # a client's argv, env
Runner = Callable[[FleetRun, Site, str, int, float, float], dict[str, Any]]


def fleet_profile(profile: wan.WanProfile) -> LinkProfile:
    return LinkProfile(profile.name, int(profile.rate_kbit), profile.rtt_ms, profile.loss_pct)


def _at(samples: list[tuple[float, int]], amount: float) -> float | None:
    return next((t for t, got in samples if got >= amount), None)


def quiet(run: FleetRun, site: Site, timeout: float = 30) -> None:
    """Wait until nothing arrives at the site (packets of an earlier run still in the link's
    buffer or delay line would count as this run's first bytes)."""
    last, deadline = -1, time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = run.fleet.tcp_payload_received(site.index)
        if now == last:
            return
        last = now
        time.sleep(0.5 + run.fleet.profiles[site.index].rtt_ms / 1000)


def one_run(run: FleetRun, site: Site, client: str, file_bytes: int, box: float,
            link_bps: float, *, command: Command | None = None,
            prepare: Callable[[Site], None] | None = None) -> dict[str, Any]:
    """A first copy by `client` (or by `command`: argv and environment, given the site):
    empty state (or what `prepare` leaves there), the payload sampled until it ends or the
    box."""
    shutil.rmtree(site.state, ignore_errors=True)
    if prepare is not None:
        prepare(site)
    quiet(run, site)
    if command is None:
        run.client = CLIENTS[client]
        argv, env = run.client_argv(site), None
    else:
        argv, env = command(site)
    argv = ["ip", "netns", "exec", site.ns, *argv]
    fleet = run.fleet
    base = fleet.tcp_payload_received(site.index)
    samples: list[tuple[float, int]] = []
    with open(site.dir / f"{client}.log", "ab") as log:
        started = time.monotonic()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        while process.poll() is None and time.monotonic() - started < box:
            samples.append((time.monotonic() - started,
                            fleet.tcp_payload_received(site.index) - base))
            time.sleep(0.1)
        boxed = process.poll() is None
        if boxed:
            os.killpg(process.pid, signal.SIGKILL)
        returncode = process.wait()
        seconds = time.monotonic() - started
    samples.append((seconds, fleet.tcp_payload_received(site.index) - base))
    got = samples[-1][1]
    whole = min(got, file_bytes)  # payload past the file is protocol, not data
    t10, t90 = _at(samples, 0.1 * whole), _at(samples, 0.9 * whole)
    data_bps = 0.8 * whole * 8 / (t90 - t10) if t10 is not None and t90 and t90 > t10 else 0.0
    run_bps = (whole if boxed else file_bytes) * 8 / seconds
    row = {"client": client, "ok": returncode == 0, "boxed": boxed, "seconds": seconds,
           "payload_bytes": got, "first_byte_s": _at(samples, FIRST_BYTE),
           "run_pct": 100 * run_bps / link_bps, "data_pct": 100 * data_bps / link_bps}
    print(f"    {client:8} {'BOXED ' if boxed else ''}{seconds:6.1f} s, {got / MB:6.1f} MiB, "
          f"run {row['run_pct']:5.1f}% data {row['data_pct']:5.1f}% of link, first byte "
          f"{row['first_byte_s'] or float('nan'):.2f} s"
          + ("" if row["ok"] or boxed else f" FAILED ({returncode})"), flush=True)
    return row


def measure(profile: wan.WanProfile, lib: Path, work: Path, args: argparse.Namespace,
            file_bytes: int, *, tag: str = "wb", runner: Runner | None = None) -> dict[str, Any]:
    """iperf3 on the profile's link, then a first copy by each of args.clients per origin
    algorithm (`runner`: how a client's copy is run and measured, one_run by default)."""
    print(f"== {profile.describe()}", flush=True)
    seconds = args.iperf_seconds
    runner = runner or one_run
    with Fleet(1, tag=f"{tag}{profile.name[0]}", origin_cc="cubic", site_cc="cubic") as fleet:
        run = FleetRun(fleet, work / profile.name[0], lib)
        run.work.mkdir()
        site = run.add_site(fleet_profile(profile), io_timeout=60, retry_budget=args.box)
        run.start_server()
        run.trust_server()
        path = fleet.iperf_path(site.index)
        cubic1 = iperf3(path, seconds=seconds, streams=1, congestion="cubic")
        bbr4 = iperf3(path, seconds=seconds, streams=4, congestion="bbr")
        print(f"    iperf3: 1 CUBIC {cubic1.bps / 1e6:.2f}, 4 BBR {bbr4.bps / 1e6:.2f} Mbit/s "
              f"(emulator {bbr4.emulator_cpu / seconds:.0%} CPU)", flush=True)
        runs = []
        for origin in args.origin:
            fleet.pin_origin(origin)
            print(f"  origin on {origin}", flush=True)
            for client in args.clients:
                runs.append({"origin": origin, **runner(run, site, client, file_bytes,
                                                        args.box, profile.rate_bps)})
        fleet.pin_origin("cubic")
    return {"profile": profile.describe(), "rate_kbit": profile.rate_kbit,
            "rtt_ms": profile.rtt_ms, "loss_pct": profile.loss_pct,
            "buffer_bytes": profile.buffer_bytes(), "mathis_pct":
            100 * profile.mathis_bps() / profile.rate_bps if profile.loss_pct else None,
            "iperf_cubic1_pct": 100 * cubic1.bps / profile.rate_bps,
            "iperf_bbr4_pct": 100 * bbr4.bps / profile.rate_bps,
            "emulator_cpu_pct": 100 * bbr4.emulator_cpu / seconds, "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="ABCD")
    parser.add_argument("--file-mb", type=int, default=128)
    parser.add_argument("--box", type=float, default=150, help="seconds a run may take")
    parser.add_argument("--iperf-seconds", type=float, default=30)
    parser.add_argument("--origin", nargs="+", default=["cubic", "bbr"])
    parser.add_argument("--clients", nargs="+", default=["product", "plain"])
    args = parser.parse_args()
    date = datetime.now(timezone.utc)
    work = sshd_harness.make_work_dir("wan-baseline")
    try:
        lib = work / "library"
        built = fixtures.build(work / "fixtures")
        library.make_library(lib, items=1, disk_size=args.file_mb * MB, fixtures_dir=built)
        rows = [measure(wan.PROFILES[p], lib, work, args, args.file_mb * MB)
                for p in args.profiles]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {"file_bytes": args.file_mb * MB, "box_s": args.box,
               "iperf_seconds": args.iperf_seconds, "site_cc": "cubic",
               "first_byte_bytes": FIRST_BYTE, "profiles": rows}
    results.record("wan_baseline", f"{args.file_mb}mib", figures, root=True, started=date)
    return 0


if __name__ == "__main__":
    sys.exit(main())
