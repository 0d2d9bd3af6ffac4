"""The staging tree: the next snapshot being built, resumed after a failure (rsync's partial
files in .rsync-partial/), or taken back from a snapshot a run renamed but never published; and
the free space a transfer needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from ..base.errors import DiskFull
from ..base.units import format_bytes
from .layout import Layout
from .rsync import PARTIAL_DIR

log = logging.getLogger("library-syncer.snapshot")


def begin(layout: Layout) -> Path:
    """The staging tree: the one a failed run left (to resume), or a snapshot a run renamed
    but did not publish (taken back: complete, nothing is fetched again), or none yet (rsync
    creates it once the server answered, so a refused connection touches nothing)."""
    for leftover in layout.switch_leftovers():
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    if layout.staging.is_dir():
        log.info("resuming from the staging tree a previous run left")
        return layout.staging
    orphans = layout.unpublished()
    if orphans:
        os.replace(layout.snapshots / orphans[0], layout.staging)
        log.info("taking back snapshot %s as the staging tree (an interrupted run built it "
                 "but never published it)", orphans[0])
    return layout.staging


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
