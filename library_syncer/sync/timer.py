"""`library-syncer apply`: the schedule in the settings file → a drop-in of library-syncer.timer.

The operator edits only the TOML file; this writes
/etc/systemd/system/library-syncer.timer.d/50-schedule.conf (atomically, only when it changes),
checks the calendar expression with `systemd-analyze calendar` first (an invalid one is refused
and the old drop-in stays), then reloads systemd and restarts the timer if it is active, so
`systemctl list-timers` shows the new schedule at once.

`sync.poll_interval` goes the same way to library-syncer-poll.timer.d/50-interval.conf. That
timer is enabled by the package but starts only while the drop-in exists (its
ConditionPathExists=): set, apply writes it and (re)starts the timer; "0", apply removes it and
stops the timer.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..base import execute, fsutil, render
from ..base.config import Config
from ..base.errors import CommandFailed, ConfigError, ConfigProblem, SyncerError
from ..base.systemd import systemctl as _systemctl
from ..base.systemd import systemd_running
from ..base.units import format_duration

TIMER = "library-syncer.timer"
DROPIN_NAME = "50-schedule.conf"
POLL_TIMER = "library-syncer-poll.timer"
POLL_DROPIN_NAME = "50-interval.conf"
POLL_SPREAD = 10  # checks are spread over a tenth of the interval (a fleet never polls in step)
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
SYSTEMD_ANALYZE = "systemd-analyze"


@dataclass(frozen=True)
class Schedule:
    on_calendar: str  # as written to OnCalendar= (time zone included)
    random_delay: str  # a systemd time span
    fixed_random_delay: bool


def schedule_of(config: Config) -> Schedule:
    """The timer settings for a validated Config (the cron → calendar conversion is done)."""
    sync = config.sync
    on_calendar = sync.schedule if not sync.timezone else f"{sync.schedule} {sync.timezone}"
    return Schedule(on_calendar, format_duration(sync.random_delay), sync.fixed_random_delay)


def dropin_path(unit_dir: Path = DEFAULT_UNIT_DIR) -> Path:
    return unit_dir / f"{TIMER}.d" / DROPIN_NAME


def poll_dropin_path(unit_dir: Path = DEFAULT_UNIT_DIR) -> Path:
    return unit_dir / f"{POLL_TIMER}.d" / POLL_DROPIN_NAME


def poll_dropin_text(config: Config) -> str:
    interval = config.sync.poll_interval
    return render.render("timer-poll.conf.j2", source=str(config.file),
                         interval=format_duration(interval),
                         random_delay=format_duration(interval / POLL_SPREAD))


def dropin_text(config: Config) -> str:
    schedule = schedule_of(config)
    return render.render("timer-schedule.conf.j2", source=str(config.file),
                         on_calendar=schedule.on_calendar, random_delay=schedule.random_delay,
                         fixed_random_delay=schedule.fixed_random_delay)


def check_calendar(config: Config, expression: str) -> str | None:
    """Ask systemd whether it accepts the expression; return its next elapse (None: no tool).

    Raises ConfigError naming sync.schedule (and sync.timezone when one is appended).
    """
    tool = shutil.which(SYSTEMD_ANALYZE)
    if tool is None:  # e.g. a build chroot: the loose check of schedule.py already ran
        return None
    try:
        output = execute.capture([tool, "calendar", expression])
    except CommandFailed as error:
        key = "sync.schedule"
        expected = "a calendar expression systemd accepts (see man systemd.time)"
        if config.sync.timezone:
            expected += f'; sync.timezone "{config.sync.timezone}" is appended to it'
        reason = error.tail[-1] if error.tail else f"exit status {error.returncode}"
        raise ConfigError(ConfigProblem(str(config.file), key, f'"{expression}"',
                                        f"{expected} ({reason})")) from None
    for line in output.splitlines():
        name, _, value = line.strip().partition(":")
        if name == "Next elapse":
            return value.strip()
    return ""


def reload_timer(changed: bool = True) -> str:
    """daemon-reload, then restart the timer if it runs and its drop-in changed; return what
    the operator should know. An unchanged schedule leaves the timer armed as it was: a restart
    would draw a new random delay (unless FixedRandomDelay=) and move the next run."""
    _systemctl("daemon-reload")
    if _systemctl("show", "--property=LoadState", "--value", TIMER) != "loaded":
        return f"{TIMER} is not installed here (server-only host?): nothing to restart"
    if _systemctl("show", "--property=ActiveState", "--value", TIMER) != "active":
        return (f"{TIMER} is not active; start it with: systemctl enable --now {TIMER}")
    if not changed:
        return f"{TIMER} left as it was (schedule unchanged); see: systemctl list-timers {TIMER}"
    _systemctl("restart", TIMER)  # re-arms the timer with the new schedule
    return f"{TIMER} restarted; see: systemctl list-timers {TIMER}"


def reload_poll_timer(polling: bool) -> str:
    """After daemon-reload: (re)start the poll timer when polling, stop it when not."""
    if _systemctl("show", "--property=LoadState", "--value", POLL_TIMER) != "loaded":
        return f"{POLL_TIMER} is not installed here: nothing to start"
    if not polling:
        if _systemctl("show", "--property=ActiveState", "--value", POLL_TIMER) == "inactive":
            return f"{POLL_TIMER} stays inactive (sync.poll_interval is off)"
        _systemctl("stop", POLL_TIMER)
        return f"{POLL_TIMER} stopped (sync.poll_interval is off)"
    _systemctl("restart", POLL_TIMER)
    return f"{POLL_TIMER} started; see: systemctl list-timers {POLL_TIMER}"


def _write(path: Path, text: str | None) -> bool:
    """Write (or, for None, remove) a drop-in; True when that changed something."""
    try:
        if text is None:
            if not path.exists():
                return False
            path.unlink()
            return True
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        return fsutil.write_if_changed(path, text, mode=0o644)
    except OSError as error:
        hint = "run it as root: sudo library-syncer apply" \
            if isinstance(error, PermissionError) else None
        raise SyncerError(f"cannot write {path}: {error.strerror}", hint=hint) from None


def apply(config: Config, unit_dir: Path = DEFAULT_UNIT_DIR, reload: bool = True) -> list[str]:
    """Check, write the drop-in if it changed, reload. Returns lines to show the operator."""
    schedule = schedule_of(config)
    next_elapse = check_calendar(config, schedule.on_calendar)
    path = dropin_path(unit_dir)
    changed = _write(path, dropin_text(config))
    lines = [f"{'wrote' if changed else 'unchanged'} {path}",
             f"OnCalendar={schedule.on_calendar} RandomizedDelaySec={schedule.random_delay}"
             f"{' FixedRandomDelay=true' if schedule.fixed_random_delay else ''}"]
    if next_elapse:
        lines.append(f"next elapse before the random delay: {next_elapse}")
    polling = config.sync.poll_interval > 0
    poll_path = poll_dropin_path(unit_dir)
    poll_changed = _write(poll_path, poll_dropin_text(config) if polling else None)
    if polling:
        lines.append(f"{'wrote' if poll_changed else 'unchanged'} {poll_path}: a change check "
                     f"every {format_duration(config.sync.poll_interval)}")
    elif poll_changed:
        lines.append(f"removed {poll_path}: no change polling")
    if not reload:
        lines.append("not reloaded (--no-reload): run systemctl daemon-reload")
    elif not systemd_running():
        lines.append("systemd is not running here: nothing to reload")
    else:
        try:
            lines.append(reload_timer(changed))
            lines.append(reload_poll_timer(polling))
        except CommandFailed as error:
            raise SyncerError(f"{path} written, but {error}",
                              hint="run systemctl daemon-reload by hand") from None
    return lines
