"""The exception hierarchy. Each error carries what the user needs to act and its exit status.

`main()` prints `library-syncer: <str(error)>` on one line (no traceback unless --debug) and exits
with `error.exit_status`. The statuses are part of the interface (documented in README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    FAILURE = 1  # unexpected internal error (a bug: run with --debug and report it)
    USAGE = 2  # bad command line (argparse's own status)
    CONFIG = 3  # the settings file is missing, unreadable or invalid
    LOCKED = 4  # another run holds the lock
    NETWORK = 5  # the server could not be reached / the transfer failed after all retries
    VERIFY = 6  # content failed verification (digest mismatch, broken template, bad archive)
    DISK_FULL = 7  # not enough space to stage the next snapshot
    HOST_KEY = 8  # the server's host key is unknown or changed
    CHECK = 9  # `check` found at least one problem
    PARTIAL = 10  # the transfer finished but some files could not be transferred
    STALE = 11  # the upstream offers an older revision (or another origin): nothing published
    SETTLING = 12  # the origin's library changed and is not declared yet: try later (not a fault)
    UNSIGNED = 13  # sync.origin_keys is set and the upstream's revision is not signed by one
    REPAIRED = 14  # `sync --scrub` found rotted published files and published them whole again
    ROTTED = 15  # `sync --scrub` found rotted published files and they are not repaired (yet)


class SyncerError(Exception):
    """Base class: a failure the user can act on. `str()` is the one line shown to them."""

    exit_status: ExitStatus = ExitStatus.FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


@dataclass(frozen=True)
class ConfigProblem:
    """One configuration mistake: `file: key: found ..., expected ...`."""

    file: str
    key: str
    found: str
    expected: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        if not self.found:
            return f"{where}: {self.expected}"
        return f"{where}: found {self.found}, expected {self.expected}"


class ConfigError(SyncerError):
    """All configuration problems found at once; the first is the headline."""

    exit_status = ExitStatus.CONFIG

    def __init__(self, problems: list[ConfigProblem] | ConfigProblem) -> None:
        self.problems = problems if isinstance(problems, list) else [problems]
        super().__init__("\n".join(str(p) for p in self.problems))


class LockHeld(SyncerError):
    exit_status = ExitStatus.LOCKED


class NetworkError(SyncerError):
    exit_status = ExitStatus.NETWORK


class VerifyError(SyncerError):
    exit_status = ExitStatus.VERIFY


class StaleUpstream(SyncerError):
    exit_status = ExitStatus.STALE


class Settling(SyncerError):
    """The origin is settling: what it serves is not a declared revision yet. Nothing is wrong;
    the next run (or poll) after its declaration picks it up."""

    exit_status = ExitStatus.SETTLING


class Unsigned(SyncerError):
    """The upstream offers a revision the pinned origin keys do not vouch for (no statement, a
    bad signature, another key or namespace, expired, or a document it does not name)."""

    exit_status = ExitStatus.UNSIGNED


class Rotted(SyncerError):
    """The scrub found published files whose content is not what was published, and the
    repair (a new snapshot with them pulled again) has not published them whole yet."""

    exit_status = ExitStatus.ROTTED


class DiskFull(SyncerError):
    exit_status = ExitStatus.DISK_FULL


class HostKeyError(SyncerError):
    exit_status = ExitStatus.HOST_KEY


class PartialTransfer(SyncerError):
    exit_status = ExitStatus.PARTIAL


class CheckFailed(SyncerError):
    exit_status = ExitStatus.CHECK


class CommandFailed(SyncerError):
    """An external command failed; carries its exit code and the last lines of its output."""

    def __init__(self, argv: list[str], returncode: int, tail: list[str]) -> None:
        self.argv = argv
        self.returncode = returncode
        self.tail = tail
        last = tail[-1] if tail else "no output"
        super().__init__(f"{argv[0]} exited with status {returncode}: {last}")
