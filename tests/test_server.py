"""Server role without a running daemon: the rendered sshd_config (checked by the real `sshd -t`
and `sshd -T`), the root-owned authorized_keys file, and the `server` commands' messages."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from library_syncer.base.config import ServerConfig
from library_syncer.base.errors import ConfigError, SyncerError
from library_syncer.cli.main import main
from library_syncer.server import sshd as server
from tests.harness import sshd as harness

OLD_DOCKER_OPTIONS = ('command="/usr/bin/rrsync -ro /syncer/library/",no-agent-forwarding,'
                      "no-port-forwarding,no-pty,no-user-rc,no-X11-forwarding")


@pytest.fixture
def cfg(work_dir: Path) -> ServerConfig:
    library = work_dir / "library"
    library.mkdir()
    return harness.server_role_config(work_dir, library, user="syncer", port=2222)


def _pub(work_dir: Path, name: str) -> str:
    keydir = work_dir / "keys"
    keydir.mkdir(exist_ok=True, mode=0o700)
    return harness.keygen(keydir / name, comment=f"{name}@site")[1]


def _effective(cfg: ServerConfig, path: Path, user: str) -> dict[str, str]:
    """`sshd -T`: the settings sshd will really apply to a connection by `user`."""
    out = subprocess.run([cfg.sshd, "-T", "-f", str(path), "-C",
                          f"user={user},host=site.example,addr=127.0.0.1"],
                         capture_output=True, text=True, check=True).stdout
    settings: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, value)
    return settings


def test_rendered_config_passes_sshd_and_denies_everything_but_rrsync(cfg, work_dir):
    output = work_dir / "run" / "sshd_config"
    server.write_config(cfg, output, host_keys=True, check=True)
    subprocess.run([cfg.sshd, "-t", "-f", str(output)], check=True)
    eff = _effective(cfg, output, "syncer")
    assert eff["port"] == "2222"
    assert eff["listenaddress"] == "127.0.0.1:2222"
    assert eff["allowusers"] == "syncer"
    assert eff["permitrootlogin"] == "no"
    assert eff["authenticationmethods"] == "publickey"
    assert eff["passwordauthentication"] == "no"
    assert eff["kbdinteractiveauthentication"] == "no"
    assert eff["disableforwarding"] == "yes"
    for key in ("allowtcpforwarding", "allowagentforwarding", "allowstreamlocalforwarding",
                "x11forwarding", "permittunnel", "permittty", "permituserrc",
                "permituserenvironment"):
        assert eff[key] == "no", key
    assert eff["forcecommand"] == server.forced_command(cfg)
    assert eff["forcecommand"].split()[1:6] == ["server", "dispatch", "--rrsync", cfg.rrsync,
                                                "--library"]
    assert f" --library {cfg.library}/ " in eff["forcecommand"]
    assert eff["exposeauthinfo"] == "yes"  # the dispatcher learns the key, not a claimed name
    assert eff["authorizedkeysfile"] == str(cfg.config_dir / "authorized_keys")
    assert eff["maxstartups"] == "64:30:256"
    assert eff["usepam"] == "no"  # no PAM session: no pam_systemd warnings at every login
    assert "subsystem" not in eff  # no sftp
    text = output.read_text()
    directives = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
    # Nothing of the host's sshd: no Include, no file under /etc/ssh/.
    assert "Include" not in directives and " /etc/ssh/" not in directives
    assert all(f"HostKey {key}" in text for key in server.host_key_paths(cfg))


def test_limits_and_listen_addresses_come_from_the_settings(cfg, work_dir):
    cfg = replace(cfg, listen=("127.0.0.1", "::1"), port=2299, max_startups="10:50:40",
                  max_sessions=2, max_auth_tries=2, login_grace_time=20.0,
                  client_alive_interval=15.0)
    text = server.render_sshd_config(cfg)
    for line in ("Port 2299", "ListenAddress 127.0.0.1", "ListenAddress [::1]",
                 "MaxStartups 10:50:40", "MaxSessions 2", "MaxAuthTries 2",
                 "LoginGraceTime 20", "ClientAliveInterval 15"):
        assert f"\n{line}\n" in text, line


def test_a_value_sshd_rejects_stops_the_render_and_keeps_the_old_file(cfg, work_dir):
    output = work_dir / "run" / "sshd_config"
    server.write_config(cfg, output, host_keys=True, check=True)
    before = output.read_text()
    broken = replace(cfg, max_startups="10:30:5")  # full below start: sshd refuses it
    refusal = rf"sshd rejected the rendered config {output}: line \d+: Invalid MaxStartups"
    with pytest.raises(SyncerError, match=refusal):
        server.write_config(broken, output, check=True)
    assert output.read_text() == before
    assert sorted(p.name for p in output.parent.iterdir()) == ["sshd_config"]


def test_host_keys_are_created_once_private_and_never_replaced(cfg):
    paths = server.ensure_host_keys(cfg)
    assert [p.name for p in paths] == ["ssh_host_ed25519_key", "ssh_host_rsa_key"]
    first = [p.read_bytes() for p in paths]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in paths)
    assert server.ensure_host_keys(cfg) == paths
    assert [p.read_bytes() for p in paths] == first


def test_authorize_writes_a_restricted_root_owned_line_per_site(cfg, work_dir):
    pub = _pub(work_dir, "paris")
    entry = server.authorize(cfg, pub, "paris")
    path = server.authorized_keys_path(cfg)
    info = path.stat()
    assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o644
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    key_type, blob = pub.split()[:2]
    assert lines == [f'restrict,command="{server.forced_command(cfg)}" '
                     f"{key_type} {blob} site=paris"]
    # The fingerprint we show is the one ssh-keygen computes from the very file sshd reads.
    listed = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True,
                            check=True).stdout
    assert f"{entry.fingerprint} site=paris" in listed
    assert [e.site for e in server.list_keys(cfg)] == ["paris"]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_bad_keys_and_duplicates_are_refused_with_one_clear_line(cfg, work_dir):
    paris = _pub(work_dir, "paris")
    server.authorize(cfg, paris, "paris")
    cases = {
        "not a key": ("hello world", "not an OpenSSH public key"),
        "damaged": (paris.replace("AAAA", "AAAB", 1), "not a valid ssh-ed25519 public key"),
        "private": ((work_dir / "keys" / "paris").read_text(), "this is a PRIVATE key"),
        "two keys": (paris + "\n" + _pub(work_dir, "x"), "found 2 lines, expected exactly one"),
        "empty": ("", "found no key"),
    }
    for name, (text, message) in cases.items():
        with pytest.raises(SyncerError, match=message):
            server.authorize(cfg, text, "rome")
        assert [e.site for e in server.list_keys(cfg)] == ["paris"], name
    with pytest.raises(SyncerError, match='already authorized for site "paris"'):
        server.authorize(cfg, paris, "rome")
    with pytest.raises(SyncerError, match='site "paris" already has a key'):
        server.authorize(cfg, _pub(work_dir, "other"), "paris")
    with pytest.raises(SyncerError, match="--site: found \"a b\""):
        server.authorize(cfg, _pub(work_dir, "ab"), "a b")


def test_a_line_from_the_docker_servers_authorized_keys_is_accepted(cfg, work_dir):
    """Migration: the predecessor's lines carry options; only the key is kept, re-restricted."""
    pub = _pub(work_dir, "legacy")
    server.authorize(cfg, f"{OLD_DOCKER_OPTIONS} {pub}", "legacy")
    line = server.authorized_keys_path(cfg).read_text().splitlines()[-1]
    assert line.startswith(f'restrict,command="{server.forced_command(cfg)}" ssh-ed25519 ')
    assert "/syncer/library" not in line


def test_revoke_removes_only_that_site(cfg, work_dir):
    server.authorize(cfg, _pub(work_dir, "paris"), "paris")
    server.authorize(cfg, _pub(work_dir, "rome"), "rome")
    assert server.revoke(cfg, "paris").site == "paris"
    assert [e.site for e in server.list_keys(cfg)] == ["rome"]
    with pytest.raises(SyncerError, match=r'no site named "paris" \(authorized: rome\)'):
        server.revoke(cfg, "paris")


def test_render_rewrites_lines_for_a_moved_library_and_refuses_foreign_lines(cfg, work_dir):
    server.authorize(cfg, _pub(work_dir, "paris"), "paris")
    moved = replace(cfg, library=work_dir / "elsewhere")
    server.write_config(moved, work_dir / "run" / "sshd_config", host_keys=True)
    assert f'command="{server.forced_command(moved)}" ssh-ed25519' in \
        server.authorized_keys_path(cfg).read_text()
    assert f"--library {work_dir}/elsewhere/ " in server.forced_command(moved)
    # A hand-added line without a site name is not trusted: the render stops and says where.
    with server.authorized_keys_path(cfg).open("a") as handle:
        handle.write(_pub(work_dir, "hand") + "\n")
    with pytest.raises(ConfigError, match=r"authorized_keys: line 3: no site name"):
        server.write_config(cfg, work_dir / "run" / "sshd_config")


def _toml(work_dir: Path, cfg: ServerConfig, user: str) -> Path:
    path = work_dir / "library-syncer.toml"
    path.write_text(f'[server]\nlibrary = "{cfg.library}"\nconfig_dir = "{cfg.config_dir}"\n'
                    f'user = "{user}"\nport = {cfg.port}\nsshd = "{cfg.sshd}"\n'
                    f'state_dir = "{cfg.state_dir}"\n'
                    + (f'dispatcher = "{cfg.dispatcher}"\n' if cfg.dispatcher else ""))
    return path


def test_cli_authorize_keys_revoke_and_render(cfg, work_dir, capsys):
    toml = _toml(work_dir, cfg, harness.ensure_sysusers_user().pw_name)
    pub_file = work_dir / "paris.pub"
    pub_file.write_text(_pub(work_dir, "paris") + "\n")
    assert main(["server", "authorize", "-c", str(toml), str(pub_file), "--site", "paris"]) == 0
    assert "authorized site paris: ssh-ed25519 SHA256:" in capsys.readouterr().out
    assert main(["server", "keys", "-c", str(toml)]) == 0
    out = capsys.readouterr().out
    fingerprint = server.list_keys(cfg)[0].fingerprint
    assert out.split() == ["paris", fingerprint, "ssh-ed25519"]
    private = work_dir / "keys" / "paris"
    assert main(["server", "authorize", "-c", str(toml), str(private), "--site", "rome"]) == 2
    err = capsys.readouterr().err
    assert f"{private}: this is a PRIVATE key" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["server", "authorize", "-c", str(toml), str(work_dir / "nope.pub"),
                 "--site", "rome"]) == 2
    assert "nope.pub: cannot read: No such file or directory" in capsys.readouterr().err
    output = work_dir / "run" / "sshd_config"
    assert main(["server", "render", "-c", str(toml), "--output", str(output), "--host-keys",
                 "--check"]) == 0
    assert f"AuthorizedKeysFile {cfg.config_dir}/authorized_keys" in output.read_text()
    assert main(["server", "revoke", "-c", str(toml), "paris"]) == 0
    assert f"revoked site paris: ssh-ed25519 {fingerprint}" in capsys.readouterr().out
    assert main(["server", "keys", "-c", str(toml)]) == 0
    assert "no site is authorized" in capsys.readouterr().out


def test_the_test_account_is_in_the_state_the_package_creates():
    """systemd-sysusers locks the password ("!*"); the rendered config says UsePAM no, so the
    lock is lifted to "*" as the package's postinst does (the integration tests log in with
    this account)."""
    account = harness.ensure_sysusers_user()
    assert account.pw_shell == "/bin/sh"
    shadow = subprocess.run(["getent", "shadow", account.pw_name], capture_output=True,
                            text=True, check=True).stdout
    assert shadow.split(":")[1] == "*"
    assert os.path.isdir(account.pw_dir)


def test_render_refuses_an_account_that_cannot_run_the_forced_command(cfg, work_dir, capsys):
    output = work_dir / "run" / "sshd_config"
    for user, message in (("lsync-no-such-user", 'the account "lsync-no-such-user" does not '
                           "exist"),
                          ("nobody", 'the account "nobody" has shell "/usr/sbin/nologin"')):
        toml = _toml(work_dir, cfg, user)
        assert main(["server", "render", "-c", str(toml), "--output", str(output)]) == 1
        err = capsys.readouterr().err
        assert f"server.user: {message}" in err and len(err.strip().splitlines()) == 1
    assert not output.exists()


def test_concurrent_authorizations_lose_no_key(cfg, work_dir):
    keys = {f"site-{i:02d}": _pub(work_dir, f"k{i}") for i in range(16)}
    errors: list[BaseException] = []

    def add(site: str, pub: str) -> None:
        try:
            server.authorize(cfg, pub, site)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=add, args=item) for item in keys.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(e.site for e in server.list_keys(cfg)) == sorted(keys)


def test_a_library_path_the_shell_would_split_or_interpret_is_refused(cfg, work_dir):
    for bad in ("/srv/my library", "/srv/lib;id", "/srv/$HOME", "relative/library"):
        with pytest.raises(ConfigError, match=r"server.library: found .*expected an absolute "
                           r"path of letters"):
            server.render_sshd_config(replace(cfg, library=Path(bad)))
    with pytest.raises(ConfigError, match=r"server\.library"):
        server.authorize(replace(cfg, library=Path("/srv/a b")), _pub(work_dir, "x"), "x")


def test_a_source_restriction_survives_rendering_and_other_options_are_reported(
        cfg, work_dir, capsys):
    toml = _toml(work_dir, cfg, harness.ensure_sysusers_user().pw_name)
    pub_file = work_dir / "lyon.pub"
    pub_file.write_text(_pub(work_dir, "lyon") + "\n")
    assert main(["server", "authorize", "-c", str(toml), str(pub_file), "--site", "lyon",
                 "--from", "192.0.2.0/24,2001:db8::/32,198.51.100.7"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        " from 192.0.2.0/24,2001:db8::/32,198.51.100.7")
    path = server.authorized_keys_path(cfg)
    prefix = (f'restrict,from="192.0.2.0/24,2001:db8::/32,198.51.100.7",'
              f'command="{server.forced_command(cfg)}"')
    assert path.read_text().splitlines()[-1].startswith(prefix)
    # An operator's own from= (host patterns, negations) and options we cannot keep.
    rome = _pub(work_dir, "rome")
    with path.open("a") as handle:
        handle.write(f'from="198.51.100.0/24,!198.51.100.3,*.rome.example",no-pty,permitopen="h:22",'
                     f'environment="A=1" {rome} site=rome\n')
    moved = replace(cfg, library=work_dir / "elsewhere")
    server.ensure_host_keys(cfg)
    capsys.readouterr()
    server.write_config(moved, work_dir / "run" / "sshd_config")
    lines = path.read_text().splitlines()
    assert lines[-2].startswith(prefix.replace(f"{cfg.library}", f"{work_dir}/elsewhere"))
    assert lines[-1].startswith(
        'restrict,from="198.51.100.0/24,!198.51.100.3,*.rome.example",command=')
    # One line naming the site (the CLI's logging writes warnings to stderr).
    assert capsys.readouterr().err.splitlines() == [
        f'{path}: site rome: dropped option permitopen="h:22", environment="A=1" (only from= is '
        "kept; every key may only run rrsync -ro)"]
    server.write_config(cfg, work_dir / "run" / "sshd_config")  # nothing left to drop
    assert capsys.readouterr().err == ""
    assert main(["server", "keys", "-c", str(toml)]) == 0
    assert "from 198.51.100.0/24,!198.51.100.3,*.rome.example" in capsys.readouterr().out
    # --from takes addresses and networks only.
    for bad in ("192.0.2.1/24", "lyon.example", "198.51.100.0/24,"):
        assert main(["server", "authorize", "-c", str(toml), str(pub_file), "--site", "nice",
                     "--from", bad]) == 2
        assert "--from: found" in capsys.readouterr().err


def test_server_trace_explains_settle_to_an_operator(tmp_path):
    """`server trace --explain` (the default at a terminal): why a new template is not at the
    sites yet (they take only declared revisions, once the library is quiet for settle)."""
    library = tmp_path / "library"
    (library / "ubuntu").mkdir(parents=True)
    (library / "ubuntu" / "ubuntu.ovf").write_text("<Envelope/>")
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{tmp_path / "state"}"\n'
                        'settle = "5min"\n')
    argv = [sys.executable, "-m", "library_syncer", "server", "trace", "-c", str(settings)]
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and len(quiet.stderr.strip().splitlines()) == 1, quiet.stderr
    said = subprocess.run([*argv, "--explain"], capture_output=True, text=True, timeout=60)
    assert said.returncode == 0, said.stderr
    first, second = said.stderr.strip().splitlines()
    assert "library changing: revision 1 is declared once nothing changed" in first
    assert "sites keep the previous revision until then (server.settle = 5min" in second
