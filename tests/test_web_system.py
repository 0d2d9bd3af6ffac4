"""library-syncer-web.service on a real, booted systemd (systemd-nspawn, tests/harness/nspawn.py),
installed from the .deb with Debian's caddy: Caddy runs as the unprivileged library-syncer user
with its hardening and binds port 80 through CAP_NET_BIND_SERVICE; a bad setting stops the start
with the reason in `systemctl status`; reload keeps the process; logs reach the journal.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import nspawn

pytestmark = pytest.mark.system

CONF = "/etc/library-syncer/library-syncer.toml"
UNIT = "library-syncer-web.service"
STATE = "/var/lib/library-syncer"


@pytest.fixture(scope="module")
def box(debs: list[Path], suite: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[nspawn.Container]:
    log_dir = tmp_path_factory.mktemp(f"web-nspawn-{suite}")
    with nspawn.boot(debs, log_dir, [(debs[0].parent, "/srv/in")], suite=suite) as container:
        # The client role only: the web unit is in it (the tree is the shared one, with the
        # server package's openssh-server too).
        nspawn.install(container, nspawn.named(debs, "library-syncer-common", "library-syncer"))
        # Debian's caddy.service serves its welcome page on :80 (see the unit's header).
        container.run("systemctl", "disable", "--now", "caddy.service", check=False)
        # A published snapshot, as the sync leaves it (owned by the sync's user).
        container.sh(f"""
            mkdir -p {STATE}/snapshots/1/tiny
            printf 'ISO-DATA' > {STATE}/snapshots/1/tiny/tiny.iso
            library-syncer manifest build {STATE}/snapshots/1 --name 'Box library' \
                --state {STATE}/cache/manifest
            ln -sfn snapshots/1 {STATE}/published
            mkdir -p {STATE}/staging && echo private > {STATE}/staging/secret
            chown -R library-syncer:library-syncer {STATE}
        """)
        yield container


def _configure(box: nspawn.Container, web: str) -> None:
    box.write(CONF, f"[library]\nname = \"Box library\"\n\n[web]\n{web}\n", mode="0644")


def _show(box: nspawn.Container, prop: str) -> str:
    return box.run("systemctl", "show", f"--property={prop}", "--value", UNIT).stdout.strip()


def _curl(box: nspawn.Container, *args: str) -> str:
    return box.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args,
                   check=False).stdout


def test_serves_on_port_80_as_its_own_unprivileged_user(box):
    _configure(box, "http_port = 80\nhostname = \"library.box\"")
    box.run("systemctl", "restart", UNIT, timeout=60)
    assert _show(box, "ActiveState") == "active"
    pid = _show(box, "MainPID")
    status = box.run("cat", f"/proc/{pid}/status").stdout
    uid = box.run("id", "-u", "library-syncer-web").stdout.strip()
    assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status
    assert _curl(box, "http://127.0.0.1/lib.json") == "200"
    assert _curl(box, "http://127.0.0.1/tiny/tiny.iso") == "200"
    assert _curl(box, "http://127.0.0.1/../staging/secret", "--path-as-is") == "404"
    rendered = box.run("stat", "-c", "%U:%G %a", "/run/library-syncer-web/Caddyfile").stdout
    assert rendered.strip() == "library-syncer-web:library-syncer-web 640"
    # Caddy cannot write the library it serves (ProtectSystem=strict, no ReadWritePaths).
    probe = box.run("nsenter", "-t", pid, "-m", "--", "sh", "-c",
                    f"touch {STATE}/published/x 2>&1", check=False)
    assert probe.returncode != 0 and "Read-only file system" in probe.stdout
    journal = box.run("journalctl", "-u", UNIT, "-o", "cat", "--no-pager").stdout
    assert '"uri":"/lib.json"' in journal  # the access log reaches the journal
    security = box.run("systemd-analyze", "security", UNIT, check=False).stdout
    assert "Overall exposure level" in security


def test_reload_applies_settings_without_a_restart(box):
    _configure(box, "http_port = 80")
    box.run("systemctl", "restart", UNIT, timeout=60)
    pid = _show(box, "MainPID")
    assert _curl(box, "http://127.0.0.1/tiny/") == "404"
    _configure(box, "http_port = 80\nbrowse = true")
    box.run("systemctl", "reload", UNIT, timeout=60)
    assert _curl(box, "http://127.0.0.1/tiny/") == "200"
    assert _show(box, "MainPID") == pid
    # A setting that cannot work: the reload fails, the running config stays.
    _configure(box, "http_port = 80\nbrowse = true\ntls = \"custom\"")
    assert box.run("systemctl", "reload", UNIT, check=False, timeout=60).returncode != 0
    assert _show(box, "ActiveState") == "active" and _show(box, "MainPID") == pid
    assert _curl(box, "http://127.0.0.1/tiny/") == "200"


def test_a_bad_setting_stops_the_start_with_the_reason(box):
    _configure(box, "tls = \"custom\"\ncert_file = \"/etc/library-syncer/tls/none.pem\"")
    result = box.run("systemctl", "restart", UNIT, check=False, timeout=60)
    assert result.returncode != 0
    status = box.run("systemctl", "status", "--no-pager", "-l", UNIT, check=False).stdout
    assert "web.cert_file" in status and "no such file" in status, status
    assert _show(box, "ActiveState") == "failed"  # not looping on a setting that cannot work


def test_internal_tls_keeps_caddys_data_in_its_own_state_directory(box):
    _configure(box, "tls = \"internal\"\nhostname = \"library.box\"")
    box.run("systemctl", "reset-failed", UNIT, check=False)
    box.run("systemctl", "restart", UNIT, timeout=60)
    assert nspawn.wait_until(lambda: _curl(
        box, "-k", "--resolve", "library.box:443:127.0.0.1", "https://library.box/lib.json")
        == "200")
    assert box.run("test", "-f", "/var/lib/library-syncer-web/caddy/pki/authorities/local/"
                   "root.crt", check=False).returncode == 0
    thumbprint = box.run("python3", "-c", "from library_syncer.base import config; "
                         "from library_syncer.web import certificate; "
                         "print(certificate.tls_thumbprint(config.load()))").stdout.strip()
    assert len(thumbprint) == 59 and thumbprint.count(":") == 19


KEY = "/etc/library-syncer/tls/key.pem"
PASSWORD = "/etc/library-syncer/web-password"
SITE_KEY = "/etc/library-syncer/ssh/id_syncer"
ADMIN = "/run/library-syncer-web/caddy-admin.sock"


def _probe(box: nspawn.Container, unit: str, script: str) -> str:
    """Run `script` as `unit` itself (its user and its whole sandbox, through a drop-in that
    only replaces what it executes) and return what it printed."""
    dropin = f"/run/systemd/system/{unit}.d/zz-probe.conf"
    box.write(dropin, "[Service]\nType=oneshot\nExecStartPre=\nExecReload=\nExecStart=\n"
              f"ExecStart=/bin/sh -c '{script} echo probe done'\n")
    try:
        box.run("systemctl", "daemon-reload")
        shown = box.run("journalctl", "-u", unit, "-n", "0", "--show-cursor", "--no-pager",
                        check=False).stdout
        cursor = shown.rsplit("-- cursor: ", 1)[-1].strip() if "-- cursor: " in shown else ""
        box.run("systemctl", "restart", unit, check=False, timeout=60)
        since = [f"--after-cursor={cursor}"] if cursor else []
        output = ""

        def printed() -> bool:
            nonlocal output
            output = box.run("journalctl", "-u", unit, *since, "-o", "cat",
                             "--no-pager").stdout
            return "probe done" in output

        nspawn.wait_until(printed, timeout=20)  # journald may not have stored it yet
        status = box.run("systemctl", "status", "--no-pager", unit, check=False).stdout
        assert "probe done" in output, status
        # The probe's lines only (not systemd's, nor an earlier run's).
        lines = output[:output.index("probe done")].splitlines()
        start = max(i for i, line in enumerate(lines) if line.startswith("library-syncer"))
        return "\n".join(lines[start:])
    finally:
        box.run("rm", "-rf", f"/run/systemd/system/{unit}.d")
        box.run("systemctl", "daemon-reload")


def _try(name: str, command: str) -> str:
    return (f'if {command} >/dev/null 2>&1; then echo "{name}: read"; '
            f'else echo "{name}: denied"; fi; ')


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    """A certificate and key for library.box, made on the host (the box has no openssl)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=library.box",
                    "-addext", "subjectAltName=DNS:library.box", "-keyout", str(tmp_path / "k"),
                    "-out", str(tmp_path / "c")], check=True, capture_output=True)
    return (tmp_path / "c").read_text(), (tmp_path / "k").read_text()


def test_the_sync_and_caddy_cannot_reach_each_others_secrets(box, tmp_path):
    """The sync parses untrusted data; Caddy faces the network. As the sync unit: the TLS key,
    the password file, Caddy's data and its admin socket are out of reach; as the web unit: the
    site's SSH key is. Each probe also reads what its own unit needs (so a denial is not a
    broken probe)."""
    cert, key = _self_signed(tmp_path)
    box.sh("install -d -m 0750 -o root -g library-syncer-web /etc/library-syncer/tls")
    box.write("/etc/library-syncer/tls/cert.pem", cert)
    box.write(KEY, key, mode="0640")
    box.write(PASSWORD, "s3cret\n", mode="0640")
    box.sh(f"chown root:library-syncer-web {KEY} {PASSWORD}\n"
           f"ssh-keygen -q -t ed25519 -N '' -f {SITE_KEY}\n"
           f"chown library-syncer: {SITE_KEY}")
    _configure(box, f'tls = "custom"\ncert_file = "/etc/library-syncer/tls/cert.pem"\n'
               f'key_file = "{KEY}"\nhostname = "library.box"\n'
               f'auth_password_file = "{PASSWORD}"')
    box.run("systemctl", "reset-failed", UNIT, check=False)
    box.run("systemctl", "restart", UNIT, timeout=60)
    assert _show(box, "ActiveState") == "active"
    assert box.run("test", "-S", ADMIN, check=False).returncode == 0
    sync = _probe(box, "library-syncer.service", "id -un; "
                  + _try("tls key", f"cat {KEY}") + _try("password", f"cat {PASSWORD}")
                  + _try("admin socket", f"curl -sf --unix-socket {ADMIN} http://caddy/config/")
                  + _try("caddy data", "ls /var/lib/library-syncer-web/")
                  + _try("site key", f"cat {SITE_KEY}"))
    assert sync.split() == ["library-syncer", "tls", "key:", "denied", "password:", "denied",
                            "admin", "socket:", "denied", "caddy", "data:", "denied", "site",
                            "key:", "read"], sync
    web = _probe(box, UNIT, "id -un; " + _try("site key", f"cat {SITE_KEY}")
                 + _try("site dir", "ls /etc/library-syncer/ssh/")
                 + _try("tls key", f"cat {KEY}") + _try("password", f"cat {PASSWORD}"))
    assert web.split() == ["library-syncer-web", "site", "key:", "denied", "site", "dir:",
                           "denied", "tls", "key:", "read", "password:", "read"], web
    # Back to the real unit: it serves with the password and the key it alone can read.
    _configure(box, "http_port = 80")
    box.run("systemctl", "restart", UNIT, timeout=60)
    assert _show(box, "ActiveState") == "active"
