"""Transfer progress: `STATUS=` for `systemctl status library-syncer` (sd_notify), a progress
line on a terminal, nothing otherwise (per-file chatter never reaches the log).
"""

from __future__ import annotations

import os
import sys
import time

from .rsync import Progress

NOTIFY_EVERY = 2.0  # seconds between STATUS= updates
TTY_EVERY = 0.5


def _notifier():
    if not os.environ.get("NOTIFY_SOCKET"):
        return None
    try:
        from systemd import daemon  # type: ignore[import-not-found]
    except ImportError:
        return None
    return daemon.notify


class Reporter:
    def __init__(self, stream=None) -> None:
        self._notify = _notifier()
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._last_notify = 0.0
        self._last_tty = 0.0
        self._shown = False

    def status(self, text: str) -> None:
        """A phase change ("transferring", "building manifests"): shown at once."""
        if self._notify:
            self._notify(f"STATUS={text}")
        self._last_notify = time.monotonic()

    def update(self, progress: Progress) -> None:
        text = f"{progress.percent}% at {progress.rate}, ETA {progress.eta}"
        now = time.monotonic()
        if self._notify and now - self._last_notify >= NOTIFY_EVERY:
            self._notify(f"STATUS=transferring: {text}")
            self._last_notify = now
        if self._tty and now - self._last_tty >= TTY_EVERY:
            self._stream.write(f"\r\033[K{text}")
            self._stream.flush()
            self._last_tty = now
            self._shown = True

    def done(self) -> None:
        if self._shown:
            self._stream.write("\r\033[K")
            self._stream.flush()
            self._shown = False
