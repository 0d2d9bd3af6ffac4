"""iperf3 across a packet-level WAN link: the server in the sending namespace (`-R`: it sends),
the client in the receiving one; the sender's congestion control pinned on its route for the run
(iperf3 3.12's own -C fails with -R here)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.harness.wan import Emulator, WanPair, pin_congestion_control


@dataclass
class IperfResult:
    bps: float  # received goodput, all streams
    streams: int
    congestion: str
    seconds: float
    retransmits: int
    emulator: dict  # the link's counters over the run ("ab": the sender's direction)
    emulator_cpu: float  # CPU seconds the emulator used over the run


@dataclass
class Path_:
    """Who sends to whom over which emulated link, and how to pin the sender's algorithm."""

    sender_ns: str
    sender_ip: str
    receiver_ns: str
    emulator: Emulator
    pin: Callable[[str], None]  # pin the sender's route to this algorithm
    unpin: Callable[[], None]  # put the route's algorithm back


def _in(ns: str, argv: list[str], timeout: float, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=timeout, **kw)


def pair_path(pair: WanPair) -> Path_:
    assert pair.emulator is not None

    def pin(cc: str) -> None:
        pin_congestion_control(pair.ns_a, f"{pair.b_ip}/32", "wan0", cc, src=pair.a_ip)

    return Path_(pair.ns_a, pair.a_ip, pair.ns_b, pair.emulator, pin,
                 lambda: pin(pair.congctl_a))


def iperf3(pair: WanPair | Path_, *, seconds: float = 10, streams: int = 1,
           congestion: str = "cubic", port: int = 5201) -> IperfResult:
    """Goodput of `streams` TCP connections from the sender for `seconds` on `congestion`."""
    path = pair_path(pair) if isinstance(pair, WanPair) else pair
    path.pin(congestion)
    try:
        return _run(path, seconds, streams, congestion, port)
    finally:
        path.unpin()


def _run(path: Path_, seconds: float, streams: int, congestion: str,
         port: int) -> IperfResult:
    server = subprocess.Popen(["ip", "netns", "exec", path.sender_ns, "iperf3", "-s", "-1",
                               "-B", path.sender_ip, "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and server.poll() is None:
            if _in(path.sender_ns, ["ss", "-Hltn", f"sport = :{port}"], 10).stdout.strip():
                break
            time.sleep(0.1)
        before, cpu0 = path.emulator.stats(), path.emulator.cpu_seconds()
        done = _in(path.receiver_ns, ["iperf3", "-c", path.sender_ip, "-p", str(port), "-R",
                                      "-J", "-t", f"{seconds:g}", "-P", str(streams)],
                   seconds + 120)
        server.wait(timeout=30)
        after, cpu1 = path.emulator.stats(), path.emulator.cpu_seconds()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    if done.returncode or "sum_received" not in report.get("end", {}):
        raise AssertionError(f"iperf3 failed: {report.get('error') or done.stderr.strip()}")
    end = report["end"]
    delta = {d: {k: after[d][k] - before[d][k] for k in after[d]} for d in after}
    for d in after:
        delta[d]["max_backlog"] = after[d]["max_backlog"]  # a high-water mark, not a count
    return IperfResult(bps=end["sum_received"]["bits_per_second"], streams=streams,
                       congestion=congestion, seconds=end["sum_received"]["seconds"],
                       retransmits=end["sum_sent"].get("retransmits", 0), emulator=delta,
                       emulator_cpu=cpu1 - cpu0)
