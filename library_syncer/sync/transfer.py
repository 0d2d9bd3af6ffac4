"""The transfer of a run: what must be fetched (sync/plan.py: the space check, the bases), from
the upstream's revision document or a dry run, then the pull into staging, both over the run's one
SSH connection and retried as sync/retry.py says.
A large run first fetches its largest files over several connections (sync/streams.py), a
large new file in byte ranges (sync/ranges.py).
What arrives must be exactly the revision the origin declares (sync/trace_check.py).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..base.config import SyncConfig
from ..base.errors import SyncerError, Unsigned
from ..base.units import format_bytes
from . import basis, declared, ranges, repair, rsync, runner, staging, streams, trace_check
from . import plan as plans
from .crash_seam import crash_point
from .layout import Layout
from .progress import Reporter
from .retry import Transfer, with_retries
from .sshmux import SharedConnection

log = logging.getLogger("library-syncer")

MAX_ERROR_LINES = 5


@dataclass(kw_only=True)
class RsyncStep:
    """One rsync of the run over its connection; an option the server refuses is dropped for
    the rest of the run (rsync.PeerOptions) and the step run again without it."""

    argv: list[str]
    sync: SyncConfig
    peer: rsync.PeerOptions
    connection: SharedConnection | None
    reporter: Reporter | None = None
    needed: int | None = None  # what the changed files need (the disk-full message)

    def run(self) -> rsync.Stats:
        if self.connection:
            self.connection.ensure()
        return self.peer.run(self.argv, self._once)

    def _once(self, argv: list[str]) -> rsync.Stats:
        stats = rsync.Stats()
        try:
            result = runner.run(runner.Job(argv, on_line=partial(self._line, stats)))
        finally:
            if self.reporter:
                self.reporter.done()
        error = rsync.classify(result.returncode, result.tail, stats, self.sync, self.needed)
        if result.returncode == 24:
            log.warning("some files vanished on the server during the transfer (not an error)")
        if error is not None:
            error.stats = stats  # type: ignore[attr-defined]
            raise error
        return stats

    def _line(self, stats: rsync.Stats, line: str) -> None:
        if stats.feed(line):
            return
        progress = rsync.parse_progress(line)
        if progress is not None:
            if 0 < progress.percent < 100:  # mid-transfer
                crash_point("transfer")
            if self.reporter:
                self.reporter.update(progress)
            return
        log.debug("rsync: %s", line)


@dataclass
class ConnectStep:
    """The run's master connection, before steps that go at once use it."""

    connection: SharedConnection

    def run(self) -> rsync.Stats:
        self.connection.ensure()
        return rsync.Stats()


@dataclass(kw_only=True)
class DeclaredStep:
    """Before anything is pulled: what the upstream declares (its serial, its statement) must
    not be older than what the site publishes, nor (with sync.origin_keys) unsigned: a stale
    or forged upstream costs one small read (sync/declared.py, trace_check.refuse_declared)."""

    sync: SyncConfig
    connection: SharedConnection | None
    published: Path | None
    allow_untraced: bool
    found: declared.Declared | None = None  # what it read (sync/ranges.py names files by it)

    def run(self) -> rsync.Stats:
        if self.connection:
            self.connection.ensure()
        self.judge(declared.fetch(self.sync, self.connection.rsh_options()
                                  if self.connection else []))
        return rsync.Stats()

    def judge(self, found: declared.Declared | None) -> None:
        """Keep `found`, or refuse it (trace_check.refuse_declared: stale, unsigned)."""
        self.found = found
        held = trace_check.read(self.published) if self.published is not None else None
        trace_check.refuse_declared(found, held, self.sync, self.allow_untraced)


@dataclass(kw_only=True)
class PullStep(RsyncStep):
    """The pull: what arrived must be the origin's declared revision, and a basis whose file
    vanished at the server is not published as that file."""

    staging: Path
    published: Path | None
    seeded: dict[str, Seeded]
    allow_untraced: bool
    layout: Layout
    rotted: tuple[str, ...] = ()  # the scrub's repair list (sync/repair.py)

    def run(self) -> rsync.Stats:
        stats = super().run()
        _unseed_vanished(self.staging, list(self.seeded), stats.vanished)
        stats = _fetch_rotted(self, stats)
        stats = _recheck_kept_bases(self, stats)
        try:
            _check_revision(self.staging, self.published, self.sync, self.allow_untraced)
        except SyncerError as error:
            error.stats = stats  # type: ignore[attr-defined]  # the bytes did cross the link
            raise
        return stats


def transfer(sync: SyncConfig, layout: Layout, tree: Path, published: Path | None,
             retry: bool, reporter: Reporter | None, result: Transfer,
             connection: SharedConnection | None, allow_untraced: bool = False) -> Transfer:
    """The upstream's declaration (one small read) and what must be fetched (the space check):
    both from one answer of the upstream where it can, else the declaration and a dry run at
    once; then the pull into the staging `tree`, all over the run's one SSH connection.
    `result` is filled as it goes (attempts and bytes are known even when it fails)."""
    link_dests = [p for p in (published,) if p is not None]
    if any(layout.ova_store.iterdir()):
        link_dests.append(layout.ova_store)
    ssh_extra = connection.rsh_options() if connection else []
    _drop_unincluded(tree, sync.include)
    ranges.resume(tree)
    peer = rsync.PeerOptions(sync)
    declaration = DeclaredStep(sync=sync, connection=connection, published=published,
                               allow_untraced=allow_untraced)
    dry = RsyncStep(argv=rsync.pull_argv(sync, tree, link_dests, dry_run=True,
                                         ssh_extra=ssh_extra),
                    sync=sync, peer=peer, connection=connection)
    plan, document = _declared_then_listed(declaration, dry, sync, result, retry, published,
                                           tree, link_dests)
    crash_point("listed")
    result.needed = plan.transferred_size
    if plan.transferred_size:  # nothing to fetch costs no space: never refuse a no-op run
        staging.check_space(layout, plan.transferred_size, sync.min_free_space)
    log.debug("%s: %d file(s), %d bytes to fetch",
              "the revision document" if plan.from_document else "dry run",
              plan.files_transferred, plan.transferred_size)
    if plan.transferred_size:
        log.info("fetching %d changed file(s), %s (library %s)", plan.files_transferred,
                 format_bytes(plan.transferred_size), format_bytes(plan.total_size))
    seeded = _seed_bases(layout, tree, published, plan.listing) if sync.find_basis else {}
    shares = streams.plan(plan.listing, sync.streams,
                          _cuts(sync, declaration, plan.listing, seeded, document, published,
                                result))
    if reporter:
        over = f" over {len(shares)} connections" if shares else ""
        reporter.status(f"transferring {format_bytes(plan.transferred_size)}{over}")
    # the master is up now, or known unavailable (sessions then connect on their own)
    ssh_extra = connection.rsh_options() if connection else []
    # large runs only; never fails; the first stream over the run's connection, if any
    streams.fetch(sync, tree, link_dests, shares, peer, result, shared=ssh_extra,
                  take_over=plan.from_document)  # a server of 0.6.0 or later
    pull = PullStep(argv=rsync.pull_argv(sync, tree, link_dests, ssh_extra=ssh_extra),
                    sync=sync, peer=peer, connection=connection, reporter=reporter,
                    needed=result.needed, staging=tree, published=published, seeded=seeded,
                    allow_untraced=allow_untraced, layout=layout,
                    rotted=repair.pending(layout))
    result.stats = with_retries(pull, sync, result, retry)
    return _report_transfer(result)


def _declared_then_listed(declaration: DeclaredStep, dry: RsyncStep, sync: SyncConfig,
                          result: Transfer, retry: bool, published: Path | None, tree: Path,
                          link_dests: list[Path]) -> tuple[plans.Plan, Future | None]:
    """The plan, and the read of the upstream's document (for sync/ranges.py) if any.

    Where the upstream answers its declaration and document in one command, the plan comes from
    the document (_told). Otherwise the declaration read and the dry run go at once, as two
    sessions of the run's connection: the listing costs no round trip of its own on a long link
    (about five at 600 ms: seconds), and it moves no file, so a stale or forged upstream still
    costs no transfer. A refusal of the declaration wins over whatever the dry run did. Beside
    them, where a run may cut a large new file (sync/ranges.py) and shares its connection (a
    session, not a login), a third session reads the upstream's document as its differences
    from the published one."""
    connection = declaration.connection
    if connection is not None:  # up first (and retried as any step), so that the sessions share it
        with_retries(ConnectStep(connection), sync, result, retry)
        told = _told(declaration, sync, result, tree, link_dests)
        if told is not None:
            return told
    with ThreadPoolExecutor(max_workers=3) as pool:
        document = pool.submit(_shared_document, sync, connection, published) \
            if connection is not None and ranges.wanted(sync, published) else None
        declared_run = pool.submit(with_retries, declaration, sync, result, retry)
        listed = pool.submit(with_retries, dry, sync, result, retry)
        try:
            declared_run.result()
            return plans.of_dry_run(listed.result()), document
        except BaseException:
            _document(document, result)  # waited for and counted, whatever happened
            raise


def _told(declaration: DeclaredStep, sync: SyncConfig, result: Transfer, tree: Path,
          link_dests: list[Path]) -> tuple[plans.Plan, Future] | None:
    """The plan from the upstream's answer of its declaration and document (declared.ask: one
    session of the run's connection, about two round trips) when the document is the one the
    declaration names; a refusal of the declaration is raised here, before any transfer. None
    when the answer is not to be had or not usable: the caller reads and lists as before."""
    connection = declaration.connection
    if connection is None or connection.unavailable or \
            not plans.documented(sync, declaration.published):
        return None
    told = declared.ask(sync, connection.rsh_options())
    if told is None:
        log.debug("the upstream answers no %s: a dry run lists what to fetch",
                  declared.TRACE_COMMAND)
        return None
    result.count(rsync.Stats(bytes_received=told.received))
    revision = ranges.checked(told.document, told.found)
    if revision is None or revision.origin != told.found.origin:
        log.debug("the upstream's document is not the one it declares: a dry run lists")
        return None
    declaration.judge(told.found)
    made = plans.of_revision(revision, tree, link_dests, sync)
    if made is None:
        log.debug("the upstream's document names a path rsync would not: a dry run lists")
        return None
    document: Future = Future()
    document.set_result((told.document, rsync.Stats()))  # its bytes are counted above
    return made, document


def _shared_document(sync: SyncConfig, connection: SharedConnection, published: Path | None
                     ) -> tuple[bytes | None, rsync.Stats]:
    """The document over the run's master, never over a login of its own."""
    try:
        connection.ensure()
    except SyncerError:  # the other steps say it, and retry
        return None, rsync.Stats()
    if connection.unavailable:
        return None, rsync.Stats()
    return ranges.read_document(sync, connection.rsh_options(), published)


def _document(document: Future | None, result: Transfer) -> bytes | None:
    """The document read's bytes (what crossed counted in the run's record, once)."""
    if document is None:
        return None
    try:
        found, stats = document.result()
    except Exception as error:  # the read is an optimisation: never a reason to fail a run
        log.debug("the upstream's document read failed: %s", error)
        return None
    result.count(stats)
    return found


def _cuts(sync: SyncConfig, declaration: DeclaredStep, listing: list[basis.Listed],
          seeded: dict[str, Seeded], document: Future | None, published: Path | None,
          result: Transfer) -> dict[str, ranges.Cut]:
    """The new files without a basis the streams may fetch in byte ranges (sync/ranges.py).
    The document read with the plan, or (a run without a shared connection) read now, only if
    there is such a file."""
    new = ranges.candidates(listing, seeded)
    found = _document(document, result)
    if new and document is None and ranges.wanted(sync, published):
        found, stats = ranges.read_document(sync, [], published)
        result.count(stats)
    return ranges.cuts(declaration.found, new, found)


@dataclass(frozen=True)
class Seeded:
    """A basis linked into staging at a new file's path."""

    identity: tuple[int, int]  # the basis's (device, inode)
    source: str  # its path in the published snapshot (or the archive store)


def _recheck_kept_bases(pull: PullStep, pulled: rsync.Stats) -> rsync.Stats:
    """A basis rsync left in place had the new file's size and modification time, so the quick
    check took it for the new file (a renamed item; reproducible builds make such pairs of
    different files too). Unless the origin declares the basis's own digest for the new path,
    it is compared again by whole-file checksum, never published under the new name unchecked."""
    kept = [rel for rel, basis_of in sorted(pull.seeded.items())
            if _identity(pull.staging / rel) == basis_of.identity
            and not _declared_same(pull.staging, pull.published, rel, basis_of.source)]
    if not kept:
        return pulled
    log.info("%d new file(s) had their basis's size and time: compared by checksum (%s)",
             len(kept), ", ".join(kept[:3]) + (" …" if len(kept) > 3 else ""))
    return _refetch(pull, pulled, kept, by_checksum=True)


def _refetch(pull: PullStep, pulled: rsync.Stats, paths: list[str], *,
             by_checksum: bool = False) -> rsync.Stats:
    """Fetch `paths` again over the run's connection, each as its differences from the file
    staging holds there (rsync.refetch_argv). Returns the pull's statistics with this fetch's
    bytes added; on failure the error carries both passes' bytes."""
    ssh_extra = pull.connection.rsh_options() if pull.connection else []
    with tempfile.TemporaryDirectory(prefix="library-syncer-refetch-") as folder:
        files_from = Path(folder) / "paths"
        files_from.write_bytes(b"".join(os.fsencode(rel) + b"\0" for rel in paths))
        again = RsyncStep(argv=rsync.refetch_argv(pull.sync, pull.staging, files_from, ssh_extra,
                                                  by_checksum=by_checksum),
                          sync=pull.sync, peer=pull.peer, connection=pull.connection)
        try:
            fetched = again.run()
        except SyncerError as error:  # both passes' bytes crossed the link
            so_far = _added(pulled, getattr(error, "stats", rsync.Stats()))
            error.stats = so_far  # type: ignore[attr-defined]
            raise
    return _added(pulled, fetched)


def _declared_same(tree: Path, published: Path | None, rel: str, source: str) -> bool:
    """The revision pulled declares for `rel` the digest the published revision declared for
    `source` (the basis, checked when it was published): the same bytes, nothing to ask."""
    offered = trace_check.read(tree)
    held = trace_check.read(published) if published is not None else None
    if offered is None or held is None or offered.content is None or held.content is None:
        return False
    new, old = offered.content.files.get(rel), held.content.files.get(source)
    return new is not None and old is not None and new.sha256 == old.sha256


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_revision(tree: Path, published: Path | None, sync: SyncConfig,
                    allow_untraced: bool = False) -> None:
    """The pull must be exactly the origin's declared revision (when it declares one), and not
    an older one than the site publishes (sync/trace_check.py); its bytes are compared after
    the manifest build (sync/content.py)."""
    offered = trace_check.read(tree)
    trace_check.refuse_unsigned(tree, offered, sync)  # with sync.origin_keys only
    if offered is None:  # an upstream without a trace (the Docker-based original): as before,
        held = trace_check.read(published) if published is not None else None
        trace_check.refuse_untraced(held, allow_untraced)  # unless the site had a revision
        return
    problems = trace_check.differences(tree, offered, sync)
    if problems:
        trace_check.refuse_settling(tree, offered, problems)  # not torn: try later
        torn = rsync.TransientError(
            f"what arrived is not revision {offered.serial} of {offered.origin} "
            f"({trace_check.describe(problems)}): the library changed upstream during the "
            "transfer, or the upstream does not serve the revision it declares; nothing is "
            "published", hint="the next run pulls again (the next upstream, if this one "
                              "keeps serving it); see docs/trust.md")
        if sync.origin_keys is not None:  # a signed revision the upstream keeps not serving
            torn.lasting = Unsigned
        raise torn
    trace_check.refuse_rollback(offered, trace_check.read(published) if published else None,
                                sync)
    trace_check.drop_settling_notice(tree)
    log.debug("pulled revision %d of %s", offered.serial, offered.origin)


def _drop_unincluded(tree: Path, include: tuple[str, ...]) -> None:
    """A staging tree left by a run with other sync.include patterns: rsync protects what its
    filters exclude from --delete, so items no longer included are removed here."""
    if not include or not tree.is_dir():
        return
    for item in tree.iterdir():
        if item.is_dir() and not item.is_symlink() and not item.name.startswith(".") and \
                not any(fnmatch.fnmatchcase(item.name, p) for p in include):
            log.info("%s is not in sync.include any more: not published", item.name)
            shutil.rmtree(item)


def _unseed_vanished(tree: Path, seeded: list[str], vanished: list[str]) -> None:
    """A file deleted at the server after the dry run is not sent: its basis, still linked at the
    new path, must not be published as if it were that file."""
    for rel in seeded:
        if any(path == rel or path.endswith("/" + rel) for path in vanished):
            (tree / rel).unlink(missing_ok=True)
            log.info("%s vanished on the server during the transfer: not published", rel)


def _seed_bases(layout: Layout, tree: Path, published: Path | None,
                listing: list[basis.Listed]) -> dict[str, Seeded]:
    """Give every new file an older copy the site has as its basis (renamed items, new
    template versions): rsync then fetches only what differs from it (sync/basis.py).
    Returns each seeded path with its basis."""
    new = [f for f in listing if f.new and f.size >= basis.MIN_SIZE]
    if not new:
        return {}
    pool = basis.candidates(published, layout.ova_store, {f.path for f in listing})
    chosen = basis.choose(new, listing, pool)
    seeded = {rel: Seeded(identity, chosen[rel].rel) for rel in basis.seed(tree, chosen)
              if (identity := _identity(tree / rel)) is not None}
    for rel in seeded:
        log.debug("basis for %s: %s", rel, chosen[rel].rel)
    if seeded:
        log.info("%d new file(s) fetched as differences from a copy this site has: %s", len(seeded),
                 ", ".join(f"{rel} (from {chosen[rel].rel})" for rel in list(seeded)[:3])
                 + (f" and {len(seeded) - 3} more" if len(seeded) > 3 else ""))
    return seeded


def _fetch_rotted(pull: PullStep, pulled: rsync.Stats) -> rsync.Stats:
    """The published files the scrub found rotted (sync/repair.py): the pull linked each from the
    published snapshot like any unchanged file, so each is replaced by a private copy and fetched
    again over the run's connection without --link-dest: only the blocks that differ cross.
    Returns the pull's statistics with this fetch's bytes added."""
    copies = repair.private_copies(pull.layout, pull.staging, pull.published, pull.rotted,
                                   pull.sync.min_free_space) if pull.rotted else []
    if not copies:
        return pulled
    before = pulled.bytes_received
    stats = _refetch(pull, pulled, [c.path for c in copies])
    repair.drop_unfetched(pull.staging, copies)
    log.info("fetched %d rotted file(s) again as their differences: %s received",
             len(copies), format_bytes(stats.bytes_received - before))
    return stats


def _added(stats: rsync.Stats, more: rsync.Stats) -> rsync.Stats:
    """`stats` with the wire and delta figures of `more` added (the files stay the pull's)."""
    stats.bytes_received += more.bytes_received
    stats.bytes_sent += more.bytes_sent
    stats.literal += more.literal
    stats.matched += more.matched
    return stats


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
