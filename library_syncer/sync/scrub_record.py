"""What the last scrub read and found: <state_dir>/scrub.json, written atomically by sync/scrub.py
(before its repair run, so a crash leaves "pending", and after it); `check` and the metrics read
it. Whether a repair still waits is the repair list's to say (sync/repair.py), not this record's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..base import statedir
from ..base.config import Config
from ..base.statedir import StateDir

FORMAT = 1
NONE, PENDING, REPAIRED, FAILED = "none", "pending", "repaired", "failed"  # the repair's state


@dataclass
class ScrubRecord:
    started: str  # ISO 8601 UTC
    snapshot: str  # the published snapshot read
    finished: str = ""
    duration: float = 0.0  # seconds, the repair run included
    files: int = 0  # files read and compared with their expected digest
    bytes: int = 0  # bytes read
    unverified: int = 0  # files without an expected digest (not compared)
    reference: str = ""  # where the expected digests came from
    rotted: list[str] = field(default_factory=list)  # found rotted (or still waiting from before)
    repair: str = NONE  # none (nothing rotted), pending, repaired, failed
    message: str = ""  # why the repair did not publish them whole
    repair_snapshot: str | None = None  # the snapshot the repair run published
    repair_bytes_received: int = 0  # what the repair run received on the wire
    unrepaired: list[str] = field(default_factory=list)  # still rotted in that snapshot
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScrubRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def write(config: Config, record: ScrubRecord) -> None:
    statedir.write_json(StateDir.of(config).scrub, record.to_dict(), indent=2)


def read(config: Config) -> ScrubRecord | None:
    """The last scrub's record; None when there is none or it cannot be read as one."""
    data = statedir.read_json_or_none(StateDir.of(config).scrub)
    try:
        record = ScrubRecord.from_dict(data) if data is not None else None
    except TypeError:  # a required field missing
        return None
    return record if record is not None and _well_formed(record) else None


def _well_formed(record: ScrubRecord) -> bool:
    counts = (record.files, record.bytes, record.unverified, record.repair_bytes_received)
    names = (*record.rotted, *record.unrepaired)
    return all(type(n) is int for n in counts) and isinstance(record.duration, (int, float)) \
        and isinstance(record.rotted, list) and isinstance(record.unrepaired, list) \
        and all(isinstance(n, str) for n in names) and isinstance(record.finished, str) \
        and record.repair in (NONE, PENDING, REPAIRED, FAILED)
