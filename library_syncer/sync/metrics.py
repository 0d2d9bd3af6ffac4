"""Prometheus node_exporter textfile metrics, rewritten atomically after every run.

Two things, kept apart: the published library (`library_syncer_library_*`, always read from the
published snapshot itself, so a failed run leaves them as they are: the library did not change)
and the last run (`library_syncer_last_run_*`); then what became of the last run's report to its
upstream (`library_syncer_last_report_*`, rewritten once it is sent), the free space where
snapshots are made (`library_syncer_state_free_bytes`, for an alert before a run fails on it)
and what the last scrub found (`library_syncer_scrub_*`, sync/scrub.py; rewritten after it).

Point metrics.textfile at a `.prom` file in node_exporter's --collector.textfile.directory.
"""

from __future__ import annotations

import calendar
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..base import fsutil
from ..base.config import Config
from ..web import published
from . import last_run, repair, scrub_record
from .last_run import RunRecord
from .layout import Layout
from .scrub_record import ScrubRecord
from .staging import free_bytes

log = logging.getLogger("library-syncer")

OUTCOMES = ("ok", "verify", "partial", "network", "disk_full", "host_key", "failed",
            "interrupted", "error", "stale", "settling",
            "unsigned")
REPORT_OUTCOMES = ("sent", "refused", "not_taken", "failed")  # sync/report.py's, as labels


@dataclass(frozen=True)
class Library:
    """The published library as its manifests say (None: nothing published, or unreadable)."""

    version: int | None = None
    items: int | None = None
    size: int | None = None  # bytes of the files its manifests list
    origin: str | None = None  # the revision held (the published trace), when there is one
    serial: int | None = None


def read_library(snapshot: Path | None) -> Library:
    """The published library's figures and the origin revision it holds (sync/report.py reads
    its version too)."""
    if snapshot is None:
        return Library()
    from . import trace_check

    held = trace_check.read(snapshot)
    revision = {"origin": held.origin, "serial": held.serial} if held else {}
    try:
        found = published.read(snapshot)
        version = int(found.version or "")  # none in lib.json: ValueError, not known
    except (OSError, ValueError):
        return Library(**revision)
    if found.size is None:  # a file size the manifests do not give: none of it is trusted
        return Library(**revision)
    return Library(version=version, items=len(found.items), size=found.size, **revision)


@dataclass(frozen=True)
class Scrub:
    """The last scrub's record, and how many rotted files are not published whole yet (on the
    repair list, or still differing after the repair)."""

    record: ScrubRecord
    pending: int


def read_scrub(config: Config) -> Scrub | None:
    found = scrub_record.read(config)
    if found is None:
        return None
    waiting = {*repair.pending(Layout.of(config)), *found.unrepaired}
    return Scrub(found, len(waiting))


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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


def render(record: RunRecord, library: Library, sent: dict | None = None,
           free: int | None = None, scrub: Scrub | None = None) -> str:
    """`sent`: the last report's record (sync/report.py), `free`: bytes free for snapshots,
    `scrub`: what the last scrub found."""
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
    _metric(lines, "last_run_items_changed", "Items added, changed or removed by the last sync.",
            len(record.items_changed))
    _metric(lines, "last_run_total_size_bytes",
            "Size of the library on the server, as the last sync's transfer saw it.",
            record.total_size or None)
    _metric(lines, "library_items", "Items in the published library.", library.items)
    _metric(lines, "library_version", "The published library's version (lib.json).",
            library.version)
    _metric(lines, "library_size_bytes",
            "Size of the published library (the files its manifests list).", library.size)
    if library.serial is not None:
        lines += ["# HELP library_syncer_library_serial The origin's revision serial this site "
                  "publishes (its trace).", "# TYPE library_syncer_library_serial gauge",
                  f'library_syncer_library_serial{{origin="{_label(library.origin or "")}"}} '
                  f"{library.serial}"]
    if record.upstream_index is not None:
        _metric(lines, "last_run_upstream_index",
                "Which upstream served the last sync (0 = the first of sync.upstreams; when none "
                "did, the last one tried).", record.upstream_index)
        lines += ["# HELP library_syncer_last_run_upstream_info The upstream of the last sync.",
                  "# TYPE library_syncer_last_run_upstream_info gauge",
                  f'library_syncer_last_run_upstream_info{{upstream="'
                  f'{_label(record.upstream or "")}"}} 1']
        _metric(lines, "last_run_upstreams_skipped",
                "Upstreams the last sync passed over (down, refused, stale).",
                len(record.skipped))
    lines += ["# HELP library_syncer_last_run_outcome The last sync's outcome (1 = this one).",
              "# TYPE library_syncer_last_run_outcome gauge"]
    outcomes = OUTCOMES if record.outcome in OUTCOMES else (*OUTCOMES, record.outcome)
    lines += [f'library_syncer_last_run_outcome{{outcome="{o}"}} {int(o == record.outcome)}'
              for o in outcomes]
    _metric(lines, "state_free_bytes",
            "Bytes free (for this service) on the file system of paths.state_dir.", free)
    if sent is not None:
        said = str(sent.get("outcome") or "").replace(" ", "_")
        _metric(lines, "last_report_timestamp_seconds",
                "When this site last tried to report to its upstream.", _timestamp(sent.get("at")))
        lines += ["# HELP library_syncer_last_report_outcome What became of the last report "
                  "(1 = this one).", "# TYPE library_syncer_last_report_outcome gauge"]
        lines += [f'library_syncer_last_report_outcome{{outcome="{o}"}} {int(o == said)}'
                  for o in REPORT_OUTCOMES]
    if scrub is not None:
        _scrub_lines(lines, scrub)
    return "\n".join(lines) + "\n"


def _scrub_lines(lines: list[str], scrub: Scrub) -> None:
    found = scrub.record
    _metric(lines, "scrub_last_run_timestamp_seconds", "When the last scrub finished.",
            _timestamp(found.finished))
    _metric(lines, "scrub_duration_seconds",
            "How long the last scrub took (its repair run included).", round(found.duration, 3))
    _metric(lines, "scrub_files_checked",
            "Published files the last scrub read and compared with their expected SHA-256.",
            found.files)
    _metric(lines, "scrub_bytes_read", "Bytes the last scrub read.", found.bytes)
    _metric(lines, "scrub_unverified_files",
            "Published files without an expected digest (read by no scrub).", found.unverified)
    _metric(lines, "scrub_rotted_files",
            "Published files the last scrub found rotted (repaired or not).", len(found.rotted))
    _metric(lines, "scrub_repair_pending_files",
            "Rotted files not published whole yet (on the repair list, or still differing "
            "after the repair).", scrub.pending)


def write(textfile: Path, record: RunRecord, library: Library, sent: dict | None = None,
          free: int | None = None, scrub: Scrub | None = None) -> None:
    fsutil.atomic_write(Path(textfile), render(record, library, sent, free, scrub))


def refresh(config: Config, record: RunRecord) -> None:
    """Rewrite metrics.textfile (when set) for `record`: after the run, again after its report.
    A failed write is a warning, never a failed run."""
    if not config.metrics.textfile:
        return
    from . import report  # it writes the metrics again after the report: imported late

    library = read_library(Layout.of(config).current())
    sent = report.last_report(config) if config.sync.report and config.sync.peer else None
    try:
        free: int | None = free_bytes(config.state_dir)
    except OSError:
        free = None  # the metric is left out, the others are still written
    try:
        write(config.metrics.textfile, record, library, sent, free, read_scrub(config))
    except OSError as error:
        log.warning("could not write the metrics: %s", error)


def refresh_recorded(config: Config) -> None:
    """Rewrite metrics.textfile for the last run as recorded (after a scrub, with its figures);
    nothing before a run has recorded one."""
    if not config.metrics.textfile:
        return
    try:
        record = last_run.read(config)
    except (OSError, ValueError, TypeError):
        record = None
    if record is not None:
        refresh(config, record)
