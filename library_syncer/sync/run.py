"""`library-syncer sync`: one run of the client. Decides and logs; the doing is delegated.

    lock ─► rsync over ssh into staging (--link-dest = the published snapshot, resumable)
         ─► unpack OVAs ─► manifest engine (verify, ids, versions) ─► index page
         ─► atomic switch of the `published` symlink ─► prune ─► record, metrics, summary

A failed or interrupted run leaves the published snapshot exactly as it was; its staging tree
(with rsync's partial files) is where the next run resumes. docs/sync.md is the user's account.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..base import execute
from ..base.config import Config
from ..base.errors import (
    ConfigError,
    ConfigProblem,
    ExitStatus,
    HostKeyError,
    NetworkError,
    Settling,
    StaleUpstream,
    SyncerError,
    VerifyError,
)
from ..base.units import format_bytes, format_duration
from ..manifest import vcsp
from ..web import caddy, page
from . import basis, last_run, lock, metrics, report, rsync, snapshot, sshmux, trace_check, vcenter
from .last_run import RunRecord
from .progress import Reporter

log = logging.getLogger("library-syncer")

OUTCOME_OF_STATUS = {
    ExitStatus.OK: "ok", ExitStatus.VERIFY: "verify", ExitStatus.PARTIAL: "partial",
    ExitStatus.NETWORK: "network", ExitStatus.DISK_FULL: "disk_full",
    ExitStatus.HOST_KEY: "host_key", ExitStatus.CONFIG: "config", ExitStatus.STALE: "stale",
    ExitStatus.SETTLING: "settling",
}
MAX_ERROR_LINES = 5


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


# --- the transfer, with retries ---------------------------------------------------------------


@dataclass
class Transfer:
    stats: rsync.Stats = field(default_factory=rsync.Stats)
    attempts: int = 1  # 1 + retries, over the dry run and the pull
    bytes_received: int = 0
    bytes_sent: int = 0
    needed: int | None = None  # bytes the changed files need in staging (from the dry run)


def _rsync(argv: list[str], sync, reporter: Reporter | None, needed: int | None
           ) -> rsync.Stats:
    stats = rsync.Stats()

    dry_run = "--dry-run" in argv

    def on_line(line: str) -> None:
        if stats.feed(line):
            return
        progress = rsync.parse_progress(line)
        if progress is not None:
            if 0 < progress.percent < 100:  # mid-transfer
                snapshot.crash_point("transfer")
            if reporter:
                reporter.update(progress)
            return
        log.debug("rsync: %s", line)

    env = {k: v for k, v in os.environ.items() if k not in ("RSYNC_PROTECT_ARGS", "RSYNC_RSH")}
    try:
        result = execute.run(argv, on_line=on_line, check=False, env=env)
    finally:
        if reporter:
            reporter.done()
    error = rsync.classify(result.returncode, result.tail, stats, sync, needed)
    if dry_run and error is None:
        snapshot.crash_point("dry-run")
    if result.returncode == 24:
        log.warning("some files vanished on the server during the transfer (not an error)")
    if error is not None:
        error.stats = stats  # type: ignore[attr-defined]
        raise error
    return stats


def _with_retries(step, config: Config, transfer: Transfer, retry: bool) -> rsync.Stats:
    """Run `step` until it succeeds, retrying transient failures with exponential backoff
    (and jitter, so a fleet of sites does not reconnect in lockstep) within sync.retry_budget."""
    sync = config.sync
    started = time.monotonic()
    delay = sync.retry_initial_delay
    while True:
        try:
            stats = step()
        except rsync.TransientError as error:
            partial: rsync.Stats = getattr(error, "stats", rsync.Stats())
            transfer.bytes_received += partial.bytes_received
            transfer.bytes_sent += partial.bytes_sent
            elapsed = time.monotonic() - started
            wait = min(delay * random.uniform(0.8, 1.2), sync.retry_max_delay)
            if not retry or elapsed + wait > sync.retry_budget:
                tried = (f"after {transfer.attempts} attempts in {format_duration(elapsed)}"
                         if transfer.attempts > 1 else "(not retried)")
                raise NetworkError(f"{error.message} {tried}",
                                   hint="check the link and the server; the next run resumes "
                                        "where this one stopped") from None
            log.warning("attempt %d failed: %s; retrying in %.0f s", transfer.attempts,
                        error.message, wait)
            time.sleep(wait)
            delay = min(delay * 2, sync.retry_max_delay)
            transfer.attempts += 1
            continue
        except SyncerError as error:  # not worth retrying; what it moved is still counted
            done: rsync.Stats = getattr(error, "stats", rsync.Stats())
            transfer.bytes_received += done.bytes_received
            transfer.bytes_sent += done.bytes_sent
            raise
        transfer.bytes_received += stats.bytes_received
        transfer.bytes_sent += stats.bytes_sent
        return stats


def transfer(config: Config, layout: snapshot.Layout, staging: Path, published: Path | None,
             retry: bool, reporter: Reporter | None, result: Transfer,
             connection: sshmux.SharedConnection | None) -> Transfer:
    """Dry run (what must be fetched: the space check), then the pull into staging, both over
    the run's one SSH connection. `result` is filled as it goes (attempts and bytes are known
    even when it fails)."""
    _dry_run_and_pull(config, layout, staging, published, retry, reporter, result, connection)
    return _report_transfer(result)


def _dry_run_and_pull(config: Config, layout: snapshot.Layout, staging: Path,
                      published: Path | None, retry: bool, reporter: Reporter | None,
                      result: Transfer, connection: sshmux.SharedConnection | None) -> None:
    sync = config.sync
    link_dests = [p for p in (published,) if p is not None]
    if any(layout.ova_store.iterdir()):
        link_dests.append(layout.ova_store)
    ssh_extra = connection.rsh_options() if connection else []
    _drop_unincluded(staging, sync.include)

    # An option an older server refuses is dropped for the rest of the run (rsync.PeerOptions).
    peer = rsync.PeerOptions(sync)

    def step(argv: list[str], progress: Reporter | None, needed: int | None) -> rsync.Stats:
        if connection:
            connection.ensure()
        return peer.run(argv, lambda adapted: _rsync(adapted, sync, progress, needed))

    dry = rsync.pull_argv(sync, staging, link_dests, dry_run=True, ssh_extra=ssh_extra)
    plan = _with_retries(lambda: step(dry, None, None), config, result, retry)
    result.needed = plan.transferred_size
    if plan.transferred_size:  # nothing to fetch costs no space: never refuse a no-op run
        snapshot.check_space(layout, plan.transferred_size, sync.min_free_space)
    log.debug("dry run: %d file(s), %d bytes to fetch", plan.files_transferred,
              plan.transferred_size)
    if plan.transferred_size:
        log.info("fetching %d changed file(s), %s (library %s)", plan.files_transferred,
                 format_bytes(plan.transferred_size), format_bytes(plan.total_size))
    seeded = _seed_bases(layout, staging, published, plan.listed) if sync.find_basis else []
    if reporter:
        reporter.status(f"transferring {format_bytes(plan.transferred_size)}")
    pull = rsync.pull_argv(sync, staging, link_dests, ssh_extra=ssh_extra)

    def pull_revision() -> rsync.Stats:
        stats = step(pull, reporter, result.needed)
        _unseed_vanished(staging, seeded, stats.vanished)
        try:
            _check_revision(staging, published, sync)
        except SyncerError as error:
            error.stats = stats  # type: ignore[attr-defined]  # the bytes did cross the link
            raise
        return stats

    result.stats = _with_retries(pull_revision, config, result, retry)


def _check_revision(staging: Path, published: Path | None, sync) -> None:
    """The pull must be exactly the origin's declared revision (when it declares one), and not
    an older one than the site publishes (sync/trace_check.py)."""
    offered = trace_check.read(staging)
    if offered is None:
        return  # an upstream without a trace (the Docker-based original): as before
    problems = trace_check.differences(staging, offered, sync)
    if problems:
        trace_check.refuse_settling(staging, offered, problems)  # not torn: try later
        raise rsync.TransientError(
            f"what arrived is not revision {offered.serial} of {offered.origin}: the library "
            f"changed upstream during the transfer ({trace_check.describe(problems)}); "
            "nothing is published")
    trace_check.refuse_rollback(offered, trace_check.read(published) if published else None,
                                sync)
    trace_check.drop_settling_notice(staging)
    log.debug("pulled revision %d of %s", offered.serial, offered.origin)


def _drop_unincluded(staging: Path, include: tuple[str, ...]) -> None:
    """A staging tree left by a run with other sync.include patterns: rsync protects what its
    filters exclude from --delete, so items no longer included are removed here."""
    if not include or not staging.is_dir():
        return
    for item in staging.iterdir():
        if item.is_dir() and not item.is_symlink() and not item.name.startswith(".") and \
                not any(fnmatch.fnmatchcase(item.name, p) for p in include):
            log.info("%s is not in sync.include any more: not published", item.name)
            shutil.rmtree(item)


def _unseed_vanished(staging: Path, seeded: list[str], vanished: list[str]) -> None:
    """A file deleted at the server after the dry run is not sent: its basis, still linked at the
    new path, must not be published as if it were that file."""
    for rel in seeded:
        if any(path == rel or path.endswith("/" + rel) for path in vanished):
            (staging / rel).unlink(missing_ok=True)
            log.info("%s vanished on the server during the transfer: not published", rel)


def _seed_bases(layout: snapshot.Layout, staging: Path, published: Path | None,
                listed: list[str]) -> list[str]:
    """Give every new file an older copy the site has as its basis (renamed items, new
    template versions): rsync then fetches only what differs from it (sync/basis.py)."""
    listing = basis.parse_listing(listed)
    new = [f for f in listing if f.new and f.size >= basis.MIN_SIZE]
    if not new:
        return []
    pool = basis.candidates(published, layout.ova_store, {f.path for f in listing})
    chosen = basis.choose(new, listing, pool)
    seeded = basis.seed(staging, chosen)
    for rel in seeded:
        log.debug("basis for %s: %s", rel, chosen[rel].rel)
    if seeded:
        log.info("%d new file(s) fetched as differences from a copy this site has: %s", len(seeded),
                 ", ".join(f"{rel} (from {chosen[rel].rel})" for rel in seeded[:3])
                 + (f" and {len(seeded) - 3} more" if len(seeded) > 3 else ""))
    return seeded


def _report_transfer(result: Transfer) -> Transfer:
    """rsync's own error lines and skipped links, once, after the transfer."""
    for line in result.stats.errors[:MAX_ERROR_LINES]:
        log.warning("%s", line)
    if len(result.stats.errors) > MAX_ERROR_LINES:
        log.warning("… and %d more rsync messages", len(result.stats.errors) - MAX_ERROR_LINES)
    if result.stats.skipped:
        log.warning("%d link(s) or special file(s) on the server were not transferred (only "
                    "regular files are)", result.stats.skipped)
    return result


# --- after the transfer -----------------------------------------------------------------------


def _previous_state(layout: snapshot.Layout, published: Path | None) -> Path | None:
    """The manifest state the build continues from: the published snapshot's own (it advances
    only with the switch). A site upgraded from a version that kept it in cache/ uses that copy
    once, until its first publication."""
    if published is not None and (published / vcsp.STATE_DIR_NAME / vcsp.STATE_FILE).is_file():
        return None  # the build's default: previous/.library-syncer/
    legacy = layout.cache / vcsp.STATE_FILE
    return legacy if published is not None and legacy.is_file() else None


def _build_manifests(config: Config, layout: snapshot.Layout, staging: Path,
                     published: Path | None) -> vcsp.BuildReport:
    """The manifests of staging. The state (ids, versions, what is published) is written into
    staging's .library-syncer/, read from the published snapshot's: it advances only with the
    switch. The hash cache stays in cache/ (a cache is truthful whatever happened). The tokens
    derive from the origin's revision document staging holds (none from the Docker original)."""
    lib = config.library
    try:
        return vcsp.build(staging, name=lib.name, previous=published, cache_dir=layout.cache,
                          previous_state=_previous_state(layout, published),
                          include_certs=lib.include_certs, workers=lib.workers,
                          description=lib.description, revision_doc=trace_check.read(staging))
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise snapshot.disk_full(error, "writing the manifests") from None
        raise


def _write_page(config: Config, staging: Path) -> None:
    """The human page (index.html) of the snapshot; never fatal."""
    held = trace_check.read(staging)  # the origin's revision, named on the page as by status
    revision = page.OriginRevision(held.origin, held.serial, held.time) if held else None
    try:
        page.write_index(staging, url=caddy.subscription_url(config),
                         synced_at=datetime.now(timezone.utc), revision=revision)
    except (SyncerError, OSError) as error:
        log.warning("index.html not written: %s", error)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


def _journal_fields(record: RunRecord) -> dict[str, object]:
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


class _Phases:
    """Time spent in each phase, at DEBUG level (where a slow run spends its time)."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        log.debug("phase %s: %.2f s", phase, now - self._last)
        self._last = now


# --- the run ----------------------------------------------------------------------------------


def _items_in(root: Path) -> int:
    return sum(1 for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _refuse_emptied(published: Path | None, staging: Path) -> None:
    """A server whose library disk is not mounted serves an empty folder; publishing that
    would make every subscribed vCenter delete every template."""
    if published is None or not staging.is_dir() or _items_in(staging):
        return
    had = _items_in(published)
    if had:
        raise VerifyError(f"the server's library is empty; refusing to publish an empty library "
                          f"over the {had} item folder(s) published now",
                          hint="check the server's library; if every item was really deleted, "
                               "run library-syncer sync --allow-empty once")


def _run_steps(config: Config, layout: snapshot.Layout, record: RunRecord, retry: bool,
               reporter: Reporter, allow_empty: bool = False,
               connection: sshmux.SharedConnection | None = None) -> None:
    published = layout.current()
    staging = layout.begin()
    clock = _Phases()
    done = Transfer()
    try:
        transfer(config, layout, staging, published, retry, reporter, done, connection)
    finally:
        record.attempts += done.attempts  # over every upstream tried
        record.bytes_received += done.bytes_received
        record.bytes_sent += done.bytes_sent
    clock.lap("transfer")
    snapshot.crash_point("transferred")
    if not allow_empty:
        _refuse_emptied(published, staging)
    stats = done.stats
    record.total_size = stats.total_size
    record.files_changed = stats.files_transferred + stats.files_deleted
    wire = done.bytes_received + done.bytes_sent
    record.speedup = round(stats.total_size / wire, 2) if wire else None

    reporter.status("unpacking OVAs and building the manifests")
    ovas = snapshot.prepare_ovas(layout, staging, published)
    for rel in ovas.unpacked:
        log.info("unpacked %s (the .ova itself is not published)", rel)
    clock.lap("OVAs")
    snapshot.crash_point("ovas")
    report = _build_manifests(config, layout, staging, published)
    clock.lap("manifests")
    for warning in report.warnings:
        log.warning("warning: %s", warning)
    problems = [*ovas.problems, *(str(p) for p in report.problems)]
    for problem in problems:
        log.error("%s", problem)
    _write_page(config, staging)
    clock.lap("page")
    snapshot.crash_point("manifests")

    name = snapshot.new_name(layout)
    reporter.status("publishing")
    snapshot.publish(layout, name)
    vcenter.after_publish(config, published, layout.current())  # [vcenter]: never raises
    with contextlib.suppress(FileNotFoundError):  # the state now travels in the snapshots
        (layout.cache / vcsp.STATE_FILE).unlink()
    removed = snapshot.prune(layout, config.sync.keep_snapshots)
    clock.lap("publish")
    log.debug("published snapshot %s; removed %s", name, removed or "nothing")
    record.snapshot = name
    record.items, record.items_changed = report.items, list(report.items_changed)
    record.library_version = report.library_version
    record.last_success = None  # set by the caller from `finished`
    record.problems = problems
    if problems:
        raise VerifyError(f"{len(problems)} problem(s): {problems[0]}"
                          + (" (and more above)" if len(problems) > 1 else ""),
                          hint="the other items were published; fix these on the server")


def _finish(config: Config, record: RunRecord, started: float,
            error: BaseException | None) -> None:
    record.finished = _now()
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
    try:
        last_run.write_last_run(config, record)
    except OSError as write_error:
        log.warning("could not record the run: %s", write_error)
    metrics.refresh(config, record)
    level = logging.INFO if record.exit_status in (0, ExitStatus.SETTLING) else logging.WARNING
    log.log(level, "%s", summary(record), extra={"fields": _journal_fields(record)})


def _where(sync) -> str:
    return f"{sync.peer}:{sync.port}"


def upstream_configs(config: Config) -> list[Config]:
    """The run's settings aimed at each upstream in turn (sync.upstreams, or sync.peer)."""
    return [replace(config, sync=config.sync.for_upstream(u))
            for u in config.sync.upstream_list()]


def _budget_share(config: Config, index: int, count: int, started: float) -> Config:
    """Upstream `index` gets an equal share of what is left of sync.retry_budget: the run as a
    whole never retries longer than the budget, however many upstreams are listed, and an
    upstream that fails at once leaves its share to the next ones."""
    left = max(0.0, config.sync.retry_budget - (time.monotonic() - started))
    return replace(config, sync=replace(config.sync, retry_budget=left / (count - index)))


def _fails_over(error: SyncerError) -> bool:
    """What makes a run try the next upstream: it could not be reached or refused this site's key
    (NetworkError, after its share of retries), or it offers an older revision or another origin
    (StaleUpstream), or it is between revisions (Settling: another upstream may hold the last
    one). A host key that is unknown or CHANGED stops the run (HostKeyError): moving on
    would hide exactly what an attack looks like. Problems of the site itself (disk full, the
    settings) or of the content (verify) are the same whichever upstream serves."""
    return isinstance(error, (NetworkError, StaleUpstream, Settling)) and \
        not isinstance(error, HostKeyError)


def _all_failed(tried: list[tuple[Config, SyncerError]]) -> SyncerError:
    """One line for a run no upstream served. Every upstream stale: StaleUpstream (exit 11, the
    site keeps what it publishes); else NetworkError (exit 5: at least one could not serve)."""
    said = "; ".join(f"{_where(c.sync)}: {e.message}" for c, e in tried)
    settling = [e for _, e in tried if isinstance(e, Settling)]
    if all(isinstance(e, (StaleUpstream, Settling)) for _, e in tried):
        if settling:  # nothing is wrong: the origin's next revision is on its way
            return Settling(f"no upstream holds a newer declared revision ({said})",
                            hint=settling[0].hint)
        return StaleUpstream(f"every upstream is stale; keeping the published library ({said})",
                             hint="nothing to do here; the next run pulls again")
    first = next(e for _, e in tried if not isinstance(e, (StaleUpstream, Settling)))
    return NetworkError(f"no upstream served ({said})", hint=first.hint)


def _record_upstream(record: RunRecord, config: Config, index: int, layout: snapshot.Layout
                     ) -> None:
    record.upstream, record.upstream_index = _where(config.sync), index
    published = layout.current()
    held = trace_check.read(published) if published is not None else None
    record.origin, record.serial = (held.origin, held.serial) if held else (None, None)


def run(config: Config, *, retry: bool = True, reporter: Reporter | None = None,
        allow_empty: bool = False, unreachable: Sequence[tuple[Config, SyncerError]] = ()
        ) -> RunRecord:
    """One sync. Returns the run's record; a failure after the lock is in `record.error` (the
    published snapshot is then unchanged, except for VerifyError: the good items were
    published). Raises ConfigError, HostKeyError or LockHeld before anything starts.

    The upstreams are tried in order (sync.upstreams, or the one sync.peer); see _fails_over.
    Each has its own SSH connection: a failover closes one and opens the next. `unreachable`:
    the first upstreams of the list, with what they answered a moment ago (the change check of
    sync/poll.py): the run starts after them, recording them as skipped, instead of spending
    their share of the retry budget again."""
    check_settings(config)
    layout = snapshot.Layout.of(config)
    layout.prepare()
    upstreams = upstream_configs(config)
    with lock.hold(layout.lock):
        previous = _previous_record(config, layout)
        run_id = os.environ.get("INVOCATION_ID") or uuid.uuid4().hex
        record = RunRecord(run_id=run_id, started=_now(), version=__version__,
                           last_success=previous.last_success if previous else None)
        started = time.monotonic()
        reporter = reporter or Reporter()
        tried: list[tuple[Config, SyncerError]] = list(unreachable)
        record.skipped += [f"{_where(c.sync)}: {e.message}" for c, e in unreachable]
        for index, upstream in enumerate(upstreams[len(tried):], len(tried)):
            upstream = _budget_share(upstream, index, len(upstreams), started)
            last = index == len(upstreams) - 1
            reporter.status(f"connecting to {_where(upstream.sync)}" if len(upstreams) > 1
                            else "connecting")
            # One SSH connection per upstream, for the dry run, the transfer and the report.
            with sshmux.shared(upstream.sync, upstream.runtime_dir) as connection:
                try:
                    _run_steps(upstream, layout, record, retry, reporter, allow_empty,
                               connection)
                except SyncerError as error:
                    if _fails_over(error) and len(upstreams) > 1:
                        tried.append((upstream, error))
                        record.skipped.append(f"{_where(upstream.sync)}: {error.message}")
                        if not last:
                            log.warning("upstream %s: %s; trying %s", _where(upstream.sync),
                                        error.message, _where(upstreams[index + 1].sync))
                            continue
                        error = _all_failed(tried)
                    record.error = error
                    _record_upstream(record, upstream, index, layout)
                    _finish(config, record, started, error)
                    report.send(upstream, record, connection)
                    reporter.status(f"failed: {error}")
                    return record
                except BaseException as error:  # interrupted (SIGTERM/Ctrl-C), a bug, system
                    _record_upstream(record, upstream, index, layout)
                    _finish(config, record, started, error)
                    raise
                _record_upstream(record, upstream, index, layout)
                _finish(config, record, started, None)
                report.send(upstream, record, connection)
            reporter.status(summary(record))
            return record
        raise AssertionError("check_settings lets no run start without an upstream")


def _previous_record(config: Config, layout: snapshot.Layout) -> RunRecord | None:
    """The last run's record. An unreadable one is said (one line). last_success is never older
    than the published snapshot (its name holds the time it was made): a run that died after
    the switch published without recording it."""
    published = layout.current()
    made = snapshot.made_at(published.name) if published is not None else None
    try:
        record = last_run.load_last_run(config)
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


def run_once(config: Config, *, retry: bool = True) -> str:
    """One sync; its summary line, or the run's error raised (for `demo` and scripts)."""
    record = run(config, retry=retry)
    if record.error is not None:
        raise record.error
    return summary(record)
