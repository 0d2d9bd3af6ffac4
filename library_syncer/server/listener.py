"""The dedicated sshd's listening socket: library-syncer-sshd.socket, and the TCP congestion
control of the sites' transfers.

systemd, not sshd, opens the socket (the service takes it: Accept=no, one sshd daemon; Debian's
sshd uses a socket systemd passes and then ignores its own ListenAddress/Port). `TCPCongestion=`
sets the algorithm on that listening socket and every connection it accepts inherits it, so the
origin sends the sites' data with it while the host's default and every other socket (the
host's own sshd, other services, outgoing connections) keep theirs.

Addresses, port and algorithm come from [server] (listen, port, congestion_control): a systemd
generator (`generate`, installed as /usr/lib/systemd/system-generators/library-syncer-sshd-
generator) writes them into a drop-in of the socket at boot and at every daemon-reload, so the
socket always follows the settings file systemd last read. `systemctl reload library-syncer-sshd`
has library-syncer-sshd-apply.service (`restart`) restart the daemon once the reload is done;
the socket stays open across that restart, so no site's connection is refused meanwhile. When
they changed, it reloads systemd first and restarts the socket with the daemon.

No SIGHUP: sshd re-executes itself on SIGHUP and does not find a socket-activated listener again
(Debian 12's OpenSSH 9.2 binds its own ListenAddress instead, Debian 13's 10.0 exits with
"Cannot bind any address").
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from ..base import config as config_module
from ..base import fsutil, paths
from ..base.config import Config, ServerConfig
from ..base.errors import CommandFailed, ConfigError, SyncerError
from ..base.systemd import systemctl, systemd_running

log = logging.getLogger(__name__)

SOCKET_UNIT = "library-syncer-sshd.socket"
SERVICE_UNIT = "library-syncer-sshd.service"
APPLY_UNIT = "library-syncer-sshd-apply.service"
DROPIN_NAME = "50-settings.conf"
GENERATOR_DIR = Path("/run/systemd/generator")  # a generator's "normal" output directory
GENERATOR = "library-syncer-sshd-generator"
JOB_WAIT = 120.0  # seconds `server restart` waits for a reload under way to finish


def _server(config: Config | ServerConfig) -> ServerConfig:
    return config.server if isinstance(config, Config) else config


def listen_streams(config: Config | ServerConfig) -> list[str]:
    """The socket's ListenStream= values: one per [server] listen address, or the bare port
    (every address: one IPv6 socket that takes IPv4 too, or IPv4 only where IPv6 is off)."""
    server = _server(config)
    if not server.listen:
        return [str(server.port)]
    return [f"[{a}]:{server.port}" if ":" in a else f"{a}:{server.port}" for a in server.listen]


def dropin_text(config: Config | ServerConfig, source: Path) -> str:
    """The socket's drop-in for these settings (read from `source`)."""
    server = _server(config)
    lines = [f"# Written by {GENERATOR} from [server] in {source} at boot and at every",
             "# `systemctl daemon-reload`: do not edit. Change the settings file, then",
             "# `systemctl reload library-syncer-sshd` (it reloads systemd when these change).",
             "[Socket]",
             "ListenStream=",  # drops the unit's own default
             *(f"ListenStream={stream}" for stream in listen_streams(server))]
    if server.listen:
        lines.append("FreeBind=yes")  # sockets start early: the address may come up later
    if server.congestion_control:
        lines.append(f"TCPCongestion={server.congestion_control}")
    return "\n".join(lines) + "\n"


def dropin_path(unit_dir: Path = GENERATOR_DIR) -> Path:
    return unit_dir / f"{SOCKET_UNIT}.d" / DROPIN_NAME


def generate(argv: list[str], file: Path | None = None) -> int:
    """The generator: `GENERATOR NORMAL_DIR [EARLY_DIR LATE_DIR]` (systemd.generator(7)).

    Without a settings file nothing is written (the socket's ConditionPathExists= skips it). A
    settings file that does not load is one line on stderr (the journal) and no drop-in: the
    socket keeps its defaults (port 2222, every address, the system's algorithm) and the
    service's start names the problem. Never fails the boot."""
    if not argv:
        print(f"usage: {GENERATOR} NORMAL_DIR [EARLY_DIR LATE_DIR]", file=sys.stderr)
        return 2
    file = file or paths.config_file()
    if not file.exists():
        return 0
    try:
        config = config_module.load(file)
        path = dropin_path(Path(argv[0]))
        path.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_if_changed(path, dropin_text(config, file), 0o644)
    except (ConfigError, OSError) as error:
        print(f"{GENERATOR}: {error}; {SOCKET_UNIT} keeps its defaults (port 2222, every "
              "address, the system's congestion control)", file=sys.stderr)
    return 0


def loaded_dropin(unit_dir: Path = GENERATOR_DIR) -> str | None:
    """The drop-in systemd read at its last daemon-reload (None: none written)."""
    try:
        return dropin_path(unit_dir).read_text()
    except FileNotFoundError:
        return None


def socket_outdated(config: Config, unit_dir: Path = GENERATOR_DIR) -> bool:
    """listen, port or congestion_control changed since systemd last read the settings."""
    return loaded_dropin(unit_dir) != dropin_text(config, config.file)


def _systemctl(*args: str) -> None:
    try:
        systemctl(*args)
    except CommandFailed as error:
        raise SyncerError(str(error), hint=f"systemctl daemon-reload && systemctl restart "
                          f"{SOCKET_UNIT} {SERVICE_UNIT}") from None


def queue_restart(config: Config, only_if_outdated: bool = False) -> str | None:
    """From inside the daemon's own reload (or start): have APPLY_UNIT restart it once that job
    has finished (`restart` below). With `only_if_outdated` (the start), only when the socket's
    settings changed since systemd read them. What was done, for the log (None: nothing)."""
    if not systemd_running():
        return None if only_if_outdated else ("systemd is not running here: restart sshd "
                                              "yourself to apply the config")
    outdated = socket_outdated(config)
    if only_if_outdated and not outdated:
        return None
    _systemctl("--no-block", "start", APPLY_UNIT)
    if outdated:
        return (f"[server] listen, port or congestion_control changed in {config.file}: "
                f"{APPLY_UNIT} reloads systemd and restarts {SOCKET_UNIT} and {SERVICE_UNIT}")
    return f"{APPLY_UNIT} restarts {SERVICE_UNIT} with the new config (the socket stays open)"


def _wait_until_idle(timeout: float = JOB_WAIT) -> None:
    """Until systemd has no job for the daemon: a stop or restart of ours would cancel a reload
    under way (a second edit applied right after the first), failing it for its operator."""
    deadline = time.monotonic() + timeout
    while systemctl("list-jobs", "--no-legend", "--plain", SERVICE_UNIT):
        if time.monotonic() > deadline:
            raise SyncerError(f"{SERVICE_UNIT} is still busy with a job after {timeout:.0f} s",
                              hint="systemctl list-jobs; then systemctl reload "
                              f"{SERVICE_UNIT} again")
        time.sleep(0.2)


def restart(file: Path | None = None) -> str:
    """`server restart` (APPLY_UNIT): restart the daemon; when the socket's settings changed,
    reload systemd first and restart the socket with it. Waits for systemd. The settings are
    read once no reload is under way, so the last edit is the one applied."""
    if not systemd_running():
        raise SyncerError("systemd is not running here", hint="restart sshd yourself")
    _wait_until_idle()
    config = config_module.load(file)
    from .sshd import check_rendered  # (not at import: the generator needs none of it)

    # Edited again since the reload checked it: a config sshd rejects is not started.
    check_rendered(config)
    if socket_outdated(config):
        _systemctl("daemon-reload")  # the generator writes the socket's new drop-in
        # Stopped, then started: one `restart` of both may reopen the socket before the daemon
        # has let go of the old one (EADDRINUSE on a port that stays the same).
        _wait_until_idle()
        _systemctl("stop", SERVICE_UNIT, SOCKET_UNIT)
        _systemctl("start", SOCKET_UNIT, SERVICE_UNIT)
        return (f"{SOCKET_UNIT} and {SERVICE_UNIT} restarted with the new listen, port or "
                "congestion_control")
    _systemctl("restart", SERVICE_UNIT)
    return f"{SERVICE_UNIT} restarted (its socket stayed open)"
