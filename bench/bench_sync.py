#!/usr/bin/env python3
"""Sync benchmark against the loopback server (real sshd + rrsync -ro, real rsync).

1. Full (first) sync of a library holding one template with a >= 1 GiB disk, against the
   baseline (plain rsync + `library-syncer manifest build`), both from nothing, in interleaved
   rounds (order alternating, dirty pages flushed before each contender): wall time and CPU time
   of both sides (cgroup v1 cpuacct when available), the syncer's phases, and what its second
   ssh connection (the dry run that sizes the free-space check) costs on its own.
2. 1% of the disk rewritten at scattered offsets (two rounds, order alternated): bytes on the
   wire (nftables counter on the server's port, IP+TCP+SSH included) relative to the disk size,
   and the wall time of `library-syncer sync` against the baseline measured in the same run:
   a plain `rsync -a --delete` of the same change (the original's way, same ssh and compression
   options) followed by `library-syncer manifest build` of the copy.
3. Resume after a cut: a new file is being fetched when the connection is killed; the next run's
   bytes on the wire against what was still missing (re-sent = received - missing).

Needs root (sshd, nftables). Example (the figures in docs/benchmarks.md; the library lives under
$LSYNC_TEST_ROOT, default /var/lib/library-syncer-tests):
    sudo .venv/bin/python bench/bench_sync.py --disk-mib 1024
Writes bench/results/bench_sync.disk<MiB>.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402
from benchdata import write_random  # noqa: E402

from library_syncer.base import config as config_module  # noqa: E402
from library_syncer.sync import rsync as rsync_argv  # noqa: E402
from library_syncer.sync import ssh  # noqa: E402
from tests.harness import sshd as sshd_harness  # noqa: E402
from tests.test_sync_helpers import write_config  # noqa: E402

# What the figures depend on (the pull and what it publishes), as files under library_syncer/:
# bench/report.py marks them in docs/benchmarks.md when one of these changed after they were
# measured.
MEASURES = [
    "sync/run.py", "sync/rsync.py", "sync/ssh.py", "sync/sshmux.py", "sync/snapshot.py",
    "sync/basis.py", "manifest/vcsp.py", "manifest/hashing.py", "manifest/scan.py",
    "base/execute.py", "sync/transfer.py", "sync/retry.py", "sync/runner.py", "sync/staging.py",
    "sync/layout.py", "sync/ova.py", "sync/manifests.py",
]

MIB = 1 << 20
TABLE = "lsbench"
DEMO = ROOT / "library_syncer" / "host" / "demo_data" / "ttylinux"
DISK = "ttylinux-pc_i486-16.1-disk1.vmdk"
DESCRIPTOR = "ttylinux-pc_i486-16.1.ovf"


# --- the server's library -------------------------------------------------------------------


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


class CpuGroups:
    """CPU time of the server side (sshd and every session under it) and of the client side
    (each command the bench starts), from two cgroup v1 cpuacct groups; None without them."""

    BASE = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self) -> None:
        self.groups: dict[str, Path] = {}
        if not (self.BASE / "cpuacct.usage").exists():
            return
        for side in ("server", "client"):
            group = self.BASE / f"lsbench-{os.getpid()}-{side}"
            try:
                group.mkdir(exist_ok=True)
            except OSError:
                self.groups.clear()
                return
            self.groups[side] = group

    def join(self, side: str, pid: int) -> None:
        if side in self.groups:
            (self.groups[side] / "tasks").write_text(str(pid))

    def preexec(self) -> Callable[[], None] | None:
        if "client" not in self.groups:
            return None
        return lambda: self.join("client", os.getpid())

    def usage(self) -> dict[str, float] | None:
        if not self.groups:
            return None
        return {side: int((g / "cpuacct.usage").read_text()) / 1e9
                for side, g in self.groups.items()}

    def remove(self) -> None:
        for group in self.groups.values():
            # a process still in it (a killed session being reaped): left behind, harmless
            with contextlib.suppress(OSError):
                group.rmdir()


@dataclass
class Measure:
    seconds: float = 0.0
    wire: int = 0
    cpu_client: float | None = None
    cpu_server: float | None = None
    parts: dict[str, float] = field(default_factory=dict)

    def add(self, other: Measure, part: str) -> Measure:
        cpu = None if self.cpu_client is None or other.cpu_client is None else 0.0
        merged = Measure(self.seconds + other.seconds, self.wire + other.wire,
                         cpu if cpu is None else self.cpu_client + other.cpu_client,
                         cpu if cpu is None else self.cpu_server + other.cpu_server,
                         {**self.parts, **other.parts, part: other.seconds})
        return merged

    @property
    def cpu(self) -> float | None:
        if self.cpu_client is None or self.cpu_server is None:
            return None
        return self.cpu_client + self.cpu_server


CPU = CpuGroups()


def timed(argv: list[str], check: bool = True, **kwargs
          ) -> tuple[Measure, subprocess.CompletedProcess]:
    cpu0, before, started = CPU.usage(), wire_bytes(), time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                            preexec_fn=CPU.preexec(), **kwargs)
    seconds = time.monotonic() - started
    if check and result.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed ({result.returncode}):\n{result.stderr}")
    wire = wire_bytes() - before
    cpu1 = CPU.usage() if cpu0 is not None else None
    if cpu0 is not None and cpu1 is not None:
        time.sleep(0.2)  # the server's session processes finish after the client has exited
        cpu1 = CPU.usage()
        assert cpu1 is not None
        return Measure(seconds, wire, cpu1["client"] - cpu0["client"],
                       cpu1["server"] - cpu0["server"]), result
    return Measure(seconds, wire), result


def phases(stderr: str) -> dict[str, float]:
    """The sync's own phase timings (`--debug`: `phase transfer: 7.42 s`, `phase content
    check: 0.01 s`)."""
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"phase (\w+(?: \w+)*): ([\d.]+) s", stderr)}


class Clients:
    def __init__(self, work: Path, server: sshd_harness.Sshd, key: Path) -> None:
        (work / "client-ssh").mkdir(exist_ok=True)
        self.work = work
        self.config_path = write_config(work, server, key, compress=True, io_timeout="60s")
        self.config = config_module.load(self.config_path)
        self.state = work / "state"
        self.plain = work / "plain" / "library"
        self.plain.mkdir(parents=True)
        self.plain_state = work / "plain" / "state"

    def syncer(self, *extra: str) -> Measure:
        measure, done = timed([sys.executable, "-m", "library_syncer", "--debug", "sync",
                               "--config", str(self.config_path), *extra])
        measure.parts = phases(done.stderr)
        return measure

    def last_run(self) -> dict:
        return json.loads((self.state / "last-run.json").read_text())

    def plain_rsync_and_build(self) -> Measure:
        sync = self.config.sync
        argv = ["rsync", "-a", "--delete", "--partial-dir=.rsync-partial", "--compress",
                "--compress-choice=zstd", "--exclude=.vSphere-HA", "-e", ssh.rsh(sync),
                f"{sync.peer}:/", f"{self.plain}/"]
        pull, _ = timed(argv)
        pull.parts = {"rsync": pull.seconds}
        build, _ = timed([sys.executable, "-m", "library_syncer", "manifest", "build",
                          str(self.plain), "--name", "Test library", "--state",
                          str(self.plain_state)])
        return pull.add(build, "build")

    def dry_run_alone(self) -> Measure:
        """The syncer's dry run into an empty folder: its second connection, on its own."""
        empty = self.work / "empty"
        shutil.rmtree(empty, ignore_errors=True)
        empty.mkdir()
        measure, _ = timed(rsync_argv.pull_argv(self.config.sync, empty, [], dry_run=True))
        return measure

    def handshake_alone(self) -> Measure:
        """One ssh connection (key exchange, authentication, session) running nothing useful:
        the forced rrsync refuses the command, so this is the handshake's cost."""
        measure, _ = timed([*ssh.argv(self.config.sync), self.config.sync.peer, "true"],
                           check=False)
        return measure

    def reset(self, who: str) -> None:
        """One contender back to nothing (a first sync), every dirty page written out."""
        paths = [self.state] if who == "syncer" else [self.plain, self.plain_state]
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
        self.plain.mkdir(parents=True, exist_ok=True)
        subprocess.run(["sync"], check=True)


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


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def full_round(clients: Clients, number: int) -> dict:
    """Both contenders from nothing, order alternating; the second connection on its own."""
    order = ["syncer", "plain"] if number % 2 == 0 else ["plain", "syncer"]
    measures: dict[str, Measure] = {}
    for who in order:
        clients.reset(who)
        measures[who] = clients.syncer() if who == "syncer" else clients.plain_rsync_and_build()
    dry, handshake = clients.dry_run_alone(), clients.handshake_alone()
    s, p = measures["syncer"], measures["plain"]
    row = {"round": number, "first": order[0], "syncer": asdict(s), "baseline": asdict(p),
           "wall_ratio": s.seconds / p.seconds, "cpu_ratio": ratio(s.cpu, p.cpu),
           "dry_run": asdict(dry), "handshake": asdict(handshake)}
    cpu = "" if row["cpu_ratio"] is None else (
        f", CPU {s.cpu:.2f} s vs {p.cpu:.2f} s ({row['cpu_ratio']:.3f}x)")
    print(f"full sync round {number} ({order[0]} first): library-syncer {s.seconds:.2f} s "
          f"{s.parts}; plain rsync + manifest build {p.seconds:.2f} s {p.parts}; "
          f"ratio {row['wall_ratio']:.3f}x{cpu}; dry run alone {dry.seconds:.2f} s, "
          f"ssh handshake alone {handshake.seconds:.2f} s", flush=True)
    return row


def full(clients: Clients, disk_size: int, rounds: int) -> dict:
    rows = [full_round(clients, number) for number in range(rounds)]
    walls = [r["wall_ratio"] for r in rows]
    cpus = [r["cpu_ratio"] for r in rows if r["cpu_ratio"] is not None]
    summary = {"disk_bytes": disk_size, "rounds": rows,
               "wall_ratio_median": statistics.median(walls),
               "cpu_ratio_median": statistics.median(cpus) if cpus else None,
               "dry_run_seconds_median": statistics.median(r["dry_run"]["seconds"] for r in rows),
               "handshake_seconds_median": statistics.median(
                   r["handshake"]["seconds"] for r in rows)}
    print(f"full sync: wall ratio median {summary['wall_ratio_median']:.3f}x "
          f"(rounds {', '.join(f'{w:.3f}' for w in walls)}; target <= 1.1x)")
    return summary


def delta_round(clients: Clients, disk: Path, number: int, fraction: float, chunks: int
                ) -> dict:
    changed = change_scattered(disk, fraction, chunks, seed=100 + number)
    write_mf(disk.parent)
    size = disk.stat().st_size
    order = ["syncer", "plain"] if number % 2 == 0 else ["plain", "syncer"]
    figures: dict[str, Measure] = {}
    for who in order:
        figures[who] = clients.syncer() if who == "syncer" else clients.plain_rsync_and_build()
    s, p = figures["syncer"], figures["plain"]
    record = clients.last_run()
    print(f"round {number}: {changed / size:.2%} of {size / MIB:.0f} MiB changed in {chunks} "
          f"pieces ({' first, '.join(order)} second)")
    print(f"  library-syncer: {s.seconds:.2f} s, wire {s.wire / MIB:.2f} MiB = "
          f"{s.wire / size:.3%} of the disk (rsync payload "
          f"{record['bytes_received'] / MIB:.2f} MiB)")
    print(f"  plain rsync + manifest build: {p.seconds:.2f} s, wire {p.wire / MIB:.2f} MiB = "
          f"{p.wire / size:.3%}")
    print(f"  time ratio {s.seconds / p.seconds:.3f}x, wire ratio {s.wire / p.wire:.3f}x")
    return {"round": number, "first": order[0], "changed_bytes": changed, "disk_bytes": size,
            "syncer": asdict(s), "baseline": asdict(p),
            "syncer_wire_fraction": s.wire / size, "baseline_wire_fraction": p.wire / size,
            "wall_ratio": s.seconds / p.seconds, "wire_ratio": s.wire / p.wire}


def no_change(clients: Clients) -> dict:
    """A run when nothing changed: both contenders already hold the library."""
    s, p = clients.syncer(), clients.plain_rsync_and_build()
    p2, s2 = clients.plain_rsync_and_build(), clients.syncer()
    seconds_s, seconds_p = min(s.seconds, s2.seconds), min(p.seconds, p2.seconds)
    print(f"no-change run: library-syncer {seconds_s:.2f} s, plain rsync + manifest build "
          f"{seconds_p:.2f} s (best of two, interleaved)")
    return {"syncer_seconds": seconds_s, "baseline_seconds": seconds_p,
            "syncer_parts": s2.parts, "difference_seconds": seconds_s - seconds_p}


def resume(clients: Clients, server: sshd_harness.Sshd, library: Path, size: int) -> dict:
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
    measure = clients.syncer()
    payload = clients.last_run()["bytes_received"]
    missing = size - arrived
    print(f"resume after a cut: {arrived / MIB:.1f} MiB of {size / MIB:.0f} MiB had arrived; "
          f"the next run received {payload / MIB:.1f} MiB (wire {measure.wire / MIB:.1f} MiB) "
          f"for {missing / MIB:.1f} MiB missing: re-sent {(payload - missing) / MIB:.2f} MiB = "
          f"{(payload - missing) / arrived:.2%} of what had arrived ({measure.seconds:.1f} s)")
    return {"file_bytes": size, "arrived_bytes": arrived, "received_bytes": payload,
            "resent_bytes": payload - missing, "resent_fraction": (payload - missing) / arrived}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--disk-mib", type=int, default=1024)
    parser.add_argument("--change", type=float, default=0.01)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--full-rounds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cut-mib", type=int, default=256)
    parser.add_argument("--only-full", action="store_true",
                        help="the first-sync rounds only (no delta rounds, no resume)")
    args = parser.parse_args()
    sshd_harness.require_root()
    started = datetime.now(timezone.utc)
    work = sshd_harness.make_work_dir("bench-sync")
    try:
        figures = bench(work, args, server_started)
    finally:
        clean_up(work)
    results.record("bench_sync", f"disk{args.disk_mib}" + ("-full" if args.only_full else ""),
                   figures, root=True, started=started)


SERVERS: list[sshd_harness.Sshd] = []


def clean_up(work: Path) -> None:
    """What a bench set up: the nftables counter, the servers, the CPU groups, `work`."""
    subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)
    for running in SERVERS:
        running.stop()
    CPU.remove()
    shutil.rmtree(work, ignore_errors=True)


def server_started(server: sshd_harness.Sshd) -> None:
    SERVERS.append(server)
    assert server.process is not None
    CPU.join("server", server.process.pid)


def bench(work: Path, args: argparse.Namespace,
          on_server: Callable[[sshd_harness.Sshd], None]) -> dict:
    (work / "keys").mkdir(mode=0o700)
    key, pub = sshd_harness.keygen(work / "keys" / "id_syncer")
    library = work / "library"
    library.mkdir(mode=0o755)
    disk = make_library(library, args.disk_mib * MIB) / DISK
    server = sshd_harness.start_sshd(
        work / "sshd", authorized_lines=[sshd_harness.forced_rrsync_line(pub, library)])
    on_server(server)
    count_port(server.port)
    clients = Clients(work, server, key)
    print(f"rsync {results.machine()['rsync']}, {os.cpu_count()} CPUs, disk {args.disk_mib} MiB, "
          f"CPU accounting {'on' if CPU.groups else 'off'}")
    figures: dict = {"disk_mib": args.disk_mib, "cpu_accounting": bool(CPU.groups),
                     "full": full(clients, args.disk_mib * MIB, args.full_rounds)}
    if args.only_full:
        return figures
    rows = [delta_round(clients, disk, r, args.change, args.chunks) for r in range(args.rounds)]
    figures["delta"] = {"change": args.change, "chunks": args.chunks, "rounds": rows}
    print(f"worst: wire {max(r['syncer_wire_fraction'] for r in rows):.3%} of the disk (target "
          f"<= 1.2%), time {max(r['wall_ratio'] for r in rows):.3f}x the baseline "
          "(target <= 1.1x)")
    figures["no_change"] = no_change(clients)
    figures["resume"] = resume(clients, server, library, args.cut_mib * MIB)
    return figures


if __name__ == "__main__":
    main()
