#!/usr/bin/env python3
"""What verifying the origin's signed revisions costs a site (issue 23: "a run that verifies
costs <= 10% more wall time than today's on the 1 GiB bench").

bench_sync's library (one OVF template, a random disk of --disk-mib) on the server role as the
package configures it (real sshd, the forced dispatcher, one authorized key per site), declared
and signed by the origin's trace tick (server.signing_key). Sites pull it, each with its own key,
settings and state, as separate `library-syncer sync` processes; what a site runs (its role) moves
between the site folders from round to round, so that no role keeps a faster place on the disk:

- **verifying**: this checkout, `sync.origin_keys` pins the origin's key (docs/trust.md,
  "Verification at the site": the declaration read and its statement verified before the pull,
  the statement and document verified after it, the content check after the manifest build);
- **unpinned**: this checkout without `origin_keys` (the declaration read and the content check
  still run: the origin's document has its content part; no signature is verified);
- **main** (unless `--before ''`): the site code of `--before` (default: main where the site's
  verification branched off, the issue's "today"; no keys pinned), run from an exported copy
  of that commit.

1. Full (first) sync: every role from nothing (its folder's state deleted), in interleaved
   rounds (the order rotating every round, the folders every third; dirty pages written out
   before each run): 9 rounds run each role once in each place of the order in each folder
   (the default: twice).
2. A change of `--change` of the disk at scattered offsets (and the `.mf`), declared and signed
   again, then pulled by every role (rotating as above) from what its folder published.
3. Nothing changed: every role runs again (rotating as above); what verifying adds to a run
   shows here without the 1 GiB transfer's noise around it.

Per contender: median wall time; per round: verifying / unpinned and verifying / main, and the
difference in seconds (a round's runs go back to back, so they see the same machine). Also the
sync's own phases (`--debug`), one `ssh-keygen -Y verify` of the statement alone and one
declaration read alone (its own SSH connection; in a run it shares the run's).

Needs root (sshd, nftables). Example (the figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/bench_verify.py --disk-mib 1024
Writes bench/results/bench_verify.disk<MiB>.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_sync  # noqa: E402
import results  # noqa: E402
from bench_sync import MIB, Measure, change_scattered, make_library, phases  # noqa: E402

from library_syncer.base import config as config_module  # noqa: E402
from library_syncer.base import statement  # noqa: E402
from library_syncer.server import signing, trace  # noqa: E402
from library_syncer.sync import declared  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402
from tests.test_sync_helpers import last_run, write_config  # noqa: E402

# What the figures depend on, as files under library_syncer/ (bench/report.py marks the section
# in docs/benchmarks.md when one of them changed after they were measured).
MEASURES = [
    "sync/declared.py", "sync/content.py", "sync/trace_check.py", "sync/transfer.py",
    "base/statement.py", "manifest/vcsp.py", "manifest/hashing.py", "sync/manifests.py",
    "sync/run.py", "sync/rsync.py",
]

ORIGIN = "hq"
# main where the site-side verification branched off: without origin_keys its site reads no
# declaration and compares no content (the "today")
BEFORE = "512748b9be"
OLDER = "main"


@dataclass
class Role:
    """What a site runs: this checkout or an older copy, pinning the origin's key or not."""

    name: str
    pins: Path | None = None  # sync.origin_keys
    code: Path | None = None  # an exported older checkout; None: this one


@dataclass
class Site:
    """A site's folder: its SSH key (authorized on the server), settings and state. The roles
    move between the folders from round to round (`assignment`): on the 2-CPU machine of
    docs/benchmarks.md, the folder a first sync's 1 GiB copy went to changed its wall time by
    20-30% (the first folder made was the fastest, whatever ran in it)."""

    name: str
    folder: Path
    key: Path

    def run(self, role: Role, server: sshd_harness.Sshd) -> Measure:
        extra = {"origin_keys": str(role.pins)} if role.pins else {}
        config = write_config(self.folder, server, self.key, compress=True, io_timeout="60s",
                              **extra)
        # -P: the older copy first on the path, not the current directory (this checkout)
        python = [sys.executable, "-P"] if role.code else [sys.executable]
        env = {**os.environ, "PYTHONPATH": str(role.code)} if role.code else None
        argv = [*python, "-m", "library_syncer", "--debug", "sync", "--config", str(config)]
        measure, done = bench_sync.timed(argv, env=env)
        measure.parts = phases(done.stderr)
        return measure

    def reset(self) -> None:
        shutil.rmtree(self.folder / "state", ignore_errors=True)


class Origin:
    """The library and the trace service that declares and signs its revisions."""

    def __init__(self, work: Path, library: Path) -> None:
        self.library = library
        self.key = work / "signing" / "revision"
        signing.keygen(self.key, ORIGIN)
        self.settings = work / "server.toml"
        self.settings.write_text(
            f'[server]\nlibrary = "{library}"\nstate_dir = "{work / "origin-state"}"\n'
            f'settle = "60s"\nname = "{ORIGIN}"\nsigning_key = "{self.key}"\n')
        self.pins = work / "origin_keys"
        self.pins.write_text(signing.allowed_signers_line(
            ORIGIN, signing.public_key(self.key)) + "\n")

    def declare(self) -> tuple[int, float]:
        """Declare and sign what the library holds now: its serial and the tick's seconds."""
        started = time.monotonic()
        outcome = trace.tick(config_module.load(self.settings), now=time.time() + 61)
        seconds = time.monotonic() - started
        if outcome.state != "declared":
            raise SystemExit(f"the trace tick did not declare a revision: {outcome}")
        return outcome.serial, seconds

    def statement_file(self) -> bytes:
        return (self.library / trace.TRACE_DIR / trace.STATEMENT_FILE).read_bytes()


def make_roles(work: Path, origin: Origin, before: str) -> list[Role]:
    roles = [Role("verifying", pins=origin.pins), Role("unpinned")]
    return roles + ([Role(OLDER, code=export(before, work / "code"))] if before else [])


def make_sites(work: Path, count: int) -> list[Site]:
    sites = []
    for number in range(count):
        folder = work / f"site{number}"
        (folder / "client-ssh").mkdir(parents=True, mode=0o700)
        key, _ = sshd_harness.keygen(folder / "client-ssh" / "id_syncer")
        sites.append(Site(folder.name, folder, key))
    return sites


def public_line(site: Site) -> str:
    return Path(f"{site.key}.pub").read_text().strip()


def export(commit: str, folder: Path) -> Path:
    """The package as it was at `commit` (git archive: the checkout itself is left alone)."""
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "library_syncer"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def flush() -> None:
    subprocess.run(["sync"], check=True)


def checked(role: Role, site: Site, server: sshd_harness.Sshd, serial: int) -> Measure:
    """One run of `role` in `site`, which must publish revision `serial` of the origin."""
    flush()
    measure = site.run(role, server)
    record = last_run(site.folder / "state")
    if record["outcome"] != "ok" or record.get("serial") != serial:
        raise SystemExit(f"{role.name} ({site.name}): outcome {record['outcome']}, serial "
                         f"{record.get('serial')} (expected ok, {serial}): {record['message']}")
    return measure


def assignment(roles: list[Role], sites: list[Site], number: int
               ) -> list[tuple[Role, Site]]:
    """Round `number`'s runs in order: the order rotates every round, the folders every
    len(roles) rounds, so that len(roles)**2 rounds run each role once in each place of the
    order in each folder."""
    count = len(roles)
    moved = (number // count) % count
    placed = [(role, sites[(i + moved) % count]) for i, role in enumerate(roles)]
    shift = number % count
    return placed[shift:] + placed[:shift]


def round_row(number: int, runs: list[tuple[Role, Site]], measures: dict[str, Measure],
              roles: list[Role]) -> dict:
    verifying = measures["verifying"].seconds
    row = {"round": number, "order": [role.name for role, _ in runs],
           "folders": {role.name: site.name for role, site in runs},
           "sites": {role.name: asdict(measures[role.name]) for role in roles},
           "ratio_unpinned": verifying / measures["unpinned"].seconds,
           "extra_unpinned": verifying - measures["unpinned"].seconds}
    if OLDER in measures:
        row["ratio_main"] = verifying / measures[OLDER].seconds
        row["extra_main"] = verifying - measures[OLDER].seconds
    shown = ", ".join(f"{role.name} ({site.name}) {measures[role.name].seconds:.2f} s "
                      f"{measures[role.name].parts}" for role, site in runs)
    print(f"  round {number}: {shown}; verifying / unpinned {row['ratio_unpinned']:.3f}x"
          + (f", / main {row['ratio_main']:.3f}x" if OLDER in measures else ""), flush=True)
    return row


def full_round(roles: list[Role], sites: list[Site], server: sshd_harness.Sshd, number: int,
               serial: int) -> dict:
    runs = assignment(roles, sites, number)
    measures: dict[str, Measure] = {}
    for role, site in runs:
        site.reset()
        measures[role.name] = checked(role, site, server, serial)
    return round_row(number, runs, measures, roles)


def delta_round(roles: list[Role], sites: list[Site], server: sshd_harness.Sshd,
                origin: Origin, disk: Path, number: int, fraction: float, chunks: int) -> dict:
    changed = change_scattered(disk, fraction, chunks, seed=200 + number)
    bench_sync.write_mf(disk.parent)
    serial, tick = origin.declare()
    runs = assignment(roles, sites, number)
    measures = {role.name: checked(role, site, server, serial) for role, site in runs}
    row = round_row(number, runs, measures, roles)
    row.update({"changed_bytes": changed, "serial": serial, "tick_seconds": tick})
    return row


def idle_round(roles: list[Role], sites: list[Site], server: sshd_harness.Sshd, number: int,
               serial: int) -> dict:
    """Every role again with nothing changed: the fixed cost of a run, without 1 GiB of
    noise around it."""
    runs = assignment(roles, sites, number)
    measures = {role.name: checked(role, site, server, serial) for role, site in runs}
    return round_row(number, runs, measures, roles)


def summary(rows: list[dict], roles: list[Role]) -> dict:
    medians = {role.name: statistics.median(r["sites"][role.name]["seconds"] for r in rows)
               for role in roles}
    found = {"rounds": rows, "median_seconds": medians,
             "ratio_unpinned_median": statistics.median(r["ratio_unpinned"] for r in rows),
             "ratio_unpinned_of_medians": medians["verifying"] / medians["unpinned"],
             "extra_unpinned_median": statistics.median(r["extra_unpinned"] for r in rows)}
    if OLDER in medians:
        found["ratio_main_median"] = statistics.median(r["ratio_main"] for r in rows)
        found["extra_main_median"] = statistics.median(r["extra_main"] for r in rows)
        found["ratio_main_of_medians"] = medians["verifying"] / medians[OLDER]
    print("  medians: " + ", ".join(f"{k} {v:.2f} s" for k, v in medians.items())
          + f"; verifying / unpinned: median of rounds {found['ratio_unpinned_median']:.3f}x, "
          f"of medians {found['ratio_unpinned_of_medians']:.3f}x"
          + (f"; verifying / main: {found['ratio_main_median']:.3f}x, "
             f"{found['ratio_main_of_medians']:.3f}x" if OLDER in medians else "")
          + " (target <= 1.10x)", flush=True)
    return found


def verify_alone(origin: Origin, times: int = 9) -> float:
    """One `ssh-keygen -Y verify` of the statement, as a verifying site runs it (median)."""
    content = origin.statement_file()
    seconds = []
    for _ in range(times):
        started = time.monotonic()
        statement.verify_file(content, origin.pins, ORIGIN)
        seconds.append(time.monotonic() - started)
    return statistics.median(seconds)


def declared_alone(site: Site, times: int = 5) -> float:
    """The declaration read on its own connection (a run shares its connection: less)."""
    sync = config_module.load(site.folder / "library-syncer.toml").sync
    seconds = []
    for _ in range(times):
        started = time.monotonic()
        found = declared.fetch(sync)
        seconds.append(time.monotonic() - started)
        assert found is not None and found.statement, "the declaration read found no statement"
    return statistics.median(seconds)


def bench(work: Path, args: argparse.Namespace) -> dict:
    library = work / "library"
    library.mkdir(mode=0o755)
    disk = make_library(library, args.disk_mib * MIB) / bench_sync.DISK
    origin = Origin(work, library)
    serial, tick = origin.declare()
    roles = make_roles(work, origin, args.before)
    sites = make_sites(work, len(roles))
    server = sshd_harness.start_server_role(
        work / "sshd", library, sites={site.name: public_line(site) for site in sites})
    bench_sync.server_started(server)
    bench_sync.count_port(server.port)
    print(f"rsync {results.machine()['rsync']}, {os.cpu_count()} CPUs, disk "
          f"{args.disk_mib} MiB, roles {', '.join(r.name for r in roles)}"
          + (f" (main: {args.before})" if args.before else ""), flush=True)
    print(f"full sync of revision {serial} (declared and signed in {tick:.2f} s):", flush=True)
    full = [full_round(roles, sites, server, number, serial)
            for number in range(args.full_rounds)]
    figures: dict = {"disk_mib": args.disk_mib, "before": args.before,
                     "first_tick_seconds": tick, "full": summary(full, roles)}
    print(f"{args.change:.0%} of the disk changed in {args.chunks} pieces, declared and signed "
          "again, each round:", flush=True)
    delta = [delta_round(roles, sites, server, origin, disk, number, args.change, args.chunks)
             for number in range(args.rounds)]
    figures["delta"] = {"change": args.change, "chunks": args.chunks, **summary(delta, roles)}
    print("nothing changed, each round:", flush=True)
    figures["no_change"] = summary([idle_round(roles, sites, server, number, delta[-1]["serial"])
                                    for number in range(args.idle_rounds)], roles)
    figures["verify_seconds"] = verify_alone(origin)
    figures["declared_read_seconds"] = declared_alone(sites[0])
    print(f"one ssh-keygen -Y verify of the statement: {figures['verify_seconds'] * 1000:.1f} ms"
          f"; the declaration read on its own connection: "
          f"{figures['declared_read_seconds'] * 1000:.0f} ms", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--disk-mib", type=int, default=1024)
    parser.add_argument("--change", type=float, default=0.01)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--full-rounds", type=int, default=18)
    parser.add_argument("--rounds", type=int, default=18)
    parser.add_argument("--idle-rounds", type=int, default=18)
    parser.add_argument("--before", default=BEFORE,
                        help="the commit whose site code is the 'main' contender ('' = none)")
    args = parser.parse_args()
    sshd_harness.require_root()
    started = datetime.now(timezone.utc)
    work = sshd_harness.make_work_dir("bench-verify")
    try:
        figures = bench(work, args)
    finally:
        bench_sync.clean_up(work)
    results.record("bench_verify", f"disk{args.disk_mib}", figures, root=True, started=started)


if __name__ == "__main__":
    main()
