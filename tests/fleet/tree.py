"""A tree of sites in the fleet: origin → relays → sites, every hop the real server role.

    [srv ns]   origin: sshd rendered by the server role (dispatcher as the forced command),
               library with the origin's trace (server/trace.py), reports, metrics textfile
    [s<r> ns]  relay: `library-syncer sync` from the origin, and a second sshd rendered by the
               server role on its own address, exporting its `published` snapshot and taking its
               sites' reports (forwarded upstream by its next sync)
    [s<i> ns]  site: `library-syncer sync` from its relay

All namespaces hang off the one router of `Fleet`; each node's link is the packet-level WAN of the
flat fleet (rate, delay, loss below TCP: tests/harness/wan.py); a site's traffic to its relay
crosses both nodes' links. The forwarding relay (tests/fleet/relay.py, no delay) of every
node forwards 127.0.0.1:2222 to its upstream (the origin for a relay, the relay for a site) and
127.0.0.1:2223 to the origin, so a site can be switched to pull from the origin directly (`flat`)
for the bytes-leaving-the-origin comparison in the same run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from library_syncer.base import config as config_module
from library_syncer.base import execute
from library_syncer.base.config import ServerConfig
from library_syncer.server import sshd as server_role
from library_syncer.server import trace
from tests.harness import readable
from tests.harness import sshd as sshd_harness

from .netns import PROFILES, SERVER_IP, WAN, Fleet, LinkProfile, ip
from .sites import ROOT, SSH_PORT, SYNCER, FleetRun, Site, SyncResult, _wait_port

# The tree benchmarks' links: the relays on a datacenter uplink, the sites cycling through the
# WAN profiles.
RELAY_PROFILE = LinkProfile("datacenter", 100_000, 20, 0.0)
SITE_PROFILES = ["dsl", "office", "satellite"]


def site_profiles(relays: int, per_relay: int, *, rotate: bool = True) -> list[list[LinkProfile]]:
    """Each relay's sites on SITE_PROFILES in turn; with `rotate`, each relay starts one further
    along, so every profile sits behind every relay."""
    return [[PROFILES[SITE_PROFILES[((r if rotate else 0) + k) % len(SITE_PROFILES)]]
             for k in range(per_relay)] for r in range(relays)]
FLAT_PORT = 2223  # 127.0.0.1:2223 in every node's namespace: the origin, bypassing the relay
ORIGIN = "hq"


@dataclass
class Relay:
    site: Site  # the relay's own client side
    config: ServerConfig
    process: object = None

    @property
    def host_key_pub(self) -> str:
        key = server_role.host_key_paths(self.config)[0]
        return " ".join(Path(f"{key}.pub").read_text().split()[:2])


class TreeRun(FleetRun):
    """The origin (FleetRun's server, with a trace and reports), relays and their sites."""

    def __init__(self, fleet: Fleet, work: Path, library: Path, *, settle: float = 2.0,
                 report_grace: float = 1.0) -> None:
        super().__init__(fleet, work, library)
        self.settle = settle
        self.report_grace = report_grace
        self.names: dict[int, str] = {}
        self.upstream: dict[int, int | None] = {}  # node index → its relay's index (None: origin)
        self.relays: dict[int, Relay] = {}
        self.flat = False
        self.origin_toml = work / "origin.toml"

    # --- the origin ------------------------------------------------------------------------
    def server_config(self) -> ServerConfig:
        return ServerConfig(library=self.library, listen=(SERVER_IP,), port=SSH_PORT,
                            user=self.user, config_dir=self.sshd_dir / "etc",
                            sshd=sshd_harness.SSHD, rrsync=sshd_harness.RRSYNC, name=ORIGIN,
                            dispatcher=str(readable.launcher()),  # not the checkout (/root: 0700)
                            settle=self.settle, state_dir=self.work / "origin-state",
                            metrics_textfile=self.work / "origin-metrics" / "sites.prom",
                            report_grace=self.report_grace)

    def write_origin_settings(self) -> None:
        """The origin's settings file, as `server trace` and `server sites` read it."""
        c = self.server_config()
        self.origin_toml.write_text(
            f'[server]\nlibrary = "{c.library}"\nstate_dir = "{c.state_dir}"\n'
            f'config_dir = "{c.config_dir}"\nuser = "{c.user}"\nname = "{ORIGIN}"\n'
            f'settle = "{self.settle:g}s"\nreport_grace = "{self.report_grace:g}s"\n'
            f'metrics_textfile = "{c.metrics_textfile}"\ndispatcher = "{c.dispatcher}"\n')

    def start_server(self) -> None:
        config = self.server_config()
        self.sshd_dir.mkdir(mode=0o755, exist_ok=True)
        self.write_origin_settings()
        for site in self.sites:  # the nodes right below the origin may be relays
            server_role.authorize(config, Path(f"{site.key}.pub").read_text(),
                                  self.names[site.index],
                                  relay=self.upstream[site.index] is None)
        rendered = self.sshd_dir / "run" / "sshd_config"
        server_role.write_config(config, rendered, host_keys=True, check=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.sshd_process = self.fleet.spawn(
            self.fleet.server_ns, [config.sshd, "-D", "-e", "-f", str(rendered)],
            log=self.sshd_dir / "sshd.log")
        _wait_port(self.fleet.server_ns, SERVER_IP, SSH_PORT)
        self.cpu_meter.start()

    def declare(self, *, wait_settle: bool = False) -> int:
        """The origin declares its library as the next revision (`server trace`); without
        `wait_settle`, as if the settle time had already passed."""
        cfg = config_module.load(self.origin_toml)
        now = None if wait_settle else time.time() + self.settle + 1
        return trace.tick(cfg, now=now).serial

    def tick(self) -> trace.Outcome:
        """One run of the origin's trace timer, real clock."""
        return trace.tick(config_module.load(self.origin_toml))

    def revision(self) -> tuple[str, int] | None:
        found = trace.read(self.library)
        return (found.origin, found.serial) if found else None

    def origin_tx_bytes(self) -> int:
        """Bytes sent on the origin's link (Ethernet frames, retransmissions included)."""
        data = json.loads(ip("-n", self.fleet.server_ns, "-s", "-j", "link", "show",
                             WAN).output)
        return data[0]["stats64"]["tx"]["bytes"]

    def fleet_view(self) -> dict:
        """`library-syncer server sites --json` at the origin."""
        result = execute.run([SYNCER, "server", "sites", "--json", "--config",
                              str(self.origin_toml)], capture=True, check=False)
        assert result.returncode == 0, result.tail
        return json.loads(result.output)

    # --- nodes -----------------------------------------------------------------------------
    def add_node(self, name: str, profile: LinkProfile, *, upstream: int | None = None,
                 io_timeout: float = 10, retry_budget: float = 300) -> Site:
        """A relay (upstream None: it pulls from the origin) or a site behind relay `upstream`."""
        i = len(self.sites)
        ns = self.fleet.site_ns(i)
        site_dir = self.work / name
        (site_dir / "ssh").mkdir(mode=0o700, parents=True)
        key, _ = sshd_harness.keygen(site_dir / "ssh" / "id_syncer", comment=name)
        site = Site(i, ns, site_dir, key, site_dir / f"{name}.toml", site_dir / "state",
                    profile, "0", io_timeout, retry_budget)
        self.names[i] = name
        self.upstream[i] = upstream
        self.sites.append(site)
        self.write_config(site)
        self.fleet.shape(i, profile)
        target = SERVER_IP if upstream is None else self.fleet.site_ip(upstream)
        self.fleet.spawn(ns, [sys.executable, "-m", "tests.fleet.relay",
                              f"127.0.0.1:{SSH_PORT}={target}:{SSH_PORT}",
                              f"127.0.0.1:{FLAT_PORT}={SERVER_IP}:{SSH_PORT}",
                              "--delay-ms", "0"],  # the delay is the packet-level link's
                         log=site_dir / "relay.log", env={**os.environ, "PYTHONPATH": str(ROOT)})
        _wait_port(ns, "127.0.0.1", SSH_PORT)
        return site

    def relay_nodes(self) -> list[Site]:
        return [s for s in self.sites if self.upstream[s.index] is None]

    def leaf_nodes(self, relay: Site | None = None) -> list[Site]:
        return [s for s in self.sites if self.upstream[s.index] is not None and
                (relay is None or self.upstream[s.index] == relay.index)]

    def _relay_server_config(self, relay: Site) -> ServerConfig:
        base = relay.dir / "server"
        return ServerConfig(library=relay.published, listen=(self.fleet.site_ip(relay.index),),
                            port=SSH_PORT, user=self.user, config_dir=base / "etc",
                            sshd=sshd_harness.SSHD, rrsync=sshd_harness.RRSYNC,
                            dispatcher=str(readable.launcher()),  # not the checkout (/root: 0700)
                            state_dir=base / "state", report_grace=self.report_grace)

    def _site_config(self, site: Site) -> str:
        text = super()._site_config(site)
        relay = self.upstream.get(site.index, 0) is None
        port = FLAT_PORT if self.flat and not relay else SSH_PORT
        text = text.replace(f"port = {SSH_PORT}\n", f"port = {port}\n", 1)
        if relay:  # the relay's [server] section: what it exports, where its sites report
            c = self._relay_server_config(site)
            text += (f'\n[server]\nlibrary = "{c.library}"\nstate_dir = "{c.state_dir}"\n'
                     f'config_dir = "{c.config_dir}"\nuser = "{c.user}"\n'
                     f'listen = ["{c.listen[0]}"]\nreport_grace = "{self.report_grace:g}s"\n'
                     f'dispatcher = "{c.dispatcher}"\n')
        return text

    def start_relay(self, relay: Site) -> Relay:
        """The relay's server role: authorize its sites, render, start sshd on its address."""
        config = self._relay_server_config(relay)
        (relay.dir / "server").mkdir(mode=0o755, exist_ok=True)
        for site in self.leaf_nodes(relay):
            server_role.authorize(config, Path(f"{site.key}.pub").read_text(),
                                  self.names[site.index])
        rendered = relay.dir / "server" / "run" / "sshd_config"
        server_role.write_config(config, rendered, host_keys=True, check=True)
        process = self.fleet.spawn(relay.ns, [config.sshd, "-D", "-e", "-f", str(rendered)],
                                   log=relay.dir / "server" / "sshd.log")
        _wait_port(relay.ns, self.fleet.site_ip(relay.index), SSH_PORT)
        self.relays[relay.index] = Relay(relay, config, process)
        return self.relays[relay.index]

    def trust_server(self) -> None:
        """Each node records its upstream's host key on :2222 and the origin's on :2223."""
        for site in self.sites:
            up = self.upstream[site.index]
            key = self.host_key_pub if up is None or up not in self.relays else \
                self.relays[up].host_key_pub
            (site.dir / "ssh" / "known_hosts").write_text(
                f"[127.0.0.1]:{SSH_PORT} {key}\n[127.0.0.1]:{FLAT_PORT} {self.host_key_pub}\n")

    def set_flat(self, flat: bool) -> None:
        """Sites pull from the origin directly (flat) or from their relay (the tree)."""
        self.flat = flat
        for site in self.sites:
            self.write_config(site)

    # --- runs ------------------------------------------------------------------------------
    def sync_many(self, sites: list[Site], *, random_delay: float = 0.0,
                  seed: int = 0) -> list[SyncResult]:
        """These nodes at once, each after its own random delay."""
        import random

        rng = random.Random(seed)
        delays = {s.index: rng.uniform(0, random_delay) for s in sites}
        results: dict[int, SyncResult] = {}

        def run(site: Site) -> None:
            time.sleep(delays[site.index])
            results[site.index] = self.sync(site)

        threads = [threading.Thread(target=run, args=(s,), name=f"sync-{s.index}")
                   for s in sites]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [results[s.index] for s in sites]

    def propagate(self, *, random_delay: float = 0.0) -> list[SyncResult]:
        """A revision down the tree: the relays pull, then every site (or all at once, flat)."""
        if self.flat:
            return self.sync_many(self.sites, random_delay=random_delay)
        return self.sync_many(self.relay_nodes(), random_delay=random_delay) + \
            self.sync_many(self.leaf_nodes(), random_delay=random_delay)

    def held(self, site: Site) -> tuple[str, int] | None:
        found = trace.read(Path(os.path.realpath(site.published)))
        return (found.origin, found.serial) if found else None

    # --- a relay restored from an old backup -----------------------------------------------
    def backup_relay(self, relay: Site) -> Path:
        """A copy of the relay's published snapshot, as a backup taken now would hold."""
        backup = relay.dir / "backup"
        shutil.rmtree(backup, ignore_errors=True)
        shutil.copytree(os.path.realpath(relay.published), backup, symlinks=True)
        return backup

    def restore_relay(self, relay: Site, backup: Path) -> None:
        """The relay's published snapshot replaced by the backup (an old serial)."""
        target = relay.state / "snapshots" / f"restored-{int(time.time())}"
        shutil.copytree(backup, target, symlinks=True)
        link = relay.state / "published.restoring"
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(target, relay.state))
        os.replace(link, relay.published)
