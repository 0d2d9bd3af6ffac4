"""The tree scenarios, shared by tests/test_fleet_tree.py (small) and bench/fleet_tree.py (full).

Every scenario ends by asserting that every node (relays and sites) publishes exactly the
origin's library (digests, manifests) under the origin's current revision, and that the
`TornWatcher` never saw a torn or half-copied published snapshot on any node meanwhile.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from library_syncer.base.errors import ExitStatus
from library_syncer.server import trace
from tests.harness.wait import wait_for

from . import library
from .checks import compare_site
from .netns import LinkProfile
from .scenarios import Outcome, watched
from .sites import Site, SyncResult
from .tree import ORIGIN, TreeRun

STALE_STATUS = 11


def converged(run: TreeRun, nodes: list[Site]) -> list[str]:
    """Each node publishes the origin's library and revision (empty = converged)."""
    problems = []
    current = run.revision()
    for node in nodes:
        name = run.names[node.index]
        problems += [f"{name}: {p}" for p in compare_site(node.published, run.library)]
        if run.held(node) != current:
            problems.append(f"{name}: holds {run.held(node)}, the origin declares {current}")
    return problems


def observe(run: TreeRun, name: str, action: Callable[[], list[SyncResult]], *,
            expect_status: dict[int, int] | None = None, nodes: list[Site] | None = None,
            changed_bytes: int = 0) -> Outcome:
    """Run `action` while every node's published tree is watched; then check every node."""
    nodes = nodes if nodes is not None else run.sites
    expect_status = expect_status or {}
    tx0 = run.origin_tx_bytes()
    results, torn, seconds, passes = watched([s.published for s in run.sites], action)
    problems = [f"{run.names[r.site]}: exit status {r.returncode} (expected "
                f"{expect_status.get(r.site, 0)}): {' | '.join(r.tail[-3:])}"
                for r in results if r.returncode != expect_status.get(r.site, 0)]
    problems += [f"torn: {p}" for p in torn]
    problems += converged(run, nodes)
    return Outcome(name, seconds, results, problems, 0.0, library.library_size(run.library),
                   changed_bytes, {"watcher_passes": passes,
                                   "origin_tx_bytes": run.origin_tx_bytes() - tx0})


def build(run: TreeRun, *, relay_profile: LinkProfile, site_profiles: list[list[LinkProfile]],
          short_schedule: int, random_delay: float = 0.0) -> list[Outcome]:
    """Relays (one per entry of `site_profiles`) and their sites; every node on a daily
    schedule but the last site, which runs every `short_schedule` seconds (so it can become
    overdue within a test). The origin declares its library, the relays pull it and start
    their server role, the sites pull from them; returns those two first syncs."""
    relays = [run.add_node(f"relay-{chr(97 + r)}", relay_profile)
              for r in range(len(site_profiles))]
    for relay, profiles in zip(relays, site_profiles, strict=True):
        letter = run.names[relay.index][-1]
        for k, profile in enumerate(profiles):
            run.add_node(f"site-{letter}{k}", profile, upstream=relay.index, io_timeout=5)
    for node in run.sites:
        run.set_sync_settings(node, schedule="daily", random_delay="0s")
    run.set_sync_settings(run.sites[-1], schedule=f"*-*-* *:*:00/{short_schedule}")
    run.start_server()
    run.declare()
    run.trust_server()
    first = [observe(run, "first sync, relays", lambda: run.sync_many(relays), nodes=relays)]
    for relay in relays:
        run.start_relay(relay)
    run.trust_server()
    first.append(observe(run, "first sync, sites", lambda: run.sync_many(
        run.leaf_nodes(), random_delay=random_delay)))
    return first


def new_revision(run: TreeRun, *, fixtures_dir: Path, fraction: float, seed: int,
                 random_delay: float = 0.0, added_size: int = 0) -> Outcome:
    """Scenario 1: a new revision at the origin (a disk patched, an item added, one deleted)
    reaches every node, through the relays (or straight from the origin when `run.flat`)."""
    change = library.new_version(run.library, fraction=fraction, fixtures_dir=fixtures_dir,
                                 seed=seed, added_size=added_size)
    serial = run.declare()
    outcome = observe(run, "flat" if run.flat else "tree",
                      lambda: run.propagate(random_delay=random_delay),
                      changed_bytes=change.new_bytes)
    outcome.extra.update(change=change, serial=serial)
    return outcome


def stale_relay(run: TreeRun, relay: Site, *, fixtures_dir: Path, fraction: float,
                seed: int) -> Outcome:
    """Scenario 2: a relay restored from a backup taken one revision ago. Its sites keep what
    they publish (exit 11, one line saying why); the relay's next pull catches it up."""
    backup = run.backup_relay(relay)
    old = run.held(relay)
    first = new_revision(run, fixtures_dir=fixtures_dir, fraction=fraction, seed=seed)
    new = run.revision()
    run.restore_relay(relay, backup)
    behind = run.leaf_nodes(relay)
    outcome = observe(run, "stale relay", lambda: run.sync_many(behind),
                      expect_status={s.index: STALE_STATUS for s in behind},
                      nodes=[s for s in run.sites if s is not relay])
    outcome.problems[:0] = first.problems
    outcome.changed_bytes = first.changed_bytes  # the revision the relay was restored below
    outcome.extra["origin_tx_bytes"] = first.extra["origin_tx_bytes"]
    assert old is not None and new is not None
    want = (f"the server offers revision {old[1]} of {ORIGIN}, older than revision {new[1]} "
            f"of {ORIGIN} published here")
    said = {}
    for result in outcome.results:
        lines = [line for line in result.tail if "older than" in line]
        said[run.names[result.site]] = lines
        if len(lines) != 1 or want not in lines[0]:
            outcome.problems.append(f"{run.names[result.site]}: said {lines!r}, expected one "
                                    f"line with {want!r}")
    if run.held(relay) != old:
        outcome.problems.append(f"the restored relay holds {run.held(relay)}, not {old}")
    # the relay's own next run catches up; its sites then have nothing to do
    after = observe(run, "stale relay recovers",
                    lambda: [run.sync(relay), *run.sync_many(behind)])
    outcome.problems += after.problems
    outcome.extra.update(said=said, old=old, new=new)
    return outcome


def slow_copy(run: TreeRun, *, fixtures_dir: Path, name: str, disk_size: int,
              rate: float) -> Outcome:
    """Scenario 3: an administrator copies a template into the origin's library slowly while
    the nodes pull and the origin's trace timer ticks (real settle time). No node publishes
    the template until the origin declared it; then every node does."""
    incoming = run.work / "incoming"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir()
    library.write_item(incoming, name, disk_size, random.Random(7), fixtures_dir)
    source = incoming / name
    target = run.library / name
    disk = f"{name}-disk1.vmdk"
    final_size = (source / disk).stat().st_size
    declared: dict[str, float] = {}
    stop = threading.Event()
    seen: list[tuple[str, float, int, bool]] = []  # (node, when, serial, trace lists it whole)
    first_chunk = threading.Event()

    def copy() -> None:
        target.mkdir(mode=0o755)
        for part in sorted(source.iterdir()):  # the descriptor and the .mf first, disk last
            if part.name != disk:
                shutil.copy2(part, target / part.name)
        chunk = max(1, int(rate / 10))
        with open(source / disk, "rb") as src, open(target / disk, "wb") as out:
            while block := src.read(chunk):
                out.write(block)
                out.flush()
                first_chunk.set()
                time.sleep(0.1)

    def ticker() -> None:  # the origin's trace timer, compressed to 0.5 s
        while not stop.is_set():
            outcome = run.tick()
            if outcome.state == "declared" and "at" not in declared:
                declared.update(at=time.monotonic(), serial=outcome.serial)
            stop.wait(0.5)

    def looker() -> None:  # which node publishes the new template, and under which trace
        while not stop.is_set():
            for node in run.sites:
                snapshot = Path(os.path.realpath(node.published))
                if (snapshot / name).is_dir():
                    held = trace.read(snapshot)
                    whole = held is not None and \
                        held.files.get(f"{name}/{disk}", (None,))[0] == final_size
                    seen.append((run.names[node.index], time.monotonic(),
                                 held.serial if held else 0, whole))
            stop.wait(0.1)

    threads = [threading.Thread(target=f, name=f.__name__, daemon=True)
               for f in (copy, ticker, looker)]
    for thread in threads:
        thread.start()
    if not first_chunk.wait(10):
        stop.set()
        raise AssertionError(f"the slow copy of {name} wrote nothing within 10 s")

    def action() -> list[SyncResult]:
        # the relays pull while the copy runs (each is told "settling" and tries later, or
        # retries a pull torn by the copy); the sites pull from their relays meanwhile and
        # again once their relay published it
        relays = {r.index for r in run.relay_nodes()}
        # a relay told "settling" ends with 12 ("try later"); a site never is (its relay exports
        # declared revisions only), so any other status than 0 stays a problem
        during = [r for r in run.sync_many(run.sites)
                  if not (r.site in relays and r.returncode == ExitStatus.SETTLING)]
        threads[0].join()
        wait_for(lambda: "at" in declared, run.settle + 60,
                 f"the origin to declare {name} once the copy settled", interval=0.2)
        return during + run.propagate()

    try:
        outcome = observe(run, "slow copy", action)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    early = [s for s in seen if not s[3] or s[1] < declared.get("at", 0)]
    outcome.problems += [f"{node} published {name} at serial {serial} before the origin "
                         f"declared it whole" for node, _, serial, _ in early]
    published_by = {s[0] for s in seen}
    missing = set(run.names.values()) - published_by
    outcome.problems += [f"{node}: never seen publishing {name}" for node in sorted(missing)]
    refused = [run.names[s.index] for s in run.relay_nodes()
               if re.search(r"what arrived is not revision \d+ of|the origin has not declared a "
                            r"revision yet \(settling\)", (s.dir / "sync.log").read_text())]
    outcome.extra.update(declared_serial=declared.get("serial"), refused=refused,
                         observations=len(seen))
    return outcome


def fleet_view(run: TreeRun, *, down: Site, fixtures_dir: Path, seed: int,
               overdue_after: float) -> Outcome:
    """Scenario 4: a new revision; `down`'s link is down. After the relays forwarded their sites'
    reports, `server sites --json` at the origin shows every node with the origin's serial but
    `down`, which is behind, and overdue once its allowed silence (`overdue_after` s: its
    schedule's period + the grace) has passed."""
    run.fleet.link(down.index, False)
    try:
        change = library.new_version(run.library, fraction=0.02, fixtures_dir=fixtures_dir,
                                     seed=seed)
        serial = run.declare()
        up = [s for s in run.sites if s is not down]
        leaves = [s for s in run.leaf_nodes() if s is not down]
        outcome = observe(run, "fleet view", lambda: [
            *run.sync_many(run.relay_nodes()), *run.sync_many(leaves),
            *run.sync_many(run.relay_nodes())], nodes=up, changed_bytes=change.new_bytes)
        views = [run.fleet_view()]
        name = run.names[down.index]

        def silent_too_long() -> dict | None:  # the view once `down`'s silence outlasts it
            view = run.fleet_view()
            row = _row(view, name)
            return view if row is None or row["age_seconds"] > overdue_after else None

        views.append(wait_for(silent_too_long, overdue_after + 60,
                              f"{name}'s age in the fleet view to pass {overdue_after:g} s",
                              interval=0.5))
    finally:
        run.fleet.link(down.index, True)
    outcome.problems += view_problems(run, views[0], serial, down, overdue=None)
    outcome.problems += view_problems(run, views[1], serial, down, overdue=True)
    metrics = run.server_config().metrics_textfile
    text = metrics.read_text() if metrics and metrics.exists() else ""
    pattern = 'library_syncer_site_serial_lag[{][^}]*site="' + \
        re.escape(run.names[down.index]) + r'"[^}]*[}] (\d+)'
    lag = re.search(pattern, text)
    if not lag or int(lag.group(1)) < 1:
        outcome.problems.append(f"metrics textfile: no serial_lag >= 1 for the down site "
                                f"({lag.group(0) if lag else 'missing'})")
    # the link is back: the site catches up and reports, and the view says so
    back = observe(run, "fleet view, link back", lambda: [run.sync(down),
                                                          *run.sync_many(run.relay_nodes())])
    outcome.problems += back.problems
    final = run.fleet_view()
    row = _row(final, run.names[down.index])
    if not row or row["serial"] != serial or row["lag"] != 0:
        outcome.problems.append(f"after its link came back, the view shows {row}")
    outcome.extra.update(views=views, final=final, serial=serial)
    return outcome


def _row(view: dict, name: str) -> dict | None:
    return next((r for r in view["sites"] if r["site"] == name), None)


def view_problems(run: TreeRun, view: dict, serial: int, down: Site, *,
                  overdue: bool | None) -> list[str]:
    """Every node shown under its path with the origin's serial; `down` behind (and overdue
    when `overdue`; when None, overdue only if its age is past its allowed silence)."""
    problems = []
    for node in run.sites:
        name = run.names[node.index]
        up = run.upstream[node.index]
        path = [ORIGIN, name] if up is None else [ORIGIN, run.names[up], name]
        row = next((r for r in view["sites"] if r["path"] == path), None)
        if row is None:
            problems.append(f"{'/'.join(path)}: not in the fleet view")
            continue
        if node is down:
            if row["serial"] is None or row["serial"] >= serial or not row["lag"]:
                problems.append(f"{name} (link down): serial {row['serial']}, lag {row['lag']}"
                                f", should be behind {serial}")
            if overdue is not None and row["overdue"] is not overdue:
                problems.append(f"{name} (link down): overdue {row['overdue']}, age "
                                f"{row['age_seconds']} s")
        else:
            if row["serial"] != serial or row["lag"] != 0 or row["outcome"] != "ok":
                problems.append(f"{name}: serial {row['serial']} lag {row['lag']} outcome "
                                f"{row['outcome']}, expected serial {serial}")
            if row["overdue"]:
                problems.append(f"{name}: overdue, yet it reported {row['age_seconds']} s ago")
    return problems
