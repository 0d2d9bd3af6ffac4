#!/usr/bin/env python3
"""Poor links at link rate (issue 24), after: a first copy of a new 128 MiB file on the
packet-level WAN, per profile A–D, by the site code of the baseline and by the current code.

The same harness, link and measures as bench/wan_baseline.py (its functions, imported), with
three clients per origin algorithm (CUBIC, then BBR, the server package's default; pinned per
route):
  - plain: `rsync -a -e ssh` through the same server sshd;
  - before: `library-syncer sync` from an export of the baseline's commit (BEFORE, the issue's
    "before" figures), run by the same Python with the export first on its path;
  - now: `library-syncer sync` from this checkout: up to sync.streams more SSH connections for
    a large run (sync/streams.py), a new file of >= 32 MiB without a basis in byte ranges, each
    over its own connection (sync/ranges.py, answered by server/ranges.py).
The server role is always this checkout's. Byte ranges need the origin's revision document,
so the library is declared once (the trace service's tick, as tests/test_sync_trace.py does)
before the runs; every client gets the same library, document included.

Each run also records the SSH logins the origin's sshd accepted during it, its data phase
÷ the 4-stream BBR iperf3 figure of the same profile, the round trips before its first data byte
counted from a packet capture at the site with its start-up apart (bench/wan_capture.py), and
for the product the time to its published switch (the issue's end of a run; `published`
watched every 5 ms). Results are written after each profile (a run stopped midway keeps the
profiles that finished).

Needs root. Example (the figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/wan_after.py --profiles CBDA --file-mb 128 --box 120 \\
        --iperf-seconds 20
Writes bench/results/wan_after.<file>mib.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402
import wan_baseline  # noqa: E402
import wan_capture  # noqa: E402
from bench_verify import export  # noqa: E402

from library_syncer.base import config as config_module  # noqa: E402
from library_syncer.server import trace  # noqa: E402
from tests.fleet import library, netns  # noqa: E402
from tests.fleet.sites import FleetRun, Site  # noqa: E402
from tests.harness import fixtures, wan  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402

# What the figures depend on, as files under library_syncer/ (bench/report.py marks the figures
# when one of these changed after they were measured), and the harness they were measured on.
MEASURES = ["sync/run.py", "sync/rsync.py", "sync/ssh.py", "sync/streams.py", "sync/ranges.py",
            "sync/transfer.py", "sync/plan.py", "sync/declared.py", "server/ranges.py",
            "server/trace_answer.py", "server/dispatch.py", "server/sshd.py"]
HARNESS = ["tests/harness/wanemu.c", "tests/harness/wan.py", "tests/fleet/netns.py",
           "bench/wan_baseline.py", "bench/wan_capture.py"]

BEFORE = "69b342d"  # the commit bench/results/wan_baseline.128mib.json measured
CLIENTS = ["plain", "before", "now"]
ACCEPTED = b"Accepted publickey"
MB = wan_baseline.MB
STREAMS = "stream(s) fetched"  # the log line of sync/streams.py


def declare(work: Path, lib: Path) -> int:
    """The origin's trace service declares the library (its revision document); the serial."""
    settings = work / "origin-server.toml"
    settings.write_text(f'[server]\nlibrary = "{lib}"\nstate_dir = "{work / "origin-state"}"\n'
                        f'settle = "60s"\nname = "hq"\n')
    outcome = trace.tick(config_module.load(settings), now=time.time() + 61)
    document = lib / trace.TRACE_DIR / trace.TRACE_FILE
    if outcome.state != "declared" or not document.is_file():
        raise SystemExit(f"the trace tick did not declare the library: {outcome}")
    if document.stat().st_mode & 0o777 != 0o644:
        raise SystemExit(f"{document}: mode {document.stat().st_mode & 0o777:o}, not 644")
    return outcome.serial


def product(code: Path) -> wan_baseline.Command:
    """`library-syncer sync` from the package in `code` (-P: not the current directory's)."""
    def command(site: Site) -> tuple[list[str], dict[str, str]]:
        return ([sys.executable, "-P", "-m", "library_syncer", "sync", "--config",
                 str(site.config)], {**os.environ, "PYTHONPATH": str(code)})
    return command


def logins(run: FleetRun) -> int:
    """SSH logins the origin's sshd accepted so far (its log: sshd -e)."""
    log = run.sshd_dir / "sshd.log"
    return log.read_bytes().count(ACCEPTED) if log.exists() else 0


def plain(run: FleetRun) -> wan_baseline.Command:
    """The plain client's argv, as bench/wan_baseline.py's one_run makes it."""
    def command(site: Site) -> tuple[list[str], None]:
        run.client = wan_baseline.CLIENTS["plain"]
        return run.client_argv(site), None
    return command


def stamped(command: wan_baseline.Command, stamp: Path) -> wan_baseline.Command:
    """`command` behind a wrapper that writes the time it starts (bench/wan_capture.py)."""
    def wrapped(site: Site) -> tuple[list[str], dict[str, str] | None]:
        argv, env = command(site)
        return wan_capture.started_argv(stamp, argv), env
    return wrapped


class Switch:
    """When the site's `published` link first appears (the product's switch: the issue's end of
    a run; what follows it — the prune, the records, the report — is not waited for by a
    user), in wall-clock seconds; polled every 5 ms while the run goes."""

    def __init__(self, state: Path, stamp: Path) -> None:
        self.link, self.stamp, self.done = state / "published", stamp, threading.Event()
        self.at: float | None = None
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.005):
            if self.at is None and self.stamp.exists() and self.link.is_symlink():
                self.at = time.time()

    def stop(self) -> float | None:
        self.done.set()
        self.thread.join()
        return self.at


def runner(before: Path) -> wan_baseline.Runner:
    def run_one(run: FleetRun, site: Site, client: str, file_bytes: int, box: float,
                link_bps: float) -> dict[str, Any]:
        commands = {"plain": plain(run), "before": product(before), "now": product(ROOT)}
        accepted = logins(run)
        log = site.dir / f"{client}.log"
        start = log.stat().st_size if log.exists() else 0
        stamp = site.dir / f"{client}.started"
        stamp.unlink(missing_ok=True)
        capture = wan_capture.Capture(site.ns, netns.WAN, site.dir / f"{client}.packets")
        switch = Switch(site.state, stamp)  # the run's own: its state is new once it starts
        try:
            row = wan_baseline.one_run(run, site, client, file_bytes, box, link_bps,
                                       command=stamped(commands[client], stamp))
        finally:
            packets = capture.stop()
            switched = switch.stop()
        if switched is not None and stamp.exists() and row["ok"]:
            row["switch_s"] = switched - float(stamp.read_text())
            row["switch_pct"] = 100 * file_bytes * 8 / row["switch_s"] / link_bps
            print(f"      published after {row['switch_s']:.1f} s: {row['switch_pct']:.1f}% of "
                  "the link", flush=True)
        rtt = run.fleet.profiles[site.index].rtt_ms / 1000
        setup = wan_capture.count(packets, float(stamp.read_text()), rtt,
                                  wan_baseline.FIRST_BYTE) if stamp.exists() else None
        if setup:
            print(f"      before the first byte: {setup['round_trips']} round trips, start-up "
                  f"{setup['startup_s']:.2f} s, rest {setup['rest_s']:.2f} s", flush=True)
        with open(log, "rb") as out:
            out.seek(start)
            lines = out.read().decode(errors="replace").splitlines()
        streams = [line.strip() for line in lines if STREAMS in line]
        if streams:
            print(f"      {streams[-1]}", flush=True)
        return {**row, "logins": logins(run) - accepted, "setup": setup,
                "streams_log": streams[-1] if streams else None}
    return run_one


def with_ratio(profile: dict[str, Any]) -> dict[str, Any]:
    """Each run's data phase ÷ the profile's 4-stream BBR iperf3 figure."""
    bbr4 = profile["iperf_bbr4_pct"]
    for row in profile["runs"]:
        row["data_vs_iperf_bbr4"] = row["data_pct"] / bbr4 if bbr4 else None
    return profile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="CBDA")
    parser.add_argument("--file-mb", type=int, default=128)
    parser.add_argument("--box", type=float, default=120, help="seconds a run may take")
    parser.add_argument("--iperf-seconds", type=float, default=20)
    parser.add_argument("--origin", nargs="+", default=["cubic", "bbr"])
    parser.add_argument("--clients", nargs="+", default=CLIENTS, choices=CLIENTS)
    parser.add_argument("--config", help="the results file's name (default <file>mib); a "
                        "partial re-run gets its own, so the full table stays")
    args = parser.parse_args()
    date = datetime.now(timezone.utc)
    work = sshd_harness.make_work_dir("wan-after")
    file_bytes = args.file_mb * MB
    figures = {"file_bytes": file_bytes, "box_s": args.box, "iperf_seconds": args.iperf_seconds,
               "site_cc": "cubic", "first_byte_bytes": wan_baseline.FIRST_BYTE,
               "before": BEFORE, "profiles": []}
    try:
        lib = work / "library"
        built = fixtures.build(work / "fixtures")
        library.make_library(lib, items=1, disk_size=file_bytes, fixtures_dir=built)
        print(f"library declared: revision {declare(work, lib)}", flush=True)
        run_one = runner(export(BEFORE, work / "before"))
        for name in args.profiles:
            figures["profiles"].append(with_ratio(wan_baseline.measure(
                wan.PROFILES[name], lib, work, args, file_bytes, tag="wa", runner=run_one)))
            results.record("wan_after", args.config or f"{args.file_mb}mib", figures, root=True,
                           started=date)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
