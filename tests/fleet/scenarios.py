"""The fleet scenarios, shared by tests/test_fleet.py (small) and bench/fleet.py (full).

Each scenario runs real clients in every site namespace while a `TornWatcher` walks the
published trees, then checks that every site converged to the server's library (by digest) and
returns an `Outcome` with the figures the benchmark prints.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from library_syncer.units import bwlimit_bytes_per_second

from . import library
from .checks import TornWatcher, compare_site
from .netns import LinkProfile
from .sites import FleetRun, Site, SyncResult


@dataclass
class Outcome:
    name: str
    seconds: float  # until the last site finished (random delays included)
    results: list[SyncResult]
    problems: list[str]
    server_cpu: float  # CPU seconds of the server's sessions during the scenario
    library_bytes: int
    changed_bytes: int = 0  # what an ideal delta transfer must carry (0 = first sync)
    extra: dict = field(default_factory=dict)

    @property
    def cpu_per_site_sync(self) -> float:
        return self.server_cpu / max(1, len(self.results))


def observe(run: FleetRun, name: str, action: Callable[[], list[SyncResult]], *,
            sites: list[Site] | None = None, changed_bytes: int = 0) -> Outcome:
    """Run `action` under the torn-snapshot watcher, then check convergence of `sites`."""
    sites = sites if sites is not None else run.sites
    watcher = TornWatcher([s.published for s in sites])
    watcher.start()
    cpu0 = run.server_cpu_seconds()
    started = time.monotonic()
    try:
        results = action()
    finally:
        torn = watcher.stop()
    seconds = time.monotonic() - started
    problems = [f"site {r.site}: exit status {r.returncode}: {' | '.join(r.tail[-3:])}"
                for r in results if not r.ok]
    problems += [f"torn: {p}" for p in torn]
    for site in sites:
        problems += [f"site {site.index}: {p}" for p in compare_site(site.published, run.library)]
    return Outcome(name, seconds, results, problems, run.server_cpu_seconds() - cpu0,
                   library.library_size(run.library), changed_bytes,
                   {"watcher_passes": watcher.passes})


def first_sync(run: FleetRun, *, random_delay: float) -> Outcome:
    return observe(run, "first sync", lambda: run.sync_all(random_delay=random_delay))


def new_version(run: FleetRun, *, fraction: float, fixtures_dir: Path, random_delay: float,
                seed: int = 2, added_size: int = 0) -> Outcome:
    change = library.new_version(run.library, fraction=fraction, fixtures_dir=fixtures_dir,
                                 seed=seed, added_size=added_size)
    outcome = observe(run, "new version", lambda: run.sync_all(random_delay=random_delay),
                      changed_bytes=change.new_bytes)
    outcome.extra["change"] = change
    return outcome


def flaps_and_restart(run: FleetRun, *, fraction: float, fixtures_dir: Path,
                      flaps: list[tuple[int, float, float]], kill_at: float,
                      down_for: float, seed: int = 4, added_size: int = 0) -> Outcome:
    """A new version while links flap (site, after s, down s) and sshd is killed at `kill_at`
    and restarted `down_for` seconds later."""
    change = library.new_version(run.library, fraction=fraction, fixtures_dir=fixtures_dir,
                                 seed=seed, added_size=added_size)
    events: list[str] = []

    def crash() -> None:
        time.sleep(kill_at)
        run.kill_server()
        events.append(f"sshd killed at {kill_at:g} s")
        time.sleep(down_for)
        run.start_server()
        events.append(f"sshd restarted at {kill_at + down_for:g} s")

    def action() -> list[SyncResult]:
        threads = [run.fleet.flap_later(i, after, down) for i, after, down in flaps]
        threads.append(threading.Thread(target=crash, name="crash", daemon=True))
        threads[-1].start()
        results = run.sync_all()
        for thread in threads:
            thread.join()
        return results

    outcome = observe(run, "flaps + sshd restart", action, changed_bytes=change.new_bytes)
    outcome.extra.update(change=change, events=events, flaps=flaps)
    return outcome


def bandwidth_limit(run: FleetRun, site: Site, *, limit: str, item_bytes: int,
                    fixtures_dir: Path, profile: LinkProfile) -> Outcome:
    """One site with `sync.bandwidth_limit = limit` on a link faster than the limit pulls a new
    item; the TCP payload rate while the transfer runs is compared with the limit."""
    run.fleet.shape(site.index, profile)
    run.set_bandwidth_limit(site, limit)
    name = f"tmpl-bw-{site.index}"
    library.add_item(run.library, name, disk_size=item_bytes, fixtures_dir=fixtures_dir)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), run.fleet.tcp_payload_received(site.index)))
            done.wait(0.25)

    def action() -> list[SyncResult]:
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            return [run.sync(site)]
        finally:
            done.set()
            sampler.join()

    outcome = observe(run, f"bandwidth limit {limit}", action, sites=[site],
                      changed_bytes=item_bytes)
    limit_bps = bwlimit_bytes_per_second(limit)
    outcome.extra.update(limit_bps=limit_bps, measured_bps=_steady_rate(samples))
    return outcome


def _steady_rate(samples: list[tuple[float, int]]) -> float:
    """Bytes/s between 10% and 90% of what arrived (leaves out handshake and tail)."""
    if len(samples) < 3:
        return 0.0
    base = samples[0][1]
    total = samples[-1][1] - base
    low = next(s for s in samples if s[1] - base >= 0.1 * total)
    high = next(s for s in samples if s[1] - base >= 0.9 * total)
    return (high[1] - low[1]) / (high[0] - low[0]) if high[0] > low[0] else 0.0


def http_baseline(run: FleetRun, change: library.Change, sites: list[Site]) -> list[SyncResult]:
    """What vCenter's own subscription costs for the same change: every file of the changed and
    the added item downloaded whole over HTTP, through the same links, all sites at once."""
    paths = (library.item_files(run.library, change.changed_item)
             + library.item_files(run.library, change.added_item))
    results: list[SyncResult | None] = [None] * len(sites)

    def fetch(k: int, site: Site) -> None:
        results[k] = run.http_fetch(site, paths)

    threads = [threading.Thread(target=fetch, args=(k, s)) for k, s in enumerate(sites)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]
