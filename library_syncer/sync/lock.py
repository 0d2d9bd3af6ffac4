"""The run lock: a manual `library-syncer sync` and the timer's run never overlap.

An flock on a file in the state directory (not /run: systemd removes the service's
RuntimeDirectory when the unit stops, which would pull the file from under a manual run). The
holder writes its pid, host and start time into the file so the refused run can say who holds it.
The kernel releases the flock when the holder dies, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ..base.errors import LockHeld

log = logging.getLogger("library-syncer")


def _holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        started = datetime.fromtimestamp(float(data["started"]), timezone.utc)
        ago = max(0, int(time.time() - float(data["started"])))
        return (f"pid {data['pid']} on {data.get('host', '?')}, started "
                f"{started:%Y-%m-%d %H:%M:%S} UTC, {ago} s ago")
    except (ValueError, KeyError, TypeError, OSError):
        return "a process that has not written its details yet"


@contextmanager
def hold(path: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the lock for the block's duration; raise LockHeld if another run has it, or with
    `wait`, wait until it ends (the scrub: its few writes can wait for a run)."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockHeld(f"another sync is running ({_holder(fd)}; lock {path})",
                               hint="wait for it to finish, or stop it: systemctl stop "
                                    "library-syncer.service") from None
            log.info("waiting for the running sync to finish (%s)", _holder(fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
        details = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(details).encode() + b"\n", 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock
