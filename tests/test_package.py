"""The .deb packages on a real, booted systemd (systemd-nspawn; see tests/harness/nspawn.py).

One container per tested Debian suite (bookworm, trixie: the `suite` fixture), the steps in
order, as an operator would do them: install the three packages, see the timer in `systemctl
list-timers` straight away, apply a schedule and read it back from there, break the settings and
read the reason in `systemctl status`, run a real sync from the server role to the client role
over loopback and fetch the library from the web unit, then remove and purge and compare the
file system with the state before the install.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from library_syncer.base import paths
from tests.harness import nspawn

pytestmark = pytest.mark.system

TOP = Path(__file__).resolve().parent.parent
CONF = "/etc/library-syncer/library-syncer.toml"
TIMER = "library-syncer.timer"
SERVICE = "library-syncer.service"
POLL_TIMER = "library-syncer-poll.timer"
POLL_SERVICE = "library-syncer-poll.service"
SCRUB_TIMER = "library-syncer-scrub.timer"
SCRUB_SERVICE = "library-syncer-scrub.service"
# Paths whose content changes with any package operation: left out of the before/after compare.
VOLATILE = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/cache", "/var/log",
            "/var/lib/dpkg", "/var/lib/apt", "/srv/in", "/srv/in-next", "/srv/fixtures",
            "/srv/packaging")


@pytest.fixture(scope="module")
def box(debs: list[Path], next_debs: list[Path], fixtures_dir: Path, suite: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Container]:
    binds = [(debs[0].parent, "/srv/in"), (next_debs[0].parent, "/srv/in-next"),
             (fixtures_dir / "ovf", "/srv/fixtures"), (TOP / "packaging", "/srv/packaging")]
    with nspawn.boot(debs, tmp_path_factory.mktemp(f"nspawn-{suite}"), binds,
                     suite=suite) as container:
        yield container


def _files(box: nspawn.Container) -> set[str]:
    prune = " -o ".join(f"-path {p}" for p in VOLATILE)
    return set(box.sh(f"find / -xdev \\( {prune} \\) -prune -o -print").split())


def _show(box: nspawn.Container, unit: str, prop: str) -> str:
    return box.run("systemctl", "show", f"--property={prop}", "--value", unit).stdout.strip()


def _timer_line(box: nspawn.Container) -> str:
    out = box.run("systemctl", "list-timers", "--all", "--no-pager", TIMER).stdout
    lines = [line for line in out.splitlines() if TIMER in line]
    assert len(lines) == 1, out
    return lines[0]


@pytest.fixture(scope="module")
def before_install(box: nspawn.Container) -> set[str]:
    return _files(box)


def test_install_the_three_packages_offline(box: nspawn.Container, debs: list[Path],
                                            before_install: set[str]) -> None:
    paths = [f"/srv/in/{p.name}" for p in debs]
    box.run("apt-get", "install", "-y", *paths, timeout=600)
    status = box.run("dpkg-query", "-W", "-f=${Package} ${Status}\n", *nspawn.PACKAGES).stdout
    assert sorted(status.splitlines()) == [f"{name} install ok installed"
                                           for name in sorted(nspawn.PACKAGES)], status


def test_the_timer_is_listed_straight_after_install(box: nspawn.Container) -> None:
    """Started at install (like apt-daily.timer): list-timers shows it with its next run."""
    line = _timer_line(box)
    # NEXT: Friday 21:00 plus the random delay of up to 6 h (the container runs in UTC); LAST:
    # never (starting the timer ran no sync).
    assert re.match(r"(Fri \S+ 2[1-3]|Sat \S+ 0[0-2]):\d\d:\d\d UTC ", line), line
    # (systemd 252 writes "4 days left", 257 "4 days".)
    assert re.search(r" - +- +library-syncer\.timer +library-syncer\.service$", line), line
    assert _show(box, TIMER, "ActiveState") == "active"
    assert _show(box, TIMER, "UnitFileState") == "enabled"


def test_the_scrub_timer_is_started_at_install_and_ran_nothing(box: nspawn.Container) -> None:
    """Monthly, with a fixed random delay; started like the sync timer, its service never."""
    assert _show(box, SCRUB_TIMER, "ActiveState") == "active"
    assert _show(box, SCRUB_TIMER, "UnitFileState") == "enabled"
    assert "OnCalendar=*-*-01 00:00:00" in _show(box, SCRUB_TIMER, "TimersCalendar")
    assert _show(box, SCRUB_TIMER, "RandomizedDelayUSec") == "3d"
    assert _show(box, SCRUB_SERVICE, "ExecMainStartTimestampMonotonic") == "0"


def test_users_and_directories(box: nspawn.Container) -> None:
    client = box.run("getent", "passwd", "library-syncer").stdout.split(":")
    assert client[5:7] == ["/var/lib/library-syncer", "/usr/sbin/nologin\n"]
    server = box.run("getent", "passwd", "syncer").stdout.strip().split(":")
    assert server[2] == "31337" and server[5:7] == ["/srv/library-syncer", "/bin/sh"]
    # sysusers' "!*" lifted to "*" by postinst: sshd without PAM refuses "!" accounts
    assert box.run("getent", "shadow", "syncer").stdout.split(":")[1] == "*"
    owner = box.sh("stat -c '%U %a' /var/lib/library-syncer /etc/library-syncer/ssh").split("\n")
    assert owner[:2] == ["library-syncer 755", "root 750"]
    assert box.sh(f"stat -c %U {CONF}").strip() == "root"  # the conffile


def test_only_the_timer_is_enabled_and_started_no_sync_ran(box: nspawn.Container) -> None:
    for unit in ("library-syncer-sshd.service", "library-syncer-sshd.socket",
                 "library-syncer-web.service"):
        assert box.run("systemctl", "is-active", unit, check=False).stdout.strip() == "inactive"
        assert box.run("systemctl", "is-enabled", unit, check=False).stdout.strip() == "disabled"
    assert box.run("systemctl", "is-active", SERVICE, check=False).stdout.strip() == "inactive"
    assert _show(box, SERVICE, "ExecMainStartTimestampMonotonic") == "0"


def test_the_generator_gives_the_sshd_socket_its_settings(box: nspawn.Container) -> None:
    """The package's daemon-reload ran the generator: the socket's drop-in is there, from the
    settings file as installed (every address, port 2222, bbr)."""
    generator = "/usr/lib/systemd/system-generators/library-syncer-sshd-generator"
    assert box.sh(f"stat -c '%a %U' {generator}").strip() == "755 root"
    dropin = box.sh("cat /run/systemd/generator/library-syncer-sshd.socket.d/50-settings.conf")
    assert [line for line in dropin.splitlines() if not line.startswith("#")] == [
        "[Socket]", "ListenStream=", "ListenStream=2222", "TCPCongestion=bbr"]
    shown = box.run("systemctl", "show", "--property=Listen", "--property=TCPCongestion",
                    "library-syncer-sshd.socket").stdout.splitlines()
    assert shown == ["Listen=[::]:2222 (Stream)", "TCPCongestion=bbr"], shown


def test_installed_units_pass_systemd_verify(box: nspawn.Container) -> None:
    units = box.sh("ls /usr/lib/systemd/system/library-syncer*").split()
    assert "/usr/lib/systemd/system/library-syncer.timer" in units
    result = box.run("systemd-analyze", "verify", "--man=no", *units, check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_documentation_links_of_the_units_exist(box: nspawn.Container) -> None:
    text = box.sh("cat /usr/lib/systemd/system/library-syncer*")
    files = re.findall(r"file://(\S+)", text)
    mans = re.findall(r"man:(library-syncer[\w-]*)\((\d)\)", text)
    assert files and mans
    for path in files:
        assert box.run("test", "-f", path, check=False).returncode == 0, f"{path} missing"
    for name, section in mans:
        page = f"/usr/share/man/man{section}/{name}.{section}.gz"
        assert box.run("test", "-f", page, check=False).returncode == 0, f"{page} missing"


def test_autopkgtest_smoke(box: nspawn.Container) -> None:
    """debian/tests/smoke, run in the booted system as autopkgtest would."""
    out = box.run("/srv/packaging/debian/tests/smoke").stdout
    assert "library-syncer " in out and "valid" in out


def test_the_settings_file_is_minimal_and_the_reference_is_where_it_says(
        box: nspawn.Container) -> None:
    """The conffile is `config generate`'s output: no active setting; the reference it names
    (`config generate --all`) is installed at that path, uncompressed."""
    shipped = box.sh(f"cat {CONF}")
    assert shipped == box.run("library-syncer", "config", "generate").stdout
    assert [line for line in shipped.splitlines()
            if line and not line.startswith(("#", "["))] == []
    assert "# peer = " in shipped
    named = sorted(set(re.findall(r"/usr/share/doc/\S+", shipped)))
    assert named == [str(paths.REFERENCE_SETTINGS_FILE)], named
    reference = box.sh(f"cat {paths.REFERENCE_SETTINGS_FILE}")
    assert reference == box.run("library-syncer", "config", "generate", "--all").stdout
    assert "\nblock_size = " in reference and "\npeer = \"\"\n" in reference
    owner = box.run("dpkg-query", "-S", str(paths.REFERENCE_SETTINGS_FILE)).stdout
    assert owner.startswith("library-syncer-common: "), owner
    box.run("library-syncer", "config", "validate", "-c", str(paths.REFERENCE_SETTINGS_FILE))
    # The shipped file loads to exactly the defaults.
    assert box.run("library-syncer", "config", "show").stdout.splitlines()[1:] == box.run(
        "library-syncer", "config", "show", "-c", "/dev/null").stdout.splitlines()[1:]


def test_unconfigured_shipped_settings_make_a_run_that_says_so(box: nspawn.Container) -> None:
    """The timer is enabled at install while the shipped file leaves sync.peer unset: a run
    says so and succeeds."""
    assert box.sh(f"cat {CONF}") == box.run("library-syncer", "config", "generate").stdout
    box.run("systemctl", "start", SERVICE)
    assert _show(box, SERVICE, "Result") == "success"
    journal = box.run("journalctl", "-u", SERVICE, "--no-pager", "-o", "cat").stdout
    assert "not configured yet: sync.peer is empty" in journal, journal


def test_without_settings_file_the_sync_is_skipped_not_failed(box: nspawn.Container) -> None:
    box.run("mv", CONF, CONF + ".away")
    try:
        # The previous step ran the service once: the skipped start must not have run it again.
        ran = _show(box, SERVICE, "ExecMainStartTimestampMonotonic")
        box.run("systemctl", "start", SERVICE)  # succeeds: a skip is not a failure
        assert _show(box, SERVICE, "ExecMainStartTimestampMonotonic") == ran
        status = box.run("systemctl", "status", "--no-pager", SERVICE, check=False).stdout
        assert _show(box, SERVICE, "ConditionResult") == "no"
        # systemd 252: "unmet condition check (ConditionPathExists=…)"; 257: "… was not met".
        assert f"ConditionPathExists={CONF}" in status, status
        assert _show(box, SERVICE, "Result") == "success"
    finally:
        box.run("mv", CONF + ".away", CONF)


def test_schedule_from_toml_reaches_list_timers(box: nspawn.Container) -> None:
    box.write(CONF, '[sync]\npeer = "127.0.0.1"\nschedule = "0 21 * * 5"\n'
                    'timezone = "Europe/Paris"\nrandom_delay = "1h"\nfixed_random_delay = true\n')
    first = box.run("library-syncer", "apply").stdout
    assert f"{TIMER} restarted" in first, first  # active since the install
    assert "OnCalendar=Fri *-*-* 21:00:00 Europe/Paris" in _show(box, TIMER, "TimersCalendar")
    assert _show(box, TIMER, "RandomizedDelayUSec") == "1h"
    assert _show(box, TIMER, "FixedRandomDelay") == "yes"
    assert _show(box, TIMER, "Persistent") == "yes"
    assert _timer_line(box).startswith("Fri ")  # NEXT: a Friday (plus up to 1 h, from 20:00 UTC)


def test_changed_schedule_applied_changes_list_timers(box: nspawn.Container) -> None:
    box.write(CONF, '[sync]\npeer = "127.0.0.1"\nschedule = "Mon *-*-* 03:00:00"\n'
                    'random_delay = 0\nfixed_random_delay = false\n')
    ran = _show(box, SERVICE, "ExecMainStartTimestampMonotonic")
    assert "restarted" in box.run("library-syncer", "apply").stdout
    assert "OnCalendar=Mon *-*-* 03:00:00" in _show(box, TIMER, "TimersCalendar")
    assert _show(box, TIMER, "RandomizedDelayUSec") == "0"
    assert _show(box, TIMER, "FixedRandomDelay") == "no"
    line = _timer_line(box)
    assert re.match(r"Mon \d{4}-\d\d-\d\d 03:00:00 ", line), line
    # Restarting the timer re-arms it; it must not have run the sync.
    assert _show(box, SERVICE, "ExecMainStartTimestampMonotonic") == ran


def test_invalid_schedule_is_refused_and_timer_kept(box: nspawn.Container) -> None:
    box.write(CONF, '[sync]\npeer = "127.0.0.1"\nschedule = "Mon *-*-* 25:00:00"\n')
    result = box.run("library-syncer", "apply", check=False)
    assert result.returncode == 3
    assert "sync.schedule" in result.stderr and "Traceback" not in result.stderr
    assert "OnCalendar=Mon *-*-* 03:00:00" in _show(box, TIMER, "TimersCalendar")


def test_poll_timer_runs_only_while_poll_interval_is_applied(box: nspawn.Container) -> None:
    """Enabled by the package, inactive (its condition) until `apply` writes the interval;
    off again when the setting goes. Starting it runs no check."""
    def active() -> str:
        return box.run("systemctl", "is-active", POLL_TIMER, check=False).stdout.strip()

    assert box.run("systemctl", "is-enabled", POLL_TIMER, check=False).stdout.strip() == "enabled"
    assert active() == "inactive"
    schedule = 'schedule = "Mon *-*-* 03:00:00"\n'  # the previous test's, kept
    box.write(CONF, f'[sync]\npeer = "127.0.0.1"\n{schedule}poll_interval = "15min"\n')
    out = box.run("library-syncer", "apply").stdout
    assert f"{POLL_TIMER} started" in out, out
    assert active() == "active"
    listed = box.run("systemctl", "list-timers", "--no-pager", POLL_TIMER).stdout
    assert re.search(r"library-syncer-poll\.timer +library-syncer-poll\.service", listed), listed
    assert "OnUnitActiveUSec=15min" in _show(box, POLL_TIMER, "TimersMonotonic")
    assert _show(box, POLL_TIMER, "RandomizedDelayUSec") == "1min 30s"
    assert _show(box, POLL_SERVICE, "ExecMainStartTimestampMonotonic") == "0"

    box.write(CONF, f'[sync]\npeer = "127.0.0.1"\n{schedule}')
    out = box.run("library-syncer", "apply").stdout
    assert f"{POLL_TIMER} stopped" in out, out
    assert active() == "inactive"
    assert POLL_TIMER not in box.run("systemctl", "list-timers", "--no-pager").stdout
    assert "OnCalendar=Mon *-*-* 03:00:00" in _show(box, TIMER, "TimersCalendar")


def test_a_scheduled_run_waits_for_a_poll_started_sync(box: nspawn.Container) -> None:
    """The two services share the run lock: a weekly run that fires while the poll service runs
    must wait for it (After=), not fail on the lock. The poll service is made slow by a
    drop-in; both runs fail later (no server here), which does not matter for the order."""
    dropin = f"/run/systemd/system/{POLL_SERVICE}.d/slow.conf"
    box.write(dropin, "[Service]\nExecStartPre=/bin/sleep 4\n")
    box.run("systemctl", "daemon-reload")
    try:
        box.run("systemctl", "start", "--no-block", POLL_SERVICE)
        box.run("systemctl", "start", SERVICE, check=False)  # returns when the run ended
        poll_ended = int(_show(box, POLL_SERVICE, "ExecMainExitTimestampMonotonic"))
        sync_started = int(_show(box, SERVICE, "ExecMainStartTimestampMonotonic"))
        assert 0 < poll_ended <= sync_started, (poll_ended, sync_started)
    finally:
        box.run("rm", "-rf", f"/run/systemd/system/{POLL_SERVICE}.d")
        box.run("systemctl", "daemon-reload")
        box.run("systemctl", "reset-failed", SERVICE, POLL_SERVICE, check=False)


def test_broken_settings_fail_the_service_with_the_reason_in_status(
        box: nspawn.Container) -> None:
    box.write(CONF, '[sync]\npeer = "127.0.0.1"\nport = "22x"\n')
    assert box.run("systemctl", "start", SERVICE, check=False).returncode != 0
    assert box.run("systemctl", "is-failed", SERVICE, check=False).stdout.strip() == "failed"
    status = box.run("systemctl", "status", "--no-pager", "--lines=20", SERVICE,
                     check=False).stdout
    assert 'sync.port: found "22x", expected an integer 1-65535' in status, status
    box.run("systemctl", "reset-failed", SERVICE)


FULL_CONFIG = """\
[library]
name = "Package test library"

[sync]
peer = "127.0.0.1"
port = 2222
random_delay = 0

[web]
listen = "127.0.0.1"
http_port = 8080

[server]
library = "/srv/library-syncer/library"
listen = ["127.0.0.1"]
port = 2222
"""


def test_full_loop_sync_from_the_server_unit_over_loopback(box: nspawn.Container) -> None:
    """Server and client roles in one system: the sshd unit serves, the sync unit pulls."""
    box.write(CONF, FULL_CONFIG)
    box.sh("cp -r /srv/fixtures/ttylinux-template /srv/library-syncer/library/ttylinux")
    box.run("systemctl", "start", "library-syncer-sshd.service")
    # Edited since the package's daemon-reload: the start queued the socket's move to
    # 127.0.0.1 (library-syncer-sshd-apply.service); done once no job is left.
    assert nspawn.wait_until(lambda: not box.run("systemctl", "list-jobs", "--no-legend",
                                                 "--plain").stdout.strip())
    box.sh("ssh-keygen -q -t ed25519 -N '' -C site -f /etc/library-syncer/ssh/id_syncer\n"
           "chown library-syncer: /etc/library-syncer/ssh/id_syncer\n"
           "library-syncer server authorize /etc/library-syncer/ssh/id_syncer.pub --site local\n"
           "ssh-keyscan -p 2222 127.0.0.1 > /etc/library-syncer/ssh/known_hosts 2>/dev/null\n")
    box.run("systemctl", "start", SERVICE, timeout=600)
    assert _show(box, SERVICE, "Result") == "success"
    published = box.sh("ls /var/lib/library-syncer/published/").split()
    assert "lib.json" in published and "ttylinux" in published, published
    # The hardened unit's files belong to its user; the published tree is world-readable.
    assert box.sh("stat -c '%U %A' /var/lib/library-syncer/published/lib.json").strip() \
        == "library-syncer -rw-r--r--"


ROT = """import os, sys
path = sys.argv[1]
st = os.stat(path)
with open(path, "r+b") as handle:
    handle.seek(4096)
    byte = handle.read(1)
    handle.seek(4096)
    handle.write(bytes([byte[0] ^ 0xFF]))
os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
"""


def test_the_scrub_unit_reads_the_library_and_repairs_a_rotted_disk(box: nspawn.Container) -> None:
    """The hardened unit reads every published file (idle I/O class, its sandbox), finds a byte
    flipped in the published disk and publishes a new snapshot with the disk whole; exit status
    14 is a success for the unit."""
    box.run("systemctl", "start", SCRUB_SERVICE, timeout=600)
    assert _show(box, SCRUB_SERVICE, "Result") == "success"
    assert _show(box, SCRUB_SERVICE, "IOSchedulingClass") == "3"  # idle
    journal = box.run("journalctl", "-u", SCRUB_SERVICE, "--no-pager", "-o", "cat").stdout
    assert "nothing rotted" in journal, journal
    disk = "/var/lib/library-syncer/published/ttylinux/ttylinux-pc_i486-16.1-disk1.vmdk"
    before = box.sh("readlink /var/lib/library-syncer/published").strip()
    box.write("/tmp/rot.py", ROT)
    box.run("python3", "/tmp/rot.py", disk)
    box.run("systemctl", "start", SCRUB_SERVICE, timeout=600)
    assert _show(box, SCRUB_SERVICE, "Result") == "success"
    assert _show(box, SCRUB_SERVICE, "ExecMainStatus") == "14"
    assert box.sh("readlink /var/lib/library-syncer/published").strip() != before
    served = box.sh(f"sha256sum {disk}").split()[0]
    origin = box.sh("sha256sum /srv/library-syncer/library/ttylinux/"
                    "ttylinux-pc_i486-16.1-disk1.vmdk").split()[0]
    assert served == origin
    scrub = json.loads(box.sh("cat /var/lib/library-syncer/scrub.json"))
    assert scrub["repair"] == "repaired" and scrub["rotted"] == [
        "ttylinux/ttylinux-pc_i486-16.1-disk1.vmdk"], scrub


def test_the_run_is_in_the_journal_with_structured_fields(box: nspawn.Container) -> None:
    entries = [json.loads(line) for line in box.run(
        "journalctl", "-u", "library-syncer", "-o", "json", "--no-pager").stdout.splitlines()]
    runs = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "library-syncer"
            and "OUTCOME" in e]
    assert runs, "no run summary with structured fields in the journal"
    last = runs[-1]  # the successful run of the previous step (the broken one came before)
    assert last["OUTCOME"] == "ok" and last["EXIT_STATUS"] == "0", last
    assert int(last["BYTES_RECEIVED"]) > 0 and last["ITEMS_CHANGED"] == "1", last
    assert last["RUN_ID"] and last["SNAPSHOT"], last
    assert last["MESSAGE"].startswith("sync ok"), last["MESSAGE"]


def test_site_logins_leave_no_warning_in_the_journal(box: nspawn.Container) -> None:
    """The dedicated sshd runs without PAM (UsePAM no): a site's login opens no PAM session, so
    pam_systemd neither warns about /run/user/UID nor starts a user manager for the account.
    Positive control: the login itself (LogLevel VERBOSE) is in the same journal. (With
    UsePAM yes this fails on "(sshd:session)": pam_unix's "session opened" and pam_env's
    "Unable to open env file" lines; pam_systemd's own warnings need libpam-systemd, which
    the test's minimal root filesystem may lack.)"""
    journal = box.run("journalctl", "-b", "--no-pager", "-o", "short").stdout
    logins = re.findall(r"Accepted publickey for syncer from 127\.0\.0\.1 port \d+ ssh2", journal)
    assert logins, journal[-4000:]
    uid = box.run("id", "-u", "syncer").stdout.strip()
    for warning in ("pam_systemd", "XDG_RUNTIME_DIR", f"/run/user/{uid}", f"user@{uid}.service",
                    f"User Manager for UID {uid}", "(sshd:session)",
                    "session opened for user syncer"):
        assert warning not in journal, [line for line in journal.splitlines() if warning in line]


def test_web_unit_serves_the_synced_library(box: nspawn.Container) -> None:
    box.run("systemctl", "start", "library-syncer-web.service")
    assert nspawn.wait_until(lambda: box.run(
        "curl", "-fsS", "http://127.0.0.1:8080/lib.json", check=False).returncode == 0)
    lib = json.loads(box.run("curl", "-fsS", "http://127.0.0.1:8080/lib.json").stdout)
    assert lib["name"] == "Package test library"


def test_upgrade_keeps_settings_schedule_and_enablement(box: nspawn.Container,
                                                        next_debs: list[Path]) -> None:
    keep = f"{CONF} /etc/systemd/system/library-syncer.timer.d/50-schedule.conf"
    before = (box.sh(f"cat {keep}"), _show(box, TIMER, "TimersCalendar"),
              _show(box, SERVICE, "ExecMainStartTimestampMonotonic"))
    assert _show(box, TIMER, "ActiveState") == "active"
    box.run("apt-get", "install", "-y", *[f"/srv/in-next/{p.name}" for p in next_debs],
            timeout=600)
    versions = box.run("dpkg-query", "-W", "-f=${Version} ", *nspawn.PACKAGES).stdout.split()
    assert versions == [nspawn.NEXT_VERSION] * 3, versions
    after = (box.sh(f"cat {keep}"), _show(box, TIMER, "TimersCalendar"),
             _show(box, SERVICE, "ExecMainStartTimestampMonotonic"))
    assert after == before  # settings, schedule kept; the upgrade did not run a sync
    assert _show(box, TIMER, "ActiveState") == "active"
    assert box.run("systemctl", "is-enabled", TIMER).stdout.strip() == "enabled"


def test_remove_keeps_settings_and_stops_units(box: nspawn.Container) -> None:
    box.run("apt-get", "remove", "-y", *nspawn.PACKAGES, timeout=600)
    assert box.run("test", "-f", CONF, check=False).returncode == 0  # conffile kept
    for unit in (TIMER, "library-syncer-sshd.service", "library-syncer-sshd.socket",
                 "library-syncer-web.service"):
        assert box.run("systemctl", "is-active", unit, check=False).stdout.strip() != "active"
    # The enablement symlink stays until purge (deb-systemd-helper keeps it for a reinstall),
    # so systemd still lists the name, but with no unit file and nothing scheduled.
    assert _show(box, TIMER, "LoadState") == "not-found"
    assert _show(box, TIMER, "ActiveState") == "inactive"


def test_purge_leaves_the_system_as_before(box: nspawn.Container,
                                           before_install: set[str]) -> None:
    # What the operator supplied, where the documentation puts it: a certificate, its key, the
    # web password and the site's SSH key (made with ssh-keygen in the full-loop step, as the
    # documentation says). Purge removes what the packages created, never these.
    site_key = box.sh("cat /etc/library-syncer/ssh/id_syncer.pub")
    supplied = {"/etc/library-syncer/tls/cert.pem": "CERT\n", "/etc/library-syncer/tls/key.pem":
                "KEY\n", "/etc/library-syncer/web-password": "s3cret\n"}
    for path, text in supplied.items():
        box.write(path, text, mode="0640")
    box.run("apt-get", "purge", "-y", *nspawn.PACKAGES, timeout=600)
    for name in nspawn.PACKAGES:
        assert box.run("dpkg-query", "-W", name, check=False).returncode != 0, name
    box.run("systemctl", "daemon-reload")
    for path, text in supplied.items():
        assert box.run("cat", path, check=False).stdout == text, path
    assert box.sh("cat /etc/library-syncer/ssh/id_syncer.pub") == site_key
    assert box.run("test", "-e", "/etc/library-syncer/ssh/known_hosts",
                   check=False).returncode != 0  # recorded by trust-host: the tool's, gone
    # Everything the packages created is gone. Kept on purpose: the server's exported library
    # (the operator's data, filled by the full-loop step), the operator's files above and the
    # system users (Debian convention: a system user's files may outlive the package).
    library = "/srv/library-syncer/library/"
    in_library = box.sh(f"find {library} -mindepth 1 2>/dev/null || true").split()
    kept = [*in_library, *supplied, "/etc/library-syncer", "/etc/library-syncer/tls",
            "/etc/library-syncer/ssh", "/etc/library-syncer/ssh/id_syncer",
            "/etc/library-syncer/ssh/id_syncer.pub"]
    added = sorted(p for p in _files(box) - before_install if p not in kept)
    assert box.run("test", "-d", "/etc/library-syncer/tls", check=False).returncode == 0
    if in_library:
        assert added == ["/srv/library-syncer", "/srv/library-syncer/library"], added
    else:
        assert added == [], added
    assert TIMER not in box.run("systemctl", "list-timers", "--all", "--no-pager").stdout
    listed = box.run("systemctl", "list-unit-files", "--no-legend", "library-syncer*",
                     check=False).stdout
    assert listed.strip() == "", listed
