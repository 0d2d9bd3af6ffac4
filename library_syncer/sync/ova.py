"""OVA items: each item's .ova unpacked into OVF + disks in staging, the archive moved out of
the snapshot into <state>/ova/<item>/ (never published; the next rsync's second --link-dest, so
an unchanged archive is not downloaded again nor unpacked again).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..base import fsutil
from ..base.errors import DiskFull, SyncerError
from ..base.units import format_bytes
from ..manifest import ovf
from .layout import Layout
from .staging import disk_full, free_bytes

MEMBERS_SUFFIX = ".files.json"  # beside an archive in the store: the files it unpacked to


@dataclass
class OvaResult:
    unpacked: list[str]  # item/name.ova archives unpacked this run
    problems: list[str]  # one line each: archives refused


def _members_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def archive_of(layout: Layout, rel: str) -> str | None:
    """The archive (`item/name.ova`, as the server has it) the published file `rel` was
    unpacked from; None when it came as itself."""
    item, _, name = rel.partition("/")
    folder = layout.ova_store / item
    if not name or "/" in name or item.startswith(".") or not folder.is_dir():
        return None
    for record in sorted(folder.glob(f"*{MEMBERS_SUFFIX}")):
        if name in (_members_record(record).get("files") or {}):
            return f"{item}/{record.name.removesuffix(MEMBERS_SUFFIX)}"
    return None


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
            record_path = store_dir / f"{archive.name}{MEMBERS_SUFFIX}"
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
