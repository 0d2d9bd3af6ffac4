"""A real OpenSSH sshd on 127.0.0.1 and a free port, with test-owned host key and config.

The daemon runs as the test's own (root) process; clients log in as an unprivileged test user
whose every authorized key is forced to `rrsync -ro <library>`, as the server role does.

sshd's StrictModes refuses key files below a world-writable directory such as /tmp, so the work
directories live under /var/lib/library-syncer-tests (see `work_root`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .net import free_port, wait_listening

TEST_USER = "lsync-test"
WORK_ROOT = Path(os.environ.get("LSYNC_TEST_ROOT", "/var/lib/library-syncer-tests"))
SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin") or "/usr/sbin/sshd"
RRSYNC = shutil.which("rrsync", path="/usr/bin:/usr/local/bin") or "/usr/bin/rrsync"


def require_root() -> None:
    if os.geteuid() != 0:
        raise AssertionError("these tests start sshd and switch users: run them as root "
                             "(tests/run does, in CI)")


def ensure_test_user(name: str = TEST_USER) -> pwd.struct_passwd:
    """An unprivileged account with a real shell (sshd runs forced commands through it)."""
    require_root()
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/bin/sh", "--home-dir", "/nonexistent",
                        "--no-create-home", name], check=True)
        # "*" = no password but not locked: sshd without PAM refuses a locked ("!") account.
        subprocess.run(["usermod", "-p", "*", name], check=True)
        return pwd.getpwnam(name)


def make_work_dir(prefix: str) -> Path:
    """A directory every user can traverse and sshd's StrictModes accepts."""
    require_root()
    WORK_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(WORK_ROOT, 0o755)
    path = Path(subprocess.check_output(["mktemp", "-d", f"{WORK_ROOT}/{prefix}.XXXXXX"],
                                        text=True).strip())
    os.chmod(path, 0o755)
    return path


def keygen(path: Path, comment: str = "library-syncer-test") -> tuple[Path, str]:
    """An ed25519 key pair without passphrase; returns (private key path, public key line)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True)
    return path, path.with_suffix(path.suffix + ".pub").read_text().strip() if path.suffix else \
        Path(f"{path}.pub").read_text().strip()


def forced_rrsync_line(pub: str, library: Path) -> str:
    return f'restrict,command="{RRSYNC} -ro {library}/" {pub}'


def original_rrsync_line(pub: str, library: Path) -> str:
    """The Docker-based original's authorized_keys line: the same rrsync, ssh options instead
    of `restrict`."""
    return (f'command="{RRSYNC} -ro {library}/",no-agent-forwarding,no-port-forwarding,no-pty,'
            f"no-user-rc,no-X11-forwarding {pub}")


DEFAULT_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
AllowUsers {user}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
DisableForwarding yes
PermitTTY no
PermitUserRC no
LogLevel VERBOSE
"""


@dataclass
class Sshd:
    """A running sshd. `restart()` keeps port and host key (a server that was down)."""

    dir: Path
    port: int
    user: str
    config_path: Path
    host_key_pub: str
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)
    server_config: object = field(default=None, repr=False)  # start_server_role's ServerConfig

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key_pub}"

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        subprocess.run([SSHD, "-t", "-f", str(self.config_path)], check=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config_path)],
                                        stdout=log, stderr=log)
        log.close()
        wait_listening(self.port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the listener (a crash): established sessions die with their own processes."""
        if self.process:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def authorize(self, lines: list[str]) -> None:
        path = self.dir / "authorized_keys"
        path.write_text("".join(line + "\n" for line in lines))
        os.chmod(path, 0o644)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_sshd(dir: Path, *, authorized_lines: list[str], user: str | None = None,
               config_text: str | None = None, port: int | None = None) -> Sshd:
    """Start sshd from `config_text` (formatted with port/dir/user) or the default config."""
    user = user or ensure_test_user().pw_name
    dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    host_key = dir / "ssh_host_ed25519_key"
    if not host_key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                       check=True)
    port = port or free_port()
    config = dir / "sshd_config"
    config.write_text((config_text or DEFAULT_CONFIG).format(port=port, dir=dir, user=user))
    server = Sshd(dir=dir, port=port, user=user, config_path=config,
                  host_key_pub=" ".join(Path(f"{host_key}.pub").read_text().split()[:2]),
                  log_path=dir / "sshd.log")
    server.authorize(authorized_lines)
    server.start()
    return server


# --- the server role: the REAL template rendered by library_syncer.server -------------------

SERVER_TEST_USER = "lsync-srv"
# The same shape as the package's sysusers line (name, UID and home differ), so the account is
# in the state the package creates: password "*" (sysusers' "!*" lock lifted as the package's
# postinst does: sshd runs without PAM), shell /bin/sh (sshd runs the forced command through it),
# an existing root-owned home (else every session prints "Could not chdir").
SYSUSERS_LINE = 'u {name} - "library-syncer read-only rsync account" {home} /bin/sh\n'


def ensure_sysusers_user(name: str = SERVER_TEST_USER) -> pwd.struct_passwd:
    """An account created by systemd-sysusers, exactly as the server package creates `syncer`."""
    from library_syncer.server import sshd as server_role

    require_root()
    try:
        pwd.getpwnam(name)
    except KeyError:
        line = SYSUSERS_LINE.format(name=name, home=WORK_ROOT)
        subprocess.run(["systemd-sysusers", "-"], input=line, text=True, check=True,
                       capture_output=True)
    server_role.permit_key_logins(name)  # also an account an older checkout created locked
    return pwd.getpwnam(name)


def server_role_config(dir: Path, library: Path, *, user: str, port: int, **overrides):
    """A ServerConfig for the test's own paths (keys and rendered config under `dir`)."""
    from library_syncer.base.config import ServerConfig

    with contextlib.suppress(KeyError):  # else: a name for rendering only
        overrides.setdefault("uid", pwd.getpwnam(user).pw_uid)
    overrides.setdefault("state_dir", dir / "server-state")  # never the host's own
    if "dispatcher" not in overrides:  # the account cannot run a checkout in /root
        from .readable import launcher
        overrides["dispatcher"] = str(launcher())
    return ServerConfig(library=library, listen=("127.0.0.1",), port=port, user=user,
                        config_dir=dir / "etc", sshd=SSHD, rrsync=RRSYNC, **overrides)


def start_server_role(dir: Path, library: Path, *, sites: dict[str, str] | None = None,
                      user: str | None = None, port: int | None = None, **overrides) -> Sshd:
    """Start sshd from the config `library-syncer server render` writes, keys via `authorize`.

    `sites` maps a site name to its public key line. Returns the same `Sshd` handle as
    `start_sshd`; `Sshd.server_config` is the ServerConfig used (for authorize/revoke).
    """
    from library_syncer.server import sshd as server_role

    user = user or ensure_sysusers_user().pw_name
    dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    port = port or free_port()
    config = server_role_config(dir, library, user=user, port=port, **overrides)
    for site, pub in (sites or {}).items():
        server_role.authorize(config, pub, site)
    config_path = dir / "run" / "sshd_config"
    server_role.write_config(config, config_path, host_keys=True, check=True)
    host_pub = Path(f"{server_role.host_key_paths(config)[0]}.pub").read_text()
    server = Sshd(dir=dir, port=port, user=user, config_path=config_path,
                  host_key_pub=" ".join(host_pub.split()[:2]), log_path=dir / "sshd.log",
                  server_config=config)
    server.start()
    return server
