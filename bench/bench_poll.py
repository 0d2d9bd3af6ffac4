#!/usr/bin/env python3
"""What a change check (`sync --if-changed`, sync/poll.py) costs the origin, and a fleet polling.

The real server role (sshd from the rendered template, the forced-command dispatcher, rrsync -ro)
on 127.0.0.1, a library of ITEMS items x FILES files with a declared trace. The client runs the
check's own code, unchanged: poll.origin_serial (rsync fetches .library-syncer/serial, the check
with a trace) and poll.origin_listing (rsync --list-only of the library, the check without one),
CHECKS times each, one after another.

- Server CPU: utime+stime+cutime+cstime of the sshd listener from /proc (every reaped session:
  sshd monitor and user child, the dispatcher, rrsync, rsync), divided by CHECKS (/proc counts
  in 10 ms ticks, so one check alone would be too coarse).
- Bytes on the wire: a byte-counting TCP relay between ssh and sshd (everything: the key
  exchange, authentication, the session), both ways.

The fleet figure is arithmetic on these: SITES sites checking every INTERVAL cost the origin
SITES x 3600 / INTERVAL checks an hour.

Needs root (starts sshd, switches users). Example (figures in docs/benchmarks.md):
    sudo .venv/bin/python bench/bench_poll.py --checks 100
Writes bench/results/bench_poll.checks<N>.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402
from bench_server_scale import server_cpu  # noqa: E402

from library_syncer.base import config as config_module  # noqa: E402
from library_syncer.server import trace  # noqa: E402
from library_syncer.sync import poll  # noqa: E402
from tests.harness import sshd as harness  # noqa: E402

# What the figures depend on (the change check and what the origin runs for it), as files under
# library_syncer/: bench/report.py marks them in docs/benchmarks.md when one of these changed
# after they were measured.
MEASURES = [
    "sync/poll.py", "sync/rsync.py", "server/dispatch.py", "server/sshd.py",
    "templates/sshd_config.j2", "sync/runner.py", "sync/failover.py",
]


class Relay:
    """A TCP relay counting the bytes each way (client → server, server → client)."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = self.down = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            done = threading.Barrier(2, action=lambda c=client, s=server: (c.close(), s.close()))
            for src, dst, way in ((client, server, "up"), (server, client, "down")):
                threading.Thread(target=self._pump, args=(src, dst, way, done),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, way: str,
              done: threading.Barrier) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
                with self.lock:
                    setattr(self, way, getattr(self, way) + len(data))
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        done.wait()

    def take(self) -> tuple[int, int]:
        with self.lock:
            counted, self.up, self.down = (self.up, self.down), 0, 0
        return counted


def make_library(library: Path, items: int, files: int) -> None:
    for item in range(items):
        folder = library / f"item{item:03d}"
        folder.mkdir(parents=True)
        for index in range(files):
            (folder / f"disk{index}.vmdk").write_bytes(os.urandom(1024))


def declare(work: Path, library: Path) -> int:
    settings = work / "origin.toml"
    settings.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{work / "trace-state"}"'
                        f'\nsettle = "60s"\nname = "hq"\n')
    return trace.tick(config_module.load(settings), now=time.time() + 61).serial


def measure(name: str, check, count: int, server: harness.Sshd, relay: Relay) -> dict:
    check()  # warm the page cache and the client
    relay.take()
    cpu0, wall0 = server_cpu(server.process.pid), time.monotonic()
    for _ in range(count):
        check()
    wall = time.monotonic() - wall0
    time.sleep(0.5)  # the last session's processes reaped
    cpu = server_cpu(server.process.pid) - cpu0
    up, down = relay.take()
    figures = {"name": name, "checks": count, "server_cpu_per_check": cpu / count,
               "wall_per_check": wall / count, "bytes_up_per_check": up / count,
               "bytes_down_per_check": down / count}
    print(f"{name}: server CPU {cpu / count * 1000:.1f} ms/check, {wall / count * 1000:.0f} ms "
          f"wall, {up / count:,.0f} B up + {down / count:,.0f} B down per check")
    return figures


def bench(work: Path, args: argparse.Namespace) -> dict:
    library = work / "library"
    make_library(library, args.items, args.files)
    serial = declare(work, library)
    keydir = work / "client"
    keydir.mkdir(mode=0o700)
    key, pub = harness.keygen(keydir / "id_site")
    server = harness.start_server_role(work / "sshd", library, sites={"site": pub})
    relay = Relay(server.port)
    known = work / "known_hosts"
    known.write_text(f"[127.0.0.1]:{relay.port} {server.host_key_pub}\n")
    settings = work / "site.toml"
    settings.write_text(f'[sync]\npeer = "127.0.0.1"\nport = {relay.port}\nuser = "{server.user}"'
                        f'\nidentity_file = "{key}"\nknown_hosts = "{known}"\n')
    sync = config_module.load(settings).sync
    try:
        assert poll.origin_serial(sync) == poll.Revision("hq", serial)
        assert len(poll.origin_listing(sync)) == args.items * args.files + 2  # + the trace
        rows = [measure("serial (with a trace)", lambda: poll.origin_serial(sync), args.checks,
                        server, relay),
                measure(f"listing ({args.items * args.files} files, without a trace)",
                        lambda: poll.origin_listing(sync), args.checks, server, relay)]
    finally:
        server.stop()
    checks_per_hour = args.sites * 3600 / args.interval
    for row in rows:
        row["fleet_cpu_seconds_per_hour"] = row["server_cpu_per_check"] * checks_per_hour
        row["fleet_bytes_per_hour"] = (row["bytes_up_per_check"] + row["bytes_down_per_check"]) \
            * checks_per_hour
        print(f"  {args.sites} sites every {args.interval / 60:g} min: "
              f"{row['fleet_cpu_seconds_per_hour']:.0f} CPU s/h, "
              f"{row['fleet_bytes_per_hour'] / 1e6:.1f} MB/h")
    return {"items": args.items, "files": args.files, "sites": args.sites,
            "interval": args.interval, "checks_per_hour": checks_per_hour, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=100, help="checks of each kind")
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--files", type=int, default=4, help="files per item")
    parser.add_argument("--sites", type=int, default=200, help="the fleet extrapolated to")
    parser.add_argument("--interval", type=float, default=900.0, help="seconds between checks")
    parser.add_argument("--keep", action="store_true", help="leave the work directory")
    args = parser.parse_args()
    harness.require_root()
    started = datetime.now(timezone.utc)
    work = harness.make_work_dir("bench-poll")
    try:
        figures = bench(work, args)
        results.record("bench_poll", f"checks{args.checks}", figures, root=True, started=started)
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
