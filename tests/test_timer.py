"""`library-syncer apply`: schedule in the TOML → timer drop-in, checked by systemd-analyze.

Runs the real command line and the real `systemd-analyze`; the booted-systemd side (reload,
list-timers) is covered by test_package.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent
DROPIN = Path("library-syncer.timer.d") / "50-schedule.conf"


def _apply(tmp_path: Path, toml: str, *extra: str) -> subprocess.CompletedProcess:
    config = tmp_path / "library-syncer.toml"
    config.write_text(toml)
    argv = [sys.executable, "-m", "library_syncer", "apply", "-c", str(config),
            "--dropin-dir", str(tmp_path / "units"), *extra]
    return subprocess.run(argv, capture_output=True, text=True, cwd=TOP)


def _timer_lines(tmp_path: Path) -> list[str]:
    text = (tmp_path / "units" / DROPIN).read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_defaults_give_fridays_2100_and_6h(tmp_path: Path) -> None:
    result = _apply(tmp_path, "")
    assert result.returncode == 0, result.stderr
    assert _timer_lines(tmp_path) == ["[Timer]", "OnCalendar=", "OnCalendar=Fri *-*-* 21:00:00",
                                      "RandomizedDelaySec=6h", "FixedRandomDelay=true"]
    assert "next elapse" in result.stdout


def test_cron_timezone_delay_and_fixed_spread(tmp_path: Path) -> None:
    result = _apply(tmp_path, '[sync]\nschedule = "30 2 * * 1-5"\ntimezone = "Europe/Paris"\n'
                              'random_delay = "1h 30min"\nfixed_random_delay = true\n')
    assert result.returncode == 0, result.stderr
    lines = _timer_lines(tmp_path)
    assert "OnCalendar=Mon,Tue,Wed,Thu,Fri *-*-* 02:30:00 Europe/Paris" in lines
    assert "RandomizedDelaySec=1h 30min" in lines
    assert "FixedRandomDelay=true" in lines


def test_no_delay(tmp_path: Path) -> None:
    assert _apply(tmp_path, '[sync]\nschedule = "daily"\nrandom_delay = 0\n').returncode == 0
    assert "RandomizedDelaySec=0" in _timer_lines(tmp_path)


@pytest.mark.parametrize("schedule", ["Fri *-*-* 25:00:00", "Fri *-*-* 21:00:00 Mars/Olympus"])
def test_invalid_schedule_is_refused_and_old_dropin_kept(tmp_path: Path, schedule: str) -> None:
    assert _apply(tmp_path, '[sync]\nschedule = "0 21 * * 5"\n').returncode == 0
    before = (tmp_path / "units" / DROPIN).read_bytes()
    result = _apply(tmp_path, f'[sync]\nschedule = "{schedule}"\n')
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "library-syncer.toml: sync.schedule" in lines[0]
    assert (tmp_path / "units" / DROPIN).read_bytes() == before


def test_schedule_conflicting_with_timezone_names_both_keys(tmp_path: Path) -> None:
    result = _apply(tmp_path, '[sync]\nschedule = "Fri *-*-* 21:00:00 UTC"\n'
                              'timezone = "Europe/Paris"\n')
    assert result.returncode == 3
    assert "sync.schedule" in result.stderr and "sync.timezone" in result.stderr


def test_rewrite_only_on_change(tmp_path: Path) -> None:
    assert "wrote" in _apply(tmp_path, "").stdout
    assert "unchanged" in _apply(tmp_path, "").stdout


def test_timer_with_dropin_passes_systemd_verify(tmp_path: Path) -> None:
    """The drop-in merged over the shipped timer is a valid unit for systemd itself."""
    assert _apply(tmp_path, '[sync]\nschedule = "0 3 * * *"\ntimezone = "UTC"\n').returncode == 0
    units = tmp_path / "units"
    entry = Path(sys.executable).parent / "library-syncer"
    for name in ("library-syncer.timer", "library-syncer.service"):
        text = (TOP / "systemd" / name).read_text()
        (units / name).write_text(text.replace("/usr/bin/library-syncer", str(entry)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no",
                             str(units / "library-syncer.timer")], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_analyze_is_present() -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (apt-get install systemd)"


def test_unwritable_unit_dir_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "units").write_text("a file where the directory should be")
    result = _apply(tmp_path, "")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "internal error" not in lines[0]


POLL_DROPIN = Path("library-syncer-poll.timer.d") / "50-interval.conf"


def test_poll_interval_writes_the_poll_timer_dropin_systemd_accepts(tmp_path: Path) -> None:
    result = _apply(tmp_path, '[sync]\npoll_interval = "15min"\n', "--no-reload")
    assert result.returncode == 0, result.stderr
    assert "a change check every 15min" in result.stdout
    units = tmp_path / "units"
    lines = [line for line in (units / POLL_DROPIN).read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines == ["[Timer]", "OnActiveSec=", "OnActiveSec=15min", "OnUnitActiveSec=15min",
                     "RandomizedDelaySec=1min 30s"]
    entry = Path(sys.executable).parent / "library-syncer"
    for name in ("library-syncer-poll.timer", "library-syncer-poll.service"):
        text = (TOP / "systemd" / name).read_text()
        (units / name).write_text(text.replace("/usr/bin/library-syncer", str(entry)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no",
                             str(units / "library-syncer-poll.timer")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr

    # off again: the drop-in goes, so the timer's condition keeps it from starting
    result = _apply(tmp_path, '[sync]\npoll_interval = "0"\n', "--no-reload")
    assert result.returncode == 0 and "removed" in result.stdout, result.stdout
    assert not (units / POLL_DROPIN).exists()
    assert "removed" not in _apply(tmp_path, "", "--no-reload").stdout


def test_a_poll_interval_under_a_minute_is_refused_in_one_line(tmp_path: Path) -> None:
    result = _apply(tmp_path, '[sync]\npoll_interval = "10s"\n', "--no-reload")
    assert result.returncode == 3, result.stderr
    assert "sync.poll_interval" in result.stderr and "at least" in result.stderr
    assert not (tmp_path / "units" / POLL_DROPIN).exists()
