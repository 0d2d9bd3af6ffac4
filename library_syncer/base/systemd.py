"""Asking the service manager: is systemd PID 1 here, and `systemctl` itself."""

from __future__ import annotations

from pathlib import Path

from . import execute

SYSTEMCTL = "systemctl"


def systemd_running() -> bool:
    """sd_booted(): true when PID 1 is systemd (false in chroots, containers without it, CI)."""
    return Path("/run/systemd/system").is_dir()


def systemctl(*args: str) -> str:
    """Run systemctl; its output, stripped (CommandFailed when it fails)."""
    return execute.capture([SYSTEMCTL, *args]).strip()
