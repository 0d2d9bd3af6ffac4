#!/usr/bin/env python3
"""Regenerate the figures of docs/benchmarks.md from bench/results/*.json.

The document's prose (methods, what a figure means) is written by hand; every figure sits in a
generated section between two markers, rendered from one results file:

    <!-- generated: bench_sync.disk1024 -->
    … (rewritten by this script: a table and the commit, command and machine it came from)
    <!-- end generated -->

    .venv/bin/python bench/report.py           # rewrite docs/benchmarks.md in place
    .venv/bin/python bench/report.py --check   # exit 1 when the document is out of date

A figure measured on older code than it measures is marked where it stands: each bench script
lists in MEASURES the files under library_syncer/ its figures depend on, and a section whose
results' commit differs from the checkout in one of them (`git diff <commit>`) opens with
"measured on <commit>; <file> changed since" (not for a change to docstrings or comments
only). This needs git and the repository's history (a
fresh clone has both); without them the script stops with one line rather than guess.

tests/test_benchmarks_doc.py runs the check in the default suite.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import report_wan  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "bench" / "results"
SCRIPTS = {"fleet_monthly": "fleet"}  # a benchmark recorded by a script of another name
SECTION = re.compile(r"(<!-- generated: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)"
                     r"(<!-- end generated -->)", re.S)
MIB = 1 << 20

Result = dict[str, Any]


# --- small formatting helpers -----------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def secs(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def x(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}x"


def pct(value: float, digits: int = 2) -> str:
    return f"{value * 100:.{digits}f}%"


def span(values: list[float], fmt: Callable[[float], str]) -> str:
    low, high = min(values), max(values)
    return fmt(low) if fmt(low) == fmt(high) else f"{fmt(low)}–{fmt(high)}"


def provenance(result: Result) -> str:
    m = result["machine"]
    dirty = " plus uncommitted changes" if result.get("dirty") else ""
    rsync = m["rsync"].split("protocol")[0].replace("  ", " ").strip()
    tools = ", ".join(t for t in (rsync, m["openssh"].split(",")[0], m.get("openssl", ""),
                                  f"Python {m['python']}") if t)
    return (f"Measured on commit `{result['commit'][:10]}`{dirty}, {result['date'][:10]}: "
            f"`{result['command']}`. Machine: {m['cpu_model']}, {m['cpus']} CPUs, "
            f"{m['memory_gib']:.0f} GiB RAM, kernel {m['kernel']}, Debian "
            f"{m['debian_version']}, {tools}.")


# --- bench_sync -------------------------------------------------------------------------------


def _cpu(measure: Result) -> str:
    if measure.get("cpu_client") is None:
        return "—"
    return f"{measure['cpu_client'] + measure['cpu_server']:.2f} s"


def sync_full(result: Result) -> str:
    full = result["figures"]["full"]
    rows = []
    for r in full["rounds"]:
        s, b = r["syncer"], r["baseline"]
        rows.append([str(r["round"]), "library-syncer" if r["first"] == "syncer" else "baseline",
                     f"{secs(s['seconds'])} (transfer {secs(s['parts'].get('transfer'))}, "
                     f"manifests {secs(s['parts'].get('manifests'))})",
                     f"{secs(b['seconds'])} (rsync {secs(b['parts'].get('rsync'))}, build "
                     f"{secs(b['parts'].get('build'))})",
                     x(r["wall_ratio"], 3), f"{_cpu(s)} / {_cpu(b)}", x(r["cpu_ratio"], 3),
                     secs(r["dry_run"]["seconds"]), secs(r["handshake"]["seconds"])])
    size = full["disk_bytes"] / MIB
    head = ["round", "first", "library-syncer", "baseline", "wall ratio",
            "CPU both sides (syncer / baseline)", "CPU ratio", "dry run alone",
            "one ssh handshake"]
    median_wall = statistics.median(r["syncer"]["seconds"] for r in full["rounds"])
    wall = x(full["wall_ratio_median"], 3)
    cpu = x(full["cpu_ratio_median"], 3)
    summary = (f"First sync of {size:.0f} MiB: wall ratio median **{wall}**, CPU ratio median "
               f"{cpu}. The dry run on its own took "
               f"{secs(full['dry_run_seconds_median'])} and one ssh handshake "
               f"{secs(full['handshake_seconds_median'])} (median), i.e. "
               f"{pct(full['handshake_seconds_median'] / median_wall, 1)} of library-syncer's "
               "median wall time.")
    return table(head, rows) + "\n\n" + summary


def sync_delta(result: Result) -> str:
    figures = result["figures"]
    if "delta" not in figures:
        return ""
    delta, size = figures["delta"], figures["disk_mib"]
    rounds = delta["rounds"]
    rows = [[f"wire bytes for a {pct(delta['change'], 0)} change of the {size} MiB disk "
             f"({len(rounds)} rounds, {delta['chunks']} pieces)",
             span([r["syncer_wire_fraction"] for r in rounds], pct) + " of the disk",
             span([r["baseline_wire_fraction"] for r in rounds], pct), "<= 1.2%"],
            ["wire ratio to the baseline", span([r["wire_ratio"] for r in rounds],
                                                lambda v: f"{v:.3f}x"), "1", ""],
            ["wall time of the delta sync, ratio to the baseline",
             ", ".join(x(r["wall_ratio"]) for r in rounds), "1", "<= 1.1x"]]
    no_change = figures["no_change"]
    rows.append(["no-change run (best of two, interleaved)", secs(no_change["syncer_seconds"]),
                 secs(no_change["baseline_seconds"]), ""])
    resume = figures["resume"]
    rows.append([f"resume after a cut at {resume['arrived_bytes'] / MIB:.1f} MiB of a new "
                 f"{resume['file_bytes'] / MIB:.0f} MiB file",
                 f"re-sent {resume['resent_bytes'] / MIB:.2f} MiB "
                 f"({pct(resume['resent_fraction'])} of what had arrived)",
                 "the original kept nothing: 100%", "< 10%"])
    return table(["figure", "library-syncer", "baseline", "target"], rows)


def bench_sync(result: Result) -> str:
    parts = [sync_full(result), sync_delta(result), provenance(result)]
    return "\n\n".join(p for p in parts if p)


# --- bench_manifest ---------------------------------------------------------------------------


def bench_manifest(result: Result) -> str:
    f = result["figures"]
    ssl = f["openssl_seconds"]
    mb = f["library_bytes"] / 1e6
    rows = [[f"`openssl dgst -sha256` over the same {f['files']} files (1 core)", secs(ssl),
             f"{mb / ssl:.0f} MB/s", "1.00"]]
    for label, key in (("cold build, 1 hashing thread", "cold_1_thread_seconds"),
                       (f"cold build, {f['cpus']} threads (default: one per CPU)",
                        "cold_all_threads_seconds")):
        rows.append([label, secs(f[key]), f"{mb / f[key]:.0f} MB/s", x(ssl / f[key])])
    rows.append([f"no-change rebuild of the {f['library_bytes'] / 1024**3:.0f} GiB library",
                 secs(f["rebuild_seconds"]), f"{f['rebuild_content_bytes']} bytes of content read",
                 ""])
    n = f["small_files"]
    rows += [[f"{n}-file library, cold build", secs(f["small_cold_seconds"]), "", ""],
             [f"{n}-file library, no-change rebuild in place", secs(f["small_rebuild_seconds"]),
              f"{f['small_rebuild_content_bytes']} bytes of content read "
              f"({f['small_rebuild_all_read_bytes'] / 1e6:.1f} MB of JSON/cache)", ""],
             [f"{n}-file library, no-change build of a hard-linked staging tree (the sync)",
              secs(f["small_sync_seconds"]), f"{f['small_sync_content_bytes']} bytes of content "
              "read", ""]]
    head = ["what", "time", "throughput", "vs `openssl dgst -sha256`"]
    return table(head, rows) + "\n\n" + provenance(result)


# --- bench_server_scale -----------------------------------------------------------------------


def bench_server_scale(result: Result) -> str:
    phases = result["figures"]["phases"]
    base = phases[0]["cpu_per_client"]
    rows = []
    for p in phases:
        retried = (f"{p['retried']} ({p['extra_attempts']} extra attempts, max "
                   f"{p['max_attempts']})" if p["retried"] else "0")
        rows.append([p["name"], f"{p['completed']}/{p['clients']}", secs(p["seconds"]),
                     secs(p["cpu_per_client"]), f"{p['cpu_per_client'] / base:.2f}", retried])
    head = ["phase", "completed", "wall", "server CPU per client", "vs baseline",
            "clients that retried"]
    return table(head, rows) + "\n\n" + provenance(result)


# --- bench_trace ------------------------------------------------------------------------------


def bench_trace(result: Result) -> str:
    rows = [[f"{r['files']:,}", f"{r['tick_wall'] * 1000:.0f} ms", f"{r['tick_cpu'] * 1000:.0f} ms",
             f"{r['find_wall'] * 1000:.0f} ms", x(r["ratio"]), f"{r['trace_bytes'] / 1e3:.0f} kB"]
            for r in result["figures"]["rows"]]
    head = ["files", "trace tick (no change)", "its CPU", "`find -printf` same tree",
            "ratio", "trace.json"]
    return table(head, rows) + "\n\n" + provenance(result)


# --- bench_poll -------------------------------------------------------------------------------


def bench_poll(result: Result) -> str:
    f = result["figures"]
    rows = [[r["name"], f"{r['server_cpu_per_check'] * 1000:.0f} ms",
             f"{r['bytes_up_per_check'] / 1e3:.1f} kB + {r['bytes_down_per_check'] / 1e3:.1f} kB",
             f"{r['wall_per_check'] * 1000:.0f} ms", f"{r['fleet_cpu_seconds_per_hour']:.0f} s",
             f"{r['fleet_bytes_per_hour'] / 1e6:.1f} MB"] for r in f["rows"]]
    fleet = f"{f['sites']} sites every {f['interval'] / 60:g} min"
    head = ["check", "origin CPU per check", "wire per check (up + down)", "wall per check",
            f"origin CPU per hour, {fleet}", f"wire per hour, {fleet}"]
    return table(head, rows) + "\n\n" + provenance(result)


# --- bench_basis ------------------------------------------------------------------------------


def _basis_chosen(case: Result) -> str:
    chosen = case["runs"]["basis"]["bases"]
    return "; ".join(f"`{old}`" for old in chosen.values()) or "none"


def _wire_of(case: Result, who: str) -> float:
    return case["runs"][who]["wire"] / case["item_bytes"]


def basis_cases(result: Result) -> str:
    rows = []
    for case in result["figures"]["cases"]:
        on, off = case["runs"]["basis"], case["runs"]["plain"]
        rows.append([case["label"], f"{case['item_bytes'] / MIB:.0f} MiB",
                     f"{on['wire'] / MIB:.2f} MiB = **{pct(_wire_of(case, 'basis'))}**",
                     f"{off['wire'] / MIB:.2f} MiB = {pct(_wire_of(case, 'plain'))}",
                     x(on["wire"] / off["wire"], 3), f"{secs(on['seconds'])} / "
                     f"{secs(off['seconds'])}", _basis_chosen(case),
                     f"{case['rsync_block']} B" if "rsync_block" in case else "—"])
    head = ["case", "new item", "wire, `find_basis = true`", "wire, `false` (today)",
            "ratio", "wall true / false", "basis chosen", "rsync block"]
    return table(head, rows)


def _target(label: str, value: float, limit: float, shown: str) -> list[str]:
    return [label, shown, f"<= {pct(limit, 1)}", "**yes**" if value <= limit else "**no**"]


def basis_targets(result: Result) -> str:
    cases = {c["name"]: c for c in result["figures"]["cases"]}
    rows = []
    if "rename" in cases:
        value = _wire_of(cases["rename"], "basis")
        rows.append(_target("renamed item: wire / its size", value, 0.01, pct(value)))
    if "version5" in cases:
        value = _wire_of(cases["version5"], "basis")
        rows.append(_target("new version, 5% changed: wire / its size", value, 0.07, pct(value)))
    if "wrong-guess" in cases:
        case = cases["wrong-guess"]
        extra = (case["runs"]["basis"]["wire"] - case["runs"]["fresh"]["wire"]) \
            / case["item_bytes"]
        rows.append(_target("wrong guess: wire beyond a site with no candidate, / the size",
                            extra, 0.005, f"{extra * 100:+.3f}% (no candidate: "
                            f"{pct(_wire_of(case, 'fresh'))}, `find_basis = false`: "
                            f"{pct(_wire_of(case, 'plain'))})"))
    return table(["target (the issue's)", "measured", "target", "holds"], rows)


def bench_basis(result: Result) -> str:
    f = result["figures"]
    summary = (f"Template disk {f['disk_mib']} MiB, changes in aligned runs of {f['run_kib']} "
               f"KiB; all cases in {secs(f['wall_seconds'])}.")
    return "\n\n".join([basis_cases(result), basis_targets(result), summary,
                         provenance(result)])


# --- bench_connection -------------------------------------------------------------------------

KINDS = ("small change", "no change")


def _connection_runs(result: Result, share: bool, kind: str) -> list[Result]:
    return [r for r in result["figures"]["runs"]
            if r["share_connection"] is share and r["kind"] == kind]


def _handshakes(runs: list[Result]) -> str:
    return span([float(r["handshakes"]) for r in runs], lambda v: f"{v:.0f}")


def bench_connection(result: Result) -> str:
    f = result["figures"]
    medians: dict[tuple[bool, str], float] = {}
    rows = []
    for share in (False, True):
        cells = []
        for kind in KINDS:
            runs = _connection_runs(result, share, kind)
            medians[share, kind] = statistics.median(r["seconds"] for r in runs)
            cells += [_handshakes(runs), secs(medians[share, kind])]
        label = "before: `share_connection = false`" if not share else \
            "after: `share_connection = true`"
        failed = sum(not r["ok"] for r in f["runs"] if r["share_connection"] is share)
        rows.append([label, *cells, str(failed)])
    rows.append(["after / before", "", x(medians[True, KINDS[0]] / medians[False, KINDS[0]]),
                 "", x(medians[True, KINDS[1]] / medians[False, KINDS[1]]), ""])
    head = ["setting", "handshakes per run, small change", "median wall, small change",
            "handshakes per run, no change", "median wall, no change", "failed runs"]
    summary = (f"One site, {f['profile']}; library {f['library_bytes'] / MIB:.1f} MiB in "
               f"{f['items']} items; {f['rounds']} rounds, each running both settings in "
               f"alternating order; a small change rewrites {pct(f['fraction'], 0)} of one disk.")
    return "\n\n".join([table(head, rows), summary, provenance(result)])


# --- fleet_monthly ----------------------------------------------------------------------------


def fleet_monthly(result: Result) -> str:
    f = result["figures"]
    rows, groups = [], {True: [], False: []}
    for site in f["sites"]:
        groups[site["find_basis"]].append(site)
        rows.append([str(site["site"]), "true" if site["find_basis"] else "false (today)",
                     secs(site["seconds"]), f"{site['rx_bytes'] / MIB:.2f} MiB",
                     f"{site['rx_bytes'] / f['item_bytes']:.3f}",
                     f"{site['rx_bytes'] / f['changed_bytes']:.2f}"])
    head = ["site", "`find_basis`", "time", "received", "/ new item", "/ changed bytes"]
    median = {k: (statistics.median(s["seconds"] for s in v),
                  statistics.median(s["rx_bytes"] for s in v)) for k, v in groups.items()}
    time_ratio, byte_ratio = (median[True][k] / median[False][k] for k in (0, 1))
    summary = (f"{f['profile']}; {f['sites_per_setting']} sites per setting, all at once; new "
               f"item {f['item_bytes'] / MIB:.1f} MiB with {f['changed_bytes'] / MIB:.2f} MiB "
               f"({pct(f['fraction'], 0)} of its disk) rewritten. Median per site, "
               f"`find_basis = true` against `false`: time **{x(time_ratio)}**, bytes received "
               f"**{x(byte_ratio, 3)}**. Problems "
               f"(convergence, torn snapshots, failed runs): {f['problems']}.")
    return "\n\n".join([table(head, rows), summary, provenance(result)])


# --- fleet ------------------------------------------------------------------------------------


def _range(values: list[float], fmt: str = "{:.0f} s") -> str:
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}–{high}"


def _per_profile(scenario: Result, profile: str) -> str:
    times = [s["seconds"] for s in scenario["sites"] if s["profile"] == profile]
    return _range(times) if times else "—"


def fleet(result: Result) -> str:
    f = result["figures"]
    profiles = f["profiles"]
    rows = []
    for scenario in f["scenarios"]:
        ratios = [s["ratio"] for s in scenario["sites"]]
        rows.append([scenario["label"], secs(scenario["seconds"]),
                     *(_per_profile(scenario, p) for p in profiles),
                     f"{_range(ratios, '{:.3f}')} × {scenario['against']}",
                     secs(scenario["cpu_per_site_sync"]) if scenario.get("cpu_per_site_sync")
                     is not None else "—", str(scenario["problems"])])
    head = ["scenario", "converged", *(f"per {p} site" for p in profiles),
            "bytes received / reference", "server CPU per site-sync", "problems"]
    notes = [f"- {line}" for line in f.get("notes", [])]
    return "\n".join([table(head, rows), "", *notes, *([""] if notes else []),
                      provenance(result)])


# --- fleet_tree -------------------------------------------------------------------------------


def fleet_tree(result: Result) -> str:
    f = result["figures"]
    rows = []
    for scenario in f["scenarios"]:
        nodes = scenario["nodes"]
        statuses = sorted({n["returncode"] for n in nodes})
        rows.append([scenario["label"], secs(scenario["seconds"]), str(len(nodes)),
                     ", ".join(str(s) for s in statuses) or "—",
                     f"{scenario['origin_tx_bytes'] / MIB:.2f} MiB",
                     f"{scenario['changed_bytes'] / MIB:.2f} MiB" if scenario["changed_bytes"]
                     else "—", str(scenario["problems"])])
    head = ["scenario", "took", "runs", "exit statuses", "sent by the origin", "change",
            "problems"]
    tree, flat = f["tree_origin_bytes"], f["flat_origin_bytes"]
    summary = (f"Origin, {f['relays']} relays ({f['relay_profile']}), {f['sites']} sites "
               f"({'; '.join(f['site_profiles'])}); library {f['library_bytes'] / MIB:.1f} MiB. "
               f"Bytes leaving the origin for one revision of the same kind "
               f"({f['tree_change_bytes'] / MIB:.2f} and {f['flat_change_bytes'] / MIB:.2f} MiB "
               f"of change): tree **{tree / MIB:.2f} MiB** "
               f"({tree / f['tree_change_bytes']:.2f} × the change), flat (every node from the "
               f"origin) **{flat / MIB:.2f} MiB** ({flat / f['flat_change_bytes']:.2f} × the "
               f"change): the tree sends **{x(tree / flat)}** of the flat fleet's bytes. Whole "
               f"run: {secs(f['total_seconds'])}.")
    notes = [f"- {line}" for line in f.get("notes", [])]
    return "\n".join([table(head, rows), "", summary, "", *notes, *([""] if notes else []),
                      provenance(result)])


# --- fleet_failover ---------------------------------------------------------------------------


def fleet_failover(result: Result) -> str:
    f = result["figures"]
    rows = []
    for r in f["rounds"]:
        change = r["changed_bytes"]
        profiles = sorted({s["profile"] for s in r["sites"]})
        for profile in profiles:
            hit = [s for s in r["sites"] if s["affected"] and s["profile"] == profile]
            base = [s for s in r["sites"] if not s["affected"] and s["profile"] == profile]
            if not hit:
                continue
            mib = lambda v: f"{v / MIB:.2f}"  # noqa: E731
            rows.append([
                f"{r['relay']} {'sshd killed' if r['how'] == 'kill' else 'link down'} at "
                f"{secs(r['loss_at'])}", profile, str(len(hit)),
                span([s["at_loss"] / change for s in hit], lambda v: f"{v * 100:.0f}%"),
                span([s["after_loss"] for s in hit], secs),
                span([s["resent_bytes"] for s in hit], mib) + " MiB",
                (span([s["resent_bytes"] for s in base], mib) + " MiB") if base else "—",
                ", ".join(sorted({s["upstream"] for s in hit})), str(r["problems"])])
    head = ["relay lost", "profile", "sites failed over", "received at the loss",
            "converged after the loss", "received beyond the change",
            "same profile, other relay (no loss)", "served by", "problems"]
    changes = ", ".join(f"{r['changed_bytes'] / MIB:.2f}" for r in f["rounds"])
    worst = ", ".join(f"{r['relay']} {r['how']}: {secs(r['converge_after_loss'])}"
                      for r in f["rounds"])
    summary = (f"Origin, {f['relays']} relays ({f['relay_profile']}), {f['sites']} sites "
               f"({'; '.join(f['site_profiles'])}); library {f['library_bytes'] / MIB:.1f} "
               f"MiB; each round's change {changes} MiB; `sync.retry_budget = "
               f"\"{f['retry_budget']:g}s\"` (half of it for the relay, then the origin); "
               f"the relay lost once the first of its sites had received "
               f"{f['kill_after'] * 100:.0f}% of the change. Last affected site converged, "
               f"after the loss: {worst}. Problems while building the tree: "
               f"{f['setup_problems']}. Whole run: {secs(f['total_seconds'])}.")
    return "\n".join([table(head, rows), "", summary, "", provenance(result)])


# --- fleet_poll -------------------------------------------------------------------------------


def _t(value: float | None) -> str:
    return "never (within the run)" if value is None else f"{value:.1f} s"


def _median(values: list[float | None]) -> float | None:
    """The median, a revision never reached (None) counting as the slowest; None if that is
    where the median falls."""
    if not values:
        return None
    middle = statistics.median(float("inf") if v is None else v for v in values)
    return None if middle == float("inf") else middle


def fleet_poll(result: Result) -> str:
    f = result["figures"]
    q = f["quiet"]
    polled = f["poll"] if isinstance(f["poll"], list) else [f["poll"]]
    scheduled = f["scheduled"] if isinstance(f["scheduled"], list) else [f["scheduled"]]
    rows = []
    for label, samples in ((f"poll every {f['period']:g} s (+ up to {f['period'] / 10:g} s)",
                            polled),
                           (f"schedule every {f['schedule']:g} s (+ up to "
                            f"{f['random_delay']:g} s)", scheduled)):
        for number, o in enumerate(samples, 1):
            rows.append([f"{label}, revision {number}", _t(o["last_relay_published"]),
                         _t(o["last_site_published"]), _t(o["last_site_viewed"]),
                         f"{o['full_runs']} of {o['runs']}", str(o["problems"])])
    head = ["every node", "last relay published", "last site published",
            "origin's view shows every site", "full runs / runs", "problems"]
    poll_site = _median([o["last_site_published"] for o in polled])
    sched_site = _median([o["last_site_published"] for o in scheduled])
    poll_view = _median([o["last_site_viewed"] for o in polled])
    ratio = sched_site / poll_site if sched_site and poll_site else None
    bounds = (f"Polling bounds: every site publishes within a period and its random tenth per "
              f"level, plus each level's longest full run, plus 5 s "
              f"({secs(f['poll_bound'])}); the origin's view shows it one period and its tenth "
              f"later ({secs(f['view_bound'])}). " if "view_bound" in f else
              f"Polling bound (a period and its random tenth per level, plus each level's "
              f"longest full run, plus 5 s): {secs(f['poll_bound'])}. ")
    summary = (f"Origin, {f['relays']} relays ({f['relay_profile']}), {f['sites']} sites "
               f"({'; '.join(f['site_profiles'])}); library {f['library_bytes'] / MIB:.1f} MiB, "
               f"{pct(f['fraction'], 0)} of one disk rewritten per revision, "
               f"{len(polled)} revision(s) per mode, each declared at a random moment. Times "
               f"from the origin declaring the revision. {bounds}Medians: the last site "
               f"published a revision after **{_t(poll_site)}** polling and "
               f"**{_t(sched_site)}** on the schedule alone (**{x(ratio, 1)}**); the origin's "
               f"view showed every site after {_t(poll_view)} polling.")
    cost = (f"Nothing changing, {f['quiet']['seconds']:g} s of polling: {q['checks']} checks, "
            f"{q['origin_checks']} of them at the origin (the relays'); the origin's sshd "
            f"logged **{q['origin_logins']} logins** ("
            f"{q['logins_per_check']:.2f} per check) and its interface counted "
            f"**{q['origin_bytes_per_check'] / 1e3:.1f} kB per check** "
            f"({(q['origin_rx_bytes'] + q['origin_tx_bytes']) / 1e3:.1f} kB in, out and "
            f"headers, {q['origin_packets']} packets); summed over every node's interface "
            f"(a site's check counted at the site and at its relay) "
            f"{q['node_bytes_per_check'] / 1e3:.1f} kB per check; no check ran a sync "
            f"({q['problems']} problems). Whole run: {secs(f['total_seconds'])}.")
    return "\n".join([table(head, rows), "", summary, "", cost, "", provenance(result)])


# --- bench_streams ----------------------------------------------------------------------------


def _stream_runs(result: Result, key: tuple[str, str], rtt: float) -> list[Result]:
    return [r for r in result["figures"]["runs"]
            if (r["library"], r["case"]) == key and r["rtt_ms"] == rtt]


def bench_streams(result: Result) -> str:
    f = result["figures"]
    rtt = f["rtt_ms"]
    keys = sorted({(r["library"], r["case"]) for r in f["runs"]},
                  key=lambda k: (k[0] != "large", not k[1].startswith("plain"), k[1]))
    rows, walls = [], {}
    for key in keys:
        near, far = _stream_runs(result, key, 0.0), _stream_runs(result, key, rtt)
        walls[key] = statistics.median(r["seconds"] for r in far)
        rate = statistics.median(r["mib_per_s"] for r in far) if key[0] == "large" else None
        rows.append([key[0], key[1], span([float(r["logins"]) for r in far], lambda v: f"{v:.0f}"),
                     secs(statistics.median(r["seconds"] for r in near)), secs(walls[key]),
                     f"{rate:.1f}" if rate is not None else "",
                     secs(statistics.median(r["first_byte"] for r in far)),
                     f"{f['round_trips'][f'{key[0]}: {key[1]}']:.1f}"])
    head = ["library", "case", "logins", "median wall, no delay", f"median wall, RTT {rtt:.0f} ms",
            "MiB/s (whole run)", "first byte", "round trips before it"]
    one = next((k for k in keys if k == ("large", "product, 1 stream")), None)
    many = next((k for k in keys if k[0] == "large" and k[1].endswith("streams")), None)
    ratio = (f" {f['streams']} streams / 1 stream, whole run at {rtt:.0f} ms: "
             f"{x(walls[many] / walls[one])}.") if one and many else ""
    summary = (f"Loopback sshd (forced `rrsync -ro`) behind tests/fleet/relay.py (delay above "
               f"TCP, no rate limit, no loss); large: a first copy of {f['files']} new files of "
               f"{f['file_mib']} MiB; small: one 2 MiB file; {f['rounds']} rounds, medians, "
               f"each run a fresh site. Round trips: (first byte at {rtt:.0f} ms - first byte "
               f"with no delay) / RTT; a real link adds one per serial TCP handshake.{ratio}")
    return "\n\n".join([table(head, rows), summary, provenance(result)])


# --- bench_verify -----------------------------------------------------------------------------

VERIFY_SITES = ("verifying", "unpinned", "main")


def _verify_cell(part: Result, site: str) -> str:
    """A role's median wall time and, in brackets, its median transfer and manifest phases."""
    runs = [r["sites"][site] for r in part["rounds"]]
    phase = {name: statistics.median(m["parts"].get(name, 0.0) for m in runs)
             for name in ("transfer", "manifests")}
    return (f"{secs(part['median_seconds'][site])} (transfer {secs(phase['transfer'])}, "
            f"manifests {secs(phase['manifests'])})")


def _verify_ratio(part: Result, against: str) -> str:
    ratios = [r[f"ratio_{against}"] for r in part["rounds"]]
    return (f"**{x(part[f'ratio_{against}_median'], 3)}** (medians' ratio "
            f"{x(part[f'ratio_{against}_of_medians'], 3)}; "
            f"{part[f'extra_{against}_median'] * 1000:+.0f} ms; rounds "
            f"{span(ratios, lambda v: f'{v:.2f}')})")


def _fixed_cost(f: Result, against: list[str]) -> str:
    """What verifying adds to a run that fetches nothing, against each other role, also as a
    share of that role's median 1 GiB runs."""
    idle, full, delta = f["no_change"], f["full"], f["delta"]
    said = []
    for other in against:
        extra = idle[f"extra_{other}_median"]
        said.append(f"{extra * 1000:+.0f} ms against {other} ("
                    f"{pct(extra / full['median_seconds'][other], 1)} of its median first sync, "
                    f"{pct(extra / delta['median_seconds'][other], 1)} of its median change)")
    return f"The fixed cost of verifying, from the runs that changed nothing: {'; '.join(said)}."


def bench_verify(result: Result) -> str:
    f = result["figures"]
    parts = [(f"first sync of {f['disk_mib']} MiB", f["full"]),
             (f"{pct(f['delta']['change'], 0)} of the disk changed in {f['delta']['chunks']} "
              "pieces", f["delta"]), ("nothing changed", f["no_change"])]
    sites = [s for s in VERIFY_SITES if s in f["full"]["median_seconds"]]
    against = [s for s in ("unpinned", "main") if s in sites]
    rows = [[label, str(len(part["rounds"])), *(_verify_cell(part, s) for s in sites),
             *(_verify_ratio(part, a) for a in against)] for label, part in parts]
    head = ["run", "rounds", *(f"{s}: median wall" for s in sites),
            *(f"verifying / {a}: median of the rounds" for a in against)]
    notes = [_fixed_cost(f, against), f"Target (issue 23): verifying <= 1.10x. One "
             f"`ssh-keygen -Y verify` of the "
             f"statement alone: {secs(f['verify_seconds'])} (a verifying run makes two); the "
             f"declaration read on its own SSH connection: {secs(f['declared_read_seconds'])} "
             "(a run shares its connection)."]
    if f.get("before"):
        notes.append(f"main: the site code of `{f['before']}`, no keys pinned, the same server.")
    return "\n\n".join([table(head, rows), " ".join(notes), provenance(result)])


RENDERERS: dict[str, Callable[[Result], str]] = {
    "bench_sync": bench_sync, "bench_manifest": bench_manifest,
    "bench_server_scale": bench_server_scale, "bench_trace": bench_trace,
    "bench_poll": bench_poll, "fleet": fleet,
    "bench_basis": bench_basis, "bench_connection": bench_connection,
    "fleet_monthly": fleet_monthly, "fleet_tree": fleet_tree,
    "fleet_poll": fleet_poll,
}
RENDERERS["fleet_failover"] = fleet_failover
RENDERERS["wan_validate"] = lambda result: report_wan.wan_validate(result, table, provenance)
RENDERERS["wan_baseline"] = lambda result: report_wan.wan_baseline(result, table, provenance)
RENDERERS["wan_after"] = lambda result: report_wan.wan_after(result, table, provenance)
RENDERERS["wan_fairness"] = lambda result: report_wan.wan_fairness(result, table, provenance)
RENDERERS["wan_delta"] = lambda result: report_wan.wan_delta(result, table, provenance)
RENDERERS["bench_streams"] = bench_streams
RENDERERS["bench_verify"] = bench_verify


# --- which code the figures measured ----------------------------------------------------------


class ProvenanceError(Exception):
    """The figures' provenance cannot be established (no git, no history, no MEASURES)."""


def git(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=False, timeout=60)
    except FileNotFoundError:
        raise ProvenanceError("git not found: it is needed, with the repository's "
                              "history, to tell which figures were measured on older code") \
            from None


def _script_list(benchmark: str, name: str, root: Path) -> list[str] | None:
    """The list `name` of the script that records `benchmark`, read without importing it."""
    script = root / "bench" / f"{SCRIPTS.get(benchmark, benchmark)}.py"
    if not script.is_file():
        raise ProvenanceError(f"bench/{script.name}: missing (results of {benchmark} name it)")
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if [getattr(t, "id", "") for t in targets] == [name] and node.value is not None:
                return list(ast.literal_eval(node.value))
    return None


def measures(benchmark: str, root: Path = ROOT) -> list[str]:
    """The MEASURES of the script that records `benchmark`: files under library_syncer/."""
    script = f"bench/{SCRIPTS.get(benchmark, benchmark)}.py"
    files = _script_list(benchmark, "MEASURES", root)
    if files is None:
        raise ProvenanceError(f"{script}: no MEASURES list (the files under "
                              f"library_syncer/ its figures depend on)")
    missing = [f for f in files if not (root / "library_syncer" / f).exists()]
    if missing:
        raise ProvenanceError(f"{script}: MEASURES names {', '.join(missing)}, "
                              f"not in library_syncer/")
    return files


def harness(benchmark: str, root: Path = ROOT) -> list[str]:
    """The script's HARNESS (optional): test-harness files, from the top of the repository,
    that its figures depend on as much as on the product (the emulated network, say)."""
    files = _script_list(benchmark, "HARNESS", root) or []
    missing = [f for f in files if not (root / f).exists()]
    if missing:
        raise ProvenanceError(f"bench/{SCRIPTS.get(benchmark, benchmark)}.py: HARNESS names "
                              f"{', '.join(missing)}, not in the repository")
    return files


def commit_problem(commit: str, root: Path = ROOT) -> str | None:
    """Why `commit` is not a commit in the history of the checkout (None when it is)."""
    if git("rev-parse", "--git-dir", root=root).returncode != 0:
        return f"{root} is not a git checkout (a fresh clone has the history this needs)"
    if git("cat-file", "-e", f"{commit}^{{commit}}", root=root).returncode != 0:
        return (f"commit {commit[:10]} is not in this repository (a shallow clone? "
                f"`git fetch --unshallow`)")
    if git("merge-base", "--is-ancestor", commit, "HEAD", root=root).returncode != 0:
        return f"commit {commit[:10]} is not in the history of HEAD"
    return None


def changed_since(result: Result, root: Path = ROOT) -> list[str]:
    """The files of MEASURES (under library_syncer/) and HARNESS (from the top) whose content
    differs from the results' commit: committed since or changed in the checkout (a change
    taken back again is no change)."""
    problem = commit_problem(result["commit"], root)
    if problem:
        raise ProvenanceError(f"bench/results ({result['benchmark']}): {problem}")
    files = [f"library_syncer/{f}" for f in measures(result["benchmark"], root)]
    files += harness(result["benchmark"], root)
    if not files:
        return []
    diff = git("diff", "--name-only", result["commit"], "--", *files, root=root)
    if diff.returncode != 0:
        raise ProvenanceError(f"git diff {result['commit'][:10]}: "
                              f"{(diff.stderr.strip().splitlines() or ['failed'])[0]}")
    changed = {f for f in diff.stdout.splitlines() if not _same_code(result["commit"], f, root)}
    return [f.removeprefix("library_syncer/") for f in files if f in changed]


def _same_code(commit: str, path: str, root: Path) -> bool:
    """A Python file whose code is the same at `commit` and now: only its comments, docstrings
    or layout changed (what they measured did not)."""
    if not path.endswith(".py") or not (root / path).is_file():
        return False
    then = git("show", f"{commit}:{path}", root=root)
    if then.returncode != 0:
        return False
    try:
        return _code(then.stdout) == _code((root / path).read_text())
    except SyntaxError:
        return False


def _code(source: str) -> str:
    """The module's syntax tree without docstrings: what runs."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) \
                and ast.get_docstring(node, clean=False) is not None:
            node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


def older_code(result: Result, changed: list[str]) -> str:
    """The mark on figures measured on older code ('' when they were not)."""
    if not changed:
        return ""
    return (f"**Measured on `{result['commit'][:10]}`; {', '.join(f'`{f}`' for f in changed)} "
            f"changed since:** these figures may not hold for the current code until "
            f"`{result['command']}` is run again.\n\n")


# --- the document -----------------------------------------------------------------------------


def render_section(name: str, results_dir: Path, root: Path = ROOT) -> str:
    path = results_dir / f"{name}.json"
    if not path.exists():
        return f"_No results yet: `bench/results/{name}.json` is missing._\n"
    result = json.loads(path.read_text())
    body = RENDERERS[result["benchmark"]](result).rstrip("\n") + "\n"
    return older_code(result, changed_since(result, root)) + body


def render(text: str, results_dir: Path = RESULTS, root: Path = ROOT) -> str:
    """The document with every generated section rewritten from its results file."""
    def replace(match: re.Match[str]) -> str:
        body = render_section(match.group("name"), results_dir, root)
        return f"{match.group(1)}{body}{match.group(4)}"
    return SECTION.sub(replace, text)


def sections(text: str) -> list[str]:
    return [m.group("name") for m in SECTION.finditer(text)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare; exit 1 when docs/benchmarks.md is out of date")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    text = args.doc.read_text()
    try:
        fresh = render(text)
    except ProvenanceError as error:
        print(f"bench/report.py: {error}", file=sys.stderr)
        return 2
    if args.check:
        if fresh != text:
            print(f"{args.doc}: out of date with bench/results; run bench/report.py",
                  file=sys.stderr)
            return 1
        return 0
    if fresh != text:
        args.doc.write_text(fresh)
        print(f"{args.doc}: rewrote {len(sections(text))} generated section(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
