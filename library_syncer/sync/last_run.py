"""The last run's record: <state_dir>/last-run.json, written atomically at the end of every run
that got the lock (`library-syncer status` and monitoring read it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..base import fsutil
from ..base.config import Config

FILE_NAME = "last-run.json"
FORMAT = 1


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
    return Path(config.state_dir) / FILE_NAME


def write_last_run(config: Config, record: RunRecord) -> None:
    fsutil.atomic_write(path(config), json.dumps(record.to_dict(), indent=2) + "\n")


def read_last_run(config: Config) -> dict[str, Any] | None:
    """The record as a dict; None if no run has recorded one. OSError/ValueError propagate."""
    try:
        data = json.loads(path(config).read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def load_last_run(config: Config) -> RunRecord | None:
    data = read_last_run(config)
    return RunRecord.from_dict(data) if data is not None else None
