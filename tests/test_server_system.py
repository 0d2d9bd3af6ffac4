"""library-syncer-sshd.service on a real, booted systemd (systemd-nspawn, tests/harness/nspawn.py),
installed from the .debs next to Debian's own ssh.service, on each tested suite: the server role
alone (library-syncer-common + library-syncer-server) installs without Caddy or the client role;
the account the package creates, first
start (host keys), a pull, reload with a good and a rejected config, restart keeping the host
key, and stop leaving the host's sshd (and its /run/sshd) alone.

The daemon listens on library-syncer-sshd.socket: the container's network namespace defaults to
reno (the host's kernel, shared, has bbr built in), so the algorithm the sites' connections use
tells the socket's TCPCongestion= from the default; what the kernel says is read inside the
container with the installed server/sockdiag.py (the container has no iproute2).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import nspawn

pytestmark = pytest.mark.system

CONF = "/etc/library-syncer/library-syncer.toml"
UNIT = "library-syncer-sshd.service"
SOCKET = "library-syncer-sshd.socket"
APPLY = "library-syncer-sshd-apply.service"
DEFAULT_CC = "reno"  # the container's default: neither bbr nor cubic (see the fixture)
RENDERED = "/run/library-syncer-sshd/sshd_config"
KEYS = "/etc/library-syncer/server"
SSH = ("ssh -p 2222 -i /root/site/id -o BatchMode=yes -o IdentitiesOnly=yes "
       "-o UserKnownHostsFile=/root/site/known_hosts -o StrictHostKeyChecking=yes")


SERVER_ROLE = ("library-syncer-common", "library-syncer-server")


@pytest.fixture(scope="module")
def box(debs: list[Path], suite: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[nspawn.Container]:
    log_dir = tmp_path_factory.mktemp(f"server-nspawn-{suite}")
    with nspawn.boot(debs, log_dir, [(debs[0].parent, "/srv/in")], suite=suite) as container:
        # The shared tree holds every dependency of the three packages, Caddy too: take it out
        # (the container is offline, so apt could not bring it back if the server role needed
        # it), then install the server role as its documentation says.
        container.run("apt-get", "purge", "-y", "caddy", timeout=600)
        container.run("apt-get", "install", "-y",
                      *[f"/srv/in/{p.name}" for p in nspawn.named(debs, *SERVER_ROLE)],
                      timeout=600)
        # A namespace other than the host's may only default to an algorithm in
        # tcp_allowed_congestion_control (reno is); PID 1's socket option is not bound by it.
        subprocess.run(["nsenter", "-t", str(container.pid1), "-n", "sysctl", "-qw",
                        f"net.ipv4.tcp_congestion_control={DEFAULT_CC}"], check=True)
        container.run("systemctl", "restart", "ssh.service")  # its socket: opened again, reno
        yield container


def test_the_server_role_installs_without_caddy_or_the_client(box):
    status = box.run("dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n",
                     "library-syncer*", "caddy", check=False).stdout
    installed = sorted(line.split()[0] for line in status.splitlines()
                       if line.split()[1:2] == ["ii"])
    assert installed == sorted(SERVER_ROLE), status
    assert box.run("test", "-e", "/usr/bin/caddy", check=False).returncode != 0
    assert box.run("getent", "passwd", "library-syncer", check=False).returncode == 2
    assert box.run("test", "-e", "/usr/lib/systemd/system/library-syncer.timer",
                   check=False).returncode != 0
    # The command and the settings file come with -common.
    assert box.run("dpkg-query", "-S", "/etc/library-syncer/library-syncer.toml"
                   ).stdout.startswith("library-syncer-common:")
    box.run("library-syncer", "--version")


def _show(box: nspawn.Container, prop: str) -> str:
    return box.run("systemctl", "show", f"--property={prop}", "--value", UNIT).stdout.strip()


def _pull(box: nspawn.Container, dest: str, ssh: str = SSH,
          host: str = "127.0.0.1") -> subprocess.CompletedProcess:
    return box.run("rsync", "-a", "-e", ssh, f"syncer@{host}:/", dest, check=False)


SOCKETS = ("import json; from library_syncer.server import sockdiag; "
           "print(json.dumps([s.__dict__ for s in sockdiag.tcp_sockets(None)]))")


def _all_sockets(box: nspawn.Container) -> list[dict]:
    """The container's listening and connected TCP sockets, as its kernel reports them."""
    return json.loads(box.run("python3", "-c", SOCKETS).stdout)


def _sockets(box: nspawn.Container, port: int) -> list[dict]:
    return [s for s in _all_sockets(box) if s["local_port"] == port]


def _listeners(box: nspawn.Container, port: int = 2222) -> list[tuple[str, str]]:
    return sorted((s["local"], s["congestion"]) for s in _sockets(box, port) if s["state"] == 10)


def _wait_listening(box: nspawn.Container, port: int, local: str, congestion: str) -> None:
    """Until the only listener on `port` is on `local` with `congestion` (a reload reopens the
    socket after it returns)."""
    assert nspawn.wait_until(lambda: _listeners(box, port) == [(local, congestion)]), \
        (_listeners(box, port), box.run("journalctl", "-u", SOCKET, "-u", UNIT, "-u", APPLY,
                                        "--no-pager", "-n", "60").stdout)


def _check_line(box: nspawn.Container, what: str) -> str:
    out = box.run("library-syncer", "check", check=False).stdout
    lines = [line for line in out.splitlines() if line[6:].startswith(f"{what}: ")]
    assert len(lines) == 1, out
    return lines[0]


def _reload(box: nspawn.Container, settings: str) -> None:
    box.write(CONF, settings)
    reloaded = box.run("systemctl", "reload", UNIT, check=False)
    assert reloaded.returncode == 0, (reloaded.stderr, box.run(
        "journalctl", "-u", SOCKET, "-u", UNIT, "-u", APPLY, "--no-pager", "-n", "40").stdout)
    # The reload queued the restart that applies it: done once no job is left.
    assert nspawn.wait_until(lambda: not box.run("systemctl", "list-jobs", "--no-legend",
                                                 "--plain").stdout.strip())
    assert box.run("systemctl", "show", "--property=Result", "--value", APPLY
                   ).stdout.strip() == "success"


def _socket_since(box: nspawn.Container) -> str:
    return box.run("systemctl", "show", "--property=ActiveEnterTimestampMonotonic", "--value",
                   SOCKET).stdout.strip()


HELD = "/root/held-session.pid"


def _hold_session(box: nspawn.Container) -> None:
    """A site's session held open (ssh -N, at most 20 s), until _end_session."""
    box.sh(f"(timeout 20 {SSH} -N syncer@127.0.0.1 > /dev/null 2>&1 & echo $! > {HELD})")
    assert nspawn.wait_until(lambda: _established(box) == 1)


def _end_session(box: nspawn.Container) -> None:
    box.sh(f"kill $(cat {HELD}) && rm {HELD}")
    assert nspawn.wait_until(lambda: _established(box) == 0)


def _established(box: nspawn.Container) -> int:
    return sum(1 for s in _sockets(box, 2222) if s["state"] == 1)


def test_the_account_has_keys_only_a_shell_and_a_home(box):
    fields = box.run("getent", "passwd", "syncer").stdout.strip().split(":")
    assert fields[2] == "31337" and fields[6] == "/bin/sh"
    # sshd chdirs to the home before the forced command; a missing one makes every pull print
    # "Could not chdir to home directory" into the site's log.
    assert box.run("test", "-d", fields[5], check=False).returncode == 0, (
        f"syncer's home {fields[5]} does not exist: the package's sysusers line should give it "
        "an existing root-owned directory such as /srv/library-syncer")
    # No password can match "*", and sshd (UsePAM no) refuses only "!"-locked accounts: the
    # postinst lifted sysusers' "!*" so that key logins work without PAM.
    assert box.run("getent", "shadow", "syncer").stdout.split(":")[1] == "*"


def test_first_start_creates_host_keys_and_serves_the_library(box):
    # Edited after the package's daemon-reload: the unit's start sees the socket's settings
    # are older than the file, reloads systemd and reopens the socket on 127.0.0.1.
    box.write(CONF, '[server]\nlisten = ["127.0.0.1"]\n')
    box.sh("mkdir -p /srv/library-syncer/library/item\n"
           "echo '<Envelope/>' > /srv/library-syncer/library/item/item.ovf")
    box.run("systemctl", "start", UNIT)
    _wait_listening(box, 2222, "127.0.0.1", "bbr")
    assert nspawn.wait_until(lambda: _show(box, "ActiveState") == "active")
    assert box.run("systemctl", "is-active", SOCKET).stdout.strip() == "active"
    modes = box.sh(f"stat -c '%a %U %n' {KEYS}/ssh_host_*_key").split("\n")
    assert all(line.startswith("600 root ") for line in modes if line), modes
    box.sh("mkdir -p -m 700 /root/site\n"
           "ssh-keygen -q -t ed25519 -N '' -C paris -f /root/site/id\n"
           "library-syncer server authorize /root/site/id.pub --site paris\n"
           # The recorded host key, from the server's own file: no trust on first use.
           f"echo \"[127.0.0.1]:2222 $(cut -d' ' -f1,2 {KEYS}/ssh_host_ed25519_key.pub)\""
           " > /root/site/known_hosts")
    pulled = _pull(box, "/root/pulled/")
    assert pulled.returncode == 0, pulled.stderr
    assert box.sh("cat /root/pulled/item/item.ovf").strip() == "<Envelope/>"
    shell = box.run("sh", "-c", f"{SSH} syncer@127.0.0.1 id", check=False)
    assert "does not run rsync" in shell.stderr and "uid=" not in shell.stdout
    # A report through the hardened unit: stored in the state directory, under the key's site.
    report = ('{"format": 1, "outcome": "ok", "finished": "2026-11-27T21:00:00+00:00", '
              '"serial": 1, "origin": "hq"}')
    stored = box.run("sh", "-c", f"{SSH} syncer@127.0.0.1 library-syncer-report 1",
                     input=report, check=False)
    assert stored.stdout.strip() == "report stored for site paris", stored.stderr
    assert box.sh("stat -c '%a %U' /var/lib/library-syncer-server/reports "
                  "/var/lib/library-syncer-server/reports/paris.json").split("\n")[:2] == \
        ["755 syncer", "644 syncer"]
    assert '"site":"paris"' in box.sh("cat /var/lib/library-syncer-server/reports/paris.json")
    refused = box.run("sh", "-c", f"{SSH} syncer@127.0.0.1 library-syncer-report 1",
                      input='{"format": 1, "site": "rome"}', check=False)
    assert refused.returncode == 1 and "report refused" in refused.stderr
    assert "paris" in box.run("library-syncer", "server", "sites").stdout
    # The host's own sshd keeps running beside ours, with its own config and keys.
    assert box.run("systemctl", "is-active", "ssh.service", check=False).stdout.strip() == \
        "active"


def test_the_sites_connections_use_bbr_and_nothing_else_changes(box):
    assert _check_line(box, "listener") == \
        "ok    listener: 127.0.0.1:2222: sites' transfers sent with bbr"
    assert _check_line(box, "service") == \
        f"ok    service: {UNIT} is active, on {SOCKET}"
    # A site's session, held open: the server's end of it has the socket's algorithm, the
    # client's end (an outgoing connection of this host) and the host's own sshd the default.
    _hold_session(box)
    found = _all_sockets(box)
    assert [s["congestion"] for s in found if s["state"] == 1 and s["local_port"] == 2222] == \
        ["bbr"], found
    assert [s["congestion"] for s in found if s["state"] == 1 and s["remote_port"] == 2222] == \
        [DEFAULT_CC], found
    _end_session(box)
    assert _listeners(box, 22) and {cc for _, cc in _listeners(box, 22)} == {DEFAULT_CC}
    assert box.run("sysctl", "-n", "net.ipv4.tcp_congestion_control").stdout.strip() == \
        DEFAULT_CC


def test_reload_applies_a_good_config_and_refuses_a_bad_one(box):
    pid, socket_since = _show(box, "MainPID"), _socket_since(box)
    # A session in flight is kept across the reload (a restart of the daemon, KillMode=process).
    _hold_session(box)
    box.write(CONF, '[server]\nlisten = ["127.0.0.1"]\nmax_sessions = 2\n')
    box.run("systemctl", "reload", UNIT)
    assert "\nMaxSessions 2\n" in box.run("cat", RENDERED).stdout
    # Restarted, not SIGHUP (sshd loses systemd's socket on SIGHUP); the socket stayed open.
    assert nspawn.wait_until(lambda: _show(box, "MainPID") not in (pid, "0"))
    assert _socket_since(box) == socket_since
    assert _established(box) == 1
    assert _pull(box, "/root/pulled-after-reload/").returncode == 0
    _end_session(box)
    pid = _show(box, "MainPID")
    good = box.run("cat", RENDERED).stdout
    box.write(CONF, '[server]\nlisten = ["127.0.0.1"]\nmax_startups = "10:30:5"\n')
    assert box.run("systemctl", "reload", UNIT, check=False).returncode != 0
    journal = box.run("journalctl", "-u", UNIT, "--no-pager", "-n", "30").stdout
    assert "sshd rejected the rendered config" in journal and "MaxStartups" in journal
    assert box.run("cat", RENDERED).stdout == good
    assert _show(box, "ActiveState") == "active" and _show(box, "MainPID") == pid
    assert _pull(box, "/root/pulled-after-bad-reload/").returncode == 0
    _reload(box, '[server]\nlisten = ["127.0.0.1"]\n')


def test_reload_moves_the_socket_to_a_new_port(box):
    _reload(box, '[server]\nlisten = ["127.0.0.1"]\nport = 2223\n')
    _wait_listening(box, 2223, "127.0.0.1", "bbr")
    assert nspawn.wait_until(lambda: _listeners(box) == [])  # 2222 closed
    box.sh("sed 's/^\\[127.0.0.1\\]:2222 /[127.0.0.1]:2223 /' /root/site/known_hosts "
           ">> /root/site/known_hosts")
    assert _pull(box, "/root/pulled-2223/", SSH.replace("-p 2222", "-p 2223")).returncode == 0
    _reload(box, '[server]\nlisten = ["127.0.0.1"]\n')
    _wait_listening(box, 2222, "127.0.0.1", "bbr")


def test_every_address_and_the_system_default_on_request(box):
    # listen = []: one socket for IPv6 and IPv4; sshd sees IPv4 peers as such (a from= with an
    # IPv4 address still matches). congestion_control = "": the system's default.
    box.sh("ssh-keygen -q -t ed25519 -N '' -C lyon -f /root/site/lyon\n"
           "library-syncer server authorize /root/site/lyon.pub --site lyon --from 127.0.0.1")
    _reload(box, '[server]\ncongestion_control = ""\n')
    _wait_listening(box, 2222, "::", DEFAULT_CC)
    lyon = SSH.replace("/root/site/id", "/root/site/lyon")
    assert _pull(box, "/root/pulled-lyon/", lyon).returncode == 0
    assert "Accepted publickey for syncer from 127.0.0.1 " in box.run(
        "journalctl", "-u", UNIT, "--no-pager", "-n", "20").stdout
    assert _check_line(box, "listener") == (
        f"ok    listener: [::]:2222: sites' transfers sent with the system's default, "
        f'{DEFAULT_CC} (server.congestion_control is "")')


def test_a_missing_algorithm_leaves_the_default_and_check_says_so(box):
    """What a kernel without tcp_bbr does: systemd warns and listens with the default."""
    _reload(box, '[server]\nlisten = ["127.0.0.1"]\ncongestion_control = "nosuchcc"\n')
    _wait_listening(box, 2222, "127.0.0.1", DEFAULT_CC)
    assert box.run("systemctl", "is-active", SOCKET).stdout.strip() == "active"
    assert "TCP_CONGESTION" in box.run("journalctl", "-u", SOCKET, "--no-pager").stdout
    assert _pull(box, "/root/pulled-without-bbr/").returncode == 0
    line = _check_line(box, "listener")
    assert line.startswith(f"warn  listener: 127.0.0.1:2222: sites' transfers sent with "
                           f"{DEFAULT_CC}, not nosuchcc as server.congestion_control says; "
                           "fix: this kernel offers "), line
    _reload(box, '[server]\nlisten = ["127.0.0.1"]\n')
    _wait_listening(box, 2222, "127.0.0.1", "bbr")


def test_restart_keeps_the_host_key_and_stop_leaves_the_hosts_sshd_alone(box):
    before = box.run("ssh-keygen", "-lf", f"{KEYS}/ssh_host_ed25519_key.pub").stdout
    socket_since = _socket_since(box)
    box.run("systemctl", "restart", UNIT)
    assert _socket_since(box) == socket_since  # the socket stays open across a restart
    assert box.run("ssh-keygen", "-lf", f"{KEYS}/ssh_host_ed25519_key.pub").stdout == before
    assert _pull(box, "/root/pulled-after-restart/").returncode == 0  # same known_hosts
    # Stopping the daemon alone: the socket starts it again at the next connection.
    box.run("systemctl", "stop", UNIT)
    assert _pull(box, "/root/pulled-after-stop/").returncode == 0
    assert _show(box, "ActiveState") == "active"
    box.run("systemctl", "stop", SOCKET)  # stops the daemon too
    assert _show(box, "ActiveState") == "inactive"
    assert box.run("test", "-d", "/run/sshd", check=False).returncode == 0
    assert box.run("systemctl", "is-active", "ssh.service", check=False).stdout.strip() == \
        "active"
    refused = _pull(box, "/root/pulled-when-stopped/")
    assert "Connection refused" in refused.stderr
