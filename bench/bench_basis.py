#!/usr/bin/env python3
"""Every byte crosses the WAN once: what a basis for every new file saves, on the real sshd.

Real sshd with a forced `rrsync -ro` key and real rsync on loopback (tests/harness/sshd.py, as
bench/bench_sync.py). Two sites pull the same library alike: one with `sync.find_basis = true`
(the default), one with `false` (a plain --link-dest rsync, today's behaviour); each case is
measured on both in the same run, the order alternating between cases. Bytes on the wire are
rsync's own count for the run (last-run.json: received + sent, dry run included). Cases, in
order, each starting from what the previous one left:

  b. a new version published as a new item: a copy of the template folder with its files
     renamed the way exports name them (`ubuntu-22.04-2026-12-disk1.vmdk`) and 2%, 5% and 10%
     of the disk rewritten in scattered aligned runs (`--run-kib`); removed again after each;
  a. the item folder renamed;
  c. a wrong guess: the only item replaced by a rebuild under a related name (random disk, 95%
     of the size, same extension): the site guesses the old disk; against `find_basis = false`
     and a third, fresh site that has no candidate at all; then an unrelated template (another
     name), which gets no guess;
  d. a new OVA version as a new item: an .ova holding a disk with 5% rewritten, beside the
     previous .ova.

Needs root (sshd). Example (the figures in docs/benchmarks.md):
    sudo LSYNC_TEST_ROOT=/work/bench-data .venv/bin/python bench/bench_basis.py --disk-mib 1024
Writes bench/results/bench_basis.disk<MiB>.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402
from benchdata import write_random  # noqa: E402

from library_syncer.base.config import SyncConfig  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402
from tests.test_sync_helpers import write_config  # noqa: E402

# What the figures depend on (the basis finder and the pull around it), as files under
# library_syncer/: bench/report.py marks them in docs/benchmarks.md when one of these changed
# after they were measured.
MEASURES = [
    "sync/basis.py", "sync/run.py", "sync/rsync.py", "sync/snapshot.py", "sync/transfer.py",
    "sync/runner.py", "sync/staging.py",
]

MIB = 1 << 20
DEMO_OVF = (ROOT / "library_syncer" / "host" / "demo_data" / "ttylinux"
            / "ttylinux-pc_i486-16.1.ovf")
DEMO_NAME = "ttylinux-pc_i486-16.1"
FROM = re.compile(r"(\S+) \(from (\S+)\)")


# --- the server's library ---------------------------------------------------------------------


def patch_runs(path: Path, fraction: float, run: int, seed: int) -> int:
    """Rewrite `fraction` of the file in runs of `run` bytes at scattered aligned offsets (a
    patched guest disk); returns the bytes rewritten."""
    size = path.stat().st_size
    rng = random.Random(seed)
    picked = rng.sample(range(size // run), int(size * fraction / run))
    with open(path, "r+b") as out:
        for index in sorted(picked):
            out.seek(index * run)
            out.write(rng.randbytes(run))
    return len(picked) * run


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def descriptor(stem: str, disk_size: int) -> str:
    text = DEMO_OVF.read_text().replace(DEMO_NAME, stem)
    return re.sub(r'ovf:size="\d+"', f'ovf:size="{disk_size}"', text, count=1)


def write_template_files(folder: Path, stem: str, disk: Path) -> list[Path]:
    """`<stem>.ovf` for the disk `<stem>-disk1.vmdk` already in `folder`, and `<stem>.mf`."""
    ovf = folder / f"{stem}.ovf"
    ovf.write_text(descriptor(stem, disk.stat().st_size))
    mf = folder / f"{stem}.mf"
    mf.write_text("".join(f"SHA256({p.name})= {sha256(p)}\n" for p in (ovf, disk)))
    return [ovf, disk, mf]


def finish(folder: Path) -> None:
    os.chmod(folder, 0o755)
    for path in folder.iterdir():
        os.chmod(path, 0o644)


def template(library: Path, item: str, stem: str, size: int, seed: int) -> Path:
    folder = library / item
    folder.mkdir(parents=True)
    disk = folder / f"{stem}-disk1.vmdk"
    write_random(disk, size, seed)
    write_template_files(folder, stem, disk)
    finish(folder)
    return folder


def new_version(library: Path, old: Path, item: str, fraction: float, run: int,
                seed: int) -> tuple[Path, int]:
    """A copy of the template `old` as the item `item` (files renamed after it, as an export
    names them), `fraction` of its disk rewritten; returns the folder and bytes rewritten."""
    folder = library / item
    folder.mkdir()
    disk = folder / f"{item}-disk1.vmdk"
    shutil.copyfile(next(old.glob("*.vmdk")), disk)
    changed = patch_runs(disk, fraction, run, seed)
    write_template_files(folder, item, disk)
    finish(folder)
    return folder, changed


def ova(library: Path, item: str, source_disk: Path | None, size: int, fraction: float,
        run: int, seed: int, scratch: Path) -> tuple[Path, int]:
    """`item/item.ova` (ovf, disk, mf, in that order, as ovftool writes them); its disk is a
    copy of `source_disk` with `fraction` rewritten, or random data."""
    scratch.mkdir(parents=True, exist_ok=True)
    disk = scratch / f"{item}-disk1.vmdk"
    changed = 0
    if source_disk is None:
        write_random(disk, size, seed)
    else:
        shutil.copyfile(source_disk, disk)
        changed = patch_runs(disk, fraction, run, seed)
    files = write_template_files(scratch, item, disk)
    folder = library / item
    folder.mkdir()
    with tarfile.open(folder / f"{item}.ova", "w", format=tarfile.USTAR_FORMAT) as archive:
        for path in files:
            info = archive.gettarinfo(str(path), arcname=path.name)
            info.mode, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, "", ""
            with open(path, "rb") as src:
                archive.addfile(info, src)
    finish(folder)
    return folder, changed


def ova_disk(path: Path, scratch: Path) -> Path:
    """The disk inside an .ova, extracted (the next version starts from it)."""
    with tarfile.open(path) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(".vmdk"))
        source = archive.extractfile(member)
        assert source is not None
        target = scratch / member.name
        with open(target, "wb") as out:
            shutil.copyfileobj(source, out, 8 * MIB)
    return target


def rsync_block(size: int) -> int:
    """The block size rsync (protocol >= 30) uses for a file of `size` bytes: about its square
    root, rounded down to a multiple of 8 (generator.c, sum_sizes_sqroot). A run of changed
    bytes costs every block it touches: runs that are multiples of the block size and aligned
    to it (a 1 GiB disk: 32768) cost exactly their size, others up to one block more per run."""
    if size < 700 * 700:
        return 700
    c, rest = 1, size
    while rest := rest >> 2:
        c <<= 1
    if c >= 1 << 17:
        return 1 << 17
    block = 0
    while c >= 8:
        block |= c
        if size < block * block:
            block &= ~c
        c >>= 1
    return max(block, 700)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


# --- the sites --------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    wire: int
    received: int
    sent: int
    bases: dict[str, str] = field(default_factory=dict)  # new path -> the basis it was given


class Site:
    """One client: its own settings file, state and runtime directory."""

    def __init__(self, work: Path, name: str, server: sshd_harness.Sshd, key: Path,
                 find_basis: bool) -> None:
        self.name = name
        self.dir = work / name
        (self.dir / "client-ssh").mkdir(parents=True)
        self.state = self.dir / "state"
        self.config = write_config(self.dir, server, key, find_basis=find_basis,
                                   io_timeout="120s")

    def sync(self) -> Run:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "library_syncer", "--debug", "sync",
                               "--config", str(self.config)], cwd=ROOT, capture_output=True,
                              text=True)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"{self.name}: sync failed ({done.returncode}):\n{done.stderr}")
        record = json.loads((self.state / "last-run.json").read_text())
        received, sent = record["bytes_received"], record["bytes_sent"]
        return Run(seconds, received + sent, received, sent, bases(done.stderr))

    def reset(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)


def bases(stderr: str) -> dict[str, str]:
    """The bases the run chose (`--debug`: `basis for <new>: <old>`)."""
    found = dict(re.findall(r"basis for (\S+): (\S+)", stderr))
    for line in stderr.splitlines():
        if "fetched as differences" in line:
            found.update(FROM.findall(line))
    return found


def measure(sites: list[Site], number: int) -> dict[str, Run]:
    """Every site once, the order rotating with `number`."""
    order = sites[number % len(sites):] + sites[:number % len(sites)]
    return {site.name: site.sync() for site in order}


# --- the cases --------------------------------------------------------------------------------


@dataclass
class Bench:
    library: Path
    scratch: Path
    sites: list[Site]
    disk: int
    run: int
    cases: list[dict[str, Any]] = field(default_factory=list)

    def case(self, name: str, label: str, item: Path, changed: int = 0,
             extra: list[Site] | None = None) -> dict[str, Any]:
        started = time.monotonic()
        runs = measure(self.sites + (extra or []), len(self.cases))
        size = folder_size(item)
        largest = max(p.stat().st_size for p in item.iterdir())
        row = {"name": name, "label": label, "item": item.name, "item_bytes": size,
               # the block the pull used: sync.block_size, or rsync's own when that is 0
               "rsync_block": SyncConfig().block_size or rsync_block(largest),
               "changed_bytes": changed, "seconds": time.monotonic() - started,
               "runs": {who: asdict(r) for who, r in runs.items()}}
        self.cases.append(row)
        line = ", ".join(f"{who} {r.wire / MIB:.2f} MiB = {r.wire / size:.3%} in "
                         f"{r.seconds:.1f} s" for who, r in runs.items())
        print(f"{label}: {line}; bases {runs['basis'].bases}", flush=True)
        return row

    def sync_all(self) -> None:
        for site in self.sites:
            site.sync()


def versions(bench: Bench, old: Path, fractions: list[float]) -> None:
    for k, fraction in enumerate(fractions):
        item, changed = new_version(bench.library, old, "ubuntu-22.04-2026-12", fraction,
                                    bench.run, seed=100 + k)
        bench.case(f"version{fraction * 100:g}", f"new version as a new item, "
                   f"{fraction:.0%} of the disk rewritten", item, changed)
        shutil.rmtree(item)
        bench.sync_all()  # the next case starts from the old version alone


def rename(bench: Bench, old: Path) -> Path:
    new = old.with_name("ubuntu-22.04-lts")
    old.rename(new)
    bench.case("rename", "item folder renamed", new)
    return new


def wrong_guess(bench: Bench, old: Path, fresh: Site) -> None:
    """A template rebuilt from scratch under a related name: the old disk is taken as its basis
    although no block matches (then an unrelated name, which gets no guess at all)."""
    shutil.rmtree(old)
    item = template(bench.library, "ubuntu-22.04-2027-01", "ubuntu-22.04-2027-01",
                    int(bench.disk * 0.95), seed=7)
    fresh.reset()
    bench.case("wrong-guess", "a template rebuilt from scratch under a related name (95% of the "
               "size, no block in common) replaces the only candidate", item, extra=[fresh])
    shutil.rmtree(item)
    other = template(bench.library, "appliance-b", "appliance-b", int(bench.disk * 0.95), seed=8)
    bench.case("unrelated", "an unrelated template (another name, 95% of the size): no guess",
               other)


def ova_version(bench: Bench, fraction: float) -> None:
    first, _ = ova(bench.library, "photon-5-r1", None, bench.disk, 0, bench.run, seed=9,
                   scratch=bench.scratch / "r1")
    bench.sync_all()
    disk = ova_disk(first / "photon-5-r1.ova", bench.scratch)
    item, changed = ova(bench.library, "photon-5-r2", disk, bench.disk, fraction, bench.run,
                        seed=10, scratch=bench.scratch / "r2")
    shutil.rmtree(bench.scratch)
    bench.scratch.mkdir()
    bench.case(f"ova{fraction * 100:g}", f"new OVA version as a new item, {fraction:.0%} of "
               "its disk rewritten", item, changed)


def run_cases(bench: Bench, fresh: Site, fractions: list[float]) -> None:
    old = template(bench.library, "ubuntu-22.04-2026-11", "ubuntu-22.04-2026-11", bench.disk,
                   seed=1)
    bench.sync_all()
    versions(bench, old, fractions)
    old = rename(bench, old)
    wrong_guess(bench, old, fresh)
    ova_version(bench, 0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--disk-mib", type=int, default=1024)
    parser.add_argument("--run-kib", type=int, default=64,
                        help="size of each rewritten run (aligned to it)")
    parser.add_argument("--fractions", default="0.02,0.05,0.10",
                        help="shares of the disk rewritten by the new versions")
    args = parser.parse_args()
    sshd_harness.require_root()
    started = datetime.now(timezone.utc)
    work = sshd_harness.make_work_dir("bench-basis")
    server = None
    try:
        (work / "keys").mkdir(mode=0o700)
        key, pub = sshd_harness.keygen(work / "keys" / "id_syncer")
        library = work / "library"
        library.mkdir(mode=0o755)
        server = sshd_harness.start_sshd(
            work / "sshd", authorized_lines=[sshd_harness.forced_rrsync_line(pub, library)])
        sites = [Site(work, "basis", server, key, True), Site(work, "plain", server, key, False)]
        fresh = Site(work, "fresh", server, key, True)
        (work / "scratch").mkdir()
        bench = Bench(library, work / "scratch", sites, args.disk_mib * MIB, args.run_kib << 10)
        began = time.monotonic()
        run_cases(bench, fresh, [float(f) for f in args.fractions.split(",")])
        figures = {"disk_mib": args.disk_mib, "run_kib": args.run_kib, "cases": bench.cases,
                   "wall_seconds": time.monotonic() - began}
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    results.record("bench_basis", f"disk{args.disk_mib}", figures, root=True, started=started)


if __name__ == "__main__":
    main()
