"""library-syncer-sshd.service on a real, booted systemd (systemd-nspawn, tests/harness/nspawn.py),
installed from the .debs next to Debian's own ssh.service, on each tested suite: the server role
alone (library-syncer-common + library-syncer-server) installs without Caddy or the client role;
the account the package creates, first
start (host keys), a pull, reload with a good and a rejected config, restart keeping the host
key, and stop leaving the host's sshd (and its /run/sshd) alone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import nspawn

pytestmark = pytest.mark.system

CONF = "/etc/library-syncer/library-syncer.toml"
UNIT = "library-syncer-sshd.service"
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


def _pull(box: nspawn.Container, dest: str) -> subprocess.CompletedProcess:
    return box.run("rsync", "-a", "-e", SSH, "syncer@127.0.0.1:/", dest, check=False)


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
    box.write(CONF, '[server]\nlisten = ["127.0.0.1"]\n')
    box.sh("mkdir -p /srv/library-syncer/library/item\n"
           "echo '<Envelope/>' > /srv/library-syncer/library/item/item.ovf")
    box.run("systemctl", "start", UNIT)
    assert _show(box, "ActiveState") == "active"
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


def test_reload_applies_a_good_config_and_refuses_a_bad_one(box):
    pid = _show(box, "MainPID")
    box.write(CONF, '[server]\nlisten = ["127.0.0.1"]\nmax_sessions = 2\n')
    box.run("systemctl", "reload", UNIT)
    assert "\nMaxSessions 2\n" in box.run("cat", RENDERED).stdout
    assert _show(box, "MainPID") == pid  # reloaded in place (SIGHUP), not restarted
    good = box.run("cat", RENDERED).stdout
    box.write(CONF, '[server]\nlisten = ["127.0.0.1"]\nmax_startups = "10:30:5"\n')
    assert box.run("systemctl", "reload", UNIT, check=False).returncode != 0
    journal = box.run("journalctl", "-u", UNIT, "--no-pager", "-n", "30").stdout
    assert "sshd rejected the rendered config" in journal and "MaxStartups" in journal
    assert box.run("cat", RENDERED).stdout == good
    assert _show(box, "ActiveState") == "active"
    assert _pull(box, "/root/pulled-after-bad-reload/").returncode == 0
    box.write(CONF, '[server]\nlisten = ["127.0.0.1"]\n')


def test_restart_keeps_the_host_key_and_stop_leaves_the_hosts_sshd_alone(box):
    before = box.run("ssh-keygen", "-lf", f"{KEYS}/ssh_host_ed25519_key.pub").stdout
    box.run("systemctl", "restart", UNIT)
    assert box.run("ssh-keygen", "-lf", f"{KEYS}/ssh_host_ed25519_key.pub").stdout == before
    assert _pull(box, "/root/pulled-after-restart/").returncode == 0  # same known_hosts
    box.run("systemctl", "stop", UNIT)
    assert box.run("test", "-d", "/run/sshd", check=False).returncode == 0
    assert box.run("systemctl", "is-active", "ssh.service", check=False).stdout.strip() == \
        "active"
    refused = _pull(box, "/root/pulled-when-stopped/")
    assert "Connection refused" in refused.stderr
