"""`library-syncer sync --scrub` (library-syncer-scrub.timer, monthly): read every published file
and compare it with what it should be; pull what rotted again through a normal run.

A hash cache (manifest/hashing.py) cannot see rot: it trusts an inode whose size and times did not
change, and a flipped bit on disk changes neither. So the scrub reads the files themselves, one
at a time (a fixed buffer: bounded memory), from the disk rather than the page cache, never
following a link, at most `sync.scrub_rate` bytes a second, and compares each SHA-256 with

- the origin's revision document in the snapshot (`.library-syncer/trace.json`, its `content`:
  per-file SHA-256, base/revision.py), itself checked against the statement beside it when the
  origin signs (base/statement.py: the document's digest); else
- the digest the manifest build recorded when it published the file (the snapshot's manifest
  state, manifest/state.py): untraced upstreams, and files unpacked from an OVA.

A file with neither (a left-out item's, a link) is counted, not compared; the manifests and the
page are the site's own, written anew by every run. What rotted goes to the repair list
(sync/repair.py) and a normal run (sync/run.py, under the run lock) publishes a new snapshot with
those files pulled again, only their differing blocks crossing; then the scrub reads them in the
new snapshot. The published snapshot is never written. The outcome is <state>/scrub.json
(sync/scrub_record.py), which `check` and the metrics show.

The reading holds no lock: snapshots are never modified, and a run that publishes meanwhile does
not disturb it (its snapshot stays until a second publication prunes it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..base import statement
from ..base.config import Config
from ..base.errors import LockHeld, SyncerError
from ..base.revision import Revision
from ..base.units import bwlimit_bytes_per_second, format_bytes
from ..manifest import state as manifest_state
from ..manifest import vcsp
from ..server.trace import STATEMENT_FILE, TRACE_DIR, TRACE_FILE, read_files
from . import last_run, lock, metrics, repair, scrub_record
from . import run as sync_run
from .layout import Layout
from .scrub_record import FAILED, PENDING, REPAIRED, ScrubRecord

log = logging.getLogger("library-syncer")

CHUNK = 4 << 20  # the one read buffer
GENERATED = frozenset({"lib.json", "items.json", "index.html"})  # the site's own, per run
ITEM_FILE = "item.json"
ROT_ERRNOS = frozenset({errno.EIO, errno.EBADMSG, errno.EUCLEAN})  # what a bad block reads as
MAX_SHOWN = 3


# --- what each file should be -----------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    digests: dict[str, str]  # path in the library → SHA-256
    published: frozenset[str]  # what the manifest build published (must all be there)
    described: str  # where the digests came from, for the log and the record
    rotted: tuple[str, ...] = ()  # the reference's own rot: trace.json not its statement's


def reference(snapshot: Path) -> Reference:
    """The expected digests of `snapshot`'s files: the origin's where its revision document names
    them, the manifest build's for the rest."""
    built = manifest_state.published_digests(
        snapshot / vcsp.STATE_DIR_NAME / vcsp.STATE_FILE) or {}
    digests, said, rotted = dict(built), [], []
    document = read_files(snapshot, TRACE_FILE,
                          limit=statement.MAX_DOCUMENT_BYTES).get(TRACE_FILE)
    if document is not None:
        problem = _not_the_signed_document(snapshot, document)
        revision = None if problem else _revision(document)
        if problem:
            log.warning("scrub: %s/%s: %s", TRACE_DIR, TRACE_FILE, problem)
            rotted.append(f"{TRACE_DIR}/{TRACE_FILE}")
        elif revision is None:
            log.warning("scrub: %s/%s is not a revision document; the manifests' digests serve",
                        TRACE_DIR, TRACE_FILE)
        elif revision.content is not None:
            digests.update({p: f.sha256 for p, f in revision.content.files.items()})
            said.append(f"revision {revision.serial} of {revision.origin}")
    if built:
        said.append("the manifests' digests")
    return Reference(digests, frozenset(built), " and ".join(said) or "nothing",
                     tuple(rotted))


def _revision(document: bytes) -> Revision | None:
    try:
        return Revision.from_json(document.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def _not_the_signed_document(snapshot: Path, document: bytes) -> str | None:
    """Where the origin signs, its statement names trace.json's size and SHA-256: a difference is
    trace.json's rot. A statement that cannot be read says nothing (the run verified it)."""
    signed = read_files(snapshot, STATEMENT_FILE,
                        limit=statement.MAX_STATEMENT_BYTES).get(STATEMENT_FILE)
    if signed is None:
        return None
    try:
        line, _ = statement.split(signed)
        found = statement.Statement.parse(line)
    except statement.StatementRefused as error:
        log.warning("scrub: %s/%s: %s; trace.json is taken as it is", TRACE_DIR,
                    STATEMENT_FILE, error)
        return None
    try:
        statement.check_document(found, document)
    except statement.StatementRefused as error:
        return str(error)
    return None


# --- reading ----------------------------------------------------------------------------------


@dataclass
class Findings:
    files: int = 0  # read and compared
    bytes: int = 0
    rotted: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)  # no expected digest: not compared
    seconds: float = 0.0


class _Throttle:
    """At most `rate` bytes a second on average (0: no limit)."""

    def __init__(self, rate: int) -> None:
        self.rate, self.started, self.done = rate, time.monotonic(), 0

    def spent(self, count: int) -> None:
        if not self.rate:
            return
        self.done += count
        ahead = self.done / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


def _walk(snapshot: Path) -> Iterator[tuple[str, bool]]:
    """(path, is a regular file) of everything in the snapshot that is not a folder, its own
    hidden folder left out; no link is followed."""
    stack = [""]
    while stack:
        prefix = stack.pop()
        with os.scandir(snapshot / prefix) as found:
            entries = sorted(found, key=lambda e: e.name, reverse=True)
        for entry in entries:
            rel = prefix + entry.name
            if rel == TRACE_DIR:
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(rel + "/")
            else:
                yield rel, entry.is_file(follow_symlinks=False)


def _generated(rel: str) -> bool:
    return rel in GENERATED or rel.rsplit("/", 1)[-1] == ITEM_FILE


def sha256_of(path: Path, throttle: _Throttle) -> tuple[str, int]:
    """The file's SHA-256 and size as read from the disk: its cached pages are dropped first (a
    cached copy would hide the rot) and after (the scrub's reads evict nobody's). OSError when
    it cannot be read; a link is never followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        _advise(fd, os.POSIX_FADV_DONTNEED)
        _advise(fd, os.POSIX_FADV_SEQUENTIAL)
        digest, total = hashlib.sha256(), 0
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while count := os.readv(fd, [buffer]):
            digest.update(view[:count])
            total += count
            throttle.spent(count)
        _advise(fd, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return digest.hexdigest(), total


def _advise(fd: int, advice: int) -> None:
    with contextlib.suppress(OSError):  # advice only: a file system may not take it
        os.posix_fadvise(fd, 0, 0, advice)


def verify(snapshot: Path, expected: Reference, rate: int = 0,
           only: Collection[str] | None = None) -> Findings:
    """Read every file of `snapshot` that has an expected digest (or those of `only`) and compare.
    A file that cannot be read for an I/O error is rotted; one the manifest build published and
    that is gone is rotted too."""
    found, throttle, started, seen = Findings(), _Throttle(rate), time.monotonic(), set()
    for rel, regular in _walk(snapshot):
        if only is not None and rel not in only:
            continue
        seen.add(rel)
        want = expected.digests.get(rel)
        if want is None or not regular:
            if not _generated(rel):
                found.unverified.append(rel)
            continue
        try:
            got, size = sha256_of(snapshot / rel, throttle)
        except OSError as error:
            if error.errno in ROT_ERRNOS:
                log.warning("scrub: %s cannot be read (%s)", rel, error.strerror)
                found.rotted.append(rel)
            else:  # not the disk's doing (permissions, a file removed under us): not compared
                log.warning("scrub: %s not read: %s", rel, error.strerror or error)
                found.unverified.append(rel)
            continue
        found.files += 1
        found.bytes += size
        if got != want:
            found.rotted.append(rel)
    missing = expected.published - seen
    if only is not None:
        missing &= set(only)
    found.rotted += sorted(missing)
    for rel in sorted(missing):
        log.warning("scrub: %s is missing from the published snapshot", rel)
    found.seconds = time.monotonic() - started
    return found


# --- the command ------------------------------------------------------------------------------


def scrub(config: Config, *, retry: bool = True) -> ScrubRecord | None:
    """Read the published snapshot; when anything rotted (or waits from an earlier scrub), the
    repair run and the reading of what it published. None: nothing is published yet."""
    layout = Layout.of(config)
    snapshot = layout.current()
    if snapshot is None:
        log.info("scrub: nothing published yet; nothing to read")
        return None
    started = time.monotonic()
    record = ScrubRecord(started=last_run.now(), snapshot=snapshot.name)
    expected = reference(snapshot)
    found = verify(snapshot, expected, _rate(config))
    record.files, record.bytes, record.reference = found.files, found.bytes, expected.described
    record.unverified = len(found.unverified)
    rotted = sorted({*expected.rotted, *found.rotted})
    _say_read(record, found, rotted)
    if rotted:
        with lock.hold(layout.lock, wait=True):
            record.rotted = list(repair.request(layout, rotted))
    else:
        record.rotted = list(repair.pending(layout))  # found by an earlier scrub, still waiting
    if record.rotted:
        record.repair = PENDING
        _save(config, record, started)  # a crash from here on leaves it pending
        _repair(config, layout, record, retry)
    _save(config, record, started)
    return record


def _rate(config: Config) -> int:
    rate = config.sync.scrub_rate
    return 0 if rate in ("0", "") else bwlimit_bytes_per_second(rate)


def _say_read(record: ScrubRecord, found: Findings, rotted: list[str]) -> None:
    speed = f"{format_bytes(found.bytes / found.seconds)}/s" if found.seconds > 0 else "-"
    head = (f"scrub of {record.snapshot}: {found.files:,} files, {format_bytes(found.bytes)} read "
            f"in {found.seconds:.1f} s ({speed}) against {record.reference}")
    unverified = f"; {len(found.unverified)} without an expected digest (not compared: " \
                 f"{_shown(found.unverified)})" if found.unverified else ""
    if not rotted:
        log.info("%s: nothing rotted%s", head, unverified)
        return
    log.warning("%s: %d rotted (%s)%s; pulling them again", head, len(rotted), _shown(rotted),
                unverified)


def _shown(paths: list[str]) -> str:
    more = f" and {len(paths) - MAX_SHOWN} more" if len(paths) > MAX_SHOWN else ""
    return ", ".join(paths[:MAX_SHOWN]) + more


def _repair(config: Config, layout: Layout, record: ScrubRecord, retry: bool) -> None:
    """The normal run (it reads the repair list), then the repaired files read again."""
    try:
        done = sync_run.run(config, retry=retry)
    except LockHeld as held:  # a scheduled or manual run started since: it does the repair
        record.message = f"a sync started meanwhile and pulls them again ({held.message})"
        log.info("scrub: %s", record.message)
        return
    except SyncerError as error:  # the settings: the run never started
        record.repair, record.message = FAILED, str(error)
        return
    record.repair_bytes_received = done.bytes_received
    if done.snapshot is None:  # nothing published: the list waits for the next run
        record.repair = FAILED
        record.message = str(done.error) if done.error else "the repair run published nothing"
        log.error("scrub: the repair run failed; the next run pulls them again: %s",
                  record.message)
        return
    snapshot = layout.current()
    assert snapshot is not None  # the run just published it
    expected = reference(snapshot)
    again = verify(snapshot, expected, _rate(config), only=set(record.rotted))
    record.repair_snapshot = snapshot.name
    record.unrepaired = sorted({*again.rotted, *(set(expected.rotted) & set(record.rotted))})
    if record.unrepaired:
        record.repair = FAILED
        record.message = (f"{len(record.unrepaired)} file(s) still differ from {expected.described}"
                          f" in snapshot {snapshot.name} ({_shown(record.unrepaired)}): the "
                          "upstream's copy is not the reference's either")
        log.error("scrub: %s", record.message)
        return
    record.repair = REPAIRED
    log.warning("scrub: repaired: snapshot %s holds the %d rotted file(s) whole again (%s "
                "received)", snapshot.name, len(record.rotted),
                format_bytes(done.bytes_received))


def _save(config: Config, record: ScrubRecord, started: float) -> None:
    """The record (a failed write is a warning) and the metrics that show it."""
    record.finished = last_run.now()
    record.duration = round(time.monotonic() - started, 3)
    try:
        scrub_record.write(config, record)
    except OSError as error:
        log.warning("could not record the scrub: %s", error.strerror or error)
    metrics.refresh_recorded(config)
