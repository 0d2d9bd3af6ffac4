"""`library-syncer sync --if-changed`: a cheap check of the origin; the full sync only if it moved.

library-syncer-poll.timer runs it every `sync.poll_interval`; the weekly library-syncer.timer stays
the full verification run. The check costs the origin one SSH session over the site's own
restricted account (rrsync -ro allows nothing but rsync):

- **with a trace** (the published snapshot holds the origin's trace.json): rsync fetches the
  origin's `.library-syncer/serial` ("<origin> <serial>", a few bytes, bounded: sync/declared.py)
  and compares it with the published revision (an older one: a stale relay, nothing to do);
- **without one** (the Docker-based original, a server before traces): `rsync --list-only` of
  the library, with the pull's own filters, compared by a digest of (path, size, mtime) with what
  is published (the snapshot's files, its OVAs as the archives they came as).

Same → one line, "origin unchanged (revision 42 of hq); nothing to do", nothing touched but
<state>/last-check.json (`status` shows it). A relay whose sites reported since its own last
report forwards their reports upstream from that check, as a second session of the check's one
SSH connection (sync/sshmux.py): under polling alone the origin's fleet view would otherwise
hear of them only at the relay's next full run, up to a week later.

Moved, or unknown (nothing published, no serial at the origin) → the full sync, in this same
process. The check holds the run lock, and the sync takes it again: a check never overlaps a
run, and finding the lock held it just skips.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from ..base import execute, statedir
from ..base.config import Config, SyncConfig
from ..base.errors import LockHeld, NetworkError, SyncerError
from ..base.statedir import StateDir
from ..server.trace import TRACE_DIR
from . import (
    declared,
    failover,
    last_run,
    lock,
    report,
    rsync,
    runner,
    ssh,
    sshmux,
    trace_check,
    vcenter,
)
from . import run as sync_run
from .layout import Layout
from .ova import MEMBERS_SUFFIX
from .trace_check import Revision

log = logging.getLogger("library-syncer")

MANIFESTS = {"lib.json", "items.json", "index.html"}


@dataclass(frozen=True)
class Verdict:
    moved: bool
    seen: str  # what the origin showed: "revision 42 of hq", "listing 1a2b3c4d (12 files)"
    why: str = ""  # why a sync is needed
    # The first upstreams of the list that did not answer, with their errors: the sync starts
    # at the one that did (a dead relay's retry share is not spent a second time).
    unreachable: tuple[failover.Tried, ...] = ()


# --- what the origin shows ----------------------------------------------------------------------


def _rsync(argv: list[str], sync: SyncConfig) -> execute.CommandResult:
    """One rsync of the check, its output captured and its time bounded; in UTC, as
    --list-only prints times in the client's zone."""
    timeout = sync.connect_timeout + sync.io_timeout + 30
    return runner.run(runner.Job(argv, capture=True, timeout=timeout, env={"TZ": "UTC"}))


def _fail(result: execute.CommandResult, sync: SyncConfig) -> None:
    error = rsync.classify(result.returncode, result.tail, rsync.Stats(), sync)
    if error is not None:
        error.message = f"change check: {error.message}"
        raise error


def origin_serial(sync: SyncConfig, ssh_extra: Sequence[str] = ()) -> Revision | None:
    """The origin's declared revision, read from its serial file (None: it declares none, or
    its serial file is not one: unknown, so the full sync decides)."""
    found = declared.fetch(sync, ssh_extra)
    if found is None or found.origin is None or found.serial is None:
        return None
    return Revision(found.origin, found.serial)


def parse_listing(lines: list[str]) -> set[tuple[str, int, int]]:
    """(path, size, mtime s) of the regular files of `rsync --list-only` (TZ=UTC) lines."""
    rows = set()
    for line in lines:
        fields = line.split(None, 4)
        if len(fields) < 5 or not fields[0].startswith("-"):
            continue  # folders, links, specials (never pulled), rsync's own messages
        try:
            when = datetime.strptime(f"{fields[2]} {fields[3]}", "%Y/%m/%d %H:%M:%S")
            rows.add((fields[4], int(fields[1]), int(when.replace(tzinfo=timezone.utc)
                                                     .timestamp())))
        except ValueError:
            continue
    return rows


def origin_listing(sync: SyncConfig, ssh_extra: Sequence[str] = ()
                   ) -> set[tuple[str, int, int]]:
    result = _rsync(rsync.listing_argv(sync, ssh_extra), sync)
    _fail(result, sync)
    return parse_listing(result.output.splitlines() if result.output else [])


def published_listing(published: Path, ova_store: Path) -> set[tuple[str, int, int]]:
    """What the site publishes, as the origin's listing would show it: the files the pull
    brought (not this site's manifests, page or state), an unpacked OVA as its archive."""
    members: set[str] = set()
    rows = set()
    for record in ova_store.glob(f"*/*{MEMBERS_SUFFIX}"):
        item = record.parent.name
        archive = record.parent / record.name[: -len(MEMBERS_SUFFIX)]
        try:
            members.update(f"{item}/{name}" for name in json.loads(record.read_text())["files"])
            st = archive.stat()
        except (OSError, ValueError, KeyError, TypeError):
            continue
        rows.add((f"{item}/{archive.name}", st.st_size, int(st.st_mtime)))
    for dirpath, dirnames, filenames in os.walk(published):
        rel_dir = Path(dirpath).relative_to(published).as_posix()
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != TRACE_DIR]
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            ours = name in MANIFESTS if rel_dir == "." else \
                rel.count("/") == 1 and name == "item.json"
            if ours or rel in members:
                continue
            st = os.lstat(os.path.join(dirpath, name))
            rows.add((rel, st.st_size, int(st.st_mtime)))
    return rows


def digest(rows: set[tuple[str, int, int]]) -> str:
    text = "".join(f"{path}\0{size}\0{mtime}\n" for path, size, mtime in sorted(rows))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def check(config: Config, layout: Layout) -> Verdict:
    """Has the origin moved from what this site publishes? One SSH session, to the first
    upstream that answers (sync.upstreams in order; a failover costs one session more). A relay
    with news from its sites forwards them over the same connection when nothing moved."""
    if not failover.upstream_configs(config):
        raise NetworkError("change check: no upstream is configured")
    return failover.walk(config, _Check(layout, report.has_news(config)))


@dataclass(frozen=True)
class _Check:
    """The change check at each upstream (sync/failover.py): any network error asks the next
    one; the last one's is the check's."""

    layout: Layout
    forward: bool  # this relay's sites reported since: their reports go up from the check

    def connect(self, turn: failover.Turn
                ) -> contextlib.AbstractContextManager[sshmux.SharedConnection | None]:
        # A forward rides on the check's connection: one login for both.
        if self.forward:
            return sshmux.shared(turn.config.sync, turn.config.runtime_dir)
        return contextlib.nullcontext()

    def attempt(self, turn: failover.Turn, connection: sshmux.SharedConnection | None
                ) -> Verdict:
        if connection is not None:
            connection.ensure()
        extra = connection.rsh_options() if connection is not None else []
        verdict = _check(turn.config.sync, self.layout, extra)
        if self.forward and not verdict.moved:  # else the full sync's own report carries them
            _forward(turn.config, connection)
        return verdict

    def fails_over(self, error: SyncerError) -> bool:
        return isinstance(error, NetworkError)

    def passed(self, turn: failover.Turn, error: SyncerError,
               following: failover.Turn | None) -> None:
        if following is not None:
            log.info("%s; asking the next upstream", error)

    def exhausted(self, tried: Sequence[failover.Tried]) -> SyncerError:
        return tried[-1][1]

    def served(self, turn: failover.Turn, connection: sshmux.SharedConnection | None,
               result: Verdict, tried: Sequence[failover.Tried]) -> Verdict:
        # The sync skips the upstreams before this one only if none of them could be
        # reached at all: a passing glitch or a refusal is the run's to retry or judge.
        skip = all(_unreachable(error) for _, error in tried)
        return replace(result, unreachable=tuple(tried) if skip else ())

    def failed(self, turn: failover.Turn, connection: sshmux.SharedConnection | None,
               error: BaseException) -> Verdict:
        raise error


def _unreachable(error: SyncerError) -> bool:
    """ssh could not reach the upstream (refused, timed out, no route, name unknown)."""
    return ssh.diagnose([error.message]) == "unreachable"


def _forward(upstream: Config, connection: sshmux.SharedConnection | None) -> None:
    """Send this relay's last report again, now with what its sites reported since."""
    try:
        record = last_run.read(upstream)
    except (OSError, ValueError, TypeError):
        record = None
    if record is not None and report.send(upstream, record, connection):
        log.info("forwarded this relay's site reports to %s", upstream.sync.peer)


def _check(sync: SyncConfig, layout: Layout, ssh_extra: Sequence[str] = ()
           ) -> Verdict:
    published = layout.current()
    held = trace_check.read(published) if published is not None else None
    if held is not None:
        now = Revision(held.origin, held.serial)
        offered = origin_serial(sync, ssh_extra)
        if offered is None:
            return Verdict(True, "no serial", f"the server declares no revision (published: "
                                              f"{now})")
        if offered == now:
            return Verdict(False, str(offered))
        if offered.origin == now.origin and offered.serial < now.serial:
            # A stale relay: a full run would pull and refuse it at every poll.
            return Verdict(False, f"{offered}, older than {now} published (a stale upstream)")
        return Verdict(True, str(offered), f"the origin moved to {offered} (published: {now})")
    rows = origin_listing(sync, ssh_extra)
    seen = f"listing {digest(rows)[:12]}, {len(rows)} files"
    if published is None:
        return Verdict(True, seen, "nothing is published yet")
    if digest(published_listing(published, layout.ova_store)) == digest(rows):
        return Verdict(False, seen)
    return Verdict(True, seen, f"the origin's library differs from what is published ({seen})")


# --- the record `status` reads -----------------------------------------------------------------


def state_path(config: Config) -> Path:
    return StateDir.of(config).last_check


def _record(config: Config, verdict: Verdict) -> None:
    data = {"checked": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "moved": verdict.moved, "seen": verdict.seen}
    try:
        statedir.write_json(state_path(config), data)
    except OSError as error:
        log.warning("could not record the check: %s", error.strerror)


def read_record(config: Config) -> dict | None:
    """The last check's record (`status`); None when there is none or it is unreadable."""
    return statedir.read_json_or_none(state_path(config))


# --- the command -------------------------------------------------------------------------------


def run_if_changed(config: Config, *, retry: bool = True, allow_empty: bool = False
                   ) -> last_run.RunRecord | None:
    """The check, then the full sync when the origin moved. None: no sync was needed (or a run
    holds the lock); else the sync's record."""
    sync_run.check_settings(config)
    layout = Layout.of(config)
    layout.prepare()
    try:
        with lock.hold(layout.lock):
            verdict = check(config, layout)
            _record(config, verdict)
            if not verdict.moved:
                vcenter.retry_pending(config)  # a request a run could not make
    except LockHeld as held:
        log.info("a sync is running; this check is skipped (%s)", held.message)
        return None
    if not verdict.moved:
        log.info("origin unchanged (%s); nothing to do", verdict.seen)
        return None
    log.info("%s: syncing", verdict.why)
    if verdict.unreachable:
        first = failover.upstream_configs(config)[len(verdict.unreachable)].sync
        log.info("starting at %s:%s (the upstreams before it did not answer the check)",
                 first.peer, first.port)
    try:
        return sync_run.run(config, retry=retry, allow_empty=allow_empty,
                            unreachable=verdict.unreachable)
    except LockHeld as held:  # a scheduled or manual run started since the check
        log.info("a sync started meanwhile; it does this one's work (%s)", held.message)
        return None

