"""The last run's record: <state_dir>/last-run.json, written atomically at the end of every run
that got the lock (`library-syncer status` and monitoring read it); what a run came to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..base import statedir
from ..base.config import Config
from ..base.errors import ExitStatus, SyncerError
from ..base.statedir import StateDir

FORMAT = 1
OUTCOME_OF_STATUS = {
    ExitStatus.OK: "ok", ExitStatus.VERIFY: "verify", ExitStatus.PARTIAL: "partial",
    ExitStatus.NETWORK: "network", ExitStatus.DISK_FULL: "disk_full",
    ExitStatus.HOST_KEY: "host_key", ExitStatus.CONFIG: "config", ExitStatus.STALE: "stale",
    ExitStatus.SETTLING: "settling", ExitStatus.UNSIGNED: "unsigned",
}


@dataclass
class RunRecord:
    run_id: str
    started: str  # ISO 8601 UTC
    finished: str = ""
    outcome: str = "running"  # ok, verify, partial, network, disk_full, host_key, failed, ...
    exit_status: int = 0
    message: str = ""  # the error line when the run failed (or the verify problems' summary)
    duration: float = 0.0  # seconds
    attempts: int = 0
    bytes_received: int = 0  # on the wire, all attempts
    bytes_sent: int = 0
    total_size: int = 0  # size of the library on the server
    speedup: float | None = None  # total size / bytes on the wire (rsync's definition)
    files_changed: int = 0  # transferred + deleted
    items: int | None = None
    items_changed: list[str] = field(default_factory=list)
    library_version: int | None = None
    snapshot: str | None = None  # the snapshot published by this run (None if none)
    problems: list[str] = field(default_factory=list)
    last_success: str | None = None  # the finish time of the last run that published
    version: str = ""  # library-syncer's version
    # The upstream that served the run ("relay-lyon:2222"; when none did, the last one tried),
    # its place in sync.upstreams (0 = the first), and the revision this site holds after the
    # run (origin and serial of the published trace; None without a trace).
    upstream: str | None = None
    upstream_index: int | None = None
    origin: str | None = None
    serial: int | None = None
    skipped: list[str] = field(default_factory=list)  # "host:port: why", each upstream passed over
    format: int = FORMAT
    # The run's error (not stored): `sync.command` re-raises it for the one-line message.
    error: Exception | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "error"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def path(config: Config) -> Path:
    return StateDir.of(config).last_run


def write(config: Config, record: RunRecord) -> None:
    statedir.write_json(path(config), record.to_dict(), indent=2)


def read_json(config: Config) -> dict[str, Any] | None:
    """The record as a dict; None if no run has recorded one. OSError/ValueError propagate."""
    return statedir.read_json(path(config))


def read(config: Config) -> RunRecord | None:
    """The record; None if no run has recorded one. OSError/ValueError/TypeError propagate."""
    data = read_json(config)
    return RunRecord.from_dict(data) if data is not None else None




def conclude(record: RunRecord, started: float, error: BaseException | None) -> None:
    """Set what the run came to: its finish, duration, outcome and exit status from `error`
    (None: success); last_success when it published."""
    record.finished = now()
    record.duration = round(time.monotonic() - started, 3)
    if error is None:
        record.outcome, record.exit_status = "ok", int(ExitStatus.OK)
    elif isinstance(error, SyncerError):
        status = error.exit_status
        record.outcome = OUTCOME_OF_STATUS.get(status, "failed")
        record.exit_status, record.message = int(status), str(error)
    elif isinstance(error, KeyboardInterrupt):  # SIGTERM (cli/main.py) or Ctrl-C
        record.outcome, record.exit_status, record.message = "interrupted", 130, "interrupted"
    else:  # a bug, or a system error the code does not expect: what main() exits with
        record.outcome, record.exit_status = "error", int(ExitStatus.FAILURE)
        record.message = f"internal error: {type(error).__name__}: {error}"
    if record.snapshot:
        record.last_success = record.finished


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
