"""The packet-level WAN of the harness (tests/harness/wan.py) against TCP's known behaviour.

Correctness tests of the harness, not speed tests of the product: the emulator must add its
one-way delay to every packet, lose the configured share of packets, bound its buffer, let one
TCP flow fill a clean link, and make one CUBIC flow on a lossy long link collapse to what
Mathis' model predicts (which the old above-TCP latency relay could not show). Tolerances are
wide for a noisy 2-core machine, but each assert fails for a broken emulator. Figures for every
profile: bench/wan_validate.py (docs/wan.md).
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.harness import wan
from tests.harness.iperf import iperf3

pytestmark = pytest.mark.fleet  # needs root: network namespaces and TUN devices

CONNECT = """\
import socket, sys, time
times = []
for _ in range(5):
    t = time.monotonic()
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()
    times.append(time.monotonic() - t)
print(min(times))
"""


@pytest.fixture
def pair_a() -> Iterator[wan.WanPair]:
    with wan.WanPair.from_profile(wan.PROFILES["A"], tag="ta") as pair:
        yield pair


def test_round_trip_is_the_profiles_rtt(pair_a: wan.WanPair) -> None:
    """A TCP handshake (SYN → SYN-ACK) takes one RTT: 40 ms on profile A, both delays applied."""
    listener = pair_a.spawn(pair_a.ns_a, [sys.executable, "-c",
                                          "import socket,time\n"
                                          f"s=socket.create_server(('{pair_a.a_ip}',7000))\n"
                                          "time.sleep(60)"])
    for _ in range(50):
        if pair_a.run(pair_a.ns_a, ["ss", "-Hltn", "sport = :7000"]).stdout.strip():
            break
    done = pair_a.run(pair_a.ns_b, [sys.executable, "-c", CONNECT, pair_a.a_ip, "7000"])
    listener.kill()
    assert done.returncode == 0, done.stderr
    rtt = float(done.stdout)
    assert 0.040 <= rtt < 0.060, f"handshake took {rtt * 1000:.1f} ms on a 40 ms RTT link"


def test_one_cubic_flow_fills_a_clean_link(pair_a: wan.WanPair) -> None:
    """0% loss, buffer of one BDP: one CUBIC flow holds the link (goodput ceiling 96.5% of the
    IP rate), and never more than the rate."""
    result = iperf3(pair_a, seconds=10, congestion="cubic")
    profile = wan.PROFILES["A"]
    assert result.bps <= profile.goodput_ceiling_bps() * 1.01
    assert result.bps >= 0.80 * profile.rate_bps, f"{result.bps / 1e6:.1f} Mbit/s of 50"
    down = result.emulator["ab"]
    assert down["lost"] == 0
    assert down["max_backlog"] <= profile.buffer_bytes()  # the drop-tail bound holds


def test_loss_is_random_at_the_configured_rate() -> None:
    """2% loss each way: the share of packets lost is 2% within binomial noise (5 sigma)."""
    profile = wan.PROFILES["D"]
    with wan.WanPair.from_profile(profile, tag="td") as pair:
        result = iperf3(pair, seconds=5, congestion="bbr")
    for direction in ("ab", "ba"):
        counters = result.emulator[direction]
        n = counters["in_pkts"] - counters["tail_drops"]
        p = profile.loss_pct / 100
        assert n > 1000
        assert abs(counters["lost"] - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1, counters


def test_small_buffer_drops_at_the_tail() -> None:
    """A 16-packet buffer on a 10 Mbit/s link: the backlog never exceeds it, and TCP overflowing
    it makes tail drops (the buffer is bounded, not a delay line of its own)."""
    link = wan.Direction(rate_kbit=10_000, delay_ms=10, buffer_bytes=16 * wan.MTU)
    with wan.WanPair(link, link, tag="tb") as pair:
        result = iperf3(pair, seconds=4, congestion="cubic")
    down = result.emulator["ab"]
    assert down["tail_drops"] > 0
    assert down["max_backlog"] <= 16 * wan.MTU
    assert result.bps <= 10e6 * wan.MSS / wan.MTU * 1.01


def test_cubic_on_the_satellite_link_is_near_mathis() -> None:
    """Profile C (20 Mbit/s, 600 ms RTT, 1% loss): one CUBIC flow is bounded by loss, not by the
    link. Mathis' bound MSS/RTT × 1.22/sqrt(p) is 0.24 Mbit/s; CUBIC's own model (RFC 9438,
    C = 0.4, β = 0.7, the larger of its cubic and Reno-friendly windows) 0.44 Mbit/s at this RTT,
    and Linux's CUBIC runs at 1.4–2× that model here (bench/wan_validate.py: 0.61–0.88 Mbit/s
    over 40 s runs). The flow must land between half of Mathis' bound and three times CUBIC's
    model, and below 10% of the link: a link losing too little, or latency added above TCP
    (recovering each loss over a short round trip), runs at several Mbit/s."""
    profile = wan.PROFILES["C"]
    with wan.WanPair.from_profile(profile, tag="tc") as pair:
        result = iperf3(pair, seconds=40, congestion="cubic")
    mathis = profile.mathis_bps()
    cubic_model = max(profile.cubic_bps(), mathis)
    assert 0.5 * mathis <= result.bps <= 3.0 * cubic_model, \
        f"{result.bps / 1e3:.0f} kbit/s; Mathis {mathis / 1e3:.0f}, CUBIC {cubic_model / 1e3:.0f}"
    assert result.bps < 0.1 * profile.rate_bps
    assert result.emulator["ab"]["lost"] > 5  # losses happened: the bound is theirs


def test_the_emulator_runs_in_namespaces_it_was_given_only() -> None:
    """Nothing of the pair appears in the host's namespace: no TUN device, no route."""
    with wan.WanPair.from_profile(wan.PROFILES["D"], tag="th") as pair:
        host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        host_routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
        assert pair.a_ip not in host_routes and pair.b_ip not in host_routes
        assert "wan0" not in host_links
