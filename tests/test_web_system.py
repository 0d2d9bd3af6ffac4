"""library-syncer-web.service on a real, booted systemd (systemd-nspawn, tests/harness/nspawn.py),
installed from the .deb with Debian's caddy: Caddy runs as the unprivileged library-syncer user
with its hardening and binds port 80 through CAP_NET_BIND_SERVICE; a bad setting stops the start
with the reason in `systemctl status`; reload keeps the process; logs reach the journal.
"""

from __future__ import annotations

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


def test_serves_on_port_80_as_the_unprivileged_user(box):
    _configure(box, "http_port = 80\nhostname = \"library.box\"")
    box.run("systemctl", "restart", UNIT, timeout=60)
    assert _show(box, "ActiveState") == "active"
    pid = _show(box, "MainPID")
    status = box.run("cat", f"/proc/{pid}/status").stdout
    uid = box.run("id", "-u", "library-syncer").stdout.strip()
    assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status
    assert _curl(box, "http://127.0.0.1/lib.json") == "200"
    assert _curl(box, "http://127.0.0.1/tiny/tiny.iso") == "200"
    assert _curl(box, "http://127.0.0.1/../staging/secret", "--path-as-is") == "404"
    rendered = box.run("stat", "-c", "%U:%G %a", "/run/library-syncer-web/Caddyfile").stdout
    assert rendered.strip() == "library-syncer:library-syncer 640"
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
                         "from library_syncer.web import caddy as web; "
                         "print(web.tls_thumbprint(config.load()))").stdout.strip()
    assert len(thumbprint) == 59 and thumbprint.count(":") == 19
