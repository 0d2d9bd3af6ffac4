#!/usr/bin/env python3
"""Server role at scale: N sites pulling a small change at the same moment from one sshd.

The real server role (sshd from the rendered template, the sysusers-style account, rrsync -ro)
on 127.0.0.1. Every client starts from a copy of the library as it was, then the library
changes (1% of one disk rewritten, one new descriptor) and the clients pull with the options the
sync uses (`-a --delete --compress --compress-choice=zstd`), in three phases:

  1. baseline: 10 clients one after another (the per-client server CPU the others are compared
     with; /proc counts CPU in 10 ms ticks, so one lone pull would be too coarse);
  2. N clients at once with the default limits (`MaxStartups 64:30:256`);
  3. N clients at once against a deliberately small `MaxStartups` (default 5:50:10), to show
     what sites see past it: sshd drops the connection before the key exchange, ssh exits 255,
     and the client retries after a jittered backoff. The bench client retries like the sync
     does for exit 255 (library-syncer's own retry loop lives in sync.py; this is a stand-in).

Server CPU is read from /proc/<sshd pid>/stat: utime+stime+cutime+cstime of the listener, which
includes every reaped session (sshd monitor, user child, rrsync, rsync).

Needs root (starts sshd, switches users). Example (figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/bench_server_scale.py --clients 50
Writes bench/results/bench_server_scale.clients<N>.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402

from library_syncer.base import execute  # noqa: E402
from library_syncer.server import sshd as server_role  # noqa: E402
from tests.harness import sshd as harness  # noqa: E402

# What the figures depend on (the server role's sshd and forced command), as files under
# library_syncer/: bench/report.py marks them in docs/benchmarks.md when one of these changed
# after they were measured.
MEASURES = [
    "server/sshd.py", "server/dispatch.py", "templates/sshd_config.j2",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
# ssh's own failure (connection refused/closed/reset) is rsync exit 255, but when rsync notices
# the closed pipe before ssh has exited it reports 12 ("0 bytes received so far"): both mean
# nothing was transferred and the attempt can be repeated.
RETRY_STATUSES = {255}
NOTHING_RECEIVED = "connection unexpectedly closed (0 bytes received so far)"
MAX_ATTEMPTS = 30


@dataclass
class Pull:
    ok: bool
    attempts: int
    seconds: float
    first_error: str = ""
    last_error: str = ""


@dataclass
class Phase:
    name: str
    clients: int
    pulls: list[Pull] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu: float = 0.0

    @property
    def completed(self) -> int:
        return sum(p.ok for p in self.pulls)

    @property
    def cpu_per_client(self) -> float:
        return self.server_cpu / max(1, self.completed)

    @property
    def retried(self) -> list[Pull]:
        return [p for p in self.pulls if p.attempts > 1]

    def figures(self) -> dict[str, Any]:
        attempts = [p.attempts for p in self.retried]
        return {"name": self.name, "clients": self.clients, "completed": self.completed,
                "seconds": self.seconds, "server_cpu": self.server_cpu,
                "cpu_per_client": self.cpu_per_client,
                "median_pull_seconds": statistics.median(p.seconds for p in self.pulls),
                "retried": len(attempts), "extra_attempts": sum(a - 1 for a in attempts),
                "max_attempts": max(attempts, default=1),
                "first_error": self.retried[0].first_error if self.retried else ""}


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / CLK_TCK


def make_library(library: Path, items: int, disk_kb: int) -> None:
    rng = random.Random(42)
    for index in range(items):
        item = library / f"template-{index:02d}"
        item.mkdir(parents=True)
        (item / f"template-{index:02d}.ovf").write_text(f"<Envelope id='{index}'/>\n" * 40)
        (item / "disk-0.vmdk").write_bytes(rng.randbytes(disk_kb * 1024))


def change_library(library: Path) -> None:
    """A small change: 1% of one disk rewritten in place, one new descriptor."""
    disk = library / "template-00" / "disk-0.vmdk"
    data = bytearray(disk.read_bytes())
    chunk = max(1, len(data) // 100)
    data[len(data) // 2:len(data) // 2 + chunk] = os.urandom(chunk)
    disk.write_bytes(bytes(data))
    (library / "template-00" / "notes.txt").write_text("rebuilt with the latest patches\n")


class Client:
    def __init__(self, server: harness.Sshd, key: Path, known_hosts: Path) -> None:
        self.remote = f"{server.user}@127.0.0.1:/"
        self.shell = (f"ssh -p {server.port} -i {key} -o BatchMode=yes -o IdentitiesOnly=yes "
                      f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes "
                      "-o ConnectTimeout=20")

    def pull(self, dest: Path, rng: random.Random) -> Pull:
        started, first_error = time.monotonic(), ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            result = execute.run(["rsync", "-a", "--delete", "--compress",
                                  "--compress-choice=zstd", "-e", self.shell, self.remote,
                                  f"{dest}/"], check=False, timeout=120,
                                 on_line=lambda line: None)
            if result.returncode == 0:
                return Pull(True, attempt, time.monotonic() - started, first_error)
            error = f"rsync exit {result.returncode}: " + " | ".join(result.tail[-3:])
            first_error = first_error or error
            retryable = result.returncode in RETRY_STATUSES or (
                result.returncode == 12 and any(NOTHING_RECEIVED in ln for ln in result.tail))
            if not retryable:
                break
            time.sleep(min(2.0, 0.1 * 2 ** attempt) * rng.uniform(0.5, 1.5))
        return Pull(False, attempt, time.monotonic() - started, first_error, error)


def run_phase(name: str, clients: int, server: harness.Sshd, client: Client,
              dests: list[Path], *, one_at_a_time: bool = False) -> Phase:
    assert server.process is not None
    phase = Phase(name, clients)
    cpu0 = server_cpu(server.process.pid)
    results: list[Pull | None] = [None] * clients
    barrier = threading.Barrier(1 if one_at_a_time else clients)

    def work(index: int) -> None:
        rng = random.Random(index)
        barrier.wait()  # every site connects at the same moment
        results[index] = client.pull(dests[index], rng)

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
        if one_at_a_time:
            thread.join()
    for thread in threads:
        thread.join()
    phase.seconds = time.monotonic() - started
    time.sleep(0.5)  # let the listener reap the last sessions (their CPU lands in cutime)
    phase.server_cpu = server_cpu(server.process.pid) - cpu0
    phase.pulls = [r for r in results if r is not None]
    return phase


def prepare_dests(base: Path, old: Path, count: int) -> list[Path]:
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    dests = [base / f"site-{i:03d}" for i in range(count)]
    for dest in dests:
        execute.run(["cp", "-a", f"{old}/.", f"{dest}/"])
    return dests


def report(phase: Phase, baseline: Phase | None) -> None:
    times = sorted(p.seconds for p in phase.pulls)
    ratio = f" ({phase.cpu_per_client / baseline.cpu_per_client:.2f}x the baseline)" \
        if baseline else ""
    print(f"\n== {phase.name}")
    print(f"   completed {phase.completed}/{phase.clients} in {phase.seconds:.2f} s wall; "
          f"per pull: median {statistics.median(times):.2f} s, max {times[-1]:.2f} s")
    print(f"   server CPU {phase.server_cpu:.2f} s = {phase.cpu_per_client * 1000:.0f} ms "
          f"per client{ratio}")
    if phase.retried:
        attempts = [p.attempts for p in phase.retried]
        print(f"   {len(phase.retried)} clients had to retry (attempts: max {max(attempts)}, "
              f"total extra {sum(a - 1 for a in attempts)}); first error seen: "
              f"{phase.retried[0].first_error!r}")
    else:
        print("   no client had to retry")
    failed = [p for p in phase.pulls if not p.ok]
    if failed:
        print(f"   FAILED: {len(failed)}; last error: {failed[0].last_error!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--baseline", type=int, default=10,
                        help="clients pulling one after another for the baseline")
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--disk-kb", type=int, default=256)
    parser.add_argument("--tight-max-startups", default="5:50:10")
    parser.add_argument("--keep", action="store_true", help="leave the work directory")
    args = parser.parse_args()
    harness.require_root()
    started = datetime.now(timezone.utc)
    work = harness.make_work_dir("bench-server")
    try:
        status, phases = bench(work, args)
        results.record("bench_server_scale", f"clients{args.clients}",
                       {"items": args.items, "disk_kb": args.disk_kb,
                        "phases": [p.figures() for p in phases]}, root=True, started=started)
        return status
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, args: argparse.Namespace) -> tuple[int, list[Phase]]:
    library, old = work / "library", work / "old"
    make_library(library, args.items, args.disk_kb)
    execute.run(["cp", "-a", f"{library}/.", f"{old}/"])
    change_library(library)
    keydir = work / "client"
    keydir.mkdir(mode=0o700)
    key, pub = harness.keygen(keydir / "id_site")
    server = harness.start_server_role(work / "sshd", library, sites={"site": pub})
    known = work / "known_hosts"
    known.write_text(server.known_hosts_line + "\n")
    print(f"library: {args.items} items x {args.disk_kb} KiB disk; change: 1% of one disk + "
          f"one new file; {os.cpu_count()} CPUs; "
          f"{execute.run(['ssh', '-V'], on_line=lambda line: None).tail[0]}")
    phases: list[Phase] = []
    try:
        client = Client(server, key, known)
        dests = prepare_dests(work / "sites", old, args.baseline)
        phases.append(run_phase(f"baseline: {args.baseline} clients one at a time", args.baseline,
                                server, client, dests, one_at_a_time=True))
        dests = prepare_dests(work / "sites", old, args.clients)
        phases.append(run_phase(f"{args.clients} clients at once, MaxStartups "
                                f"{server.server_config.max_startups}",
                                args.clients, server, client, dests))
    finally:
        server.stop()
    config = replace(server.server_config, max_startups=args.tight_max_startups)
    server_role.write_config(config, server.config_path, check=True)
    server.start()
    try:
        dests = prepare_dests(work / "sites", old, args.clients)
        phases.append(run_phase(f"{args.clients} clients at once, MaxStartups "
                                f"{args.tight_max_startups} (past the limit)",
                                args.clients, server, Client(server, key, known), dests))
    finally:
        server.stop()
    for phase in phases:
        report(phase, phases[0] if phase is not phases[0] else None)
    return (0 if all(p.completed == p.clients for p in phases) else 1), phases


if __name__ == "__main__":
    sys.exit(main())
