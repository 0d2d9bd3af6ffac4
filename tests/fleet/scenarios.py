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

from library_syncer.base.units import bwlimit_bytes_per_second

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
    cpu0 = run.server_cpu_seconds()
    results, torn, seconds, passes = watched([s.published for s in sites], action)
    problems = [f"site {r.site}: exit status {r.returncode}: {' | '.join(r.tail[-3:])}"
                for r in results if not r.ok]
    problems += [f"torn: {p}" for p in torn]
    for site in sites:
        problems += [f"site {site.index}: {p}" for p in compare_site(site.published, run.library)]
    return Outcome(name, seconds, results, problems, run.server_cpu_seconds() - cpu0,
                   library.library_size(run.library), changed_bytes,
                   {"watcher_passes": passes})


def watched(published: list[Path], action: Callable[[], list[SyncResult]]
            ) -> tuple[list[SyncResult], list[str], float, int]:
    """Run `action` while a TornWatcher walks `published`: (results, torn views, seconds,
    watcher passes)."""
    watcher = TornWatcher(published)
    watcher.start()
    started = time.monotonic()
    try:
        results = action()
    finally:
        torn = watcher.stop()
    return results, torn, time.monotonic() - started, watcher.passes


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
                      flaps: list[tuple[int, int, float]], kill_after: int, down_for: float,
                      seed: int = 4, added_size: int = 0) -> Outcome:
    """A new version; sshd is killed (with every session) once every site has received
    `kill_after` bytes of it (or one site 80% of it) and restarted `down_for` s later; then
    each (site, after_bytes, down_s) in `flaps` loses its link once it has received
    `after_bytes` more after the restart. Triggered by bytes, not time, so every cut lands in
    the middle of a transfer whatever the link."""
    change = library.new_version(run.library, fraction=fraction, fixtures_dir=fixtures_dir,
                                 seed=seed, added_size=added_size)
    events: list[str] = []
    finished = threading.Event()
    started = time.monotonic()

    def received() -> list[int]:
        return [run.fleet.wire_bytes(s.index)[0] for s in run.sites]

    def wait_for(condition: Callable[[list[int]], bool]) -> bool:
        while not finished.is_set():
            if condition(received()):
                return True
            time.sleep(0.1)
        return False

    def note(text: str) -> None:
        events.append(f"{time.monotonic() - started:5.1f} s: {text}")

    def chaos() -> None:
        base = received()
        got = lambda now: [n - b for n, b in zip(now, base, strict=True)]  # noqa: E731
        if not wait_for(lambda now: min(got(now)) >= kill_after
                        or max(got(now)) >= change.new_bytes * 0.8):
            return
        run.kill_server()
        note("sshd killed after " + ", ".join(f"{n / 2**20:.1f}" for n in got(received()))
             + " MB")
        time.sleep(down_for)
        run.start_server()
        note("sshd restarted")
        restart = received()
        pending, downs = list(flaps), []
        while pending and not finished.is_set():
            now = received()
            for flap in [f for f in pending if now[f[0]] - restart[f[0]] >= f[1]]:
                pending.remove(flap)
                note(f"site {flap[0]} link down for {flap[2]:g} s")
                downs.append(run.fleet.flap_later(flap[0], 0, flap[2]))
            time.sleep(0.1)
        for thread in downs:  # every link is up again before the scenario ends
            thread.join()

    def action() -> list[SyncResult]:
        controller = threading.Thread(target=chaos, name="chaos", daemon=True)
        controller.start()
        try:
            return run.sync_all()
        finally:
            finished.set()
            controller.join()

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


def monthly_template(run: FleetRun, *, old: str, new: str, fraction: float, fixtures_dir: Path,
                     random_delay: float) -> Outcome:
    """This month's template published as a new item beside last month's: a copy of `old`
    with its files renamed after `new` and `fraction` of its disk rewritten."""
    changed = library.new_version_as_new_item(run.library, old, new, fraction=fraction,
                                              fixtures_dir=fixtures_dir)
    outcome = observe(run, "monthly template", lambda: run.sync_all(random_delay=random_delay),
                      changed_bytes=changed)
    outcome.extra["item_bytes"] = sum(p.stat().st_size for p in (run.library / new).iterdir())
    return outcome
