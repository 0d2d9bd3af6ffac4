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
(`restart_to_apply`) reloads systemd when they changed and restarts the daemon; the socket stays
open across the daemon's restart, so no site's connection is refused meanwhile.

No SIGHUP: sshd re-executes itself on SIGHUP and does not find a socket-activated listener again
(Debian 12's OpenSSH 9.2 binds its own ListenAddress instead, Debian 13's 10.0 exits with
"Cannot bind any address").
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..base import config as config_module
from ..base import fsutil, paths
from ..base.config import Config, ServerConfig
from ..base.errors import CommandFailed, ConfigError, SyncerError
from ..base.systemd import systemctl, systemd_running

log = logging.getLogger(__name__)

SOCKET_UNIT = "library-syncer-sshd.socket"
SERVICE_UNIT = "library-syncer-sshd.service"
DROPIN_NAME = "50-settings.conf"
GENERATOR_DIR = Path("/run/systemd/generator")  # a generator's "normal" output directory
GENERATOR = "library-syncer-sshd-generator"


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


def warn_if_outdated(config: Config) -> None:
    """At the daemon's start: a socket still on the settings systemd read earlier is said."""
    if systemd_running() and socket_outdated(config):
        log.warning("[server] listen, port or congestion_control changed since systemd last "
                    "read %s: %s still has the earlier ones; run `systemctl reload "
                    "library-syncer-sshd` to apply them", config.file, SOCKET_UNIT)


def restart_to_apply(config: Config) -> str:
    """After a reload rendered and checked the config: have systemd restart the daemon so it
    reads it (queued, not waited for: this runs inside the reload), first reloading systemd
    and reopening the socket when its settings changed. What was done, for the log."""
    if not systemd_running():
        return "systemd is not running here: restart sshd yourself to apply the config"
    try:
        if socket_outdated(config):
            systemctl("daemon-reload")  # the generator writes the new drop-in
            systemctl("--no-block", "restart", SOCKET_UNIT)  # takes the daemon along
            return (f"{SOCKET_UNIT} and {SERVICE_UNIT} restarting with the new listen, port "
                    "or congestion_control")
        systemctl("--no-block", "restart", SERVICE_UNIT)
    except CommandFailed as error:
        raise SyncerError(f"the config is installed, but {error}",
                          hint=f"systemctl restart {SERVICE_UNIT}") from None
    return f"{SERVICE_UNIT} restarting with the new config (the socket stays open)"
