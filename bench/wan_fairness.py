#!/usr/bin/env python3
"""Is a BBR sender on the origin fair to a site's other traffic? Two TCP flows share one link of
the packet-level WAN (tests/harness/wan.py), from the same sender towards the same receiver:
"ours" (the origin's transfer) and "theirs" (a site's other download, CUBIC: Debian's default),
started together. Each link is measured twice: ours on CUBIC (how things were) and ours on BBR
(what library-syncer-sshd.socket sets by default); what theirs gets in each case is the figure.

Profiles A–D of issue 24 (buffer one bandwidth-delay product), and profile A with a shallow
(0.25 BDP) and a deep (4 BDP) buffer: BBR v1 is known to take more than its share from loss-based
flows at shallow buffers and less at deep ones.

Each flow goes to its own address of the receiver, and the sender's route to each address pins
the flow's algorithm (`congctl lock`; iperf3 3.12's -C fails here). Needs root. Example (the
figures in docs/benchmarks.md and docs/server.md):
    sudo .venv/bin/python bench/wan_fairness.py
Writes bench/results/wan_fairness.profiles.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402

from tests.harness import wan  # noqa: E402

MEASURES: list[str] = []  # no product code: the link and the kernel's algorithms only
HARNESS = ["tests/harness/wanemu.c", "tests/harness/wan.py"]
PORTS = (5301, 5302)  # ours, theirs


def links() -> list[tuple[str, wan.WanProfile]]:
    a = wan.PROFILES["A"]
    return [("A", a), ("A shallow", replace(a, name="A office, shallow buffer", buffer_bdp=0.25)),
            ("A deep", replace(a, name="A office, deep buffer", buffer_bdp=4.0)),
            *((key, wan.PROFILES[key]) for key in ("B", "C", "D"))]


def _theirs_address(pair: wan.WanPair) -> str:
    """A second address of the receiver, for the other flow (its route: CUBIC)."""
    address = pair.b_ip.rsplit(".", 1)[0] + ".3"
    wan.ip("-n", pair.ns_b, "addr", "add", f"{address}/32", "dev", "wan0")
    wan.pin_congestion_control(pair.ns_a, f"{address}/32", "wan0", "cubic", src=pair.a_ip)
    return address


def _flows(pair: wan.WanPair, theirs: str, ours: str, seconds: float,
           omit: float) -> list[float]:
    """Goodput (bit/s) of ours (on `ours`) and theirs (CUBIC), run at once, sender in a."""
    wan.pin_congestion_control(pair.ns_a, f"{pair.b_ip}/32", "wan0", ours, src=pair.a_ip)
    targets = list(zip((pair.b_ip, theirs), PORTS, strict=True))
    servers = [pair.spawn(pair.ns_b, ["iperf3", "-s", "-1", "-B", address, "-p", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for address, port in targets]
    time.sleep(0.5)
    clients = [pair.spawn(pair.ns_a, ["iperf3", "-c", address, "-p", str(port), "-t",
                                      f"{seconds:g}", "-O", f"{omit:g}", "-J"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for address, port in targets]
    rates = []
    for client in clients:
        out, err = client.communicate(timeout=seconds + omit + 120)
        report = json.loads(out) if out.strip() else {}
        end = report.get("end", {})
        if client.returncode or "sum_received" not in end:
            raise AssertionError(f"iperf3 failed: {report.get('error') or err.strip()}")
        rates.append(end["sum_received"]["bits_per_second"])
    for server in servers:
        server.wait(timeout=30)
    return rates


def link_row(key: str, profile: wan.WanProfile, seconds: float, omit: float) -> dict[str, Any]:
    row: dict[str, Any] = {"key": key, "link": profile.describe(), "rate_kbit": profile.rate_kbit,
                           "buffer_bdp": profile.buffer_bdp, "buffer_bytes":
                           profile.buffer_bytes(), "seconds": seconds, "omit": omit}
    with wan.WanPair.from_profile(profile, tag=f"f{key[0]}{len(key)}") as pair:
        theirs = _theirs_address(pair)
        for ours in ("cubic", "bbr"):
            ours_bps, theirs_bps = _flows(pair, theirs, ours, seconds, omit)
            row[ours] = {"ours_bps": ours_bps, "theirs_bps": theirs_bps}
            print(f"  {profile.describe()}, buffer {profile.buffer_bdp:g} BDP: ours {ours} "
                  f"{ours_bps / 1e6:.2f} Mbit/s, theirs (cubic) {theirs_bps / 1e6:.2f}",
                  flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--omit", type=float, default=5, help="seconds of start-up left out")
    args = parser.parse_args()
    date = datetime.now(timezone.utc)
    rows = [link_row(key, profile, args.seconds, args.omit) for key, profile in links()]
    results.record("wan_fairness", "profiles", {"links": rows}, root=True, started=date)
    return 0


if __name__ == "__main__":
    sys.exit(main())
