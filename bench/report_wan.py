"""bench/report.py's sections for the packet-level WAN: wan_validate, wan_baseline and
wan_fairness."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Result = dict[str, Any]


def _mbit(bps: float | None) -> str:
    return "—" if bps is None else f"{bps / 1e6:.3g} Mbit/s"


def wan_validate(result: Result, table: Callable[[list[str], list[list[str]]], str],
                 provenance: Callable[[Result], str]) -> str:
    f = result["figures"]
    limits = table(["link (one CUBIC flow, iperf3 10 s)", "goodput", "emulator CPU"],
                   [[r["link"], f"{r['mbit_s']:.0f} Mbit/s", f"{r['cpu_pct']:.0f}% of a core"]
                    for r in f["limits"]])
    rows = []
    for r in f["profiles"]:
        cubic = r["cubic_bps"]
        mean = statistics.mean(cubic)
        mathis = r["mathis_bps"]
        # RFC 9438: CUBIC grows by the larger of its cubic function and its Reno-friendly
        # estimate, which averages Reno's rate (Mathis' bound) under random loss
        model = max(r["cubic_model_bps"], mathis) if mathis else None
        rows.append([r["profile"],
                     f"{_mbit(mean)} ({min(cubic) / 1e6:.3g}–{max(cubic) / 1e6:.3g})",
                     _mbit(mathis), _mbit(model),
                     f"{mean / mathis:.2f}" if mathis else "—",
                     f"{100 * mean / (r['rate_kbit'] * 1000):.1f}%",
                     _mbit(r["bbr_bps"]), _mbit(r["ceiling_bps"])])
    head = [f"link (iperf3, {f['repeats']} × {f['profiles'][0]['seconds']:g} s)",
            "1 CUBIC flow: mean (min–max)", "Mathis MSS/RTT·1.22/√p",
            "CUBIC model (RFC 9438, cubic or Reno-friendly)", "CUBIC / Mathis",
            "CUBIC, % of link", "1 BBR flow", "goodput ceiling"]
    return "\n".join([limits, "", table(head, rows), "", provenance(result)])


def _cell(run: Result | None) -> str:
    if run is None:
        return "—"
    mark = "†" if run["boxed"] else ("" if run["ok"] else " (failed)")
    return f"{run['run_pct']:.1f}% / {run['data_pct']:.1f}%{mark}"


def _find(profile: Result, client: str, origin: str) -> Result | None:
    return next((r for r in profile["runs"] if r["client"] == client and r["origin"] == origin),
                None)


def _first_byte(run: Result | None) -> str:
    return "—" if run is None or run["first_byte_s"] is None else f"{run['first_byte_s']:.1f} s"


def wan_baseline(result: Result, table: Callable[[list[str], list[list[str]]], str],
                 provenance: Callable[[Result], str]) -> str:
    f = result["figures"]
    rows = []
    for p in f["profiles"]:
        product_cubic = _find(p, "product", "cubic")
        plain_cubic = _find(p, "plain", "cubic")
        vs_iperf = (f"{product_cubic['data_pct'] / p['iperf_bbr4_pct']:.2f}×"
                    if product_cubic and p["iperf_bbr4_pct"] else "—")
        rows.append([p["profile"], _cell(product_cubic), _cell(plain_cubic),
                     _cell(_find(p, "product", "bbr")), _cell(_find(p, "plain", "bbr")),
                     f"{p['iperf_cubic1_pct']:.1f}%", f"{p['iperf_bbr4_pct']:.1f}%",
                     f"{p['mathis_pct']:.1f}%" if p["mathis_pct"] else "—", vs_iperf,
                     f"{_first_byte(product_cubic)} / {_first_byte(plain_cubic)}"])
    head = ["link (RTT; loss each way)", "product, origin CUBIC", "plain rsync+ssh, origin CUBIC",
            "product, origin BBR", "plain, origin BBR", "iperf3 1 CUBIC", "iperf3 4 BBR",
            "Mathis", "product data phase ÷ iperf3 4 BBR", "first byte: product / plain"]
    note = (f"Cells: whole run / data phase (10–90% of the file's bytes), as % of the link's "
            f"rate; first copy of a new {f['file_bytes'] >> 20} MiB file; the site's senders "
            f"on {f['site_cc'].upper()}, the origin's as the column says (pinned per route). "
            f"† stopped after {f['box_s']:g} s: the rate is what arrived in that time. First "
            f"byte: when {f['first_byte_bytes'] >> 10} KiB of TCP payload had arrived.")
    return "\n".join([table(head, rows), "", note, "", provenance(result)])


def wan_fairness(result: Result, table: Callable[[list[str], list[list[str]]], str],
                 provenance: Callable[[Result], str]) -> str:
    f = result["figures"]
    rows = []
    for r in f["links"]:
        rate = r["rate_kbit"] * 1000

        def pct(bps: float, rate: float = rate) -> str:
            return f"{bps / 1e6:.3g} Mbit/s ({100 * bps / rate:.0f}%)"

        cubic, bbr = r["cubic"], r["bbr"]
        rows.append([r["link"], f"{r['buffer_bdp']:g} BDP ({r['buffer_bytes'] // 1000} kB)",
                     pct(cubic["ours_bps"]), pct(cubic["theirs_bps"]), pct(bbr["ours_bps"]),
                     pct(bbr["theirs_bps"]), f"{bbr['theirs_bps'] / cubic['theirs_bps']:.2f}×"])
    head = ["link", "buffer", "ours CUBIC", "theirs (CUBIC) beside ours CUBIC", "ours BBR",
            "theirs (CUBIC) beside ours BBR", "theirs: BBR ÷ CUBIC case"]
    first = f["links"][0]
    note = (f"Two iperf3 flows at once over the same emulated link, one sender, one receiver, "
            f"{first['seconds']:g} s each (the first {first['omit']:g} s left out): ours (the "
            "origin's transfer, on the algorithm the column says) and theirs (a site's other "
            "download, CUBIC). Percentages of the link's IP rate; the goodput ceiling is 96.5%.")
    return "\n".join([table(head, rows), "", note, "", provenance(result)])
