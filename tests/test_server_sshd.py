"""The server role against a real sshd started from the REAL rendered template, a real account in
the state the package creates (systemd-sysusers: locked password, /bin/sh), real rsync/rrsync.

Every refusal is asserted by what the client sees (the error text) and by what did not happen
(the file not transferred, the library unchanged, the target port never reached).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from library_syncer.server import sshd as server_role
from tests.harness import sshd as harness
from tests.harness.net import free_port, wait_listening
from tests.harness.wait import wait_for

SECRET = b"outside the library: must never reach a client\n"


@dataclass
class Site:
    """One client: its key and a known_hosts that pins the server's host key."""

    key: Path
    known_hosts: Path
    server: harness.Sshd

    def ssh_opts(self, *extra: str) -> list[str]:
        return ["-p", str(self.server.port), "-i", str(self.key), "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10", *extra]

    def ssh(self, *args: str, user: str | None = None, opts: tuple[str, ...] = (),
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", *self.ssh_opts(*opts),
                               f"{user or self.server.user}@127.0.0.1", *args],
                              capture_output=True, text=True, timeout=30, env=env,
                              stdin=subprocess.DEVNULL)

    def rsync(self, *args: str) -> subprocess.CompletedProcess:
        shell = " ".join(["ssh", *self.ssh_opts()])
        return subprocess.run(["rsync", "-e", shell, *args], capture_output=True, text=True,
                              timeout=60)

    @property
    def remote(self) -> str:
        return f"{self.server.user}@127.0.0.1:"


@dataclass
class Rig:
    server: harness.Sshd
    library: Path
    outside: Path
    root: Path
    paris: Site
    keydir: Path

    def new_key(self, name: str) -> tuple[Path, str]:
        return harness.keygen(self.keydir / name, comment=f"{name}@site")

    def site(self, key: Path) -> Site:
        return Site(key, self.paris.known_hosts, self.server)


def _library_state(library: Path) -> dict[str, str]:
    return {str(p.relative_to(library)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() and not p.is_symlink() else "dir-or-link"
            for p in sorted(library.rglob("*"))}


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    root = harness.make_work_dir("server-role")
    library, outside = root / "library", root / "outside"
    (library / "ubuntu-22.04").mkdir(parents=True)
    (library / "ubuntu-22.04" / "ubuntu-22.04.ovf").write_text("<Envelope/>\n")
    (library / "ubuntu-22.04" / "disk-0.vmdk").write_bytes(os.urandom(256 * 1024))
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    # Symlinks inside the library that point out of it: one to a file, one to a directory.
    (library / "escape.txt").symlink_to(outside / "secret.txt")
    (library / "escape-dir").symlink_to(outside)
    keydir = root / "client-ssh"
    keydir.mkdir(mode=0o700)
    key, pub = harness.keygen(keydir / "id_paris", comment="paris")
    server = harness.start_server_role(root / "sshd", library, sites={"paris": pub})
    known = root / "known_hosts"
    known.write_text(server.known_hosts_line + "\n")
    yield Rig(server, library, outside, root, Site(key, known, server), keydir)
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dest(rig: Rig) -> Iterator[Path]:
    path = harness.make_work_dir("dest")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- what a site may do ---------------------------------------------------------------------


def test_lists_and_pulls_the_library(rig, dest):
    listing = rig.paris.rsync("-r", "--list-only", rig.paris.remote + "/")
    assert listing.returncode == 0, listing.stderr
    assert "ubuntu-22.04/disk-0.vmdk" in listing.stdout
    assert listing.stderr == ""  # no "Could not chdir to home" noise: the account's home exists
    pulled = rig.paris.rsync("-a", "--delete", "--compress", "--compress-choice=zstd",
                             rig.paris.remote + "/", f"{dest}/")
    assert pulled.returncode == 0, pulled.stderr
    for name in ("ubuntu-22.04.ovf", "disk-0.vmdk"):
        assert (dest / "ubuntu-22.04" / name).read_bytes() == \
            (rig.library / "ubuntu-22.04" / name).read_bytes()


def test_a_second_pull_with_link_dest_hard_links_unchanged_files(rig, dest):
    first, second = dest / "snap-1", dest / "snap-2"
    assert rig.paris.rsync("-a", rig.paris.remote + "/", f"{first}/").returncode == 0
    pulled = rig.paris.rsync("-a", "--delete", f"--link-dest={first}", rig.paris.remote + "/",
                             f"{second}/")
    assert pulled.returncode == 0, pulled.stderr
    disk = Path("ubuntu-22.04/disk-0.vmdk")
    assert (first / disk).stat().st_ino == (second / disk).stat().st_ino


# --- it cannot write ------------------------------------------------------------------------


def test_cannot_upload_modify_or_delete(rig, dest):
    before = _library_state(rig.library)
    (dest / "new.ovf").write_text("planted\n")
    upload = rig.paris.rsync(str(dest / "new.ovf"), rig.paris.remote + "/")
    assert "sending to read-only server is not allowed" in upload.stderr
    # Modify: push a different file over an existing one.
    (dest / "ubuntu-22.04.ovf").write_text("<Envelope>tampered</Envelope>\n")
    modify = rig.paris.rsync(str(dest / "ubuntu-22.04.ovf"), rig.paris.remote + "/ubuntu-22.04/")
    assert "sending to read-only server is not allowed" in modify.stderr
    # Delete: mirror an empty directory over the library, and pull with --remove-source-files.
    (dest / "empty").mkdir()
    delete = rig.paris.rsync("-r", "--delete", f"{dest}/empty/", rig.paris.remote + "/")
    assert "sending to read-only server is not allowed" in delete.stderr
    remove = rig.paris.rsync("-a", "--remove-source-files", rig.paris.remote + "/ubuntu-22.04/",
                             f"{dest}/pulled/")
    assert "option --remove-source-files has been disabled on this server" in remove.stderr
    assert _library_state(rig.library) == before
    assert not (rig.library / "new.ovf").exists()


# --- it cannot do anything else -------------------------------------------------------------


def test_cannot_get_a_shell_or_run_another_command(rig):
    shell = rig.paris.ssh()  # no command: a login shell
    assert "rrsync error: Not invoked via sshd" in shell.stderr
    command = rig.paris.ssh("id; cat /etc/passwd")
    assert "SSH_ORIGINAL_COMMAND does not run rsync" in command.stderr
    assert "uid=" not in command.stdout and "root:" not in command.stdout
    # Even "rsync" followed by a shell command is parsed by rrsync, never given to a shell.
    smuggled = rig.paris.ssh("rsync --server --sender -e.x . ubuntu-22.04; id")
    assert "ubuntu-22.04; No such file" in smuggled.stderr  # a (missing) file name
    assert "uid=" not in smuggled.stdout
    sftp = subprocess.run(["sftp", "-b", "-", "-P", str(rig.server.port), "-i", str(rig.paris.key),
                           "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                           "-o", f"UserKnownHostsFile={rig.paris.known_hosts}",
                           "-o", "StrictHostKeyChecking=yes", f"{rig.server.user}@127.0.0.1"],
                          input="ls\n", capture_output=True, text=True, timeout=30)
    assert "subsystem request failed" in sftp.stderr
    assert "ubuntu-22.04" not in sftp.stdout


def test_cannot_allocate_a_tty(rig):
    tty = rig.paris.ssh("rsync --version", opts=("-tt",))
    assert "PTY allocation request failed" in tty.stderr


@contextlib.contextmanager
def _target() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP service on loopback that records anything that reaches it."""
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = listener.accept()
                with conn:
                    received.append(conn.recv(100) or b"connected")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        stop.set()
        thread.join()
        listener.close()


@contextlib.contextmanager
def _background_ssh(site: Site, *args: str) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(["ssh", *site.ssh_opts("-N", *args),
                                f"{site.server.user}@127.0.0.1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        # SIGKILL: a SIGTERM landing while ssh tears down the refused channel can leave it
        # polling for minutes (OpenSSH 9.2), and how the client ends is not under test.
        process.kill()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


def _stderr_once(process: subprocess.Popen, text: str, timeout: float = 10.0) -> str:
    """The client's stderr as soon as it says `text` (ssh logs the server's refusal of a
    channel as it arrives); AssertionError with what it did say if it never does."""
    assert process.stderr is not None
    fd = process.stderr.fileno()
    os.set_blocking(fd, False)
    said: list[bytes] = []

    def arrived() -> bool:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(fd, 4096):
                said.append(chunk)
        return text.encode() in b"".join(said)

    try:
        wait_for(arrived, timeout, f"ssh to say {text!r}")
    except AssertionError as error:
        raise AssertionError(f"{error}; it said: {b''.join(said).decode()!r}") from None
    return b"".join(said).decode()


def _closed(conn: socket.socket) -> bytes:
    """What the forwarding client sends back before it closes the connection (b"" when it
    just closes or resets it); a connection still open after the socket's timeout fails."""
    try:
        return conn.recv(100)
    except ConnectionResetError:
        return b""
    except TimeoutError:
        raise AssertionError("the forwarded connection stayed open: neither refused nor "
                             "closed") from None


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        return _closed(conn)


def test_cannot_forward_a_local_port(rig):
    with _target() as (target, received):
        local = free_port()
        with _background_ssh(rig.paris, "-L", f"{local}:127.0.0.1:{target}") as process:
            wait_listening(local)
            assert _exchange(local, b"hello through the tunnel") == b""
            _stderr_once(process, "administratively prohibited")
        assert received == []  # the refusal came before any connection to the target
        stdio = rig.paris.ssh(opts=("-W", f"127.0.0.1:{target}"))
        assert "administratively prohibited" in stdio.stderr
        assert received == []


def test_cannot_forward_a_remote_port(rig):
    remote = free_port()
    forward = rig.paris.ssh(opts=("-N", "-o", "ExitOnForwardFailure=yes",
                                  "-R", f"{remote}:127.0.0.1:9"))
    assert f"remote port forwarding failed for listen port {remote}" in forward.stderr
    with pytest.raises(OSError):  # nobody listens there
        socket.create_connection(("127.0.0.1", remote), timeout=1).close()


def test_cannot_open_a_socks_tunnel(rig):
    with _target() as (target, received):
        local = free_port()
        with _background_ssh(rig.paris, "-D", f"127.0.0.1:{local}") as process:
            wait_listening(local)
            with socket.create_connection(("127.0.0.1", local), timeout=5) as conn:
                conn.sendall(b"\x05\x01\x00")  # SOCKS5, one method: no authentication
                assert conn.recv(2) == b"\x05\x00"
                conn.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1")
                             + target.to_bytes(2, "big"))
                assert _closed(conn) == b""  # closed instead of a success reply
            _stderr_once(process, "administratively prohibited")
        assert received == []  # the refusal came before any connection to the target


# --- it cannot read outside the library -----------------------------------------------------


def test_cannot_climb_out_with_dotdot_or_absolute_paths(rig, dest):
    up = rig.paris.rsync("-a", rig.paris.remote + "../outside/secret.txt", f"{dest}/")
    assert "do not use .. in arg" in up.stderr
    absolute = rig.paris.rsync("-a", f"{rig.paris.remote}{rig.outside}/secret.txt", f"{dest}/")
    assert "No such file or directory" in absolute.stderr  # resolved inside the library
    passwd = rig.paris.rsync("-a", rig.paris.remote + "/etc/passwd", f"{dest}/")
    assert "No such file or directory" in passwd.stderr
    assert list(dest.iterdir()) == []


def test_symlinks_pointing_outside_give_nothing_away(rig, dest):
    # A plain pull carries the symlink itself, never the file it points at.
    pulled = rig.paris.rsync("-a", rig.paris.remote + "/", f"{dest}/")
    assert pulled.returncode == 0, pulled.stderr
    assert (dest / "escape.txt").is_symlink()
    assert (dest / "escape-dir").is_symlink()
    # Asking the server to follow links is refused, by option or by path.
    follow = rig.paris.rsync("-aL", rig.paris.remote + "/escape.txt", f"{dest}/followed/")
    assert "option -L has been disabled on this server" in follow.stderr
    unsafe = rig.paris.rsync("-a", "--copy-unsafe-links", rig.paris.remote + "/",
                             f"{dest}/unsafe/")
    assert "option --copy-unsafe-links has been disabled on this server" in unsafe.stderr
    through = rig.paris.rsync("-a", rig.paris.remote + "/escape-dir/", f"{dest}/through/")
    assert "unsafe arg" in through.stderr
    leaked = [p for p in dest.rglob("*") if p.is_file() and not p.is_symlink()
              and p.read_bytes() == SECRET]
    assert leaked == []


# --- who may log in -------------------------------------------------------------------------


def test_password_and_keyboard_interactive_are_not_even_offered(rig):
    # An askpass that would answer a password prompt and leave a mark if it were ever asked.
    mark = rig.root / "askpass-was-asked"
    askpass = rig.root / "askpass"
    askpass.write_text(f"#!/bin/sh\ntouch {mark}\necho hunter2\n")
    askpass.chmod(0o755)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force",
           "DISPLAY": ":0"}
    for method in ("password", "keyboard-interactive"):
        attempt = rig.paris.ssh("true", env=env, opts=(
            "-o", "BatchMode=no", "-o", "PubkeyAuthentication=no",
            "-o", f"PreferredAuthentications={method}", "-o", "NumberOfPasswordPrompts=1"))
        assert "Permission denied (publickey)." in attempt.stderr, method
    assert not mark.exists()


def test_other_users_are_refused_even_with_an_authorized_key(rig):
    other = harness.ensure_test_user().pw_name
    for user in ("root", other):
        attempt = rig.paris.ssh("rsync --server --sender -e.x . .", user=user)
        assert "Permission denied (publickey)." in attempt.stderr, user
    log = rig.server.log()
    assert "User root from 127.0.0.1 not allowed because not listed in AllowUsers" in log
    assert f"User {other} from 127.0.0.1 not allowed because not listed in AllowUsers" in log


def test_an_unknown_key_and_a_revoked_key_are_refused(rig, dest):
    rome_key, rome_pub = rig.new_key("id_rome")
    rome = rig.site(rome_key)
    before = rome.rsync("-r", "--list-only", rome.remote + "/")
    assert "Permission denied (publickey)" in before.stderr
    server_role.authorize(rig.server.server_config, rome_pub, "rome")
    allowed = rome.rsync("-r", "--list-only", rome.remote + "/")
    assert allowed.returncode == 0 and "disk-0.vmdk" in allowed.stdout
    server_role.revoke(rig.server.server_config, "rome")  # no reload: sshd reads it per login
    revoked = rome.rsync("-a", rome.remote + "/", f"{dest}/")
    assert "Permission denied (publickey)" in revoked.stderr
    assert list(dest.iterdir()) == []
    # The other site is unaffected.
    assert rig.paris.rsync("-r", "--list-only", rig.paris.remote + "/").returncode == 0


def test_a_key_restricted_by_source_is_refused_from_elsewhere(rig, dest):
    """`authorize --from 127.0.0.2/32`: the same key, from 127.0.0.1 (ssh -b), is refused."""
    lyon_key, lyon_pub = rig.new_key("id_lyon")
    server_role.authorize(rig.server.server_config, lyon_pub, "lyon",
                          sources=server_role.parse_sources("127.0.0.2/32"))
    # The line as the unit's next start or reload rewrites it (render keeps from=).
    server_role.sync_authorized_keys(rig.server.server_config)
    assert 'from="127.0.0.2/32"' in server_role.authorized_keys_path(
        rig.server.server_config).read_text()
    lyon = rig.site(lyon_key)

    def listing(source: str) -> subprocess.CompletedProcess:
        shell = " ".join(["ssh", *lyon.ssh_opts("-b", source)])
        return subprocess.run(["rsync", "-r", "--list-only", "-e", shell, lyon.remote + "/"],
                              capture_output=True, text=True, timeout=60)

    refused = listing("127.0.0.1")
    assert refused.returncode != 0 and "Permission denied (publickey)" in refused.stderr
    assert "disk-0.vmdk" not in refused.stdout
    allowed = listing("127.0.0.2")
    assert allowed.returncode == 0 and "disk-0.vmdk" in allowed.stdout, allowed.stderr
    server_role.revoke(rig.server.server_config, "lyon")


# --- the client's own command lines ---------------------------------------------------------


def test_the_sync_clients_own_pull_and_listing_work_against_it(rig, dest):
    """The argv library_syncer.rsync builds for the sync and `check` (not hand-written here)."""
    from library_syncer.base import execute
    from library_syncer.base.config import SyncConfig
    from library_syncer.sync import rsync

    sync = SyncConfig(peer="127.0.0.1", port=rig.server.port, user=rig.server.user,
                      identity_file=rig.paris.key, known_hosts=rig.paris.known_hosts)
    listing = execute.run(rsync.list_argv(sync), capture=True)
    assert "ubuntu-22.04" in listing.output
    first = execute.run(rsync.pull_argv(sync, dest / "snap-1", []), check=False)
    assert first.returncode == 0, first.tail
    second = execute.run(rsync.pull_argv(sync, dest / "snap-2", [dest / "snap-1"]), check=False)
    assert second.returncode == 0, second.tail
    disk = Path("ubuntu-22.04/disk-0.vmdk")
    assert (dest / "snap-2" / disk).read_bytes() == (rig.library / disk).read_bytes()
    assert (dest / "snap-1" / disk).stat().st_ino == (dest / "snap-2" / disk).stat().st_ino
    assert not os.path.lexists(dest / "snap-2" / "escape.txt")  # the client skips symlinks


def test_a_real_sync_run_publishes_the_library_from_the_server_role(work_dir, fixtures_dir):
    """`library-syncer sync`'s own run (sync.run_once) against a fresh server-role instance."""
    from library_syncer.base.config import Config, PathsConfig, SyncConfig
    from library_syncer.sync import run as sync

    library = work_dir / "library"
    shutil.copytree(fixtures_dir / "ovf" / "ttylinux-template", library / "ttylinux")
    keydir = work_dir / "ssh"
    keydir.mkdir(mode=0o700)
    key, pub = harness.keygen(keydir / "id_syncer")
    server = harness.start_server_role(work_dir / "sshd", library, sites={"paris": pub})
    try:
        (keydir / "known_hosts").write_text(server.known_hosts_line + "\n")
        config = Config(
            file=work_dir / "library-syncer.toml",
            sync=SyncConfig(peer="127.0.0.1", port=server.port, user=server.user,
                            identity_file=key, known_hosts=keydir / "known_hosts",
                            random_delay=0.0, min_free_space=0),
            paths=PathsConfig(state_dir=work_dir / "state", runtime_dir=work_dir / "run"))
        summary = sync.run_once(config, retry=False)
    finally:
        server.stop()
    published = config.published_dir
    for name in os.listdir(library / "ttylinux"):
        assert (published / "ttylinux" / name).read_bytes() == \
            (library / "ttylinux" / name).read_bytes(), name
    assert (published / "lib.json").is_file(), summary
