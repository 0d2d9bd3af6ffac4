#!/usr/bin/env python3
"""Several TCP connections for a large run: 1 against N streams, and round trips before the
first data byte.

Real sshd with a forced `rrsync -ro` key and real rsync on loopback (tests/harness/sshd.py),
reached through the fleet's delaying relay (tests/fleet/relay.py: latency added ABOVE TCP, no
rate limit, no loss; the packet-level emulator of issue 24 item 1 is separate work). What limits
one connection here is what the delay does to its windows (OpenSSH's 2 MiB channel window: at
most 2 MiB per round trip), not loss. Each measurement is a fresh site (empty state):

  - large: a first copy of LARGE_FILES new files of --file-mib each, `library-syncer sync` with
    `sync.streams = 1` and `= N`, and plain `rsync -e ssh` for reference;
  - small: a first copy of one 2 MiB file (a small run: one connection whatever the setting).

Time to first byte: from the command's start until rsync's temporary file for a data file holds
a byte (polled every 5 ms). Round trips before it: (TTFB at the delay - TTFB at no delay) / RTT,
so process start-up and local work cancel out; the relay adds its delay to every chunk, so a
real link adds one more round trip per serial TCP connection (its handshake, which the relay
answers locally). Logins are the sshd's "Accepted publickey" lines.

Needs root (sshd). Example (the figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/bench_streams.py --rtt-ms 200 --streams 4 --rounds 3
Writes bench/results/bench_streams.rtt<ms>.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402

from tests.harness import sshd as sshd_harness  # noqa: E402
from tests.harness.net import free_port  # noqa: E402
from tests.test_sync_helpers import random_bytes, write_config  # noqa: E402

# The files under library_syncer/ these figures depend on (bench/report.py marks the figures
# when one changed after they were measured).
MEASURES = ["sync/streams.py", "sync/transfer.py", "sync/rsync.py", "sync/runner.py",
            "sync/sshmux.py", "sync/ssh.py"]

MIB = 1 << 20
LARGE_FILES = 4
ACCEPTED = "Accepted publickey"


def _file(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _first_byte(dest: Path) -> bool:
    """A data file (or rsync's temporary file for one) below `dest` holds a byte."""
    for path in dest.rglob("*.iso*"):
        try:
            if path.is_file() and path.stat().st_size > 0:
                return True
        except OSError:
            continue
    return False


class Relay:
    """tests/fleet/relay.py in front of the sshd: every chunk delayed by half the RTT."""

    def __init__(self, upstream: int, rtt_ms: float) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fleet.relay", f"127.0.0.1:{self.port}="
             f"127.0.0.1:{upstream}", "--delay-ms", str(rtt_ms / 2)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "relay ready"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Bench:
    def __init__(self, work: Path, server: sshd_harness.Sshd, key: Path, pub_host: str) -> None:
        self.work, self.server, self.key, self.pub_host = work, server, key, pub_host
        self.count = 0

    def logins(self) -> int:
        return self.server.log().count(ACCEPTED)

    def _timed(self, argv: list[str], dest: Path, env: dict[str, str] | None = None
               ) -> tuple[float, float | None, int, str]:
        before = self.logins()
        started = time.monotonic()
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, env=env)
        first = None
        while process.poll() is None:
            if first is None and _first_byte(dest):
                first = time.monotonic() - started
            time.sleep(0.005)
        seconds = time.monotonic() - started
        stderr = process.stderr.read() if process.stderr else ""
        time.sleep(0.2)  # sshd's log line
        if process.returncode != 0:
            raise SystemExit(f"{argv[:4]} failed ({process.returncode}): {stderr[-2000:]}")
        return seconds, first, self.logins() - before, stderr

    def product(self, port: int, folder: str, streams: int) -> dict[str, Any]:
        self.count += 1
        site = self.work / f"site-{self.count}"
        site.mkdir()
        (site / "client-ssh").mkdir(mode=0o700)
        server = SimpleNamespace(known_hosts_line=f"[127.0.0.1]:{port} {self.pub_host}",
                                 port=port, user=self.server.user)
        config = write_config(site, server, self.key, streams=streams, report=False,
                              remote_path=f"/{folder}/", io_timeout="60s")
        seconds, first, logins, stderr = self._timed(
            [sys.executable, "-m", "library_syncer", "sync", "--config", str(config)],
            site / "state" / "staging")
        shutil.rmtree(site, ignore_errors=True)
        return {"seconds": seconds, "first_byte": first, "logins": logins,
                "streams_used": "stream(s) fetched" in stderr}

    def plain(self, port: int, folder: str) -> dict[str, Any]:
        self.count += 1
        dest = self.work / f"plain-{self.count}"
        known = self.work / "plain_known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {self.pub_host}\n")
        rsh = (f"ssh -p {port} -i {self.key} -o IdentitiesOnly=yes -o BatchMode=yes "
               f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes "
               f"-l {self.server.user}")
        seconds, first, logins, _ = self._timed(
            ["rsync", "-rt", "--partial", "-e", rsh, f"127.0.0.1:/{folder}/", f"{dest}/"], dest)
        shutil.rmtree(dest, ignore_errors=True)
        return {"seconds": seconds, "first_byte": first, "logins": logins}


def measure(bench: Bench, ports: dict[float, int], rtts: list[float], streams: int,
            rounds: int, large_bytes: int) -> list[dict[str, Any]]:
    rows = []
    cases = [("plain rsync+ssh", "large", None), ("product, 1 stream", "large", 1),
             (f"product, {streams} streams", "large", streams), ("plain rsync+ssh", "small", None),
             ("product", "small", streams)]
    for number in range(rounds):
        order = cases if number % 2 == 0 else list(reversed(cases))
        for rtt in rtts:
            for label, folder, count in order:
                if count is None:
                    row = bench.plain(ports[rtt], folder)
                else:
                    row = bench.product(ports[rtt], folder, count)
                row.update({"round": number, "rtt_ms": rtt, "case": label, "library": folder})
                if folder == "large":
                    row["mib_per_s"] = large_bytes / MIB / row["seconds"]
                rows.append(row)
                print(f"round {number} rtt {rtt:4.0f} ms {folder:5} {label:22} "
                      f"{row['seconds']:6.2f} s, first byte {row['first_byte'] or 0:5.2f} s, "
                      f"{row['logins']} login(s)", flush=True)
    return rows


def round_trips(rows: list[dict[str, Any]], rtt: float) -> dict[str, float]:
    """Per case: (median TTFB at `rtt` - median TTFB at 0) / rtt."""
    found = {}
    for key in sorted({(r["library"], r["case"]) for r in rows}):
        at = {d: statistics.median(r["first_byte"] for r in rows
                                   if (r["library"], r["case"]) == key and r["rtt_ms"] == d)
              for d in (0.0, rtt)}
        found[f"{key[0]}: {key[1]}"] = round((at[rtt] - at[0.0]) / (rtt / 1000), 1)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt-ms", type=float, default=200.0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--file-mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sshd_harness.require_root()
    started = datetime.now(timezone.utc)
    work = sshd_harness.make_work_dir("bench-streams")
    server, relays = None, []
    try:
        (work / "keys").mkdir(mode=0o700)
        key, pub = sshd_harness.keygen(work / "keys" / "id_syncer")
        library = work / "library"
        library.mkdir(mode=0o755)
        for index in range(LARGE_FILES):
            _file(library / "large" / f"item{index}" / f"item{index}.iso",
                  random_bytes(args.file_mib * MIB, index))
        _file(library / "small" / "tools" / "tools.iso", random_bytes(2 * MIB, 99))
        server = sshd_harness.start_sshd(
            work / "sshd", authorized_lines=[sshd_harness.forced_rrsync_line(pub, library)])
        rtts = [0.0, args.rtt_ms]
        relays = [Relay(server.port, rtt) for rtt in rtts]
        ports = {rtt: relay.port for rtt, relay in zip(rtts, relays, strict=True)}
        bench = Bench(work, server, key, server.host_key_pub)
        large_bytes = LARGE_FILES * args.file_mib * MIB
        rows = measure(bench, ports, rtts, args.streams, args.rounds, large_bytes)
        figures = {"rtt_ms": args.rtt_ms, "streams": args.streams, "file_mib": args.file_mib,
                   "files": LARGE_FILES, "rounds": args.rounds, "runs": rows,
                   "round_trips": round_trips(rows, args.rtt_ms)}
    finally:
        for relay in relays:
            relay.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(figures["round_trips"])
    results.record("bench_streams", f"rtt{args.rtt_ms:.0f}", figures, root=True, started=started)


if __name__ == "__main__":
    main()
