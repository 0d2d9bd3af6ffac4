"""The snapshots in the state folder: which one is published, which exist, in what order, and
how a new one is named. The folder's paths are named in base/statedir.py.

Snapshots are hard-link farms: rsync's --link-dest links every unchanged file to the published
copy, so a snapshot costs only the changed files. Nothing here ever modifies a file in place.

State advances only with the switch: what the next run builds on (the manifest state: ids,
versions, what was published; the names of the snapshots published before) lives inside each
snapshot, in `.library-syncer/` (a dot folder: the web server never serves it, the manifests and
the page never list it). The published snapshot's copy is, by construction, the state of what is
published, whatever instant a run died at. docs/sync.md says what a crash leaves at each step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..base.errors import SyncerError
from ..base.statedir import StateDir


@dataclass(frozen=True)
class Layout(StateDir):
    """The state folder as a run sees it."""

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
        return sorted(names, key=lambda n: (sequence(n), n), reverse=True)

    def unpublished(self) -> list[str]:
        """Snapshots newer than the published one: renamed from staging by a run that died
        before it switched the symlink. Complete, but never published."""
        current = self.current()
        floor = sequence(current.name) if current is not None else -1
        return [n for n in self.snapshot_names()
                if sequence(n) > floor and (current is None or n != current.name)]


def sequence(name: str) -> int:
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
    number = max((sequence(n) for n in names), default=0) + 1
    return f"{number:06d}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
