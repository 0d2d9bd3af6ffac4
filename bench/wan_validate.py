#!/usr/bin/env python3
"""The packet-level WAN (tests/harness/wan.py) against TCP's known behaviour, and its limits.

1. Limits of the emulator: one CUBIC flow through an unshaped, undelayed link (the most it
   forwards) and through a 100 Mbit/s, 20 ms link; goodput and the emulator's CPU.
2. Per profile A–D of issue 24: one iperf3 flow with CUBIC (several runs) against Mathis' bound
   MSS/RTT × 1.22/sqrt(p) and RFC 9438's CUBIC model; one BBR flow for comparison.

Needs root. Example (the figures in docs/wan.md and docs/benchmarks.md):
    sudo .venv/bin/python bench/wan_validate.py
Writes bench/results/wan_validate.profiles.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402

from tests.harness import wan  # noqa: E402
from tests.harness.iperf import iperf3  # noqa: E402

MEASURES: list[str] = []  # no product code: the harness only
HARNESS = ["tests/harness/wanemu.c", "tests/harness/wan.py", "tests/harness/iperf.py"]


def limits(seconds: float) -> list[dict[str, Any]]:
    rows = []
    for label, link in (("unshaped, no delay", wan.Direction()),
                        ("100 Mbit/s, 20 ms RTT", wan.Direction(100_000, 10, 0, 250_000))):
        with wan.WanPair(link, link, tag="vl") as pair:
            result = iperf3(pair, seconds=seconds, congestion="cubic")
        rows.append({"link": label, "mbit_s": result.bps / 1e6,
                     "cpu_pct": 100 * result.emulator_cpu / result.seconds})
        print(f"  {label}: {result.bps / 1e6:.0f} Mbit/s, emulator "
              f"{rows[-1]['cpu_pct']:.0f}% of one core", flush=True)
    return rows


def profile_row(key: str, repeats: int, seconds: float) -> dict[str, Any]:
    profile = wan.PROFILES[key]
    cubic, bbr = [], 0.0
    with wan.WanPair.from_profile(profile, tag=f"v{key}") as pair:
        for _ in range(repeats):
            cubic.append(iperf3(pair, seconds=seconds, congestion="cubic").bps)
        bbr = iperf3(pair, seconds=seconds, congestion="bbr").bps
    row = {"profile": profile.describe(), "rate_kbit": profile.rate_kbit,
           "seconds": seconds, "cubic_bps": cubic, "bbr_bps": bbr,
           "ceiling_bps": profile.goodput_ceiling_bps(),
           "mathis_bps": profile.mathis_bps() if profile.loss_pct else None,
           "cubic_model_bps": profile.cubic_bps() if profile.loss_pct else None}
    print(f"  {profile.describe()}: CUBIC {statistics.mean(cubic) / 1e6:.3f} Mbit/s "
          f"({', '.join(f'{c / 1e6:.3f}' for c in cubic)}), BBR {bbr / 1e6:.2f}; Mathis "
          f"{(row['mathis_bps'] or 0) / 1e6:.3f}", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=40)
    args = parser.parse_args()
    date = datetime.now(timezone.utc)
    print("emulator limits", flush=True)
    limit_rows = limits(10)
    print("profiles", flush=True)
    rows = [profile_row(key, args.repeats, args.seconds) for key in wan.PROFILES]
    results.record("wan_validate", "profiles", {"limits": limit_rows, "profiles": rows,
                                                "repeats": args.repeats}, root=True,
                   started=date)
    return 0


if __name__ == "__main__":
    sys.exit(main())
