"""Prometheus node_exporter textfile metrics, rewritten atomically after every run.

Point metrics.textfile at a `.prom` file in node_exporter's --collector.textfile.directory.
"""

from __future__ import annotations

import calendar
import time
from pathlib import Path

from ..base import fsutil
from .last_run import RunRecord

OUTCOMES = ("ok", "verify", "partial", "network", "disk_full", "host_key", "failed",
            "interrupted", "stale")


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return float(calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def _metric(lines: list[str], name: str, help: str, value: float | int | None,
            kind: str = "gauge") -> None:
    if value is None:
        return
    lines += [f"# HELP library_syncer_{name} {help}", f"# TYPE library_syncer_{name} {kind}",
              f"library_syncer_{name} {value}"]


def render(record: RunRecord) -> str:
    lines: list[str] = []
    _metric(lines, "last_run_timestamp_seconds", "When the last sync finished.",
            _timestamp(record.finished))
    _metric(lines, "last_success_timestamp_seconds",
            "When a sync last published the library.", _timestamp(record.last_success))
    _metric(lines, "last_run_duration_seconds", "How long the last sync took.",
            round(record.duration, 3))
    _metric(lines, "last_run_exit_status", "The last sync's exit status (0 = ok).",
            record.exit_status)
    _metric(lines, "last_run_bytes_received", "Bytes received on the wire by the last sync.",
            record.bytes_received)
    _metric(lines, "last_run_files_changed", "Files transferred or deleted by the last sync.",
            record.files_changed)
    _metric(lines, "library_items", "Items in the published library.", record.items)
    _metric(lines, "last_run_items_changed", "Items added, changed or removed by the last sync.",
            len(record.items_changed))
    _metric(lines, "library_version", "The published library's version (lib.json).",
            record.library_version)
    _metric(lines, "library_size_bytes", "Size of the library on the server.",
            record.total_size)
    lines += ["# HELP library_syncer_last_run_outcome The last sync's outcome (1 = this one).",
              "# TYPE library_syncer_last_run_outcome gauge"]
    outcomes = OUTCOMES if record.outcome in OUTCOMES else (*OUTCOMES, record.outcome)
    lines += [f'library_syncer_last_run_outcome{{outcome="{o}"}} {int(o == record.outcome)}'
              for o in outcomes]
    return "\n".join(lines) + "\n"


def write(textfile: Path, record: RunRecord) -> None:
    fsutil.atomic_write(Path(textfile), render(record))
