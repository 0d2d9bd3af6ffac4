"""Upgrades from the released 0.1.0 packages on a real, booted systemd (systemd-nspawn), on each
tested suite.

0.1.0 had two packages: library-syncer (the command, the settings conffile, the client units,
Caddy) and library-syncer-server (depending on it). From 0.2.0 the command and the settings file
are in library-syncer-common (Breaks/Replaces library-syncer << 0.2.0~). The 0.1.0 packages as
shipped (tests/data/releases/0.1.0: built from commit 24e4780 by its own build-deb), installed,
used as an operator would (settings edited, schedule applied, timer started, a published
library), then upgraded to this tree's packages and once more to a later version: the edited
settings file stays, with no prompt and nothing left beside it, and dpkg still knows it as edited
(a later example file would be offered, not silently installed); the state, the published
library and the schedule stay; the timer stays as the operator left it (running, stopped, or
disabled).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from library_syncer import __version__
from tests.harness import nspawn

pytestmark = pytest.mark.system

RELEASE_VERSION = "0.1.0"
CONF = "/etc/library-syncer/library-syncer.toml"
DROPIN = "/etc/systemd/system/library-syncer.timer.d/50-schedule.conf"
TIMER = "library-syncer.timer"
SERVICE = "library-syncer.service"
SSHD = "library-syncer-sshd.service"
STATE = "/var/lib/library-syncer"
# An operator's edit of the shipped example: values changed in place and a comment added.
EDIT = (r's/^name = "Library"$/name = "Paris library"/;'
        r's/^peer = ""$/peer = "192.0.2.10"  # site paris, edited by hand/;'
        r's/^schedule = .*/schedule = "Tue *-*-* 02:30:00"/;'
        r's/^random_delay = .*/random_delay = "15min"/')

@pytest.fixture(scope="module")
def release_debs() -> list[Path]:
    nspawn.require_tools()
    return nspawn.released(RELEASE_VERSION)


@pytest.fixture
def box(release_debs: list[Path], debs: list[Path], next_debs: list[Path], suite: str,
        tmp_path: Path) -> Iterator[nspawn.Container]:
    """A fresh container with the 0.1.0 packages installed."""
    binds = [(release_debs[0].parent, "/srv/in-old"), (debs[0].parent, "/srv/in"),
             (next_debs[0].parent, "/srv/in-next")]
    with nspawn.boot(debs, tmp_path, binds, suite=suite) as container:
        nspawn.install(container, release_debs, "/srv/in-old")
        versions = container.run("dpkg-query", "-W", "-f=${Package} ${Version}\n",
                                 "library-syncer*").stdout.split("\n")
        assert sorted(filter(None, versions)) == [
            "library-syncer 0.1.0", "library-syncer-server 0.1.0"], versions
        yield container


def _show(box: nspawn.Container, unit: str, prop: str) -> str:
    return box.run("systemctl", "show", f"--property={prop}", "--value", unit).stdout.strip()


def _timer_state(box: nspawn.Container) -> tuple[str, str]:
    enabled = box.run("systemctl", "is-enabled", TIMER, check=False).stdout.strip()
    return enabled, _show(box, TIMER, "ActiveState")


def _upgrade(box: nspawn.Container, folder: str, debs: list[Path], version: str,
             conffiles: str = "--force-confnew") -> str:
    """apt-get install the three packages. --force-confnew: had dpkg seen a conffile conflict
    (the prompt an operator would get), it would install the package's file over the edit;
    --force-confold: what unattended upgrades do (keep the edit, the new example beside it)."""
    result = box.run("apt-get", "install", "-y", "-o", f"Dpkg::Options::={conffiles}",
                     *[f"{folder}/{p.name}" for p in debs], timeout=600)
    versions = box.run("dpkg-query", "-W", "-f=${Package} ${Version}\n", *nspawn.PACKAGES
                       ).stdout.split("\n")
    assert sorted(filter(None, versions)) == [f"{name} {version}" for name in
                                              sorted(nspawn.PACKAGES)], versions
    return result.stdout + result.stderr


def _conffiles(box: nspawn.Container, package: str) -> dict[str, list[str]]:
    """The settings file's entry in dpkg's record of `package`: {path: [hash, flags…]}."""
    listed = box.run("dpkg-query", "-W", "-f=${Conffiles}\n", package).stdout
    return {f[0]: f[1:] for f in map(str.split, listed.splitlines()) if f and f[0] == CONF}


def _shipped_hash(deb: Path) -> str:
    """md5 of the settings file inside a .deb (what dpkg records for an unedited install)."""
    text = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(text)) as tar:
        member = tar.extractfile("." + CONF)
        assert member is not None
        return hashlib.md5(member.read()).hexdigest()


def _not_default(box: nspawn.Container) -> set[str]:
    """The `config show` lines of the settings file that an empty file (all defaults) lacks."""
    def shown(*options: str) -> set[str]:
        lines = box.run("library-syncer", "config", "show", *options).stdout.splitlines()
        return {line for line in lines if not line.startswith(("#", "["))}

    return shown("-c", CONF) - shown("-c", "/dev/null")


def test_edited_settings_state_and_published_library_survive_the_split(
        box: nspawn.Container, release_debs: list[Path], debs: list[Path],
        next_debs: list[Path]) -> None:
    # The operator's 0.1.0 site: settings edited, schedule applied, timer started, a library.
    box.run("sed", "-i", EDIT, CONF)
    box.run("library-syncer", "apply")
    box.run("systemctl", "start", TIMER)  # 0.1.0 enabled it at install but started nothing
    box.sh(f"""
        mkdir -p {STATE}/snapshots/1/tiny
        printf 'ISO-DATA' > {STATE}/snapshots/1/tiny/tiny.iso
        library-syncer manifest build {STATE}/snapshots/1 --name 'Paris library' \
            --state {STATE}/cache/manifest
        ln -sfn snapshots/1 {STATE}/published
        chown -R library-syncer:library-syncer {STATE}
    """)
    edited = box.sh(f"cat {CONF}")
    assert 'peer = "192.0.2.10"  # site paris' in edited and '"Paris library"' in edited
    listing = f"find {STATE} -printf '%p %y %s %U %m %l\\n' | sort; cat {STATE}/published/lib.json"
    state = box.sh(listing)
    assert "/published/" not in state and "lib.json" in state
    schedule = (box.sh(f"cat {DROPIN}"), _show(box, TIMER, "TimersCalendar"))
    assert "Tue *-*-* 02:30:00" in schedule[0]
    ran = _show(box, SERVICE, "ExecMainStartTimestampMonotonic")
    assert _timer_state(box) == ("enabled", "active")
    release_example = _shipped_hash(nspawn.named(release_debs, "library-syncer")[0])
    assert _conffiles(box, "library-syncer") == {CONF: [release_example]}
    assert hashlib.md5(edited.encode()).hexdigest() != release_example

    # 0.1.0 -> this tree: the shipped file went from every setting to the minimal one (0.2.0),
    # so dpkg sees an edited file and a new example (an operator would be asked; unattended
    # upgrades keep the edit, --force-confold). This tree -> next: the same minimal file; even
    # --force-confnew keeps the edit: no conflict at all.
    previous_example = release_example
    for folder, packages, version, conffiles in (
            ("/srv/in", debs, __version__, "--force-confold"),
            ("/srv/in-next", next_debs, nspawn.NEXT_VERSION, "--force-confnew")):
        output = _upgrade(box, folder, packages, version, conffiles)
        assert box.sh(f"cat {CONF}") == edited
        example = _shipped_hash(nspawn.named(packages, "library-syncer-common")[0])
        if example != previous_example:
            assert "Configuration file" in output and "Using current old file" in output
            dist = box.sh(f"cat {CONF}.dpkg-dist")
            assert hashlib.md5(dist.encode()).hexdigest() == example
            assert dist == box.run("library-syncer", "config", "generate").stdout  # minimal
            box.run("rm", f"{CONF}.dpkg-dist")  # the operator has read the new example
        else:
            assert "Configuration file" not in output, output  # dpkg's conffile prompt
        previous_example = example
        leftovers = box.sh("find /etc/library-syncer -name '*.dpkg-*' -o -name '*.ucf-*'")
        assert leftovers == "", leftovers
        # The file belongs to -common now, and dpkg still records the shipped example's hash:
        # the edit stays an edit for every later upgrade.
        assert box.run("dpkg-query", "-S", CONF).stdout.startswith("library-syncer-common: ")
        common = nspawn.named(packages, "library-syncer-common")[0]
        assert _conffiles(box, "library-syncer-common") == {CONF: [_shipped_hash(common)]}
        # library-syncer keeps at most an "obsolete" mark (dpkg's record of a conffile that
        # moved away): it no longer owns the file (the purge below proves it).
        assert _conffiles(box, "library-syncer") in ({}, {CONF: [release_example, "obsolete"]})
        assert box.sh(listing) == state
        assert (box.sh(f"cat {DROPIN}"), _show(box, TIMER, "TimersCalendar")) == schedule
        assert _timer_state(box) == ("enabled", "active")
        assert _show(box, SERVICE, "ExecMainStartTimestampMonotonic") == ran  # no sync ran
        assert box.run("library-syncer", "--version").stdout.split() == [
            "library-syncer", __version__]
        # 0.1.0's sysusers locked the account ("!*"); the sshd without PAM (0.3.0) needs "*"
        assert box.run("getent", "shadow", "syncer").stdout.split(":")[1] == "*"
        box.run("library-syncer", "config", "validate", "-c", CONF)
        # docs/operations.md's way to slim the kept file down (its effective values against the
        # defaults) names exactly the operator's four edits, and the one default 0.1.0's file
        # spelled out that a release changed since (fixed_random_delay: true from 0.3.0).
        assert _not_default(box) == {
            'name = "Paris library"', 'peer = "192.0.2.10"',
            'schedule = "Tue *-*-* 02:30:00"', 'random_delay = "15min"',
            "fixed_random_delay = false"}

    # A site that drops the client role (purge, not just remove): the settings file belongs to
    # -common and stays, edited; the client's state goes, as documented.
    box.run("apt-get", "purge", "-y", "library-syncer", timeout=600)
    assert box.sh(f"cat {CONF}") == edited
    assert box.run("test", "-e", STATE, check=False).returncode != 0


@pytest.mark.parametrize("operator", ["stopped", "disabled"])
def test_a_stopped_or_disabled_timer_stays_so_across_upgrades(
        box: nspawn.Container, debs: list[Path], next_debs: list[Path], operator: str) -> None:
    box.run("systemctl", "start", TIMER)
    if operator == "stopped":
        box.run("systemctl", "stop", TIMER)
        expected = ("enabled", "inactive")
    else:
        box.run("systemctl", "disable", "--now", TIMER)
        expected = ("disabled", "inactive")
    assert _timer_state(box) == expected
    for folder, packages, version in (("/srv/in", debs, __version__),
                                      ("/srv/in-next", next_debs, nspawn.NEXT_VERSION)):
        _upgrade(box, folder, packages, version)
        assert _timer_state(box) == expected, version
        assert TIMER not in box.run("systemctl", "list-timers", "--no-pager").stdout
        assert _show(box, SERVICE, "ExecMainStartTimestampMonotonic") == "0"


def test_a_running_server_is_restarted_onto_its_socket_by_the_upgrade(
        box: nspawn.Container, debs: list[Path], next_debs: list[Path]) -> None:
    """0.1.0's sshd opened its own socket. This tree's upgrade restarts a running sshd
    (try-restart; transfers in flight are kept), now on library-syncer-sshd.socket and its
    congestion control (bbr: the namespace defaults to reno); so does the next upgrade.
    (Before, an upgrade stopped the sshd and left it stopped: preinst's stop of a --no-start
    unit.)"""
    subprocess.run(["nsenter", "-t", str(box.pid1), "-n", "sysctl", "-qw",
                    "net.ipv4.tcp_congestion_control=reno"], check=True)
    box.run("systemctl", "start", SSHD)
    for folder, packages, version in (("/srv/in", debs, __version__),
                                      ("/srv/in-next", next_debs, nspawn.NEXT_VERSION)):
        pid = _show(box, SSHD, "MainPID")
        _upgrade(box, folder, packages, version)
        assert _show(box, SSHD, "ActiveState") == "active", version
        assert _show(box, SSHD, "MainPID") != pid, version
        check = box.run("library-syncer", "check", check=False).stdout
        assert f"ok    service: {SSHD} is active, on library-syncer-sshd.socket" in check, check
        assert "ok    listener: [::]:2222: sites' transfers sent with bbr" in check, check
