"""A packet-level WAN: rate, delay, random loss and a drop-tail buffer applied to IP packets,
below TCP, between two network namespaces (this kernel has no netem qdisc).

    [ns A] wan0 (TUN) ◀─▶ wanemu (tests/harness/wanemu.c) ◀─▶ wan0 (TUN) [ns B]

Each side's TUN device hands every packet its stack sends to `wanemu`, which models the link
in each direction (drop-tail buffer → serialisation at the rate → random loss → one-way delay)
and writes the packet into the other side's TUN device when due. TCP on either side therefore
sees the real round trip, real queueing and real losses, and recovers them end to end.

Conventions (docs/wan.md):
- A profile's `rtt_ms` is the round-trip propagation delay: each direction gets rtt/2 of
  one-way delay (queueing adds to it). `loss_pct` applies to each direction independently.
- The rate counts IP bytes (a TUN device has no link-layer header): TCP's goodput ceiling is
  rate × 1448/1500 (MSS with timestamps over a 1500-byte MTU), 96.5% of the link.
- The buffer defaults to one bandwidth-delay product (at least 32 full packets).
- The sender's congestion control is pinned per route (`ip route … congctl lock NAME`) on both
  sides, so results never depend on the host's default (BBR on these machines, CUBIC on Debian).

Only namespaces this module created are touched; addresses come from 198.19.0.0/16 (inside
198.18.0.0/15, reserved for benchmarking) and exist only inside those namespaces.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = Path(__file__).with_name("wanemu.c")
MTU = 1500
MSS = 1448  # MTU - 20 (IPv4) - 32 (TCP with timestamps)
PREFIX = "lswan"


@dataclass(frozen=True)
class Direction:
    """One direction of a link. rate_kbit=0: unlimited; buffer_bytes=0: unbounded."""

    rate_kbit: float = 0.0
    delay_ms: float = 0.0
    loss_pct: float = 0.0
    buffer_bytes: int = 0

    def spec(self) -> str:
        return (f"{round(self.rate_kbit * 1000)}:{round(self.delay_ms * 1000)}:"
                f"{round(self.loss_pct * 10_000)}:{self.buffer_bytes}")


@dataclass(frozen=True)
class WanProfile:
    """A symmetric link: both directions at `rate_kbit`, rtt/2 one-way delay each, `loss_pct`
    random loss each way, a drop-tail buffer of `buffer_bdp` bandwidth-delay products."""

    name: str
    rate_kbit: float
    rtt_ms: float
    loss_pct: float = 0.0
    buffer_bdp: float = 1.0

    @property
    def rate_bps(self) -> float:
        return self.rate_kbit * 1000

    def buffer_bytes(self) -> int:
        bdp = self.rate_bps / 8 * self.rtt_ms / 1000
        return int(max(bdp * self.buffer_bdp, 32 * MTU))

    def direction(self) -> Direction:
        return Direction(self.rate_kbit, self.rtt_ms / 2, self.loss_pct,
                         self.buffer_bytes() if self.rate_kbit else 0)

    def describe(self) -> str:
        return (f"{self.name}: {self.rate_kbit / 1000:g} Mbit/s, {self.rtt_ms:g} ms RTT, "
                f"{self.loss_pct:g}% loss each way")

    def mathis_bps(self, mss: int = MSS) -> float:
        """Mathis et al.'s bound for one Reno-like flow: MSS/RTT × 1.22/sqrt(p)."""
        return mss * 8 / (self.rtt_ms / 1000) * 1.22 / (self.loss_pct / 100) ** 0.5

    def cubic_bps(self, mss: int = MSS) -> float:
        """RFC 9438's average CUBIC window under random loss, (C(3+β)/(4(1-β)))^¼ · RTT^¾ / p^¾
        segments per RTT (C = 0.4, β = 0.7), as a rate: above Mathis' bound on long paths."""
        c, beta = 0.4, 0.7
        rtt, p = self.rtt_ms / 1000, self.loss_pct / 100
        window = (c * (3 + beta) / (4 * (1 - beta))) ** 0.25 * rtt ** 0.75 / p ** 0.75
        return window * mss * 8 / rtt

    def goodput_ceiling_bps(self) -> float:
        return self.rate_bps * MSS / MTU


# The four links of issue 24 (delays are round trips).
PROFILES = {
    "A": WanProfile("A office", 50_000, 40, 0.0),
    "B": WanProfile("B long fat", 100_000, 250, 0.1),
    "C": WanProfile("C satellite", 20_000, 600, 1.0),
    "D": WanProfile("D lossy DSL", 8_000, 80, 2.0),
}


# --- the emulator binary ----------------------------------------------------------------------


def emulator_binary() -> Path:
    """wanemu compiled from its source (cached by the source's hash)."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = Path(os.environ.get("LSYNC_WANEMU_CACHE", "/var/tmp/library-syncer-wanemu"))
    binary = cache / f"wanemu-{digest}"
    if binary.exists():
        return binary
    compiler = shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise AssertionError("the packet-level WAN needs gcc (tests/bootstrap installs it)")
    cache.mkdir(parents=True, exist_ok=True)
    temp = binary.with_suffix(f".{os.getpid()}")
    subprocess.run([compiler, "-O2", "-Wall", "-Wextra", "-o", str(temp), str(SOURCE)],
                   check=True, capture_output=True, timeout=120)
    os.replace(temp, binary)
    return binary


class Emulator:
    """One wanemu process joining (ns_a, dev_a) and (ns_b, dev_b)."""

    def __init__(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str, ab: Direction,
                 ba: Direction, seed: int = 1) -> None:
        self.argv = [str(emulator_binary()), ns_a, dev_a, ns_b, dev_b, ab.spec(), ba.spec(),
                     str(seed)]
        self.ab, self.ba = ab, ba
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                        text=True)
        line = self._line(10)
        if line.strip() != "wanemu ready":
            self.stop()
            raise AssertionError(f"wanemu did not start: {line!r} "
                                 f"{self.process.stderr.read() if self.process.stderr else ''}")

    def _line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline() if ready else ""

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per direction ("ab", "ba"): in/out packets and bytes, lost, tail_drops."""
        self.process.send_signal(signal.SIGUSR1)
        line = self._line(5)
        if not line:
            raise AssertionError("wanemu gave no counters")
        return json.loads(line)

    def cpu_seconds(self) -> float:
        """CPU time the emulator used so far (user + system)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


# --- namespaces -------------------------------------------------------------------------------


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True,
                          timeout=30)


def add_tun(ns: str, dev: str) -> None:
    """A persistent TUN device in `ns`, up, with a queue long enough for a burst."""
    ip("-n", ns, "tuntap", "add", "mode", "tun", "dev", dev)
    ip("-n", ns, "link", "set", dev, "mtu", str(MTU), "txqueuelen", "10000", "up")


def pin_congestion_control(ns: str, prefix: str, dev: str, congctl: str,
                           src: str | None = None) -> None:
    """Every TCP connection from `ns` to `prefix` uses `congctl`, whatever the host's default."""
    extra = ["src", src] if src else []
    ip("-n", ns, "route", "replace", prefix, "dev", dev, *extra, "congctl", "lock", congctl)


def _pids_in(ns: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", ns, check=False).stdout.split()]


def delete_namespace(ns: str) -> None:
    for _ in range(3):
        pids = _pids_in(ns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    ip("netns", "delete", ns, check=False)


def sweep() -> None:
    """Remove pairs left by runs whose owner is gone (the name carries the owner's pid)."""
    listing = ip("-j", "netns", "list", check=False).stdout.strip()
    for entry in json.loads(listing) if listing else []:
        name = entry["name"]
        owner = name[len(PREFIX):].split("-", 1)[0]
        if name.startswith(PREFIX) and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            delete_namespace(name)


@dataclass
class WanPair:
    """Two namespaces, `a` (say, the origin) and `b` (the site), joined by one emulated link.

    `a_ip`/`b_ip` are point-to-point addresses on each side's wan0; `down` is the a→b
    direction (the origin's data to the site), `up` is b→a. Use as a context manager."""

    down: Direction
    up: Direction
    tag: str = "p"
    congctl_a: str = "cubic"
    congctl_b: str = "cubic"
    seed: int = 1
    emulator: Emulator | None = field(default=None, repr=False)
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        base = f"{PREFIX}{os.getpid()}-{self.tag}"
        self.ns_a, self.ns_b = f"{base}-a", f"{base}-b"
        third = int(hashlib.sha256(base.encode()).hexdigest(), 16) % 250 + 1
        self.a_ip, self.b_ip = f"198.19.{third}.1", f"198.19.{third}.2"

    @classmethod
    def from_profile(cls, profile: WanProfile, **kw) -> WanPair:
        return cls(profile.direction(), profile.direction(), **kw)

    def __enter__(self) -> WanPair:
        if os.geteuid() != 0:
            raise AssertionError("the packet-level WAN needs root (ip netns, TUN devices)")
        sweep()
        try:
            for ns, me, peer, cc in ((self.ns_a, self.a_ip, self.b_ip, self.congctl_a),
                                     (self.ns_b, self.b_ip, self.a_ip, self.congctl_b)):
                ip("netns", "add", ns)
                ip("-n", ns, "link", "set", "lo", "up")
                add_tun(ns, "wan0")
                ip("-n", ns, "addr", "add", me, "peer", f"{peer}/32", "dev", "wan0")
                pin_congestion_control(ns, f"{peer}/32", "wan0", cc, src=me)
            self.emulator = Emulator(self.ns_a, "wan0", self.ns_b, "wan0", self.down, self.up,
                                     self.seed)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        if self.emulator:
            self.emulator.stop()
            self.emulator = None
        for ns in (self.ns_a, self.ns_b):
            delete_namespace(ns)

    def run(self, ns: str, argv: list[str], timeout: float = 600,
            **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                              text=True, timeout=timeout, **kw)

    def spawn(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        process = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self.processes.append(process)
        return process

