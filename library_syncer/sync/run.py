"""`library-syncer sync`: one run of the client, as a sequence of named steps; the doing is in the
module each step names.

    lock ─► rsync over ssh into staging (--link-dest = the published snapshot, resumable)
         ─► unpack OVAs ─► manifest engine (verify, ids, versions) ─► index page
         ─► atomic switch of the `published` symlink ─► prune ─► record, metrics, summary

A failed or interrupted run leaves the published snapshot exactly as it was; its staging tree
(with rsync's partial files) is where the next run resumes. docs/sync.md is the user's account.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..base.config import Config
from ..base.errors import (
    ConfigError,
    ConfigProblem,
    HostKeyError,
    NetworkError,
    Settling,
    StaleUpstream,
    SyncerError,
    Unsigned,
    VerifyError,
)
from ..manifest import vcsp
from . import (
    content,
    failover,
    journal,
    last_run,
    lock,
    manifests,
    metrics,
    ova,
    repair,
    report,
    snapshot,
    sshmux,
    staging,
    trace_check,
    vcenter,
)
from .crash_seam import crash_point
from .journal import summary
from .last_run import RunRecord
from .layout import Layout, made_at, new_name
from .progress import Reporter
from .retry import Transfer
from .transfer import transfer

log = logging.getLogger("library-syncer")


# --- preconditions ----------------------------------------------------------------------------


def check_settings(config: Config) -> None:
    """What the settings file must hold before a run can start (one line each)."""
    sync, file = config.sync, str(config.file)
    problems = []
    if not sync.upstream_list():
        problems.append(ConfigProblem(file, "sync.peer", "nothing",
                                      "the server's host name or IP address (or "
                                      "sync.upstreams)"))
    if not os.access(sync.identity_file, os.R_OK):
        why = "does not exist" if not sync.identity_file.exists() else "is not readable"
        problems.append(ConfigProblem(file, "sync.identity_file", "",
                                      f"{sync.identity_file} {why}; create the site's key "
                                      f"(ssh-keygen -t ed25519 -N '' -f {sync.identity_file}) "
                                      "and authorize its .pub on the server"))
    if problems:
        raise ConfigError(problems)
    if not sync.known_hosts.is_file():
        raise HostKeyError(f"{sync.known_hosts} does not exist: the server's host key is not "
                           "known", hint="run library-syncer trust-host --fingerprint SHA256:…")


# --- the run ----------------------------------------------------------------------------------


def run(config: Config, *, retry: bool = True, reporter: Reporter | None = None,
        allow_empty: bool = False, allow_untraced: bool = False,
        unreachable: Sequence[failover.Tried] = ()) -> RunRecord:
    """One sync. Returns the run's record; a failure after the lock is in `record.error` (the
    published snapshot is then unchanged, except for VerifyError: the good items were
    published). Raises ConfigError, HostKeyError or LockHeld before anything starts.

    The upstreams are tried in order (sync.upstreams, or the one sync.peer; sync/failover.py,
    see _fails_over). Each has its own SSH connection: a failover closes one and opens the
    next. `unreachable`: the first upstreams of the list, with what they answered a moment ago
    (the change check of sync/poll.py): the run starts after them, recording them as skipped,
    instead of spending their share of the retry budget again."""
    check_settings(config)
    layout = Layout.of(config)
    layout.prepare()
    with lock.hold(layout.lock):
        record = _new_record(config, layout, unreachable)
        started = time.monotonic()
        reporter = reporter or Reporter()
        pull = _Pull(config, layout, record, started, retry, reporter,
                     _Allowed(allow_empty, allow_untraced))
        failover.walk(config, pull, unreachable, started)
        if record.error is None:  # once the upstream's connection is closed
            reporter.status(summary(record))
    return record


def run_once(config: Config, *, retry: bool = True) -> str:
    """One sync; its summary line, or the run's error raised (for `demo` and scripts)."""
    record = run(config, retry=retry)
    if record.error is not None:
        raise record.error
    return summary(record)


@dataclass(frozen=True)
class _Allowed:
    """What the operator allowed for this run only (sync --allow-empty, --allow-untraced)."""

    empty: bool = False
    untraced: bool = False


@dataclass(frozen=True)
class _Pull:
    """The run at each upstream (sync/failover.py): its steps inside the upstream's connection;
    the record, the journal line and the report once one served or the run ends."""

    config: Config
    layout: Layout
    record: RunRecord
    started: float
    retry: bool
    reporter: Reporter
    allowed: _Allowed

    def connect(self, turn: failover.Turn
                ) -> AbstractContextManager[sshmux.SharedConnection | None]:
        self.reporter.status(f"connecting to {turn.where}" if turn.count > 1 else "connecting")
        # One SSH connection per upstream, for the dry run, the transfer and the report.
        return sshmux.shared(turn.config.sync, turn.config.runtime_dir)

    def attempt(self, turn: failover.Turn, connection: sshmux.SharedConnection | None) -> None:
        _steps(turn.config, self.layout, self.record, self.retry, self.reporter,
               self.allowed, connection)

    def fails_over(self, error: SyncerError) -> bool:
        return _fails_over(error)

    def passed(self, turn: failover.Turn, error: SyncerError,
               following: failover.Turn | None) -> None:
        self.record.skipped.append(f"{turn.where}: {error.message}")
        if following is not None:
            log.warning("upstream %s: %s; trying %s", turn.where, error.message,
                        following.where)

    def exhausted(self, tried: Sequence[failover.Tried]) -> SyncerError:
        return _all_failed(tried)

    def served(self, turn: failover.Turn, connection: sshmux.SharedConnection | None,
               result: None, tried: Sequence[failover.Tried]) -> RunRecord:
        self._end(turn, None)
        report.send(turn.config, self.record, connection)
        return self.record

    def failed(self, turn: failover.Turn, connection: sshmux.SharedConnection | None,
               error: BaseException) -> RunRecord:
        if not isinstance(error, SyncerError):  # interrupted (SIGTERM/Ctrl-C), a bug, system
            self._end(turn, error)
            raise error
        self.record.error = error
        self._end(turn, error)
        report.send(turn.config, self.record, connection)
        self.reporter.status(f"failed: {error}")
        return self.record

    def _end(self, turn: failover.Turn, error: BaseException | None) -> None:
        _record_upstream(self.record, turn, self.layout)
        _finish(self.config, self.record, self.started, error)


def _steps(config: Config, layout: Layout, record: RunRecord, retry: bool, reporter: Reporter,
           allowed: _Allowed, connection: sshmux.SharedConnection | None) -> None:
    """The run at one upstream, step by step."""
    published = layout.current()
    tree = staging.begin(layout)
    clock = _Phases()
    done = _transfer(config, layout, tree, published, record, retry, reporter, connection,
                     allowed.untraced)
    clock.lap("transfer")
    crash_point("transferred")
    if not allowed.empty:
        _refuse_emptied(published, tree)
    _record_transfer(record, done)
    reporter.status("unpacking OVAs and building the manifests")
    ovas = _unpack_ovas(layout, tree, published)
    clock.lap("OVAs")
    crash_point("ovas")
    built, cache = manifests.build(config, layout, tree, published)
    clock.lap("manifests")
    content.refuse_altered(tree, layout, built.digests, cache, config.sync,
                           config.library.workers)
    clock.lap("content check")
    problems = _say_problems(ovas, built)
    manifests.write_page(config, tree)
    clock.lap("page")
    crash_point("manifests")
    name = new_name(layout)
    reporter.status("publishing")
    removed = _switch(config, layout, published, name)
    repair.done(layout)  # the scrub's rotted files, pulled again, are published whole
    clock.lap("publish")
    log.debug("published snapshot %s; removed %s", name, removed or "nothing")
    _record_publication(record, name, built, problems)
    _refuse_problems(problems)


# --- the steps --------------------------------------------------------------------------------


def _transfer(config: Config, layout: Layout, tree: Path, published: Path | None,
              record: RunRecord, retry: bool, reporter: Reporter,
              connection: sshmux.SharedConnection | None, allow_untraced: bool) -> Transfer:
    """The dry run and the pull into staging (sync/transfer.py); what crossed the link is
    counted in the record whatever happened."""
    done = Transfer()
    try:
        return transfer(config.sync, layout, tree, published, retry, reporter, done, connection,
                        allow_untraced)
    finally:
        record.attempts += done.attempts  # over every upstream tried
        record.bytes_received += done.bytes_received
        record.bytes_sent += done.bytes_sent


def _record_transfer(record: RunRecord, done: Transfer) -> None:
    stats = done.stats
    record.total_size = stats.total_size
    record.files_changed = stats.files_transferred + stats.files_deleted
    wire = done.bytes_received + done.bytes_sent
    record.speedup = round(stats.total_size / wire, 2) if wire else None


def _items_in(root: Path) -> int:
    return sum(1 for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _refuse_emptied(published: Path | None, tree: Path) -> None:
    """A server whose library disk is not mounted serves an empty folder; publishing that
    would make every subscribed vCenter delete every template."""
    if published is None or not tree.is_dir() or _items_in(tree):
        return
    had = _items_in(published)
    if had:
        raise VerifyError(f"the server's library is empty; refusing to publish an empty library "
                          f"over the {had} item folder(s) published now",
                          hint="check the server's library; if every item was really deleted, "
                               "run library-syncer sync --allow-empty once")


def _unpack_ovas(layout: Layout, tree: Path, published: Path | None) -> ova.OvaResult:
    ovas = ova.prepare_ovas(layout, tree, published)
    for rel in ovas.unpacked:
        log.info("unpacked %s (the .ova itself is not published)", rel)
    return ovas


def _say_problems(ovas: ova.OvaResult, built: vcsp.BuildReport) -> list[str]:
    """The build's warnings, then the items left out (archives refused, items the build
    refused): one line each."""
    for warning in built.warnings:
        log.warning("warning: %s", warning)
    problems = [*ovas.problems, *(str(p) for p in built.problems)]
    for problem in problems:
        log.error("%s", problem)
    return problems


def _switch(config: Config, layout: Layout, published: Path | None, name: str) -> list[str]:
    """Publish staging as snapshot `name`, tell vCenter, prune; the snapshots removed."""
    snapshot.publish(layout, name)
    vcenter.after_publish(config, published, layout.current())  # [vcenter]: never raises
    with contextlib.suppress(FileNotFoundError):  # the state now travels in the snapshots
        manifests.legacy_state(layout).unlink()
    return snapshot.prune(layout, config.sync.keep_snapshots)


def _record_publication(record: RunRecord, name: str, built: vcsp.BuildReport,
                        problems: list[str]) -> None:
    record.snapshot = name
    record.items, record.items_changed = built.items, list(built.items_changed)
    record.library_version = built.library_version
    record.last_success = None  # set by _finish from `finished`
    record.problems = problems


def _refuse_problems(problems: list[str]) -> None:
    if problems:
        raise VerifyError(f"{len(problems)} problem(s): {problems[0]}"
                          + (" (and more above)" if len(problems) > 1 else ""),
                          hint="the other items were published; fix these on the server")


class _Phases:
    """Time spent in each phase, at DEBUG level (where a slow run spends its time)."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        log.debug("phase %s: %.2f s", phase, now - self._last)
        self._last = now


# --- the record -------------------------------------------------------------------------------


def _new_record(config: Config, layout: Layout, unreachable: Sequence[failover.Tried]
                ) -> RunRecord:
    previous = _previous_record(config, layout)
    run_id = os.environ.get("INVOCATION_ID") or uuid.uuid4().hex
    record = RunRecord(run_id=run_id, started=last_run.now(), version=__version__,
                       last_success=previous.last_success if previous else None)
    record.skipped += [f"{failover.where(c.sync)}: {e.message}" for c, e in unreachable]
    return record


def _previous_record(config: Config, layout: Layout) -> RunRecord | None:
    """The last run's record. An unreadable one is said (one line). last_success is never older
    than the published snapshot (its name holds the time it was made): a run that died after
    the switch published without recording it."""
    published = layout.current()
    made = made_at(published.name) if published is not None else None
    try:
        record = last_run.read(config)
    except (OSError, ValueError, TypeError) as error:
        log.warning("%s is unreadable (%s); last success %s", last_run.path(config),
                    getattr(error, "strerror", None) or error,
                    f"recovered from the published snapshot: {made}" if made
                    else "unknown (nothing published)")
        return RunRecord(run_id="", started="", last_success=made)
    if record is not None and made and (record.last_success or "") < made:
        record.last_success = made
    if record is None and made:
        return RunRecord(run_id="", started="", last_success=made)
    return record


def _record_upstream(record: RunRecord, turn: failover.Turn, layout: Layout) -> None:
    record.upstream, record.upstream_index = turn.where, turn.index
    published = layout.current()
    held = trace_check.read(published) if published is not None else None
    record.origin, record.serial = (held.origin, held.serial) if held else (None, None)


def _finish(config: Config, record: RunRecord, started: float,
            error: BaseException | None) -> None:
    """The run's end: its record (last-run.json), the metrics, the journal line."""
    last_run.conclude(record, started, error)
    try:
        last_run.write(config, record)
    except OSError as write_error:
        log.warning("could not record the run: %s", write_error)
    metrics.refresh(config, record)
    journal.log_run(record)


# --- failover ---------------------------------------------------------------------------------


def _fails_over(error: SyncerError) -> bool:
    """What makes a run try the next upstream: it could not be reached or refused this site's key
    (NetworkError, after its share of retries), or it offers an older revision or another origin
    (StaleUpstream), or it is between revisions (Settling: another upstream may hold the last
    one), or its revision is not signed by a pinned origin key (Unsigned: a relay that
    altered or lost the statement; another upstream may carry it whole). A host key that is
    unknown or CHANGED stops the run (HostKeyError): moving on would hide exactly what an
    attack looks like. Problems of the site itself (disk full, the
    settings) or of the content (verify) are the same whichever upstream serves."""
    return isinstance(error, (NetworkError, StaleUpstream, Settling, Unsigned)) and \
        not isinstance(error, HostKeyError)


def _all_failed(tried: Sequence[failover.Tried]) -> SyncerError:
    """One line for a run no upstream served. Every upstream stale: StaleUpstream (exit 11, the
    site keeps what it publishes); else NetworkError (exit 5: at least one could not serve)."""
    said = "; ".join(f"{failover.where(c.sync)}: {e.message}" for c, e in tried)
    settling = [e for _, e in tried if isinstance(e, Settling)]
    if all(isinstance(e, (StaleUpstream, Settling)) for _, e in tried):
        if settling:  # nothing is wrong: the origin's next revision is on its way
            return Settling(f"no upstream holds a newer declared revision ({said})",
                            hint=settling[0].hint)
        return StaleUpstream(f"every upstream is stale; keeping the published library ({said})",
                             hint="nothing to do here; the next run pulls again")
    unsigned = [e for _, e in tried if isinstance(e, Unsigned)]
    if unsigned and all(isinstance(e, (StaleUpstream, Settling, Unsigned)) for _, e in tried):
        return Unsigned(f"no upstream offers a revision the origin signed ({said})",
                        hint=unsigned[0].hint)
    first = next(e for _, e in tried if not isinstance(e, (StaleUpstream, Settling, Unsigned)))
    return NetworkError(f"no upstream served ({said})", hint=first.hint)
