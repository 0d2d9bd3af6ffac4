"""The atomic switch of the published snapshot, and the pruning of old ones.

Staging becomes snapshots/<name> (a rename) and `published` is switched to it (a symlink
replaced atomically); each snapshot records the names of those published before it, which is
what prune keeps (sync.keep_snapshots).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

from ..base import fsutil
from .crash_seam import crash_point
from .layout import Layout, sequence
from .staging import disk_full, remove_partials

log = logging.getLogger("library-syncer.snapshot")

HIDDEN_DIR = ".library-syncer"  # in a snapshot: its state (vcsp.STATE_DIR_NAME), never served
HISTORY_FILE = "published-before.json"  # the snapshots published before this one, newest first
HISTORY_LENGTH = 20
REMOVING = ".removing-"  # a snapshot being pruned: renamed first, so a crash leaves no doubt


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
    return [n for n in layout.snapshot_names() if sequence(n) < sequence(snapshot.name)]


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
