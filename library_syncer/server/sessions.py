"""What one site key may hold at once: MAX_PER_KEY sessions, each within MEMORY_LIMIT.

Every session of the account is a dispatcher process (server/dispatch.py); a key that opens many
and stalls them (a report that never finishes arrives within 20 s, a pull that never reads)
holds ~22 MiB each. So each session takes one of MAX_PER_KEY slots of its key before it does
anything: a lock file `<state_dir>/sessions/<key hash>.<n>` held with flock(2) by the dispatcher
and, through the exec, by rrsync and rsync until the session ends (the kernel releases it with
the last descriptor, a killed process included). No slot free: the session is refused.

MAX_PER_KEY = 8: a site's run holds one session at a time today (the change check, the dry run,
the transfer, the report, one after another, through one shared connection); 8 leaves room for a
transfer split over four parallel connections, a poll's change check and a report overlapping
it, and a retry whose dead predecessor sshd has not reaped yet.

MEMORY_LIMIT bounds the address space of the dispatcher and what it execs (rrsync, rsync): far
above what rsync needs for the largest library (its file list is ~100 bytes a file), far below
what would hurt the host if MAX_PER_KEY sessions of several keys grew at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import resource
from pathlib import Path

SESSIONS_DIR = "sessions"
MAX_PER_KEY = 8
MEMORY_LIMIT = 1 << 30  # bytes of address space per session process (RLIMIT_AS)


class TooManySessions(Exception):
    """Every slot of this key is held; the message is the line the client sees."""


def key_of(auth_info: str) -> str | None:
    """The public key blob of the one key this session logged in with (sshd's ExposeAuthInfo
    text); None when there is not exactly one."""
    blobs = {parts[2] for parts in (line.split() for line in auth_info.splitlines())
             if len(parts) >= 3 and parts[0] == "publickey"}
    return next(iter(blobs)) if len(blobs) == 1 else None


def claim(state_dir: Path, blob: str, limit: int = MAX_PER_KEY) -> int | None:
    """Hold one of `limit` slots of key `blob`: the locked descriptor, inheritable so that the
    exec'd rrsync keeps it. None when the folder is missing or not writable (no limit rather
    than no pulls; server render creates it). TooManySessions when every slot is held."""
    name = hashlib.sha256(blob.encode()).hexdigest()[:32]
    folder = Path(state_dir) / SESSIONS_DIR
    for slot in range(limit):
        try:
            fd = os.open(folder / f"{name}.{slot}", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.set_inheritable(fd, True)
        return fd
    raise TooManySessions(f"this key already holds {limit} sessions; try again when one ended")


def bound_memory(limit: int = MEMORY_LIMIT) -> None:
    """RLIMIT_AS for this process and all it execs (never raised above what it was)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    if soft == resource.RLIM_INFINITY or soft > ceiling:
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
