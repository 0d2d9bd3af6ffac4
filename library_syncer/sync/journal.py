"""A run in the journal: its one summary line (`sync ok: 3 items (1 changed), …`) and the
structured fields that go with it (RUN_ID, OUTCOME, …: `journalctl -o json`, docs/sync.md).
"""

from __future__ import annotations

import logging

from ..base.errors import ExitStatus
from ..base.units import format_bytes, format_duration
from .last_run import RunRecord

log = logging.getLogger("library-syncer")


def log_run(record: RunRecord) -> None:
    """The run's summary line with its fields: INFO when it went as it should, else WARNING."""
    level = logging.INFO if record.exit_status in (0, ExitStatus.SETTLING) else logging.WARNING
    log.log(level, "%s", summary(record), extra={"fields": fields(record)})


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 100 else format_duration(seconds)


def summary(record: RunRecord) -> str:
    """`sync ok: 3 items (1 changed), 21 MB received for 2.6 GB (speedup 124x), library
    version 7, 42 s`."""
    head = f"sync failed ({record.outcome})"
    if record.outcome == "ok":
        head = "sync ok"
    elif record.outcome == "verify" and record.snapshot:
        head = "sync ok except for items left out"
    elif record.outcome == "settling":
        head = "sync: nothing new yet, the origin is settling"
    parts = []
    if record.items is not None:
        parts.append(f"{record.items} item{'' if record.items == 1 else 's'} "
                     f"({len(record.items_changed)} changed)")
    wire = f"{format_bytes(record.bytes_received)} received"
    if record.total_size:
        wire += f" for {format_bytes(record.total_size)}"
        if record.speedup:
            wire += f" (speedup {record.speedup:.0f}x)"
    parts.append(wire)
    if record.library_version is not None:
        parts.append(f"library version {record.library_version}")
    if record.attempts > 1:
        parts.append(f"{record.attempts} attempts")
    parts.append(_duration(record.duration))
    return f"{head}: " + ", ".join(parts) + _provenance(record)


def _provenance(record: RunRecord) -> str:
    """`; from relay-lyon:2222, revision 42 of hq (1 upstream skipped)`, or the revision kept."""
    revision = f"revision {record.serial} of {record.origin}" if record.serial is not None else ""
    if record.snapshot and record.upstream:
        said = f"; from {record.upstream}" + (f", {revision}" if revision else "")
    elif revision:
        said = f"; keeps {revision}"
    else:
        return ""
    skipped = len(record.skipped)
    return said + (f" ({skipped} upstream{'' if skipped == 1 else 's'} skipped)" if skipped
                   else "")


def fields(record: RunRecord) -> dict[str, object]:
    return {"RUN_ID": record.run_id, "OUTCOME": record.outcome,
            "EXIT_STATUS": record.exit_status, "DURATION": f"{record.duration:.3f}",
            "BYTES_RECEIVED": record.bytes_received, "TOTAL_SIZE": record.total_size,
            "SPEEDUP": f"{record.speedup:.1f}" if record.speedup else "",
            "FILES_CHANGED": record.files_changed,
            "ITEMS_CHANGED": len(record.items_changed),
            "LIBRARY_VERSION": record.library_version if record.library_version is not None
            else "", "SNAPSHOT": record.snapshot or "",
            "UPSTREAM": record.upstream or "", "UPSTREAM_INDEX": record.upstream_index
            if record.upstream_index is not None else "",
            "ORIGIN": record.origin or "",
            "SERIAL": record.serial if record.serial is not None else ""}
