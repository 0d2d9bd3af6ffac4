"""The repair list: published files the scrub (sync/scrub.py) found rotted, pulled again by the
next run, never repaired in place.

The run's pull links each from the published snapshot like any unchanged file (rot included:
--link-dest matches on size and mtime, and even links over a destination file that matches). So
after the pull each one's link in staging is replaced by a private copy (a new file: the
published inode is never written) whose mtime rsync's quick check cannot match, and the file is
fetched again into it without --link-dest (sync/transfer.py): only the blocks that differ cross.
A file unpacked from an OVA is repaired through its archive (fetched again the same way, then
unpacked anew). The new snapshot is built and switched as for any run; the list is cleared only
after the switch, so a run that fails or dies before leaves it for the next one.

<state>/repair.json: {"format": 1, "paths": ["ubuntu/ubuntu-disk1.vmdk", …], "since": "<time>"}.
It changes only under the run lock.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from ..base import statedir
from ..base.statedir import StateDir
from . import ova
from .layout import Layout
from .staging import check_space, disk_full

log = logging.getLogger("library-syncer")

FORMAT = 1
MAX_PATHS = 100_000  # far above any library's rotted files; bounds what a run reads
CHUNK = 4 << 20  # the copy's one buffer


@dataclass(frozen=True)
class Copy:
    """A private copy placed in staging: the path fetched again (as the server has it) and the
    modification time given to the copy (what rsync's quick check must not match)."""

    path: str
    mtime_ns: int


def _valid(path: object) -> bool:
    if not isinstance(path, str) or not path or path.startswith("/") or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in PurePosixPath(path).parts) and \
        not path.endswith("/")


def pending(state: StateDir) -> tuple[str, ...]:
    """The paths waiting to be pulled again (none: no list, or an unreadable one, said)."""
    try:
        data = statedir.read_json(state.repair_list)
    except (OSError, ValueError) as error:
        log.warning("%s is unreadable (%s); the scrub finds its files again", state.repair_list,
                    getattr(error, "strerror", None) or error)
        return ()
    paths = data.get("paths") if data and data.get("format") == FORMAT else None
    if not isinstance(paths, list):
        return ()
    return tuple(sorted({p for p in paths[:MAX_PATHS] if _valid(p)}))


def since(state: StateDir) -> str | None:
    """When the oldest entry of the list was found."""
    data = statedir.read_json_or_none(state.repair_list)
    found = data.get("since") if data else None
    return found if isinstance(found, str) else None


def request(state: StateDir, paths: Iterable[str]) -> tuple[str, ...]:
    """Add `paths` to the list (the caller holds the run lock); the whole list."""
    wanted = sorted({*pending(state), *(p for p in paths if _valid(p))})
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    statedir.write_json(state.repair_list, {"format": FORMAT, "paths": wanted,
                                            "since": since(state) or now}, indent=2)
    return tuple(wanted)


def done(state: StateDir) -> None:
    """After the switch: the snapshot now published holds every listed file as pulled again."""
    with contextlib.suppress(FileNotFoundError):
        state.repair_list.unlink()


def _same_file(a: Path, b: Path) -> bool:
    try:
        one, other = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return stat.S_ISREG(one.st_mode) and (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def _source(layout: Layout, tree: Path, published: Path, rel: str) -> tuple[str, Path] | None:
    """What to fetch again for the rotted published file `rel`, and the copy of it the site has:
    the file itself when the pull left it linked to the published one (the origin did not change
    it), else the OVA archive it was unpacked from, when the pull left that linked to the OVA
    store's. None: the pull brought new content, or the file is gone."""
    if _same_file(tree / rel, published / rel):
        return rel, published / rel
    archive = ova.archive_of(layout, rel)
    if archive is not None and _same_file(tree / archive, layout.ova_store / archive):
        return archive, layout.ova_store / archive
    return None


def private_copies(layout: Layout, tree: Path, published: Path | None,
                   rotted: Iterable[str], reserve: int) -> list[Copy]:
    """Replace each rotted file's link in staging by a private copy, the basis rsync fetches the
    differences against; the copies made. `reserve`: sync.min_free_space, kept free (a copy and
    rsync's new file need twice the file's size)."""
    if published is None:
        return []
    sources: dict[str, Path] = {}
    for rel in rotted:
        found = _source(layout, tree, published, rel)
        if found is not None:
            sources.setdefault(*found)
    check_space(layout, 2 * sum(_size(p) for p in sources.values()), reserve)
    return [_private_copy(source, tree / rel, rel) for rel, source in sources.items()]


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _private_copy(source: Path, dest: Path, rel: str) -> Copy:
    """`dest` becomes a new file with `source`'s bytes and a modification time rsync's quick
    check cannot match (0; a second if the source's is 0). A source that cannot be read (the rot
    may be a bad sector) gives no basis: the file is fetched whole."""
    mtime_ns = 0 if os.lstat(source).st_mtime_ns != 0 else 1_000_000_000
    dest.unlink()  # the link to the published file: never written through
    try:
        reader = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        return _no_basis(rel, error, mtime_ns)
    try:
        writer = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644)
        try:
            while True:
                try:
                    block = os.read(reader, CHUNK)
                except OSError as error:
                    os.close(writer)
                    dest.unlink()
                    return _no_basis(rel, error, mtime_ns)
                if not block:
                    break
                _write_all(writer, block, rel)
            os.utime(writer, ns=(mtime_ns, mtime_ns))
        finally:
            with contextlib.suppress(OSError):
                os.close(writer)
    finally:
        os.close(reader)
    return Copy(rel, mtime_ns)


def _write_all(fd: int, block: bytes, rel: str) -> None:
    view = memoryview(block)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(error, f"copying {rel} to repair it") from None
        raise


def _no_basis(rel: str, error: OSError, mtime_ns: int) -> Copy:
    log.warning("%s cannot be read (%s); fetched whole", rel, error.strerror or error)
    return Copy(rel, mtime_ns)


def drop_unfetched(tree: Path, copies: Iterable[Copy]) -> None:
    """A copy rsync did not replace (the file vanished at the server meanwhile) holds the rot:
    it is never published."""
    for copy in copies:
        path = tree / copy.path
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(path).st_mtime_ns == copy.mtime_ns:
                path.unlink()
                log.warning("%s was not fetched again (gone at the server?); not published",
                            copy.path)
