"""bench/report.py's sections for the packet-level WAN: wan_validate, wan_baseline, wan_after,
wan_delta and wan_fairness."""

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


def _first_byte(run: Result | None, digits: int = 1) -> str:
    return ("—" if run is None or run["first_byte_s"] is None
            else f"{run['first_byte_s']:.{digits}f} s")


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


def _after_check(p: Result, now: Result | None, plain: Result | None) -> str:
    """The done-when for one row: on A the whole run >= 85% of the link (the issue's "stays at
    85%", a whole-run figure); elsewhere the data phase >= 80% and >= 0.9× the 4-stream BBR
    iperf3 figure. Round trips before the first byte (from the capture, where the run has one;
    else the time, start-up included) within plain's + 2."""
    if now is None or plain is None or now["first_byte_s"] is None \
            or plain["first_byte_s"] is None:
        return "—"
    if p["profile"][0] == "A":
        rate, said = _whole(now) >= 85.0, "whole run ≥ 85%"
    else:
        rate = now["data_pct"] >= 80.0 and now["data_pct"] >= 0.9 * p["iperf_bbr4_pct"]
        said = "data ≥ 80%, ≥ 0.9×"
    if now.get("setup") and plain.get("setup"):
        extra = now["setup"]["round_trips"] - plain["setup"]["round_trips"]
        trips = "yes" if extra <= 2 else "no"
        first = f"round trips {trips} ({extra:+d})"
    else:
        late = now["first_byte_s"] - plain["first_byte_s"] - 2 * p["rtt_ms"] / 1000
        first = f"first byte {'yes' if late <= 0 else f'no (+{late:.1f} s)'}"
    return f"{'yes' if rate else 'no'} ({said}); {first}"


def _whole(run: Result) -> float:
    """The whole run's rate: to the published switch where it was seen (the issue's measure),
    else to the client's exit."""
    return run.get("switch_pct", run["run_pct"])


def _after_cell(run: Result | None) -> str:
    if run is None or "switch_pct" not in run:
        return _cell(run)
    mark = "†" if run["boxed"] else ("" if run["ok"] else " (failed)")
    return (f"{run['switch_pct']:.1f}% ({run['run_pct']:.1f}% to exit) / "
            f"{run['data_pct']:.1f}%{mark}")


def _setup(run: Result | None) -> str:
    """Round trips before the first byte, with the site's start-up and the rest (seconds)."""
    setup = run.get("setup") if run else None
    if not setup:
        return "—"
    return f"{setup['round_trips']} ({setup['startup_s']:.2f} + {setup['rest_s']:.2f} s)"


def wan_after(result: Result, table: Callable[[list[str], list[list[str]]], str],
              provenance: Callable[[Result], str]) -> str:
    f = result["figures"]
    captured = any(r.get("setup") for p in f["profiles"] for r in p["runs"])
    rows = []
    for p in sorted(f["profiles"], key=lambda p: p["profile"]):
        for origin in ("cubic", "bbr"):
            plain, before, now = (_find(p, c, origin) for c in ("plain", "before", "now"))
            if now is None and plain is None and before is None:
                continue
            ratio = now.get("data_vs_iperf_bbr4") if now else None
            rows.append([p["profile"], origin.upper(), f"{p['iperf_bbr4_pct']:.1f}%",
                         _cell(plain), _after_cell(before), _after_cell(now),
                         "—" if ratio is None else f"{ratio:.2f}×",
                         " / ".join(_first_byte(r, 2) for r in (plain, before, now)),
                         *([" / ".join(_setup(r) for r in (plain, now))] if captured else []),
                         str(now["logins"]) if now else "—", _after_check(p, now, plain)])
    head = ["link (RTT; loss each way)", "origin", "iperf3 4 BBR", "plain rsync+ssh",
            f"before (`{f['before']}`)", "now", "now data phase ÷ iperf3 4 BBR",
            "first byte: plain / before / now",
            *(["round trips before it (start-up + rest): plain / now"] if captured else []),
            "now: SSH logins", "done-when (issue 24)"]
    note = (f"Cells: whole run / data phase (10–90% of the file's bytes), as % of the link's "
            f"rate; first copy of a new {f['file_bytes'] >> 20} MiB file; the site's senders "
            f"on {f['site_cc'].upper()}, the origin's as the column says (pinned per route; "
            f"BBR is the server package's default). † stopped after {f['box_s']:g} s: the rate "
            f"is what arrived in that time. First byte: when {f['first_byte_bytes'] >> 10} KiB "
            f"of TCP payload had arrived. iperf3: {f['iperf_seconds']:g} s on the same link in "
            f"the same run. Done-when: now's data phase ≥ 80% of the link and ≥ 0.9× iperf3's 4 "
            f"BBR streams (A: the whole run ≥ 85%); now's round trips before the first byte "
            f"within plain's + 2."
            + (" Where a cell has two whole-run figures, the first is to the published switch "
               "(the issue's measure: a subscriber can copy from then on), the second to the "
               "client's exit (after the prune, the records and the site's report); plain "
               "rsync's is to its exit, when its last file is in place."
               if any("switch_pct" in r for p in f["profiles"] for r in p["runs"]) else "")
            + (" Round trips: counted from a packet capture at the site on the connection that "
               "carried the first byte (bench/wan_capture.py: each time the site sent and got "
               "data back after at least half a round trip); start-up: from the client's start "
               "to its first SYN; rest: the time to the first byte left over (the server's "
               "processes starting, the site's work between sessions, losses)."
               if captured else ""))
    return "\n".join([table(head, rows), "", note, "", provenance(result)])


def _delta_cell(run: Result | None) -> str:
    if run is None:
        return "—"
    mark = "†" if run["boxed"] else ("" if run["ok"] else " (failed)")
    return f"{run['seconds']:.1f} s{mark} ({run['payload_bytes'] / (1 << 20):.1f} MiB)"


def wan_delta(result: Result, table: Callable[[list[str], list[list[str]]], str],
              provenance: Callable[[Result], str]) -> str:
    f = result["figures"]
    columns = [("cubic", "before"), ("cubic", "now"), ("bbr", "plain"), ("bbr", "before"),
               ("bbr", "now")]
    rows = []
    for p in sorted(f["profiles"], key=lambda p: p["profile"]):
        gain = p.get("speedup")
        rows.append([p["profile"], f"{p['iperf_bbr4_pct']:.1f}%",
                     *(_delta_cell(_find(p, client, origin)) for origin, client in columns),
                     "—" if gain is None else
                     f"{'≥ ' if gain['lower_bound'] else ''}{gain['ratio']:.1f}×"])
    head = ["link (RTT; loss each way)", "iperf3 4 BBR", f"today: before (`{f['before']}`), "
            "origin CUBIC", "now, origin CUBIC", "plain rsync+ssh, origin BBR",
            "before, origin BBR", "now, origin BBR", "today ÷ now (BBR)"]
    note = (f"Cells: seconds from start to end (the product publishes before it exits) and the "
            f"TCP payload received. {f['fraction']:.0%} of a {f['disk_bytes'] >> 20} MiB disk "
            f"rewritten in 64 KiB blocks at scattered offsets ({f['changed_bytes'] / (1 << 20):.1f}"
            f" MiB), synced to a site that has the previous version (each client's own first "
            f"copy, made over an unshaped link and put back before each run); the site's "
            f"senders on {f['site_cc'].upper()}, the origin's as the column says. † stopped "
            f"after {f['box_s']:g} s: today ÷ now is then a lower bound.")
    return "\n".join([table(head, rows), "", note, "", provenance(result)])
