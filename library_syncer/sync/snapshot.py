"""The client's state layout, the staging tree, and the atomic switch of the published snapshot.

    <state_dir>/
      published -> snapshots/<name>   the symlink the web server serves (switched atomically)
      snapshots/<seq>-<time>/         complete libraries; the previous one is kept for downloads
                                      still in progress (sync.keep_snapshots)
      staging/                        the next snapshot being built; kept after a failure so the
                                      next run resumes (rsync's partial files in .rsync-partial/)
      ova/<item>/<name>.ova           OVA archives as the server has them (unpacked in snapshots,
                                      never published); a second rsync basis so they are not
                                      downloaded again
      cache/                          the manifest engine's hash cache (a cache: truthful
                                      whatever happens to the snapshots)
      last-run.json                   the last run's record (state.py)
      sync.lock                       the run lock (lock.py)

Snapshots are hard-link farms: rsync's --link-dest links every unchanged file to the published
copy, so a snapshot costs only the changed files. Nothing here ever modifies a file in place.

State advances only with the switch: what the next run builds on (the manifest state: ids,
versions, what was published; the names of the snapshots published before) lives inside each
snapshot, in `.library-syncer/` (a dot folder: the web server never serves it, the manifests and
the page never list it). The published snapshot's copy is, by construction, the state of what is
published, whatever instant a run died at. docs/sync.md says what a crash leaves at each step.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import tarfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..base import fsutil
from ..base.config import Config
from ..base.errors import DiskFull, SyncerError
from ..base.units import format_bytes
from ..manifest import ovf

log = logging.getLogger("library-syncer.snapshot")

PARTIAL_DIR = ".rsync-partial"
HIDDEN_DIR = ".library-syncer"  # in a snapshot: its state (vcsp.STATE_DIR_NAME), never served
HISTORY_FILE = "published-before.json"  # the snapshots published before this one, newest first
HISTORY_LENGTH = 20
REMOVING = ".removing-"  # a snapshot being pruned: renamed first, so a crash leaves no doubt
CRASH_ENV = "LIBRARY_SYNCER_CRASH_AT"


def crash_point(point: str) -> None:
    """A test hook: with LIBRARY_SYNCER_CRASH_AT=<point> in the environment, the run kills
    itself with SIGKILL when it reaches that point (with its process group when it leads one,
    as systemd kills a unit's control group), so the tests can prove what a crash at each step
    leaves. Does nothing otherwise. Points: dry-run, transfer, transferred, ovas, manifests,
    renamed, switched, prune."""
    if os.environ.get(CRASH_ENV) != point:
        return
    log.warning("crash point %s reached (%s): killing the run", point, CRASH_ENV)
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def of(cls, config: Config) -> Layout:
        return cls(Path(config.state_dir))

    @property
    def published(self) -> Path:
        return self.root / "published"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def ova_store(self) -> Path:
        return self.root / "ova"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def last_run(self) -> Path:
        return self.root / "last-run.json"

    @property
    def lock(self) -> Path:
        return self.root / "sync.lock"

    def prepare(self) -> None:
        """Create the directories (0755: the web server reads the snapshots)."""
        try:
            for path in (self.root, self.snapshots, self.ova_store, self.cache):
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
        except PermissionError as error:
            raise SyncerError(f"{error.filename}: permission denied",
                              hint="run as the library-syncer user or root, or set "
                                   "paths.state_dir") from None

    def current(self) -> Path | None:
        """The published snapshot's directory, or None before the first publication."""
        try:
            target = os.readlink(self.published)
        except (FileNotFoundError, OSError):
            return None
        path = (self.published.parent / target).resolve()
        return path if path.is_dir() else None

    def snapshot_names(self) -> list[str]:
        """The snapshots, newest first (by sequence); snapshots being removed are not."""
        try:
            names = [p.name for p in self.snapshots.iterdir()
                     if not p.name.startswith(".") and p.is_dir()]
        except FileNotFoundError:
            return []
        return sorted(names, key=lambda n: (_sequence(n), n), reverse=True)

    def unpublished(self) -> list[str]:
        """Snapshots newer than the published one: renamed from staging by a run that died
        before it switched the symlink. Complete, but never published."""
        current = self.current()
        floor = _sequence(current.name) if current is not None else -1
        return [n for n in self.snapshot_names()
                if _sequence(n) > floor and (current is None or n != current.name)]

    def begin(self) -> Path:
        """The staging tree: the one a failed run left (to resume), or a snapshot a run renamed
        but did not publish (taken back: complete, nothing is fetched again), or none yet (rsync
        creates it once the server answered, so a refused connection touches nothing)."""
        for leftover in self.root.glob(".published.*.tmp"):  # a switch cut short
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        if self.staging.is_dir():
            log.info("resuming from the staging tree a previous run left")
            return self.staging
        orphans = self.unpublished()
        if orphans:
            os.replace(self.snapshots / orphans[0], self.staging)
            log.info("taking back snapshot %s as the staging tree (an interrupted run built it "
                     "but never published it)", orphans[0])
        return self.staging


def _sequence(name: str) -> int:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def made_at(name: str) -> str | None:
    """When a snapshot was made, from its name (`000042-20261127T210312Z`), ISO 8601 UTC."""
    try:
        when = datetime.strptime(name.split("-", 1)[1], "%Y%m%dT%H%M%SZ")
    except (IndexError, ValueError):
        return None
    return when.replace(tzinfo=timezone.utc).isoformat(timespec="seconds")


def new_name(layout: Layout) -> str:
    """`<sequence>-<UTC time>`: ordered by the sequence, so a clock step cannot reorder them."""
    names = [p.name for p in layout.snapshots.iterdir()] if layout.snapshots.is_dir() else []
    number = max((_sequence(n) for n in names), default=0) + 1
    return f"{number:06d}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_space(layout: Layout, needed: int, reserve: int) -> None:
    """Refuse to start a transfer that cannot fit (plus sync.min_free_space kept free)."""
    free = free_bytes(layout.root)
    if free < needed + reserve:
        raise DiskFull(
            f"not enough disk space in {layout.root}: the changed files need "
            f"{format_bytes(needed)} ({needed:,} bytes) and sync.min_free_space keeps "
            f"{format_bytes(reserve)} free, but only {format_bytes(free)} is free",
            hint="free some space (or lower sync.min_free_space); the published library is "
                 "untouched")


def disk_full(error: OSError, where: str) -> DiskFull:
    return DiskFull(f"{where}: no space left on device",
                    hint="free some space; the published library is untouched")


def remove_partials(tree: Path) -> None:
    """rsync's partial dirs that a successful transfer left empty must not be published."""
    for dirpath, dirnames, _ in os.walk(tree):
        if PARTIAL_DIR in dirnames:
            shutil.rmtree(Path(dirpath) / PARTIAL_DIR, ignore_errors=True)
            dirnames.remove(PARTIAL_DIR)


def published_before(layout: Layout, snapshot: Path) -> list[str]:
    """The snapshots published before `snapshot`, newest first: its own record, written into it
    before it was published. A snapshot from a version without that record: the older ones by
    sequence (the best guess there is)."""
    try:
        names = json.loads((snapshot / HIDDEN_DIR / HISTORY_FILE).read_text())
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return names
        log.warning("%s: not a list of snapshot names; guessing from the sequence numbers",
                    snapshot / HIDDEN_DIR / HISTORY_FILE)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable (%s); guessing from the sequence numbers",
                    snapshot / HIDDEN_DIR / HISTORY_FILE, error)
    return [n for n in layout.snapshot_names() if _sequence(n) < _sequence(snapshot.name)]


def publish(layout: Layout, name: str) -> Path:
    """Turn staging into snapshots/<name> and switch `published` to it, atomically. The
    snapshot carries the names of those published before it (what prune keeps)."""
    target = layout.snapshots / name
    remove_partials(layout.staging)
    current = layout.current()
    history = [current.name, *published_before(layout, current)] if current is not None else []
    try:
        hidden = layout.staging / HIDDEN_DIR
        hidden.mkdir(mode=0o755, exist_ok=True)
        fsutil.atomic_write(hidden / HISTORY_FILE, json.dumps(history[:HISTORY_LENGTH]) + "\n")
        os.replace(layout.staging, target)
        fsutil.fsync_dir(layout.snapshots)
        crash_point("renamed")
        fsutil.atomic_symlink(os.path.join(layout.snapshots.name, name), layout.published)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise disk_full(error, f"switching {layout.published}") from None
        raise
    crash_point("switched")
    return target


def prune(layout: Layout, keep: int) -> list[str]:
    """Remove old snapshots: keep the published one and the `keep - 1` published before it
    (from its own record). Snapshots that were never published (a run died between the rename
    and the switch) and snapshots a crash left half removed go too. Each is renamed to a dot
    name first, so what a crash leaves is recognisably garbage. Returns the names removed; one
    that cannot be removed is a warning, not a name in the list."""
    current = layout.current()
    if current is None:
        return []
    keep_names = {current.name, *published_before(layout, current)[:max(1, keep) - 1]}
    doomed = [n for n in layout.snapshot_names() if n not in keep_names]
    doomed += sorted(p.name for p in layout.snapshots.glob(REMOVING + "*"))
    removed = []
    for name in doomed:
        path = layout.snapshots / name
        try:
            if not name.startswith(REMOVING):
                path = path.rename(layout.snapshots / (REMOVING + name))
            crash_point("prune")
            shutil.rmtree(path)
        except OSError as error:
            log.warning("could not remove old snapshot %s: %s", name,
                        error.strerror or error)
            continue
        removed.append(name.removeprefix(REMOVING))
    return removed


# --- OVA items --------------------------------------------------------------------------------


@dataclass
class OvaResult:
    unpacked: list[str]  # item/name.ova archives unpacked this run
    problems: list[str]  # one line each: archives refused


def _members_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _link_previous(record: dict, archive: Path, store_copy: Path, published: Path | None,
                   item: str) -> bool:
    """Link the files of an unchanged archive from the published snapshot (no re-unpacking)."""
    if published is None or not store_copy.exists() or not record.get("files"):
        return False
    if archive.stat().st_ino != store_copy.stat().st_ino:  # rsync fetched a new archive
        return False
    sources = {}
    for name, inode in record["files"].items():
        source = published / item / name
        try:
            if source.stat().st_ino != inode:
                return False
        except OSError:
            return False
        sources[name] = source
    for name, source in sources.items():
        dest = archive.parent / name
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        os.link(source, dest)
    return True


def _unpack(layout: Layout, archive: Path, item: Path, rel: str, result: OvaResult
            ) -> list[Path]:
    # A full disk must stop the run, not be mistaken for a bad archive (which would publish the
    # library without this item).
    needed = archive.stat().st_size
    if free_bytes(layout.root) < needed:
        raise DiskFull(f"not enough disk space in {layout.root} to unpack {rel}: it needs "
                       f"{format_bytes(needed)} ({needed:,} bytes), "
                       f"{format_bytes(free_bytes(layout.root))} is free",
                       hint="free some space; the published library is untouched")
    try:
        return ovf.unpack_ova(archive, item)
    except DiskFull as error:
        raise DiskFull(f"unpacking {rel}: {error.message}",
                       hint="free some space; the published library is untouched") from None
    except (SyncerError, OSError) as error:
        if _out_of_space(error):
            raise disk_full(error if isinstance(error, OSError) else OSError(errno.ENOSPC, ""),
                            f"unpacking {rel}") from None
        if isinstance(error, OSError):
            raise  # the state directory's fault, not the archive's: the run's error
        result.problems.append(f"item {item.name!r} left out: {error}")
        return []
    except (TypeError, ValueError, tarfile.TarError, EOFError) as error:
        # tarfile's own failures on malformed headers: the archive's fault, one item's cost
        result.problems.append(f"item {item.name!r} left out: {rel}: not a valid OVA (tar) "
                               f"archive: {error}")
        return []


def _out_of_space(error: BaseException) -> bool:
    """ENOSPC anywhere in the chain (ovf wraps its OSErrors `from None`: __context__ keeps
    them)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        current = current.__cause__ or current.__context__
    return False


def prepare_ovas(layout: Layout, staging: Path, published: Path | None) -> OvaResult:
    """Unpack every item's .ova into OVF + disks and move the archive out of the snapshot.

    The archive goes to <state>/ova/<item>/, which the next rsync uses as a --link-dest: an
    unchanged archive is hard-linked back (no download) and its files are linked from the
    published snapshot (no unpacking); a changed one is delta-transferred against it.
    """
    result = OvaResult([], [])
    seen: set[Path] = set()
    for item in sorted(p for p in staging.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for archive in sorted(f for f in item.iterdir()
                              if f.suffix.lower() == ".ova" and f.is_file()):
            rel = f"{item.name}/{archive.name}"
            store_dir = layout.ova_store / item.name
            store_dir.mkdir(mode=0o755, exist_ok=True)
            store_copy = store_dir / archive.name
            record_path = store_dir / f"{archive.name}.files.json"
            seen.update({store_copy, record_path})
            if not _link_previous(_members_record(record_path), archive, store_copy, published,
                                  item.name):
                files = _unpack(layout, archive, item, rel, result)
                record = {"files": {f.name: f.stat().st_ino for f in files}}
                fsutil.atomic_write(record_path, json.dumps(record), sync_dir=False)
                if files:
                    result.unpacked.append(rel)
            if store_copy.exists() and store_copy.stat().st_ino == archive.stat().st_ino:
                archive.unlink()  # rename() between two links of one file does nothing
            else:
                os.replace(archive, store_copy)
    for path in layout.ova_store.rglob("*"):  # archives no longer on the server
        if path.is_file() and path not in seen:
            path.unlink()
    for directory in layout.ova_store.iterdir():
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    return result
