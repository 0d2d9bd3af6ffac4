#!/usr/bin/env python3
"""Sync benchmark against the loopback server (real sshd + rrsync -ro, real rsync).

1. Full sync of a library holding one template with a >= 1 GiB disk.
2. 1% of the disk rewritten at scattered offsets (two rounds, order alternated): bytes on the
   wire (nftables counter on the server's port, IP+TCP+SSH included) relative to the disk size,
   and the wall time of `library-syncer sync` against the baseline measured in the same run:
   a plain `rsync -a --delete` of the same change (the original's way, same ssh and compression
   options) followed by `library-syncer manifest build` of the copy.
3. Resume after a cut: a new file is being fetched when the connection is killed; the next run's
   bytes on the wire against what was still missing (re-sent = received - missing).

Needs root (sshd, nftables). Example (the figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/bench_sync.py --disk-mib 1024
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from library_syncer.base import config as config_module  # noqa: E402
from library_syncer.sync import ssh  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402
from tests.test_sync_helpers import write_config  # noqa: E402

MIB = 1 << 20
TABLE = "lsbench"
DEMO = ROOT / "library_syncer" / "demo_data" / "ttylinux"
DISK = "ttylinux-pc_i486-16.1-disk1.vmdk"
DESCRIPTOR = "ttylinux-pc_i486-16.1.ovf"


# --- the server's library -------------------------------------------------------------------


def write_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as out:
        left = size
        while left:
            block = min(left, 64 * MIB)
            out.write(rng.randbytes(block))
            left -= block


def write_mf(folder: Path) -> None:
    lines = []
    for name in (DESCRIPTOR, DISK):
        digest = hashlib.sha256()
        with open(folder / name, "rb") as src:
            while block := src.read(8 * MIB):
                digest.update(block)
        lines.append(f"SHA256({name})= {digest.hexdigest()}\n")
    (folder / "ttylinux-pc_i486-16.1.mf").write_text("".join(lines))


def make_library(library: Path, disk_size: int) -> Path:
    folder = library / "template"
    folder.mkdir(parents=True, mode=0o755)
    shutil.copy(DEMO / DESCRIPTOR, folder / DESCRIPTOR)
    write_random(folder / DISK, disk_size, seed=1)
    write_mf(folder)
    for path in folder.iterdir():
        os.chmod(path, 0o644)
    return folder


def change_scattered(path: Path, fraction: float, chunks: int, seed: int) -> int:
    """Rewrite `fraction` of the file in `chunks` pieces at random offsets; bytes changed."""
    size = path.stat().st_size
    piece = int(size * fraction / chunks)
    rng = random.Random(seed)
    stride = size // chunks
    with open(path, "r+b") as out:
        for i in range(chunks):
            out.seek(i * stride + rng.randrange(0, stride - piece))
            out.write(rng.randbytes(piece))
    return piece * chunks


# --- measuring --------------------------------------------------------------------------------


def nft(*args: str) -> str:
    return subprocess.run(["nft", *args], check=True, capture_output=True, text=True).stdout


def count_port(port: int) -> None:
    nft("add", "table", "inet", TABLE)
    nft("add", "chain", "inet", TABLE, "in",
        "{ type filter hook input priority 0; policy accept; }")
    nft("add", "rule", "inet", TABLE, "in", "tcp", "sport", str(port), "counter")


def wire_bytes() -> int:
    match = re.search(r"counter packets \d+ bytes (\d+)", nft("list", "table", "inet", TABLE))
    assert match, "nft counter missing"
    return int(match.group(1))


def timed(argv: list[str], **kwargs) -> tuple[float, int, subprocess.CompletedProcess]:
    before, started = wire_bytes(), time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, **kwargs)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed ({result.returncode}):\n{result.stderr}")
    return seconds, wire_bytes() - before, result


class Clients:
    def __init__(self, work: Path, server: sshd_harness.Sshd, key: Path) -> None:
        (work / "client-ssh").mkdir(exist_ok=True)
        self.config_path = write_config(work, server, key, compress=True, io_timeout="60s")
        self.config = config_module.load(self.config_path)
        self.state = work / "state"
        self.plain = work / "plain" / "library"
        self.plain.mkdir(parents=True)
        self.plain_state = work / "plain" / "state"

    def syncer(self, *extra: str) -> tuple[float, int]:
        seconds, wire, _ = timed([sys.executable, "-m", "library_syncer", "sync", "--config",
                                  str(self.config_path), *extra])
        return seconds, wire

    def last_run(self) -> dict:
        return json.loads((self.state / "last-run.json").read_text())

    def plain_rsync_and_build(self) -> tuple[float, int]:
        sync = self.config.sync
        argv = ["rsync", "-a", "--delete", "--partial-dir=.rsync-partial", "--compress",
                "--compress-choice=zstd", "--exclude=.vSphere-HA", "-e", ssh.rsh(sync),
                f"{sync.peer}:/", f"{self.plain}/"]
        rsync_s, wire, _ = timed(argv)
        build_s, _, _ = timed([sys.executable, "-m", "library_syncer", "manifest", "build",
                               str(self.plain), "--name", "Test library", "--state",
                               str(self.plain_state)])
        return rsync_s + build_s, wire


def descendants(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                children.append(int(entry))
    return children + [d for c in children for d in descendants(c)]


# --- the scenarios ----------------------------------------------------------------------------


def full(clients: Clients, disk_size: int) -> None:
    s_time, s_wire = clients.syncer()
    p_time, p_wire = clients.plain_rsync_and_build()
    print(f"full sync ({disk_size / MIB:.0f} MiB): library-syncer {s_time:.1f} s, "
          f"{s_wire / MIB:.1f} MiB on the wire; plain rsync + manifest build {p_time:.1f} s, "
          f"{p_wire / MIB:.1f} MiB; ratio {s_time / p_time:.2f}x")


def delta_round(clients: Clients, disk: Path, round: int, fraction: float, chunks: int
                ) -> tuple[float, float, float]:
    changed = change_scattered(disk, fraction, chunks, seed=100 + round)
    write_mf(disk.parent)
    size = disk.stat().st_size
    order = ["syncer", "plain"] if round % 2 == 0 else ["plain", "syncer"]
    figures = {}
    for who in order:
        figures[who] = clients.syncer() if who == "syncer" else clients.plain_rsync_and_build()
    (s_time, s_wire), (p_time, p_wire) = figures["syncer"], figures["plain"]
    record = clients.last_run()
    print(f"round {round}: {changed / size:.2%} of {size / MIB:.0f} MiB changed in {chunks} "
          f"pieces ({' first, '.join(order)} second)")
    print(f"  library-syncer: {s_time:.2f} s, wire {s_wire / MIB:.2f} MiB = {s_wire / size:.3%}"
          f" of the disk (rsync payload {record['bytes_received'] / MIB:.2f} MiB)")
    print(f"  plain rsync + manifest build: {p_time:.2f} s, wire {p_wire / MIB:.2f} MiB = "
          f"{p_wire / size:.3%}")
    print(f"  time ratio {s_time / p_time:.3f}x, wire ratio {s_wire / p_wire:.3f}x")
    return s_wire / size, s_time / p_time, p_wire / size


def resume(clients: Clients, server: sshd_harness.Sshd, library: Path, size: int) -> None:
    folder = library / "cut"
    folder.mkdir(mode=0o755)
    write_random(folder / "cut.iso", size, seed=7)
    os.chmod(folder / "cut.iso", 0o644)
    config_path = clients.config_path
    text = config_path.read_text()
    config_path.write_text(text.replace("[sync]\n", '[sync]\nbandwidth_limit = "60M"\n'))
    process = subprocess.Popen([sys.executable, "-m", "library_syncer", "sync", "--config",
                                str(config_path), "--no-retry"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    staging = clients.state / "staging" / "cut"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        temps = [p.stat().st_size for p in staging.glob(".*") if p.is_file()] \
            if staging.is_dir() else []
        if temps and max(temps) >= size // 2:
            break
        time.sleep(0.02)
    assert server.process is not None
    for pid in descendants(server.process.pid):
        os.kill(pid, signal.SIGKILL)
    process.communicate(timeout=60)
    config_path.write_text(text)
    arrived = (staging / ".rsync-partial" / "cut.iso").stat().st_size
    s_time, s_wire = clients.syncer()
    payload = clients.last_run()["bytes_received"]
    missing = size - arrived
    print(f"resume after a cut: {arrived / MIB:.1f} MiB of {size / MIB:.0f} MiB had arrived; "
          f"the next run received {payload / MIB:.1f} MiB (wire {s_wire / MIB:.1f} MiB) for "
          f"{missing / MIB:.1f} MiB missing: re-sent {(payload - missing) / MIB:.2f} MiB = "
          f"{(payload - missing) / arrived:.2%} of what had arrived ({s_time:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--disk-mib", type=int, default=1024)
    parser.add_argument("--change", type=float, default=0.01)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cut-mib", type=int, default=256)
    args = parser.parse_args()
    sshd_harness.require_root()
    work = sshd_harness.make_work_dir("bench-sync")
    server = None
    try:
        (work / "keys").mkdir(mode=0o700)
        key, pub = sshd_harness.keygen(work / "keys" / "id_syncer")
        library = work / "library"
        library.mkdir(mode=0o755)
        disk = make_library(library, args.disk_mib * MIB) / DISK
        server = sshd_harness.start_sshd(
            work / "sshd", authorized_lines=[sshd_harness.forced_rrsync_line(pub, library)])
        count_port(server.port)
        clients = Clients(work, server, key)
        version = subprocess.run(["rsync", "--version"], capture_output=True,
                                 text=True).stdout.split()[2]
        print(f"rsync {version}, {os.cpu_count()} CPUs, disk {args.disk_mib} MiB")
        full(clients, args.disk_mib * MIB)
        results = [delta_round(clients, disk, r, args.change, args.chunks)
                   for r in range(args.rounds)]
        wire = max(r[0] for r in results)
        ratio = max(r[1] for r in results)
        print(f"worst: wire {wire:.3%} of the disk (target <= 1.2%), time {ratio:.3f}x the "
              "baseline (target <= 1.1x)")
        resume(clients, server, library, args.cut_mib * MIB)
    finally:
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)
        if server:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
