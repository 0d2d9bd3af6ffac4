"""Change polling in the tree (issue 15 item 5): a new revision reaches every site by
`library-syncer sync --if-changed` every P seconds at every node, against every node running its
full sync on a schedule S ≫ P; and what the polls cost the origin while nothing changes.

The real `library-syncer-poll.timer` cannot run inside a network namespace, so each node gets a
loop thread that does what the timer would, in compressed time:

- **poll**: the first check at a random moment of the first period (timers started at different
  times), then every P plus a random tenth of P (the timer's RandomizedDelaySec = interval / 10);
  each check is `ip netns exec <ns> library-syncer sync --if-changed --config <node>.toml`.
- **schedule**: every node's calendar time is the same (k·S from the loop's start), each firing
  delayed by a random share of `random_delay` (RandomizedDelaySec), running the full
  `library-syncer sync`.

A looker thread records when each node first publishes the revision (its `published` trace), and
when `server sites --json` at the origin first shows each site with it.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import library
from .checks import compare_site
from .netns import WAN, ip
from .scenarios import watched
from .sites import SYNCER, Site
from .tree import TreeRun

ACCEPTED = "Accepted publickey"


@dataclass
class LoopRun:
    node: str
    index: int
    started: float  # monotonic
    seconds: float
    returncode: int
    synced: bool  # a full sync ran (schedule mode, or the check found the origin moved)
    tail: list[str] = field(default_factory=list)
    forwarded: bool = False  # a relay's unchanged check forwarded its sites' reports


class Loops:
    """One thread per node doing what its timer would (see the module docstring)."""

    def __init__(self, run: TreeRun, nodes: list[Site], *, mode: str, period: float,
                 random_delay: float = 0.0, seed: int = 0) -> None:
        assert mode in ("poll", "schedule")
        self.run, self.nodes, self.mode, self.period = run, nodes, mode, period
        self.random_delay = random_delay
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.runs: list[LoopRun] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.t0 = 0.0

    def _schedule(self) -> dict[int, list[float]]:
        """Each node's firing times (seconds from the start), drawn up front from the seed."""
        horizon = 10_000.0
        times: dict[int, list[float]] = {}
        for node in self.nodes:
            if self.mode == "poll":
                t = self.rng.uniform(0, self.period)
                row = []
                while t < horizon:
                    row.append(t)
                    t += self.period + self.rng.uniform(0, self.period / 10)
            else:
                row = [k * self.period + self.rng.uniform(0, self.random_delay)
                       for k in range(int(horizon / self.period))]
            times[node.index] = row
        return times

    def _argv(self, node: Site) -> list[str]:
        extra = ["--if-changed"] if self.mode == "poll" else []
        return ["ip", "netns", "exec", node.ns, SYNCER, "sync", *extra, "--config",
                str(node.config)]

    def _loop(self, node: Site, times: list[float]) -> None:
        from library_syncer.base import execute

        name = self.run.names[node.index]
        for when in times:
            delay = self.t0 + when - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                return
            if self.stop_event.is_set():
                return
            started = time.monotonic()
            with open(node.dir / f"{self.mode}.log", "a") as out:
                result = execute.run(self._argv(node), check=False, timeout=1800,
                                     on_line=lambda line, out=out: (out.write(line + "\n"),
                                                                    out.flush()))
            synced = self.mode == "schedule" or any(": syncing" in line for line in result.tail)
            forwarded = any("forwarded this relay's site reports" in line
                            for line in result.tail)
            with self.lock:
                self.runs.append(LoopRun(name, node.index, started,
                                         time.monotonic() - started, result.returncode, synced,
                                         result.tail[-3:], forwarded))

    def start(self) -> Loops:
        times = self._schedule()
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self._loop, args=(n, times[n.index]),
                                         name=f"{self.mode}-{n.index}", daemon=True)
                        for n in self.nodes]
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> list[LoopRun]:
        """No new run starts; the runs under way finish."""
        self.stop_event.set()
        for thread in self.threads:
            thread.join()
        return self.runs


# --- what the polls cost the origin while nothing changes -------------------------------------


def origin_logins(run: TreeRun) -> int:
    return (run.sshd_dir / "sshd.log").read_text(errors="replace").count(ACCEPTED)


def origin_wire(run: TreeRun) -> tuple[int, int, int]:
    """(bytes received, bytes sent, packets both ways) on the origin's interface."""
    stats = json.loads(ip("-n", run.fleet.server_ns, "-s", "-j", "link", "show",
                          WAN).output)[0]["stats64"]
    return stats["rx"]["bytes"], stats["tx"]["bytes"], \
        stats["rx"]["packets"] + stats["tx"]["packets"]


def quiet_cost(run: TreeRun, *, period: float, seconds: float, seed: int) -> dict:
    """Every node polls for `seconds` while the origin declares nothing new. Counted at the
    origin (only the relays' checks reach it): SSH logins from its sshd log, bytes from its
    interface counters, per check; and every check's bytes at its own node's interface."""
    logins0, (rx0, tx0, p0) = origin_logins(run), origin_wire(run)
    node_wire0 = {s.index: run.fleet.wire_bytes(s.index) for s in run.sites}
    loops = Loops(run, run.sites, mode="poll", period=period, seed=seed).start()
    time.sleep(seconds)
    runs = loops.stop()  # the checks under way finish inside the window
    logins1, (rx1, tx1, p1) = origin_logins(run), origin_wire(run)
    node_wire1 = {s.index: run.fleet.wire_bytes(s.index) for s in run.sites}
    relays = {s.index for s in run.relay_nodes()}
    origin_checks = sum(1 for r in runs if r.index in relays)
    node_bytes = sum(sum(node_wire1[i]) - sum(node_wire0[i]) for i in node_wire0)
    problems = [f"{r.node}: check exited {r.returncode}: {' | '.join(r.tail)}"
                for r in runs if r.returncode != 0]
    problems += [f"{r.node}: a check found the origin moved while nothing changed"
                 for r in runs if r.synced]
    return {"seconds": seconds, "checks": len(runs), "origin_checks": origin_checks,
            "origin_logins": logins1 - logins0, "origin_rx_bytes": rx1 - rx0,
            "origin_tx_bytes": tx1 - tx0, "origin_packets": p1 - p0,
            "node_bytes": node_bytes,
            "logins_per_check": (logins1 - logins0) / origin_checks if origin_checks else None,
            "origin_bytes_per_check": (rx1 - rx0 + tx1 - tx0) / origin_checks
            if origin_checks else None,
            "node_bytes_per_check": node_bytes / len(runs) if runs else None,
            "check_seconds": [r.seconds for r in runs], "problems": problems}


# --- a revision reaching every site ----------------------------------------------------------


def reach(run: TreeRun, *, mode: str, period: float, fixtures_dir: Path, fraction: float,
          seed: int, timeout: float, random_delay: float = 0.0, declare_after: float = 0.0,
          view_every: float = 1.0, view_timeout: float | None = None) -> dict:
    """A new revision at the origin, declared `declare_after` s after every node's loop started
    (`mode` poll or schedule, every `period` s). Returns when each node published it, when the
    origin's fleet view showed each site with it, every loop run, and the problems: a node that
    did not publish it within `timeout`, a run that failed, a node not converged. Once every
    node published it, the fleet view is watched until `view_timeout` s after the declaration."""
    view_timeout = timeout if view_timeout is None else view_timeout
    change = library.new_version(run.library, fraction=fraction, fixtures_dir=fixtures_dir,
                                 seed=seed)
    published: dict[str, float] = {}
    viewed: dict[str, float] = {}
    state: dict = {}
    done = threading.Event()
    sites = {run.names[s.index] for s in run.leaf_nodes()}

    def looker() -> None:
        last_view = 0.0
        while not done.is_set():
            serial = state.get("serial")
            if serial is not None:
                for node in run.sites:
                    name = run.names[node.index]
                    held = run.held(node)
                    if name not in published and held and held[1] >= serial:
                        published[name] = time.monotonic() - state["t0"]
                if time.monotonic() - last_view >= view_every:
                    last_view = time.monotonic()
                    for row in run.fleet_view()["sites"]:
                        if row["site"] not in viewed and (row["serial"] or 0) >= serial:
                            viewed[row["site"]] = time.monotonic() - state["t0"]
                if set(run.names.values()) <= set(published) and (
                        sites <= set(viewed) or time.monotonic() - state["t0"] > view_timeout):
                    done.set()
            done.wait(0.2)

    loops = Loops(run, run.sites, mode=mode, period=period, random_delay=random_delay,
                  seed=seed).start()

    def action() -> list:
        time.sleep(declare_after)
        state["serial"] = run.declare()
        state["t0"] = time.monotonic()
        watcher = threading.Thread(target=looker, name="looker", daemon=True)
        watcher.start()
        done.wait(timeout)
        done.set()
        watcher.join()
        return []

    try:
        _, torn, seconds, passes = watched([s.published for s in run.sites], action)
    finally:
        runs = loops.stop()
    t0 = state["t0"]
    problems = [f"torn: {t}" for t in torn]
    problems += [f"{r.node}: exit status {r.returncode}: {' | '.join(r.tail)}"
                 for r in runs if r.returncode != 0]
    missing = sorted(set(run.names.values()) - set(published))
    problems += [f"{name}: did not publish serial {state['serial']} within {timeout:.0f} s"
                 for name in missing]
    for node in run.sites:
        name = run.names[node.index]
        problems += [f"{name}: {p}" for p in compare_site(node.published, run.library)]
    synced = [r for r in runs if r.synced and r.started + r.seconds >= t0]
    return {"mode": mode, "period": period, "random_delay": random_delay,
            "serial": state["serial"], "changed_bytes": change.new_bytes,
            "published": published, "viewed": viewed,
            "last_site_published": max((published.get(n, float("inf")) for n in sites),
                                       default=None),
            "last_relay_published": max((published.get(run.names[s.index], float("inf"))
                                         for s in run.relay_nodes()), default=None),
            "last_site_viewed": max((viewed.get(n, float("inf")) for n in sites),
                                    default=None),
            "transfer_seconds": {"relay": max((r.seconds for r in synced if r.index in
                                               {s.index for s in run.relay_nodes()}),
                                              default=0.0),
                                 "site": max((r.seconds for r in synced if r.index in
                                              {s.index for s in run.leaf_nodes()}),
                                             default=0.0)},
            "runs": len(runs), "full_runs": len(synced), "watcher_passes": passes,
            "relays": sorted(run.names[s.index] for s in run.relay_nodes()),
            "loop_runs": [{"node": r.node, "synced": r.synced, "forwarded": r.forwarded,
                           "returncode": r.returncode} for r in runs if r.started >= t0],
            "seconds": seconds, "problems": problems}


def poll_bound(outcome: dict, levels: int = 2, slack: float = 5.0) -> float:
    """What the brief allows for polling: a period plus its random tenth per tree level, the
    transfer of each level (the longest full run there), and `slack` for process start-up."""
    t = outcome["transfer_seconds"]
    return levels * outcome["period"] * 1.1 + t["relay"] + t["site"] + slack


def view_bound(outcome: dict, levels: int = 2, slack: float = 5.0) -> float:
    """When the origin's fleet view must show every site: the publishing bound plus one period
    and its random tenth (the relay's next check forwards what its sites reported)."""
    return poll_bound(outcome, levels, slack) + outcome["period"] * 1.1
