"""After a run: this site's report to its upstream, over the same key and account it pulls with.

    ssh … syncer@peer library-syncer-report 1  < {"format": 1, "outcome": "ok", …}

The upstream's forced command (server/dispatch.py) stores it under the site name bound to this
site's key. A relay (a host whose server role exports its own published snapshot) adds what its
own sites reported to it (`downstream`), so the origin sees the whole tree; it also forwards
them from a change check that found nothing to do when its sites reported since its last
report (sync/poll.py), so under polling the origin hears of a site one relay period after it.

The report says: the outcome, the library version, the revision held (origin +
serial from the published trace; without a trace, a digest of the published listing), bytes
received, duration, finish time, the software version, the schedule (period and random delay,
so the origin can tell a site that went silent) and `via` (the upstream this site pulls from).

Sending never fails a run: an upstream that takes no reports (the Docker-based original, whose
rrsync refuses the command) or any other problem costs one debug line, or a warning when our
own server refused the report (a bug to look at).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..base import execute, fsutil, statedir
from ..base.config import Config
from ..base.errors import SyncerError
from ..base.statedir import StateDir
from ..base.text import printable
from ..server import reports
from ..server.dispatch import REPORT_COMMAND
from ..server.trace import is_relay
from . import metrics, ssh, sshmux, trace_check
from .last_run import RunRecord
from .layout import Layout
from .metrics import read_library

log = logging.getLogger("library-syncer")

SEND_TIMEOUT = 60.0  # the whole exchange, connection included
# Interrupted: systemd is stopping us. host_key: this server is not the one we trust.
# config: the settings cannot be relied on to reach it.
NOT_SENT_FOR = ("interrupted", "host_key", "config")
SYSTEMD_ANALYZE = "systemd-analyze"
# In paths.state_dir: a fingerprint of the site reports this relay last offered upstream. Set
# whatever the upstream answered (one that takes no reports, the Docker-based original, is not
# asked again at every check, only when a site reports again or at the next full run); not set
# when ssh could not reach it (255) or the exchange failed: the next check offers them again.
# (StateDir.forward_mark). StateDir.last_report: what became of the last report (`status`).
# sent; refused by our server (a fault); not taken (a server without reports: the original);
# failed (ssh could not reach it, or the exchange broke: the next run tries again)
SENT, REFUSED, NOT_TAKEN, FAILED = "sent", "refused", "not taken", "failed"
SSH_FAILED = 255
_ELAPSE = re.compile(r"(?:Next elapse|Iter\. #\d+):\s+\w+\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def listing_digest(root: Path, ova_store: Path) -> str | None:
    """sha256 of what the site publishes as the origin's listing shows it (sync/poll.py's
    published_listing: the files the pull brought, an unpacked OVA as its archive): equal at
    two sites that hold the same library from a server without a trace, and the same digest
    `status` shows for a change check that found the site current."""
    from .poll import digest, published_listing  # poll imports this module

    if not root.is_dir():
        return None
    return "sha256:" + digest(published_listing(root, ova_store))


def schedule_period(schedule: str, timezone: str = "") -> float | None:
    """Seconds between the schedule's next two runs (`systemd-analyze calendar`), else None."""
    expression = f"{schedule} {timezone}" if timezone else schedule
    try:
        out = execute.capture([SYSTEMD_ANALYZE, "calendar", "--iterations=2", expression],
                              timeout=10, env={**os.environ, "TZ": "UTC"})
    except SyncerError:
        return None
    times = [datetime.fromisoformat(m) for m in _ELAPSE.findall(out)]
    if len(times) < 2:
        return None
    return max(0.0, (times[1] - times[0]).total_seconds())


def build(config: Config, record: RunRecord) -> dict[str, Any]:
    """This run's report as the server validates it (server/reports.py), forwarded reports
    included when this host is also a server that received some (a relay)."""
    published = config.published_dir
    held = trace_check.read(published) if published.exists() else None
    sync = config.sync
    report: dict[str, Any] = {
        "format": reports.FORMAT,
        "outcome": record.outcome if reports.OUTCOME_RE.fullmatch(record.outcome) else "failed",
        "exit_status": min(max(record.exit_status, 0), 255),
        "finished": record.finished,
        "last_success": record.last_success,
        "duration": round(max(record.duration, 0.0), 3),
        "bytes_received": max(record.bytes_received, 0),
        # a failed run published nothing, but the site still serves the last snapshot
        "library_version": record.library_version if record.library_version is not None
        else read_library(published if published.exists() else None).version,
        "origin": held.origin if held else None,
        "serial": held.serial if held else None,
        "listing_digest": None if held else listing_digest(published,
                                                            Layout.of(config).ova_store),
        "version": __version__,
        "schedule": sync.schedule[:reports.MAX_TEXT],
        "interval": schedule_period(sync.schedule, sync.timezone),
        "random_delay": sync.random_delay,
        "via": f"{sync.peer}:{sync.port}"[:reports.MAX_TEXT],
    }
    downstream = _downstream(config)
    if downstream:
        report["downstream"] = downstream
    return {k: v for k, v in report.items() if v is not None}


def _downstream(config: Config) -> list[dict[str, Any]]:
    """What this host's sites reported to it: only a relay forwards (a leaf site's default
    server.state_dir may hold anything, or another server's reports on a shared host)."""
    try:
        return reports.forwardable(config.server.state_dir) if is_relay(config) else []
    except OSError:
        return []


def _reports_fingerprint(config: Config) -> str:
    """What this relay's sites have reported, as (file, size, mtime) of their stored reports:
    it changes with a new report and with a revoked site's ("" when there are none)."""
    try:
        with os.scandir(reports.reports_dir(config.server.state_dir)) as entries:
            rows = sorted(f"{e.name}\0{e.stat().st_size}\0{e.stat().st_mtime_ns}"
                          for e in entries if e.name.endswith(".json") and
                          reports.SITE_RE.fullmatch(e.name[:-5]))
    except OSError:
        return ""
    return hashlib.sha256("\n".join(rows).encode()).hexdigest() if rows else ""


def _mark_path(config: Config) -> Path:
    return StateDir.of(config).forward_mark


def has_news(config: Config) -> bool:
    """A relay whose sites reported (or were revoked) since it last offered their reports."""
    try:
        if not config.sync.report or not is_relay(config):
            return False
        try:
            offered = _mark_path(config).read_text().strip()
        except OSError:
            offered = ""
        return _reports_fingerprint(config) != offered
    except Exception as error:  # a news check never stops a change check
        log.debug("cannot tell whether this relay's sites reported: %s", error)
        return False


def _mark_offered(config: Config, fingerprint: str) -> None:
    try:
        fsutil.atomic_write(_mark_path(config), fingerprint + "\n")
    except OSError as error:
        log.debug("could not record the forwarded reports: %s", error.strerror)


def encode(report: dict[str, Any]) -> bytes:
    """The report as sent: at most reports.MAX_DOWNSTREAM forwarded reports, then the last
    (deepest) dropped until it fits in reports.MAX_BYTES."""
    report = dict(report)
    if "downstream" in report:
        report["downstream"] = report["downstream"][:reports.MAX_DOWNSTREAM]
    while True:
        payload = json.dumps(report, separators=(",", ":")).encode()
        if len(payload) <= reports.MAX_BYTES or not report.get("downstream"):
            return payload
        report["downstream"] = report["downstream"][:-1]


def send(config: Config, record: RunRecord,
         connection: sshmux.SharedConnection | None = None) -> bool:
    """Build this run's report and send it upstream; True when the upstream stored it.

    Never raises (a report is worth less than the run it reports on). Call it once per run,
    after the run's record is final (`_finish` in sync/run.py: outcome, finish time, duration,
    bytes, library version, last success set and last-run.json written), whatever the outcome.
    It does nothing when `sync.report` is false, `sync.peer` is not set, or the run was
    interrupted or could not trust or reach its settings (NOT_SENT_FOR outcomes).
    """
    if not config.sync.report or not config.sync.peer or record.outcome in NOT_SENT_FOR:
        return False
    try:
        return _send(config, record, connection)
    except Exception as error:  # a report is worth less than the run: nothing escapes
        log.debug("report not sent: %s", error)
        _remember(config, FAILED, str(error) or type(error).__name__)
        return False
    finally:  # the metrics say what became of it (a refused report is worth an alert)
        metrics.refresh(config, record)


def _send(config: Config, record: RunRecord,
          connection: sshmux.SharedConnection | None) -> bool:
    fingerprint = _reports_fingerprint(config) if is_relay(config) else ""  # before reading
    payload = encode(build(config, record))
    # Over the run's connection when it is up (no second handshake); else on its own.
    shared = connection.rsh_options() if connection and connection.alive() else \
        ["-o", "ControlPath=none"]
    argv = ssh.argv(config.sync, [*shared, "-T", config.sync.peer,
                                  f"{REPORT_COMMAND} {reports.FORMAT}"])
    result = execute.run(argv, capture=True, check=False, timeout=SEND_TIMEOUT, input=payload)
    if result.returncode != SSH_FAILED and is_relay(config):
        _mark_offered(config, fingerprint)
    said = next((line for line in reversed(result.tail) if line.strip()), "")
    if result.returncode == 0:
        log.debug("report sent to %s (%d bytes)", config.sync.peer, len(payload))
        forwarded = len(json.loads(payload).get("downstream", []))
        _remember(config, SENT, f"{forwarded} site report(s) forwarded" if forwarded else "")
        return True
    if said.startswith("library-syncer: report refused"):
        why = said.split(": ", 2)[-1]
        log.warning("the server refused this site's report: %s", why)
        _remember(config, REFUSED, why)
    elif result.returncode == SSH_FAILED:
        log.debug("report not sent: %s", said or "ssh failed")
        _remember(config, FAILED, said or "ssh failed")
    else:
        why = said or f"exit status {result.returncode}"
        log.debug("report not sent (the server may not take reports): %s", why)
        _remember(config, NOT_TAKEN, why)
    return False


def _remember(config: Config, outcome: str, said: str) -> None:
    """What became of this report, for `status` and `check` (never fails the caller)."""
    data = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "outcome": outcome,
            "to": f"{config.sync.peer}:{config.sync.port}", "said": printable(said)[:300]}
    try:
        statedir.write_json(StateDir.of(config).last_report, data)
    except OSError as error:
        log.debug("could not record the report's outcome: %s", error.strerror)


def last_report(config: Config) -> dict[str, Any] | None:
    """The record `_remember` wrote last, or None."""
    return statedir.read_json_or_none(StateDir.of(config).last_report)
