"""iperf3 across a packet-level WAN pair: the server in namespace A sends (`-R`), B receives."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass

from tests.harness.wan import WanPair, pin_congestion_control


@dataclass
class IperfResult:
    bps: float  # received goodput, all streams
    streams: int
    congestion: str
    seconds: float
    retransmits: int
    emulator: dict  # the link's counters over the run
    emulator_cpu: float  # CPU seconds the emulator used over the run


def iperf3(pair: WanPair, *, seconds: float = 10, streams: int = 1, congestion: str = "cubic",
           port: int = 5201) -> IperfResult:
    """Goodput of `streams` TCP connections A → B for `seconds`, the sender on `congestion`
    (pinned on A's route to B for the run: iperf3 3.12's -C fails with -R here)."""
    assert pair.emulator is not None
    pin_congestion_control(pair.ns_a, f"{pair.b_ip}/32", "wan0", congestion, src=pair.a_ip)
    try:
        return _run(pair, seconds, streams, congestion, port)
    finally:
        pin_congestion_control(pair.ns_a, f"{pair.b_ip}/32", "wan0", pair.congctl_a,
                               src=pair.a_ip)


def _run(pair: WanPair, seconds: float, streams: int, congestion: str,
         port: int) -> IperfResult:
    assert pair.emulator is not None
    server = pair.spawn(pair.ns_a, ["iperf3", "-s", "-1", "-B", pair.a_ip, "-p", str(port)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.poll() is None:
        probe = pair.run(pair.ns_a, ["ss", "-Hltn", f"sport = :{port}"], timeout=10)
        if probe.stdout.strip():
            break
        time.sleep(0.1)
    before, cpu0 = pair.emulator.stats(), pair.emulator.cpu_seconds()
    done = pair.run(pair.ns_b, ["iperf3", "-c", pair.a_ip, "-p", str(port), "-R", "-J",
                                "-t", f"{seconds:g}", "-P", str(streams)],
                    timeout=seconds + 120)
    server.wait(timeout=30)
    after, cpu1 = pair.emulator.stats(), pair.emulator.cpu_seconds()
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    if done.returncode or "end" not in report:
        raise AssertionError(f"iperf3 failed: {report.get('error') or done.stderr.strip()}")
    end = report["end"]
    delta = {d: {k: after[d][k] - before[d][k] for k in after[d] if k != "max_backlog"}
             for d in after}
    for d in after:
        delta[d]["max_backlog"] = after[d]["max_backlog"]
    return IperfResult(bps=end["sum_received"]["bits_per_second"], streams=streams,
                       congestion=congestion, seconds=end["sum_received"]["seconds"],
                       retransmits=end["sum_sent"].get("retransmits", 0), emulator=delta,
                       emulator_cpu=cpu1 - cpu0)
