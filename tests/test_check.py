"""`library-syncer check` against a real loopback sshd (forced rrsync -ro) and a real caddy."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.base.errors import ExitStatus
from library_syncer.host import demo
from tests.harness import readable
from tests.harness import sshd as sshd_harness
from tests.harness.net import free_port

CADDY = "/usr/bin/caddy"


@dataclass
class Site:
    """A client site's settings file pointing at the test's sshd, state under work_dir."""

    file: Path
    work: Path
    sshd: sshd_harness.Sshd
    key: Path

    @property
    def config(self) -> config_module.Config:
        return config_module.load(self.file)

    def write(self, **sections: dict[str, object]) -> None:
        self.file.write_text(_toml(sections))


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml(sections: dict[str, dict[str, object]]) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{k} = {_value(v)}\n" for k, v in table.items())
                   for name, table in sections.items())


def site_settings(site_work: Path, sshd: sshd_harness.Sshd, key: Path,
                  **overrides: dict[str, object]) -> dict[str, dict[str, object]]:
    sections: dict[str, dict[str, object]] = {
        "library": {"name": "Site templates"},
        "sync": {"peer": "127.0.0.1", "port": sshd.port, "user": sshd.user,
                 "identity_file": str(key), "known_hosts": str(site_work / "known_hosts"),
                 "random_delay": 0, "min_free_space": "10M", "retry_budget": 0,
                 "connect_timeout": 5},
        "web": {"listen": "127.0.0.1", "http_port": free_port(), "https_port": free_port(),
                "tls": "internal", "hostname": "library.test", "caddy": CADDY},
        "metrics": {"textfile": str(site_work / "metrics" / "library-syncer.prom")},
        # a client only: no server role set up here
        "server": {"config_dir": str(site_work / "no-server"),
                   "library": str(site_work / "no-server-library")},
        # runtime_dir short: Caddy's admin socket path must fit in 108 bytes
        "paths": {"state_dir": str(site_work / "state"),
                  "runtime_dir": str(site_work.parent / "r")},
    }
    for name, table in overrides.items():
        sections.setdefault(name, {}).update(table)
    return sections


@pytest.fixture
def site(work_dir, sshd, client_key, server_library) -> Site:
    """A healthy site: the server knows its key, it knows the server's host key."""
    template = Path(str(demo._data())) / "ttylinux"
    shutil.copytree(template, server_library / "ttylinux")
    for path in [server_library, *server_library.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    key = client_key[0]
    try:  # on a host with the package installed, the sync's account must read the key
        os.chown(key, 0, grp.getgrnam("library-syncer").gr_gid)
        key.chmod(0o640)
    except KeyError:
        pass
    site_work = work_dir / "site"
    (site_work / "metrics").mkdir(parents=True)
    (site_work / "known_hosts").write_text(sshd.known_hosts_line + "\n")
    result = Site(work_dir / "library-syncer.toml", site_work, sshd, key)
    result.write(**site_settings(site_work, sshd, key))
    return result


def run_cli(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    if user:  # another account runs a copy: the checkout may sit in /root (0700)
        return subprocess.run(readable.cli_as(user, *args), capture_output=True, text=True,
                              timeout=120, cwd=readable.NEUTRAL_CWD)
    return subprocess.run([sys.executable, "-m", "library_syncer", *args], capture_output=True,
                          text=True, timeout=120, cwd=str(Path(__file__).resolve().parent.parent))


def _check(site: Site) -> subprocess.CompletedProcess:
    result = run_cli("check", "-c", str(site.file))
    assert "Traceback" not in result.stderr
    return result


def _lines(result: subprocess.CompletedProcess, prefix: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(prefix)]


def test_healthy_site(site):
    result = _check(site)
    assert result.returncode == 0, result.stdout + result.stderr
    port = site.sshd.port
    assert result.stdout.splitlines() == [
        f"ok    settings: {site.file} is valid",
        f"ok    key: {site.key} ({site.key.stat().st_mode & 0o777:04o}, owner root)",
        f"ok    host key: [127.0.0.1]:{port} is in {site.work}/known_hosts",
        f"ok    server: {site.sshd.user}@127.0.0.1:{port} answers and accepts the key "
        "(2 entries at /)",
        _lines(result, "ok    web: ")[0],
        "skip  web service: systemd is not running here: cannot see library-syncer-web.service",
        _lines(result, "ok    disk: ")[0],
        "skip  timer: systemd is not running here: cannot see whether library-syncer.timer "
        "is enabled",
        _lines(result, "warn  trust: ")[0],
        "skip  last run: no run yet (systemctl start library-syncer)",
        "skip  report: no report sent yet (one goes upstream after each run)",
        "skip  scrub: never run (library-syncer-scrub.timer reads every published file "
        "monthly; now: library-syncer sync --scrub)",
    ]
    # without pinned origin keys the site works as before, and says what it does not verify
    assert _lines(result, "warn  trust: ")[0].startswith(
        "warn  trust: revisions are not verified against the origin's key")
    web_config = site.config.web
    assert _lines(result, "ok    web: ")[0] == (
        f"ok    web: Caddyfile validates; vCenter URL "
        f"https://library.test:{web_config.https_port}/lib.json")
    assert " free on " in _lines(result, "ok    disk: ")[0]
    assert result.stderr == ""


def test_server_down(site):
    site.sshd.stop()
    result = _check(site)
    assert result.returncode == ExitStatus.CHECK
    (line,) = _lines(result, "FAIL")
    assert line.startswith(f"FAIL  server: {site.sshd.user}@127.0.0.1:{site.sshd.port} does not "
                           "answer (")
    assert "Connection refused" in line
    assert line.endswith("; fix: start the server role there (systemctl start "
                         "library-syncer-sshd) or correct sync.peer / sync.port")
    assert result.stderr.strip() == "library-syncer: 1 problem found"


def test_wrong_key(site, work_dir):
    other, _ = sshd_harness.keygen(work_dir / "client-ssh" / "other_key")
    site.write(**site_settings(site.work, site.sshd, other))
    result = _check(site)
    assert result.returncode == ExitStatus.CHECK
    (line,) = _lines(result, "FAIL")
    assert line == (f"FAIL  server: {site.sshd.user}@127.0.0.1:{site.sshd.port}: the server "
                    f"refused this site's key ({other}); fix: on the server: library-syncer "
                    f"server authorize {other}.pub --site NAME")


def test_unknown_host_key(site):
    (site.work / "known_hosts").write_text("")
    result = _check(site)
    assert result.returncode == ExitStatus.CHECK
    port = site.sshd.port
    assert _lines(result, "FAIL") == [
        f"FAIL  host key: no key for [127.0.0.1]:{port} in {site.work}/known_hosts; fix: "
        "library-syncer trust-host --fingerprint SHA256:… (the server shows it: "
        "library-syncer server keys)",
        f"FAIL  server: {site.sshd.user}@127.0.0.1:{port}: the server's host key is not known; "
        "fix: library-syncer trust-host --fingerprint SHA256:…",
    ]
    assert result.stderr.strip() == "library-syncer: 2 problems found"


def test_bad_config(site):
    site.file.write_text(site.file.read_text().replace(f"port = {site.sshd.port}",
                                                       'port = "22x"'))
    result = _check(site)
    assert result.returncode == ExitStatus.CHECK
    assert result.stdout.splitlines() == [
        f'FAIL  settings: {site.file}: sync.port: found "22x", expected an integer 1-65535; '
        "fix: edit the file, then library-syncer config validate"]


def test_unsafe_key_permissions_missing_cert_and_no_room(site):
    site.key.chmod(0o644)
    settings = site_settings(site.work, site.sshd, site.key,
                             web={"tls": "custom", "cert_file": str(site.work / "cert.pem"),
                                  "key_file": str(site.work / "key.pem")},
                             sync={"min_free_space": "1000T"})
    site.write(**settings)
    result = _check(site)
    assert result.returncode == ExitStatus.CHECK
    failed = _lines(result, "FAIL")
    assert failed[0] == (f"FAIL  key: {site.key} has mode 0644: others can read or change it; "
                         f"fix: chmod 640 {site.key}")
    assert failed[1].startswith(f"FAIL  web: {site.file}: web.cert_file: found "
                                f'"{site.work}/cert.pem"')
    assert failed[2].startswith(f"FAIL  web: {site.file}: web.key_file: found ")
    assert failed[3].startswith("FAIL  disk: ") and "sync.min_free_space is 1000 TB" in failed[3]
    assert len(failed) == 4
    assert "skip  server: not contacted until the key problem above is fixed" in result.stdout


@pytest.fixture
def server_site(work_dir, client_key, server_library) -> Path:
    """A server-role host: the sysusers-made account, a library, one authorized site."""
    from library_syncer.server import sshd as server

    account = sshd_harness.ensure_sysusers_user()
    (server_library / "ttylinux").mkdir()
    file = work_dir / "server.toml"
    file.write_text(_toml({"server": {
        "library": str(server_library), "listen": ["127.0.0.1"], "port": free_port(),
        "user": account.pw_name, "uid": account.pw_uid, "config_dir": str(work_dir / "etc"),
        "state_dir": str(work_dir / "server-state"), "sshd": sshd_harness.SSHD,
        "rrsync": sshd_harness.RRSYNC}}))
    cfg = config_module.load(file)
    server.authorize(cfg, client_key[1], "paris")
    server.ensure_host_keys(cfg)
    return file


def test_server_role_healthy(server_site):
    result = run_cli("check", "-c", str(server_site))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _lines(result, "ok    sites: ") == ["ok    sites: 1 authorized: paris"]
    assert _lines(result, "skip  fleet: ") == [
        "skip  fleet: no site has reported yet (each reports after its runs)"]
    assert _lines(result, "ok    library: ")[0].endswith(": 1 item folder")
    assert _lines(result, "ok    sshd: the rendered sshd_config passes sshd -t")
    assert _lines(result, "ok    account: ")
    assert _lines(result, "skip  service: systemd is not running here")


def test_server_role_names_overdue_sites_as_a_warning(server_site, work_dir):
    import json
    import time

    from library_syncer.server import reports

    state = work_dir / "server-state"
    reports.reports_dir(state).mkdir(parents=True)
    body = {"format": 1, "outcome": "ok", "finished": "2026-11-30T10:00:00+00:00",
            "exit_status": 0, "schedule": "daily",
            "interval": 86400, "random_delay": 0}
    reports.store(state, "paris", json.dumps(body).encode())
    reports.store(state, "rome", json.dumps(body).encode(), now=time.time() - 3 * 86400)
    result = run_cli("check", "-c", str(server_site))
    assert result.returncode == 0, result.stdout + result.stderr  # a warning, not a failure
    (line,) = _lines(result, "warn  fleet: ")
    assert line.startswith("warn  fleet: 1 of 2 sites OVERDUE: ") and " → rome; fix: " in line
    reports.forget(state, "rome")
    result = run_cli("check", "-c", str(server_site))
    assert _lines(result, "ok    fleet: ") == [
        "ok    fleet: 1 site reported, none overdue; 0 behind"]


def test_server_role_problems(server_site, work_dir):
    (work_dir / "etc" / "authorized_keys").unlink()
    (work_dir / "etc" / "ssh_host_rsa_key").unlink()
    result = run_cli("check", "-c", str(server_site))
    assert result.returncode == ExitStatus.CHECK
    assert _lines(result, "FAIL") == [
        f"FAIL  sites: no site is authorized in {work_dir}/etc/authorized_keys; fix: "
        "library-syncer server authorize SITE.pub --site NAME",
        f"FAIL  sshd: host key {work_dir}/etc/ssh_host_rsa_key is missing; fix: systemctl "
        "restart library-syncer-sshd.service (creates missing keys) or library-syncer server "
        "render --host-keys",
    ]


def test_without_root_unreadable_files_say_so(site):
    """As on an installed host: /etc/library-syncer/ssh is 0750 root:library-syncer."""
    site.file.chmod(0o644)
    site.key.parent.chmod(0o750)
    (site.work / "known_hosts").chmod(0o600)
    result = run_cli("check", "-c", str(site.file), user="nobody")
    assert result.returncode == ExitStatus.CHECK
    assert _lines(result, "FAIL  key: ") == [
        f"FAIL  key: {site.key}: permission denied; fix: run check as root"]
    assert _lines(result, "FAIL  host key: ") == [
        f"FAIL  host key: {site.work}/known_hosts: permission denied; fix: run check as root"]
    assert _lines(result, "ok    settings: ")
    assert "Traceback" not in result.stderr


def test_basic_auth_without_an_allow_list_is_a_warning(site):
    password = site.work / "web-password"
    password.write_text("s3cret\n")
    site.write(**site_settings(site.work, site.sshd, site.key,
                               web={"auth_password_file": str(password)}))
    result = _check(site)
    assert result.returncode == 0, result.stdout + result.stderr  # a warning fails nothing
    port = site.config.web.https_port
    assert _lines(result, "warn  web") == [
        f"warn  web: basic authentication without web.allow: anyone who reaches port {port} can "
        "make Caddy check passwords (a CPU-bound bcrypt per failed try); fix: set web.allow to "
        'the vCenter addresses, e.g. allow = ["192.0.2.7/32"]']
    site.write(**site_settings(site.work, site.sshd, site.key,
                               web={"auth_password_file": str(password),
                                    "allow": ["192.0.2.7/32"]}))
    assert _lines(_check(site), "warn  web") == []


def test_server_role_names_each_symlink_in_the_library(server_site, server_library, work_dir):
    outside = work_dir / "outside.txt"
    outside.write_text("not for the sites\n")
    (server_library / "ttylinux" / "escape.ovf").symlink_to(outside)
    (server_library / "ttylinux" / "same.ovf").symlink_to("escape.ovf")
    (server_library / "etc-dir").symlink_to("/etc")
    result = run_cli("check", "-c", str(server_site))
    assert result.returncode == 0, result.stdout + result.stderr
    fix = "; fix: replace it with the file or folder itself, or remove it"
    tail = ": sites do not get its content, and rrsync's error messages name its target"
    assert [line for line in _lines(result, "warn") if " library: " in line] == [
        f"warn  library: symlink {server_library}/etc-dir -> /etc (outside the library){tail}{fix}",
        f"warn  library: symlink {server_library}/ttylinux/escape.ovf -> {outside} (outside the "
        f"library){tail}{fix}",
        f"warn  library: symlink {server_library}/ttylinux/same.ovf -> escape.ovf (outside the "
        f"library){tail}{fix}",
    ]
    # Capped: one line per link up to the limit, then a count.
    for n in range(12):
        (server_library / "ttylinux" / f"link-{n:02d}").symlink_to("escape.ovf")
    warned = [line for line in _lines(run_cli("check", "-c", str(server_site)), "warn")
              if " library: " in line]
    assert len(warned) == 11 and warned[-1] == (
        f"warn  library: 5 more symlinks in {server_library}; fix: find {server_library} -type l")


def test_server_role_names_a_config_dir_below_a_world_writable_folder(server_site, work_dir):
    """sshd -t cannot see it, sites are refused at login: StrictModes wants every folder above
    authorized_keys root's and not writable by others (sticky bit or not)."""
    os.chmod(work_dir, 0o1777)
    try:
        result = run_cli("check", "-c", str(server_site))
    finally:
        os.chmod(work_dir, 0o755)
    assert result.returncode == ExitStatus.CHECK, result.stdout
    (line,) = _lines(result, "FAIL  sshd: ")
    assert f"{work_dir} (mode 1777, owner UID 0) is writable by others" in line
    assert "StrictModes refuses every key" in line and "chmod go-w" in line
