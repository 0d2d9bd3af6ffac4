"""An older server, as the sites may still meet it: Debian 11 (bullseye: OpenSSH 8.4, rsync 3.2.3
and its Perl rrsync) in systemd-nspawn, running its own sshd the way the Docker-based original
did: user `syncer`, the original's authorized_keys line forcing `/usr/bin/rrsync -ro
/syncer/library/`, no trace, nothing of this project inside.

The container is not booted: sshd is its only process (`--as-pid2`), in the host's network
namespace but listening on 127.0.0.1 only, on a free port. The cached root filesystem
(nspawn.rootfs: suite bullseye, openssh-server + rsync, no systemd) stays pristine
(`--volatile=overlay`); the library is a host folder bind-mounted read-only at /syncer/library,
so a test changes it from the host between syncs.

Besides the original's line, the account has two keys whose forced commands stand for an
older server still, since a Debian 10 tree (rsync 3.1.3) can no longer be built from Debian's
archive:

- `old_rrsync`: bullseye's own rrsync with the one line that lists `--compress-choice` removed:
  what the Perl rrsync of rsync 3.1.x does with that option (it is not in its list, so it stops
  with `rrsync: invalid rsync-command syntax or options`);
- `old_rsync`: a wrapper that refuses `--compress-choice` with the words and exit status rsync
  3.1.3 uses for an unknown option, and otherwise runs the original's rrsync line.

sshd logs to `log_path` (LogLevel VERBOSE): `logins()` counts the accepted authentications.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import nspawn
from tests.harness.net import free_port, wait_listening

SUITE = "bullseye"
PACKAGES = ("openssh-server", "rsync")
USER = "syncer"
LIBRARY = "/syncer/library"
SETUP = "/srv/compat"  # the host folder with keys, config and the log, bound inside
# The Docker-based original's line (tests/test_sync_faults.py, docs/sync.md), options and all.
OPTIONS = "no-agent-forwarding,no-port-forwarding,no-pty,no-user-rc,no-X11-forwarding"
ORIGINAL_COMMAND = f"/usr/bin/rrsync -ro {LIBRARY}/"
OLD_RRSYNC = "/usr/local/bin/rrsync-3.1"
OLD_RSYNC = "/usr/local/bin/rsync-3.1.3-options"
# rsync 3.1.3's answer to an option it does not know (options.c, option_error, log.c).
OLD_RSYNC_SCRIPT = """\
#!/bin/sh
case " $SSH_ORIGINAL_COMMAND " in
*" --compress-choice"*)
  opt=$(printf '%s\\n' $SSH_ORIGINAL_COMMAND | grep -m1 '^--compress-choice')
  echo "rsync: on remote machine: $opt: unknown option" >&2
  echo "rsync error: syntax or usage error (code 1) at main.c(1574) [server=3.1.3]" >&2
  exit 1;;
esac
exec /usr/bin/rrsync -ro /syncer/library/
"""
SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {setup}/ssh_host_ed25519_key
PidFile /run/sshd.pid
AllowUsers {user}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
LogLevel VERBOSE
"""
# Inside, before sshd: the account as the original image made it, and the older forced
# commands. "*": no password but not locked (sshd without PAM refuses a locked account).
SETUP_SCRIPT = f"""\
useradd --create-home --shell /bin/sh {USER}
usermod -p '*' {USER}
install -d -o {USER} -m 0700 /home/{USER}/.ssh
install -o {USER} -m 0600 {SETUP}/authorized_keys /home/{USER}/.ssh/authorized_keys
sed '/compress-choice/d' /usr/share/rsync/scripts/rrsync > {OLD_RRSYNC}
test "$(diff /usr/share/rsync/scripts/rrsync {OLD_RRSYNC} | grep -c '^<')" = 1
install -m 0755 {SETUP}/old-rsync {OLD_RSYNC}
chmod 0755 {OLD_RRSYNC}
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -E {SETUP}/sshd.log -f {SETUP}/sshd_config
"""
START_TIMEOUT = 20.0


def original_line(pub: str, command: str = ORIGINAL_COMMAND) -> str:
    return f'command="{command}",{OPTIONS} {pub}'


def root() -> Path:
    """The cached bullseye tree (~25 s to build on a fresh machine, then instant)."""
    nspawn.require_tools()
    return nspawn.rootfs(PACKAGES, suite=SUITE, base=())


@dataclass
class OldServer:
    dir: Path
    library: Path
    port: int
    host_key_pub: str
    process: subprocess.Popen | None = field(default=None, repr=False)
    user: str = USER

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key_pub}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logins(self) -> int:
        """Authentications the server accepted so far (one per SSH connection)."""
        return len(re.findall(r"Accepted publickey for " + USER, self.log()))

    def version(self, program: str) -> str:
        return (self.dir / f"{program}.version").read_text().strip()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def running(dir: Path, library: Path, keys: dict[str, str]) -> Iterator[OldServer]:
    """The old server on a free port, serving `library` read-only. `keys` maps a forced command
    kind ("original", "old_rrsync", "old_rsync") to the public key line forced to it."""
    tree = root()
    dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    commands = {"original": ORIGINAL_COMMAND, "old_rrsync": f"{OLD_RRSYNC} -ro {LIBRARY}/",
                "old_rsync": OLD_RSYNC}
    (dir / "authorized_keys").write_text(
        "".join(original_line(pub, commands[kind]) + "\n" for kind, pub in keys.items()))
    (dir / "old-rsync").write_text(OLD_RSYNC_SCRIPT)
    key = dir / "ssh_host_ed25519_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
    port = free_port()
    (dir / "sshd_config").write_text(SSHD_CONFIG.format(port=port, setup=SETUP, user=USER))
    for program in ("rsync", "sshd"):  # what the server runs, for the test's messages
        argv = ["chroot", str(tree), *(["rsync", "--version"] if program == "rsync"
                                      else ["dpkg-query", "-W", "-f=${Version}",
                                            "openssh-server"])]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        (dir / f"{program}.version").write_text(out.splitlines()[0] if out else "")
    argv = ["timeout", str(nspawn.NSPAWN_LIFETIME), "systemd-nspawn", "-q", "-D", str(tree),
            "--register=no", "--keep-unit", "--volatile=overlay", "--as-pid2",
            f"--bind-ro={library}:{LIBRARY}", f"--bind={dir}:{SETUP}",
            f"--setenv=PATH={nspawn.PATH}", "/bin/sh", "-ec", SETUP_SCRIPT]
    server = OldServer(dir=dir, library=library, port=port,
                       host_key_pub=" ".join(Path(f"{key}.pub").read_text().split()[:2]))
    console = dir / "console.log"
    with nspawn.containers_exclusive(), open(console, "wb") as out:
        server.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=nspawn.nspawn_env(),
                                          start_new_session=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while "Server listening" not in server.log():
                assert server.process.poll() is None and time.monotonic() < deadline, (
                    f"the old server did not start: {console.read_text(errors='replace')[-2000:]}"
                    f"{server.log()[-2000:]}")
                time.sleep(0.1)
            wait_listening(port)
            yield server
        finally:
            _stop(server.process)
            nspawn.remove_leftover_cgroups()
