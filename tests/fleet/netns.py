"""A fleet of network namespaces: one server, N sites, joined through a bridge namespace.

    [srv ns] wan0 198.18.0.1 ──veth── srv ┐
                                          ├─ br0 [bridge ns]
    [site-i ns] wan0 198.18.0.(10+i) ──veth── s<i> ┘

Every interface and address lives inside a namespace this module created: the veth pairs are
created inside the bridge namespace with their peer moved straight into the target namespace,
so nothing ever appears in the host's namespace and the host's interfaces and routes are never
touched. Addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmarking).

Per-link profile: rate with `tbf` on both ends of the site's veth (download shaped on the bridge
side, upload on the site side); loss with nftables `numgen random` drops at the receiving end of
each direction (site input for downloads, server input for uploads, so TCP sees a genuine loss
in the network rather than a local send error); latency with tests/fleet/relay.py, which the
site runner starts in the site namespace. `flap()` sets the site's interface down and up.

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

PREFIX = "lsfleet"
SUBNET = "198.18.0"  # inside 198.18.0.0/15, the benchmarking range; /24 is plenty for 200 sites
SERVER_IP = f"{SUBNET}.1"
WAN = "wan0"
FRAME_OVERHEAD = 14 + 20 + 32  # Ethernet, IPv4, TCP with the timestamp option


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


PROFILES = {
    "lan": LinkProfile("lan"),
    "dsl": LinkProfile("dsl", 2_000, 300, 2.0),
    "office": LinkProfile("office", 10_000, 80, 0.5),
    "satellite": LinkProfile("satellite", 5_000, 600, 1.0),
}


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
            raise AssertionError("the fleet simulation needs root (ip netns, tc, nft)")
        sweep()
        _install_handlers()
        _LIVE.append(self)
        try:
            self._add_ns(self.bridge_ns)
            ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            self._add_ns(self.server_ns)
            self._join(self.server_ns, "srv", SERVER_IP)
            for i in range(self.sites):
                self._add_ns(self.site_ns(i))
                self._join(self.site_ns(i), f"s{i}", self.site_ip(i))
            self._server_loss_table()
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

    def destroy(self) -> None:
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
        """Rate (both directions) and loss (both directions) of site i's link; replaces any."""
        self.profiles[i] = profile
        for ns, dev in ((self.bridge_ns, f"s{i}"), (self.site_ns(i), WAN)):
            ip("-n", ns, "link", "set", dev, "txqueuelen", "1000")
            tc_del = ["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"]
            execute.run(tc_del, check=False, capture=True)
            if profile.rate_kbit:
                execute.run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf",
                             "rate", f"{profile.rate_kbit}kbit", "burst", _burst(profile),
                             "latency", "100ms"], capture=True)
        self._site_loss(i, profile.loss_pct)

    def _server_loss_table(self) -> None:
        script = "table inet lsfleet {\n chain input {\n  type filter hook input priority 0;" \
                 " policy accept;\n }\n}\n"
        in_ns(self.server_ns, "nft", "-f", "-", input=script.encode())

    def _site_loss(self, i: int, loss_pct: float) -> None:
        per_10k = round(loss_pct * 100)
        site = self.site_ns(i)
        in_ns(site, "nft", "delete", "table", "inet", "lsfleet", check=False)
        rule = f"numgen random mod 10000 < {per_10k} counter drop" if per_10k else "counter"
        script = ("table inet lsfleet {\n chain input {\n  type filter hook input priority 0;"
                  f" policy accept;\n  iifname \"{WAN}\" {rule}\n }}\n}}\n")
        in_ns(site, "nft", "-f", "-", input=script.encode())
        # Upload direction: dropped as it arrives at the server, matched by the site's address.
        handles = json.loads(in_ns(self.server_ns, "nft", "-j", "-a", "list", "chain", "inet",
                                   "lsfleet", "input").output)["nftables"]
        for entry in handles:
            rule_entry = entry.get("rule")
            if rule_entry and rule_entry.get("comment") == f"site{i}":
                in_ns(self.server_ns, "nft", "delete", "rule", "inet", "lsfleet", "input",
                      "handle", str(rule_entry["handle"]))
        if per_10k:
            in_ns(self.server_ns, "nft", "add", "rule", "inet", "lsfleet", "input", "ip",
                  "saddr", self.site_ip(i), "numgen", "random", "mod", "10000", "<",
                  str(per_10k), "drop", "comment", f'"site{i}"')

    def dropped_packets(self, i: int) -> int:
        """Packets the loss rule dropped on the way to site i (downloads)."""
        data = json.loads(in_ns(self.site_ns(i), "nft", "-j", "list", "chain", "inet",
                                "lsfleet", "input").output)["nftables"]
        total = 0
        for entry in data:
            for expr in entry.get("rule", {}).get("expr", []):
                if "counter" in expr and any("drop" in e for e in entry["rule"]["expr"]):
                    total += expr["counter"]["packets"]
        return total

    # --- flaps -----------------------------------------------------------------------------
    def link(self, i: int, up: bool) -> None:
        ip("-n", self.site_ns(i), "link", "set", WAN, "up" if up else "down")
        if up:  # a downed interface loses its routes; its address stays
            ip("-n", self.site_ns(i), "route", "replace", f"{SUBNET}.0/24", "dev", WAN,
               check=False)

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
        """(received, sent) bytes at site i's WAN interface, Ethernet frames included."""
        stats = self.wire_stats(i)
        return stats["rx"]["bytes"], stats["tx"]["bytes"]

    def wire_stats(self, i: int) -> dict:
        """The interface's stats64 (rx/tx bytes and packets)."""
        data = json.loads(ip("-n", self.site_ns(i), "-s", "-j", "link", "show", WAN).output)
        return data[0]["stats64"]

    def tcp_payload_received(self, i: int) -> int:
        """Bytes received minus Ethernet+IPv4+TCP(timestamps) headers: what TCP delivered."""
        rx = self.wire_stats(i)["rx"]
        return rx["bytes"] - rx["packets"] * FRAME_OVERHEAD


def _burst(profile: LinkProfile) -> str:
    """Token bucket depth: 10 ms of traffic, at least a few full frames."""
    return str(max(profile.rate_kbit * 1000 // 8 // 100, 16 * 1514))


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
