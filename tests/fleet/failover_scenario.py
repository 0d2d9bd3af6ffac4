"""A relay killed mid-transfer (issue 14, item 6), shared by tests/test_fleet_failover.py (small)
and bench/fleet_failover.py (full).

The tree of tests/fleet/tree.py, but every site lists two upstreams (`sync.upstreams`): its
relay first (127.0.0.1:2222, which its latency relay forwards to the relay's sshd) and the origin
second (127.0.0.1:2223, forwarded to the origin). `TreeRun.trust_server` already pins both host
keys in each site's known_hosts and `TreeRun.start_server` authorizes every node's key at the
origin, so the origin serves any site that fails over.

`relay_lost`: the origin declares a new revision, every relay publishes it, then every site pulls
at once; while the sites behind the chosen relay are transferring, that relay
is lost — its sshd and every session it forked are killed ("kill"), or its link goes down
("link"). Its sites retry it within their share of `sync.retry_budget`, fail over to the origin
and converge. Checked: every node publishes the origin's library (SHA256 of every file,
manifests) under the origin's serial, the watcher never saw a torn snapshot, every run exited 0,
each affected site's last-run.json names the origin as the serving upstream (index 1) with the
relay skipped, each other site's names its relay (index 0) with nothing skipped. Measured: the
time from the loss to each affected site's convergence, and the bytes they received beyond the
change (on the wire; the other sites' bytes for the same change are the baseline). Then the
relay comes back and the affected sites' next run is served by it again, with nothing skipped.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from . import library
from .netns import LinkProfile
from .scenarios import Outcome
from .sites import SSH_PORT, Site, SyncResult, _descendants, _kill, _wait_port
from .tree import FLAT_PORT, TreeRun
from .tree_scenarios import build, observe

RELAY_UPSTREAM = f"127.0.0.1:{SSH_PORT}"
ORIGIN_UPSTREAM = f"127.0.0.1:{FLAT_PORT}"


class FailoverTree(TreeRun):
    """A TreeRun whose sites list their relay, then the origin, in `sync.upstreams`."""

    def _site_config(self, site: Site) -> str:
        text = super()._site_config(site)
        if self.upstream.get(site.index) is None:  # a relay: the origin only, as before
            return text
        upstreams = (f'upstreams = [{{peer = "127.0.0.1", port = {SSH_PORT}}}, '
                     f'{{peer = "127.0.0.1", port = {FLAT_PORT}}}]\n')
        return text.replace('peer = "127.0.0.1"\n', upstreams, 1)

    def kill_relay(self, relay: Site) -> None:
        """The relay's sshd crashes: the listener and every session it forked die at once."""
        process = self.relays[relay.index].process
        for pid in _descendants(process.pid):
            _kill(pid)
        _kill(process.pid)
        process.wait()

    def restart_relay(self, relay: Site) -> None:
        """The relay's sshd started again from the config it rendered."""
        node = self.relays[relay.index]
        rendered = relay.dir / "server" / "run" / "sshd_config"
        node.process = self.fleet.spawn(relay.ns, [node.config.sshd, "-D", "-e", "-f",
                                                   str(rendered)],
                                        log=relay.dir / "server" / "sshd.log")
        _wait_port(relay.ns, self.fleet.site_ip(relay.index), SSH_PORT)


def build_failover(run: FailoverTree, *, relay_profile: LinkProfile,
                   site_profiles: list[list[LinkProfile]], retry_budget: float,
                   random_delay: float = 0.0) -> list[Outcome]:
    """The tree of tree_scenarios.build; each site's `sync.retry_budget` set to `retry_budget`
    (its relay gets half of it before the run fails over to the origin)."""
    first = build(run, relay_profile=relay_profile, site_profiles=site_profiles,
                  short_schedule=30, random_delay=random_delay)
    for site in run.leaf_nodes():
        site.retry_budget = retry_budget
        run.write_config(site)
    return first


def last_run(site: Site) -> dict:
    return json.loads((site.state / "last-run.json").read_text())


def relay_lost(run: FailoverTree, relay: Site, *, fixtures_dir: Path, fraction: float,
               added_size: int, seed: int, how: str = "kill",
               kill_after: float = 0.25) -> Outcome:
    """The scenario (see the module's docstring). `how`: "kill" (sshd and its sessions) or
    "link" (the relay's link down). The relay is lost once the first site behind it has received
    `kill_after` of the change: triggered by bytes, not time, so the loss lands mid-transfer
    whatever the links. A site behind it whose run ended before the loss (a fast link) is
    expected to have been served by the relay, like the sites behind the other relays."""
    assert how in ("kill", "link"), how
    change = library.new_version(run.library, fraction=fraction, fixtures_dir=fixtures_dir,
                                 seed=seed, added_size=added_size)
    serial = run.declare()
    relays = run.relay_nodes()
    published = observe(run, "relays publish", lambda: run.sync_many(relays), nodes=relays)
    affected = run.leaf_nodes(relay)
    others = [s for s in run.leaf_nodes() if s not in affected]
    finished = threading.Event()
    lost: dict[str, float] = {}
    at_loss: dict[int, int] = {}
    base = {s.index: run.fleet.wire_bytes(s.index)[0] for s in affected}

    def got() -> dict[int, int]:
        return {i: run.fleet.wire_bytes(i)[0] - b for i, b in base.items()}

    def chaos() -> None:
        while not finished.is_set():
            now = got()
            if max(now.values()) >= kill_after * change.new_bytes:
                break
            time.sleep(0.05)
        else:
            return
        if how == "kill":
            run.kill_relay(relay)
        else:
            run.fleet.link(relay.index, False)
        lost["at"] = time.monotonic()
        at_loss.update(got())

    started = time.monotonic()

    def action() -> list[SyncResult]:
        controller = threading.Thread(target=chaos, name="chaos", daemon=True)
        controller.start()
        try:
            return run.sync_many(run.leaf_nodes())
        finally:
            finished.set()
            controller.join()

    try:
        outcome = observe(run, f"relay lost ({how})", action, changed_bytes=change.new_bytes)
    finally:
        if how == "kill" and "at" in lost:
            run.restart_relay(relay)
        elif how == "link":
            run.fleet.link(relay.index, True)
    outcome.problems[:0] = published.problems
    if "at" not in lost:
        outcome.problems.append(f"{run.names[relay.index]} was never lost: its sites finished "
                                f"before receiving {kill_after:.0%} of the change")
    loss_at = lost.get("at", started) - started
    by_site = {r.site: r for r in outcome.results}
    sites = []
    for site in run.leaf_nodes():
        name = run.names[site.index]
        record = last_run(site)
        result = by_site[site.index]
        hit = site in affected and result.seconds > loss_at
        want = (ORIGIN_UPSTREAM, 1) if hit else (RELAY_UPSTREAM, 0)
        if (record.get("upstream"), record.get("upstream_index")) != want:
            outcome.problems.append(f"{name}: last-run.json upstream {record.get('upstream')} "
                                    f"index {record.get('upstream_index')}, expected {want}")
        skipped = record.get("skipped") or []
        if hit and (len(skipped) != 1 or not skipped[0].startswith(RELAY_UPSTREAM + ":")):
            outcome.problems.append(f"{name}: last-run.json skipped {skipped!r}, expected the "
                                    f"relay {RELAY_UPSTREAM} once")
        if not hit and skipped:
            outcome.problems.append(f"{name}: last-run.json skipped {skipped!r}, expected none")
        if (record.get("origin"), record.get("serial")) != run.revision():
            outcome.problems.append(f"{name}: last-run.json revision {record.get('origin')} "
                                    f"{record.get('serial')}, the origin declares "
                                    f"{run.revision()}")
        sites.append({"node": name, "affected": hit, "profile": site.profile.name,
                      "returncode": result.returncode, "seconds": result.seconds,
                      "after_loss": result.seconds - loss_at if hit else None,
                      "rx_bytes": result.rx_bytes, "at_loss": at_loss.get(site.index),
                      "resent_bytes": result.rx_bytes - change.new_bytes,
                      "rsync_bytes_received": record.get("bytes_received"),
                      "upstream": record.get("upstream"), "skipped": skipped})
    # the relay is back: the affected sites' next run is served by it again, nothing skipped
    back = observe(run, "relay back", lambda: run.sync_many(affected))
    outcome.problems += back.problems
    if not any(s["affected"] for s in sites):
        outcome.problems.append(f"no site behind {run.names[relay.index]} was transferring "
                                f"when it was lost")
    for site in affected:
        record = last_run(site)
        if record.get("upstream_index") != 0 or record.get("skipped"):
            outcome.problems.append(f"{run.names[site.index]}: after the relay came back, "
                                    f"upstream {record.get('upstream')} skipped "
                                    f"{record.get('skipped')}")
    hit_rows = [s for s in sites if s["affected"]]
    base_rows = [s for s in sites if not s["affected"]]
    outcome.extra.update(
        change=change, serial=serial, how=how, relay=run.names[relay.index], sites=sites,
        loss_at=loss_at, kill_after=kill_after,
        converge_after_loss=max((s["after_loss"] for s in hit_rows), default=None),
        resent_bytes=[s["resent_bytes"] for s in hit_rows],
        baseline_rx=[s["rx_bytes"] for s in base_rows],
        relay_publish_seconds=published.seconds, back_seconds=back.seconds,
        others=[run.names[s.index] for s in others])
    return outcome
