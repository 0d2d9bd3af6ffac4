"""The shipped unit files, checked by systemd's own tools (no running systemd needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent
UNITS = TOP / "systemd"
# systemd-analyze security's "exposure" (0 = locked down, 10 = unprotected). The sync runs
# unprivileged: at most 2.0. Daemons that must switch users (sshd) get the "OK" band, < 3.0.
MAX_EXPOSURE = {"library-syncer.service": 2.0, "library-syncer-poll.service": 2.0,
                "library-syncer-scrub.service": 2.0}
DAEMON_MAX_EXPOSURE = 3.0


def _all_units() -> list[Path]:
    return sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".timer", ".socket"))


def _verifiable_copy(unit: Path, dest: Path) -> Path:
    """The unit with /usr/bin/library-syncer pointed at this checkout's entry point.

    `systemd-analyze verify` insists the ExecStart binary exists; the installed path is only
    there after the .deb is installed (test_package.py verifies the installed units for real).
    """
    entry = Path(sys.executable).parent / "library-syncer"
    assert entry.exists(), f"{entry} missing: run tests/bootstrap"
    copy = dest / unit.name
    copy.write_text(unit.read_text().replace("/usr/bin/library-syncer", str(entry)))
    return copy


def test_the_sync_units_are_shipped() -> None:
    names = {p.name for p in _all_units()}
    assert {"library-syncer.service", "library-syncer.timer"} <= names


@pytest.mark.parametrize("unit", _all_units(), ids=lambda p: p.name)
def test_systemd_analyze_verify_accepts_unit(unit: Path, tmp_path: Path) -> None:
    copy = _verifiable_copy(unit, tmp_path)
    if unit.suffix in (".timer", ".socket"):  # verify loads the service they trigger
        _verifiable_copy(UNITS / unit.with_suffix(".service").name, tmp_path)
    if unit.name == "library-syncer-sshd.service":  # and the socket the service requires
        _verifiable_copy(UNITS / unit.with_suffix(".socket").name, tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("unit", [u for u in _all_units() if u.suffix == ".service"],
                         ids=lambda p: p.name)
def test_service_exposure_is_low(unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                            capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    limit = MAX_EXPOSURE.get(unit.name, DAEMON_MAX_EXPOSURE)
    assert float(match.group(1)) <= limit, result.stdout


def _settings(unit: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_sync_service_contract() -> None:
    unit = UNITS / "library-syncer.service"
    s = _settings(unit)
    assert s["Type"] == ["oneshot"]
    assert s["ExecStart"] == ["/usr/bin/library-syncer sync --skip-unconfigured"]
    assert s["User"] == ["library-syncer"]
    assert s["StateDirectory"] == ["library-syncer"]
    assert s["ConditionPathExists"] == ["/etc/library-syncer/library-syncer.toml"]
    assert s["TimeoutStartSec"] and s["TimeoutStartSec"] != ["infinity"]
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges",
                "RestrictAddressFamilies", "SystemCallFilter", "UMask", "Nice",
                "IOSchedulingClass"):
        assert key in s, key
    assert s["CapabilityBoundingSet"] == [""]
    # Not enabled on its own: only the timer (or the operator) starts it.
    assert "[Install]" not in unit.read_text()


def _exposure(unit: Path) -> float:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                            capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    return float(match.group(1))


def test_poll_service_is_the_sync_service_with_a_check_first() -> None:
    """Same account, limits and hardening as the sync; only the command, the description and
    its own runtime directory differ (systemd removes that when the unit stops), and the
    scheduled run is ordered after a poll-started one (it waits instead of meeting the lock)."""
    sync, poll = _settings(UNITS / "library-syncer.service"), \
        _settings(UNITS / "library-syncer-poll.service")
    assert poll["ExecStart"] == ["/usr/bin/library-syncer sync --if-changed --skip-unconfigured"]
    assert poll["RuntimeDirectory"] == ["library-syncer-poll"]
    differ = {k for k in sync.keys() | poll.keys() if sync.get(k) != poll.get(k)}
    assert differ == {"ExecStart", "Description", "RuntimeDirectory", "After"}, differ
    assert sync["After"] == [*poll["After"], "library-syncer-poll.service"]
    assert _exposure(UNITS / "library-syncer-poll.service") <= \
        _exposure(UNITS / "library-syncer.service")


def test_scrub_service_is_the_sync_service_at_the_idle_io_priority() -> None:
    """Same account, limits and hardening as the sync; the command, its own runtime directory,
    the idle I/O class (the reading yields to every other use of the disk), a longer backstop,
    and exit status 14 (rot found and repaired) a success. Not ordered against the sync: the
    scrub reads without the run lock and takes it only for its repair run."""
    sync, scrub = _settings(UNITS / "library-syncer.service"), \
        _settings(UNITS / "library-syncer-scrub.service")
    assert scrub["ExecStart"] == ["/usr/bin/library-syncer sync --scrub --skip-unconfigured"]
    assert scrub["RuntimeDirectory"] == ["library-syncer-scrub"]
    assert scrub["IOSchedulingClass"] == ["idle"] and scrub["Nice"] == ["19"]
    assert scrub["SuccessExitStatus"] == ["14"]
    differ = {k for k in sync.keys() | scrub.keys() if sync.get(k) != scrub.get(k)}
    assert differ == {"ExecStart", "Description", "RuntimeDirectory", "After",
                      "IOSchedulingClass", "IOSchedulingPriority", "TimeoutStartSec",
                      "SuccessExitStatus"}, differ
    assert scrub["After"] == ["network-online.target"]
    assert "[Install]" not in (UNITS / "library-syncer-scrub.service").read_text()
    assert _exposure(UNITS / "library-syncer-scrub.service") <= \
        _exposure(UNITS / "library-syncer.service")


def test_scrub_timer_is_monthly_spread_and_catches_up() -> None:
    s = _settings(UNITS / "library-syncer-scrub.timer")
    assert s["OnCalendar"] == ["monthly"]
    assert s["RandomizedDelaySec"] and s["RandomizedDelaySec"] != ["0"]
    assert s["FixedRandomDelay"] == ["true"] and s["Persistent"] == ["true"]
    assert s["WantedBy"] == ["timers.target"]


def test_poll_timer_is_off_until_apply_writes_its_interval() -> None:
    s = _settings(UNITS / "library-syncer-poll.timer")
    assert s["ConditionPathExists"] == [
        "/etc/systemd/system/library-syncer-poll.timer.d/50-interval.conf"]
    assert s["OnUnitActiveSec"] and s["OnActiveSec"]  # never-run service: OnActiveSec starts it
    assert s["WantedBy"] == ["timers.target"]
    assert "Persistent" not in s  # monotonic: a missed check needs no catching up


def test_timer_defaults_match_the_original() -> None:
    s = _settings(UNITS / "library-syncer.timer")
    assert s["OnCalendar"] == ["Fri *-*-* 21:00:00"]
    assert s["RandomizedDelaySec"] == ["6h"]
    assert s["Persistent"] == ["true"]
    assert s["WantedBy"] == ["timers.target"]


def test_tools_present() -> None:
    # The tests above rely on these; a missing tool must fail loudly, not skip.
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (apt-get install systemd)"


def test_web_service_has_its_own_user_and_a_cpu_bound() -> None:
    web = _settings(UNITS / "library-syncer-web.service")
    sync = _settings(UNITS / "library-syncer.service")
    # Not the sync's account: the sync must not read the TLS key or the password (nor reach
    # the admin socket), Caddy must not read the site's SSH key. Proven on a booted system in
    # tests/test_web_system.py; here the contract.
    assert web["User"] == web["Group"] == ["library-syncer-web"]
    assert sync["User"] == ["library-syncer"] and web["User"] != sync["User"]
    sysusers = (TOP / "packaging" / "debian" / "library-syncer.sysusers").read_text()
    assert re.search(r"^u library-syncer-web - ", sysusers, re.M)
    # Failed logins and handshakes cost CPU, and Caddy 2.6 cannot rate-limit: at most one core.
    assert web["CPUQuota"] == ["100%"]
