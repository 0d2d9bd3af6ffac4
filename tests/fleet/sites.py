"""Run the real server role and one real client per site inside a `Fleet`.

Server namespace: the real server role — sshd started from the sshd_config that
library_syncer.server renders (as `library-syncer server render` does), each site's key added
with `server.authorize` — on 198.18.0.1:2222, and a plain HTTP server on :8080 over the same library
for the "full re-download" baseline (what a vCenter subscription does).

Site namespace i: a forwarding relay (tests/fleet/relay.py, no delay) on 127.0.0.1:2222 and
:8080 (→ the server through the site's packet-level link, tests/harness/wan.py), its own
key, known_hosts, settings file and state directory, and the client:
`ip netns exec <site> library-syncer sync --config site-i.toml`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from library_syncer.base import execute
from library_syncer.base.config import ServerConfig
from library_syncer.server import sshd as server_role
from tests.harness import readable
from tests.harness import sshd as sshd_harness

from .netns import SERVER_IP, Fleet, LinkProfile, in_ns

log = logging.getLogger(__name__)
SSH_PORT = 2222
HTTP_PORT = 8080
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[2]
SYNCER = shutil.which("library-syncer", path=str(ROOT / ".venv" / "bin")) or "library-syncer"


@dataclass
class SyncResult:
    site: int
    returncode: int
    seconds: float
    rx_bytes: int  # bytes received on the site's WAN interface during the run
    tx_bytes: int
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class Site:
    index: int
    ns: str
    dir: Path
    key: Path
    config: Path
    state: Path
    profile: LinkProfile
    bandwidth_limit: str = "0"
    io_timeout: float = 20.0
    retry_budget: float = 600.0
    settings: dict[str, str | bool] = field(default_factory=dict)  # more [sync] settings

    @property
    def published(self) -> Path:
        return self.state / "published"


def _wait_port(ns: str, host: str, port: int, timeout: float = 15.0) -> None:
    code = ("import socket,sys,time\n"
            f"end=time.monotonic()+{timeout}\n"
            "while time.monotonic()<end:\n"
            f" try: socket.create_connection(('{host}',{port}),timeout=1).close(); sys.exit(0)\n"
            " except OSError: time.sleep(0.1)\n"
            "sys.exit(1)\n")
    if in_ns(ns, sys.executable, "-c", code, check=False).returncode:
        raise AssertionError(f"nothing listening on {host}:{port} in {ns} after {timeout} s")


class FleetRun:
    """Server + sites on top of a Fleet. `client` is "library-syncer" (the product) or "rsync"
    (plain rsync over the same ssh, for harness self-tests and baselines)."""

    def __init__(self, fleet: Fleet, work: Path, library: Path, *,
                 client: str = "library-syncer") -> None:
        self.fleet = fleet
        self.work = work
        self.library = library
        self.client = client
        self.sites: list[Site] = []
        self.sshd_dir = work / "server-sshd"
        self.sshd_process = None
        self.cpu_meter = CpuMeter(lambda: self.sshd_process)
        self.user = sshd_harness.ensure_sysusers_user().pw_name

    # --- server ----------------------------------------------------------------------------
    def server_config(self) -> ServerConfig:
        """The [server] section a real deployment would have (shipped defaults for limits and
        keep-alives), with the test's own paths."""
        return ServerConfig(library=self.library, listen=(SERVER_IP,), port=SSH_PORT,
                            user=self.user, config_dir=self.sshd_dir / "etc",
                            sshd=sshd_harness.SSHD, rrsync=sshd_harness.RRSYNC,
                            dispatcher=str(readable.launcher()),  # not the checkout: /root is 0700
                            state_dir=self.work / "server-state")  # never the host's own

    def start_server(self) -> None:
        """Render the real sshd_config (library_syncer.server, as `server render` does) and
        start sshd from it in the server namespace."""
        config = self.server_config()
        self.sshd_dir.mkdir(mode=0o755, exist_ok=True)
        known = {entry.site for entry in server_role.list_keys(config)}
        for site in self.sites:
            if f"site-{site.index}" not in known:
                server_role.authorize(config, Path(f"{site.key}.pub").read_text(),
                                      f"site-{site.index}")
        rendered = self.sshd_dir / "run" / "sshd_config"
        server_role.write_config(config, rendered, host_keys=True, check=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        self.sshd_process = self.fleet.spawn(
            self.fleet.server_ns, [config.sshd, "-D", "-e", "-f", str(rendered)],
            log=self.sshd_dir / "sshd.log")
        _wait_port(self.fleet.server_ns, SERVER_IP, SSH_PORT)
        self.cpu_meter.start()

    @property
    def host_key_pub(self) -> str:
        key = server_role.host_key_paths(self.server_config())[0]
        text = Path(f"{key}.pub").read_text()
        return " ".join(text.split()[:2])

    def server_cpu_seconds(self) -> float:
        """CPU used so far by sshd and everything it started (sessions, rrsync, rsync)."""
        return self.cpu_meter.seconds()

    def kill_server(self) -> None:
        """sshd crashes: the listener and every session it forked die at once."""
        assert self.sshd_process is not None
        self.cpu_meter.sample()
        for pid in _descendants(self.sshd_process.pid):
            _kill(pid)
        _kill(self.sshd_process.pid)
        self.sshd_process.wait()
        self.sshd_process = None

    def start_http(self) -> None:
        self.fleet.spawn(self.fleet.server_ns,
                         [sys.executable, "-m", "http.server", "--bind", SERVER_IP,
                          "--directory", str(self.library), str(HTTP_PORT)],
                         log=self.work / "http.log")
        _wait_port(self.fleet.server_ns, SERVER_IP, HTTP_PORT)

    # --- sites -----------------------------------------------------------------------------
    def add_site(self, profile: LinkProfile, *, bandwidth_limit: str = "0",
                 io_timeout: float = 20, retry_budget: float = 600) -> Site:
        i = len(self.sites)
        ns = self.fleet.site_ns(i)
        site_dir = self.work / f"site-{i}"
        (site_dir / "ssh").mkdir(mode=0o700, parents=True)
        key, _ = sshd_harness.keygen(site_dir / "ssh" / "id_syncer", comment=f"site-{i}")
        site = Site(i, ns, site_dir, key, site_dir / f"site-{i}.toml", site_dir / "state",
                    profile, bandwidth_limit, io_timeout, retry_budget)
        self.write_config(site)
        self.sites.append(site)
        self.fleet.shape(i, profile)
        # a plain forwarder (no delay of its own): the delay is the packet-level link's
        self.fleet.spawn(ns, [sys.executable, "-m", "tests.fleet.relay",
                              f"127.0.0.1:{SSH_PORT}={SERVER_IP}:{SSH_PORT}",
                              f"127.0.0.1:{HTTP_PORT}={SERVER_IP}:{HTTP_PORT}",
                              "--delay-ms", "0"],
                         log=site_dir / "relay.log", env={**os.environ, "PYTHONPATH": str(ROOT)})
        _wait_port(ns, "127.0.0.1", SSH_PORT)
        return site

    def set_bandwidth_limit(self, site: Site, limit: str) -> None:
        site.bandwidth_limit = limit
        self.write_config(site)

    def set_sync_settings(self, site: Site, **settings: str | bool) -> None:
        """More `[sync]` settings for one site (e.g. find_basis=False), kept across rewrites."""
        site.settings.update(settings)
        self.write_config(site)

    def write_config(self, site: Site) -> None:
        site.config.write_text(self._site_config(site))

    def _site_config(self, site: Site) -> str:
        return f"""\
# site {site.index} of the fleet simulation ({site.profile.describe()})
[library]
name = "Fleet library"

[sync]
peer = "127.0.0.1"
port = {SSH_PORT}
user = "{self.user}"
identity_file = "{site.key}"
known_hosts = "{site.dir / 'ssh' / 'known_hosts'}"
bandwidth_limit = "{site.bandwidth_limit}"
connect_timeout = "10s"
io_timeout = "{site.io_timeout:g}s"
retry_budget = "{site.retry_budget:g}s"
retry_initial_delay = "1s"
retry_max_delay = "5s"
min_free_space = "1M"
{_toml_lines(site.settings)}
[paths]
state_dir = "{site.state}"
runtime_dir = "{site.dir / 'run'}"
"""

    def trust_server(self) -> None:
        """Every site records the server's host key (what `trust-host --fingerprint` does)."""
        for site in self.sites:
            (site.dir / "ssh" / "known_hosts").write_text(
                f"[127.0.0.1]:{SSH_PORT} {self.host_key_pub}\n")

    def client_argv(self, site: Site) -> list[str]:
        if self.client == "library-syncer":
            return [SYNCER, "sync", "--config", str(site.config)]
        ssh = (f"ssh -p {SSH_PORT} -i {site.key} -o BatchMode=yes -o IdentitiesOnly=yes "
               f"-o UserKnownHostsFile={site.dir / 'ssh' / 'known_hosts'} -o ConnectTimeout=10")
        dest = site.state / "published"
        dest.mkdir(parents=True, exist_ok=True)
        return ["rsync", "-a", "--delete", "--partial-dir=.rsync-partial",
                f"--timeout={site.io_timeout:g}",
                f"--bwlimit={site.bandwidth_limit}", "-e", ssh, f"{self.user}@127.0.0.1:/",
                f"{dest}/"]

    def sync(self, site: Site, *, attempts: int = 1) -> SyncResult:
        """One client run in the site's namespace (attempts > 1 only for the plain-rsync client,
        which has no retry loop of its own)."""
        rx0, tx0 = self.fleet.wire_bytes(site.index)
        started = time.monotonic()
        logfile = site.dir / "sync.log"
        with open(logfile, "a") as out:
            def emit(line: str) -> None:
                out.write(line + "\n")
                out.flush()

            for attempt in range(attempts):
                result = execute.run(["ip", "netns", "exec", site.ns, *self.client_argv(site)],
                                     check=False, on_line=emit, timeout=3600)
                if result.returncode == 0 or attempt == attempts - 1:
                    break
                time.sleep(2)
        rx1, tx1 = self.fleet.wire_bytes(site.index)
        return SyncResult(site.index, result.returncode, time.monotonic() - started,
                          rx1 - rx0, tx1 - tx0, result.tail)

    def sync_all(self, *, random_delay: float = 0.0, seed: int = 0,
                 attempts: int = 1) -> list[SyncResult]:
        """Every site at once, each after its own random delay (the timer's RandomizedDelaySec,
        compressed to seconds)."""
        rng = random.Random(seed)
        delays = [rng.uniform(0, random_delay) for _ in self.sites]
        results: list[SyncResult | None] = [None] * len(self.sites)

        def run(site: Site) -> None:
            time.sleep(delays[site.index])
            results[site.index] = self.sync(site, attempts=attempts)

        threads = [threading.Thread(target=run, args=(s,), name=f"sync-{s.index}")
                   for s in self.sites]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [r for r in results if r is not None]

    def http_fetch(self, site: Site, relpaths: list[str]) -> SyncResult:
        """The baseline: download whole files over HTTP through the same link (as vCenter's own
        subscription does for every changed file)."""
        rx0, tx0 = self.fleet.wire_bytes(site.index)
        started = time.monotonic()
        target = site.dir / "http-download"
        target.mkdir(exist_ok=True)
        argv = ["curl", "--silent", "--show-error", "--fail", "--retry", "20",
                "--retry-all-errors", "--retry-delay", "1"]
        for rel in relpaths:
            argv += ["-o", str(target / rel.replace("/", "_")),
                     f"http://127.0.0.1:{HTTP_PORT}/{rel}"]
        result = execute.run(["ip", "netns", "exec", site.ns, *argv], check=False, timeout=3600)
        rx1, tx1 = self.fleet.wire_bytes(site.index)
        shutil.rmtree(target, ignore_errors=True)
        return SyncResult(site.index, result.returncode, time.monotonic() - started,
                          rx1 - rx0, tx1 - tx0, result.tail)


def _toml_lines(settings: dict[str, str | bool]) -> str:
    def value(v: str | bool) -> str:
        return str(v).lower() if isinstance(v, bool) else json.dumps(v)
    return "".join(f"{key} = {value(v)}\n" for key, v in settings.items())


class CpuMeter:
    """CPU seconds of a daemon and all its descendants, sampled every `interval` seconds.

    sshd's listener does not see its sessions' CPU in its own cutime (the session processes are
    not all reaped up the chain), so every descendant is sampled while alive and its highest
    utime+stime kept, keyed by (pid, start time). A process's last < `interval` seconds of life
    can be missed; the long-lived ones (the session sshd doing the crypto, the rsync sender)
    dominate."""

    def __init__(self, root: Callable[[], subprocess.Popen | None], interval: float = 0.1):
        self.root = root
        self.interval = interval
        self.seen: dict[tuple[int, int], int] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        while True:
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        process = self.root()
        if process is None or process.poll() is not None:
            return
        with self.lock:
            for pid in [process.pid, *_descendants(process.pid)]:
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                key = (pid, int(stat[19]))  # start time tells a reused pid apart
                self.seen[key] = max(self.seen.get(key, 0), int(stat[11]) + int(stat[12]))

    def seconds(self) -> float:
        self.sample()
        with self.lock:
            return sum(self.seen.values()) / CLK_TCK


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
