"""A fleet of network namespaces: one server, N sites, joined through a router namespace.

    [srv ns] wan0 198.18.0.1 ──veth── srv ── br0 198.18.0.254 ┐
                                                               │ [router ns] (forwarding,
    [site-i ns] wan0 (TUN) 198.18.0.(10+i) ◀─ wanemu ─▶ s<i> (TUN) ┘  proxy ARP on br0)

Each site's link is a packet-level WAN (tests/harness/wan.py): a TUN device in the site
namespace and one in the router namespace, joined by a `wanemu` process that applies the
profile's rate, one-way delay (RTT/2 each way), random loss and a drop-tail buffer (one
bandwidth-delay product) to every IP packet, below TCP. TCP therefore sees the real round trip
and recovers each loss over it, as on a real WAN. The server's own link is an unshaped veth.

The senders' congestion control is pinned per route on both ends (`congctl lock`): the origin's
(`origin_cc`, CUBIC by default: Debian's default) and the sites' (`site_cc`, CUBIC), so results
never depend on this host's default (BBR here).

Every interface and address lives inside a namespace this module created: the veth pair is
created inside the router namespace with its peer moved straight into the server namespace and
the TUN devices are created inside their namespaces, so nothing ever appears in the host's
namespace and the host's interfaces and routes are never touched. Addresses come from
198.18.0.0/15 (RFC 2544, reserved for benchmarking). `flap()` sets the site's interface down and
up.

Cleanup: `Fleet` is a context manager; it also registers itself with an atexit hook and SIGTERM/
SIGHUP handlers (turned into SystemExit so `finally` blocks run), and `sweep()` removes leftovers
of earlier runs whose owning process is gone (the namespace names carry the owner's pid).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from library_syncer.base import execute
from tests.harness import iperf, wan

PREFIX = "lsfleet"
SUBNET = "198.18.0"  # inside 198.18.0.0/15, the benchmarking range; /24 is plenty for 200 sites
SERVER_IP = f"{SUBNET}.1"
ROUTER_IP = f"{SUBNET}.254"
WAN = "wan0"
FRAME_OVERHEAD = 20 + 32  # IPv4, TCP with timestamps (a TUN device has no Ethernet header)


@dataclass(frozen=True)
class LinkProfile:
    """What a site's WAN link looks like. rate_kbit=0 means unshaped."""

    name: str
    rate_kbit: int = 0
    rtt_ms: float = 0.0
    loss_pct: float = 0.0

    def describe(self) -> str:
        rate = f"{self.rate_kbit / 1000:g} Mbit/s" if self.rate_kbit else "unshaped"
        return f"{self.name}: {rate}, {self.rtt_ms:g} ms RTT, {self.loss_pct:g}% loss"

    def wan(self) -> wan.WanProfile:
        """The packet-level link: RTT/2 each way, the loss each way, a one-BDP buffer."""
        return wan.WanProfile(self.name, self.rate_kbit, self.rtt_ms, self.loss_pct)


PROFILES = {
    "lan": LinkProfile("lan"),
    "dsl": LinkProfile("dsl", 2_000, 300, 2.0),
    "office": LinkProfile("office", 10_000, 80, 0.5),
    "satellite": LinkProfile("satellite", 5_000, 600, 1.0),
}


# The default suite's fleets send with BBR at both ends: their tests check correctness (every
# site converges, nothing torn, flaps survived) under real packet loss and full round trips, and
# a CUBIC sender on the lossy profiles would take several minutes per scenario (Mathis: 0.3 Mbit/s
# on the dsl profile). The benchmarks keep Fleet's default, CUBIC (Debian's), and say so.
LOSS_TOLERANT = {"origin_cc": "bbr", "site_cc": "bbr"}


def ip(*args: str, check: bool = True) -> execute.CommandResult:
    return execute.run(["ip", *args], check=check, capture=True, timeout=30)


def in_ns(ns: str, *argv: str, check: bool = True,
          input: bytes | None = None) -> execute.CommandResult:
    return execute.run(["ip", "netns", "exec", ns, *argv], check=check, capture=True,
                       input=input, timeout=60)


def list_namespaces() -> list[str]:
    out = ip("-j", "netns", "list").output.strip()
    return [entry["name"] for entry in json.loads(out)] if out else []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_ns_processes(ns: str) -> None:
    """SIGKILL what runs inside a namespace we created (relays, sshd, clients we started)."""
    for _ in range(3):
        pids = [int(p) for p in ip("netns", "pids", ns, check=False).output.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def delete_namespace(ns: str) -> None:
    _kill_ns_processes(ns)
    ip("netns", "delete", ns, check=False)


def sweep() -> list[str]:
    """Remove fleets left behind by runs that died without cleaning up (owner pid gone)."""
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(PREFIX):
            continue
        owner = ns[len(PREFIX):].split("-", 1)[0]
        if owner.isdigit() and _pid_alive(int(owner)) and int(owner) != os.getpid():
            continue  # another live run (e.g. a parallel test session) owns it
        if owner.isdigit() and int(owner) == os.getpid() and ns in _owned_names():
            continue
        delete_namespace(ns)
        removed.append(ns)
    return removed


_LIVE: list[Fleet] = []
_HANDLERS_INSTALLED = False


def _owned_names() -> set[str]:
    return {name for fleet in _LIVE for name in fleet.namespaces()}


def _cleanup_all() -> None:
    for fleet in list(_LIVE):
        fleet.destroy()


def _on_signal(signum: int, frame) -> None:
    _cleanup_all()
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    atexit.register(_cleanup_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)
    _HANDLERS_INSTALLED = True


@dataclass
class Fleet:
    """One server namespace and `sites` site namespaces. Use as a context manager."""

    sites: int
    tag: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)
    profiles: dict[int, LinkProfile] = field(default_factory=dict)
    origin_cc: str = "cubic"  # the server's senders (Debian's default; this host's is BBR)
    site_cc: str = "cubic"
    emulators: dict[int, wan.Emulator] = field(default_factory=dict, repr=False)
    _created: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.sites > 240:
            raise ValueError("at most 240 sites fit the /24 this harness uses")
        self.base = f"{PREFIX}{os.getpid()}-{self.tag or format(id(self) & 0xFFFF, 'x')}"

    # --- names and addresses ---------------------------------------------------------------
    @property
    def bridge_ns(self) -> str:
        return f"{self.base}-br"

    @property
    def server_ns(self) -> str:
        return f"{self.base}-srv"

    def site_ns(self, i: int) -> str:
        return f"{self.base}-s{i}"

    @staticmethod
    def site_ip(i: int) -> str:
        return f"{SUBNET}.{10 + i}"

    def namespaces(self) -> list[str]:
        return [self.bridge_ns, self.server_ns, *(self.site_ns(i) for i in range(self.sites))]

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Fleet:
        self.create()
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def create(self) -> None:
        if os.geteuid() != 0:
            raise AssertionError("the fleet simulation needs root (ip netns, TUN devices)")
        sweep()
        _install_handlers()
        _LIVE.append(self)
        try:
            self._add_ns(self.bridge_ns)
            ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            # the router: answers the server's ARP for every site (proxy ARP) and forwards
            in_ns(self.bridge_ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            in_ns(self.bridge_ns, "sysctl", "-q", "-w", "net.ipv4.conf.br0.proxy_arp=1")
            ip("-n", self.bridge_ns, "addr", "add", f"{ROUTER_IP}/24", "dev", "br0")
            self._add_ns(self.server_ns)
            self._join(self.server_ns, "srv", SERVER_IP)
            self.pin_origin(self.origin_cc)
            for i in range(self.sites):
                self._add_ns(self.site_ns(i))
                self._tun_link(i)
        except BaseException:
            self.destroy()
            raise

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._created.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def _join(self, ns: str, port: str, address: str) -> None:
        """A veth pair born in the bridge namespace, its peer moved straight into `ns`."""
        ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", WAN,
           "netns", ns)
        ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", WAN)
        ip("-n", ns, "link", "set", WAN, "up")

    def _tun_link(self, i: int) -> None:
        """Site i's WAN: a TUN device at each end (site and router), unshaped until shape()."""
        ns, port = self.site_ns(i), f"s{i}"
        wan.add_tun(self.bridge_ns, port)
        ip("-n", self.bridge_ns, "route", "add", f"{self.site_ip(i)}/32", "dev", port)
        wan.add_tun(ns, WAN)
        ip("-n", ns, "addr", "add", f"{self.site_ip(i)}/24", "dev", WAN)
        self._site_route(i)
        self._emulate(i, LinkProfile("unshaped"))

    def _site_route(self, i: int) -> None:
        wan.pin_congestion_control(self.site_ns(i), f"{SUBNET}.0/24", WAN, self.site_cc,
                                   src=self.site_ip(i))

    def _emulate(self, i: int, profile: LinkProfile) -> None:
        old = self.emulators.pop(i, None)
        if old:
            old.stop()
        link = profile.wan().direction()
        self.emulators[i] = wan.Emulator(self.bridge_ns, f"s{i}", self.site_ns(i), WAN,
                                         link, link, seed=i + 1)

    def destroy(self) -> None:
        for emulator in self.emulators.values():
            emulator.stop()
        self.emulators.clear()
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
        self.processes.clear()
        for ns in reversed(self._created):
            delete_namespace(ns)
        self._created.clear()
        if self in _LIVE:
            _LIVE.remove(self)

    # --- running things inside -------------------------------------------------------------
    def spawn(self, ns: str, argv: list[str], *, log: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """A long-running process inside `ns` (killed by destroy())."""
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
        try:
            process = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env)
        finally:
            if log:
                out.close()
        self.processes.append(process)
        return process

    # --- link profiles ---------------------------------------------------------------------
    def shape(self, i: int, profile: LinkProfile) -> None:
        """Rate, delay and loss (both directions) of site i's link; replaces any (packets in
        flight on the old link are lost, as when a line is re-provisioned)."""
        self.profiles[i] = profile
        self._emulate(i, profile)

    def link_counters(self, i: int) -> dict[str, dict[str, int]]:
        """The emulator's counters: "ab" is the download direction, "ba" the upload."""
        return self.emulators[i].stats()

    def pin_origin(self, congestion: str) -> None:
        """The server's senders to every site on `congestion` (new connections from now on)."""
        wan.pin_congestion_control(self.server_ns, f"{SUBNET}.0/24", WAN, congestion,
                                   src=SERVER_IP)

    def iperf_path(self, i: int) -> iperf.Path_:
        """The server → site i direction, for tests/harness/iperf.py."""
        return iperf.Path_(self.server_ns, SERVER_IP, self.site_ns(i), self.emulators[i],
                           self.pin_origin, lambda: self.pin_origin(self.origin_cc))

    def dropped_packets(self, i: int) -> int:
        """Packets the link lost at random on the way to site i (downloads)."""
        return self.link_counters(i)["ab"]["lost"]

    # --- flaps -----------------------------------------------------------------------------
    def link(self, i: int, up: bool) -> None:
        ip("-n", self.site_ns(i), "link", "set", WAN, "up" if up else "down")
        if up:  # a downed interface loses its routes; its address stays
            self._site_route(i)

    def flap(self, i: int, down_seconds: float) -> None:
        self.link(i, False)
        try:
            time.sleep(down_seconds)
        finally:
            self.link(i, True)

    def flap_later(self, i: int, after: float, down_seconds: float) -> threading.Thread:
        def run() -> None:
            time.sleep(after)
            if self.site_ns(i) in self._created:
                self.flap(i, down_seconds)

        thread = threading.Thread(target=run, name=f"flap-s{i}", daemon=True)
        thread.start()
        return thread

    # --- counters --------------------------------------------------------------------------
    def wire_bytes(self, i: int) -> tuple[int, int]:
        """(received, sent) bytes at site i's WAN interface: whole IP packets."""
        stats = self.wire_stats(i)
        return stats["rx"]["bytes"], stats["tx"]["bytes"]

    def wire_stats(self, i: int) -> dict:
        """The interface's stats64 (rx/tx bytes and packets)."""
        data = json.loads(ip("-n", self.site_ns(i), "-s", "-j", "link", "show", WAN).output)
        return data[0]["stats64"]

    def tcp_payload_received(self, i: int) -> int:
        """Bytes received minus IPv4+TCP(timestamps) headers: what TCP delivered."""
        rx = self.wire_stats(i)["rx"]
        return rx["bytes"] - rx["packets"] * FRAME_OVERHEAD


def main() -> int:
    """`python -m tests.fleet.netns --sweep`: remove leftovers of interrupted runs."""
    if sys.argv[1:] == ["--sweep"]:
        for ns in sweep():
            print("removed", ns)
        return 0
    print("usage: python -m tests.fleet.netns --sweep", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
