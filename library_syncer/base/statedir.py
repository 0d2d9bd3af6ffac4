"""The client's state folder (paths.state_dir): the one place its paths are named, and its small
JSON files read and written (atomically: a reader sees the old file or the new, never a mix).

    <state_dir>/
      published -> snapshots/<name>   the symlink the web server serves (switched atomically)
      snapshots/<seq>-<time>/         complete libraries (sync/layout.py, sync/snapshot.py)
      staging/                        the next snapshot being built (sync/staging.py)
      ova/<item>/<name>.ova           OVA archives as the server has them (sync/ova.py)
      cache/                          the manifest engine's hash cache
      last-run.json                   the last run's record (sync/last_run.py)
      last-check.json                 the last change check (sync/poll.py)
      last-report.json                what became of the last report upstream (sync/report.py)
      forwarded                       the site reports a relay last offered upstream
      vcenter.json                    the vCenter request's pending flag and outcome
      scrub.json                      what the last scrub read and found (sync/scrub_record.py)
      repair.json                     rotted published files the next run pulls again
                                      (sync/repair.py; cleared once a snapshot has them whole)
      sync.lock                       the run lock (sync/lock.py)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import fsutil

if TYPE_CHECKING:  # config.py names Config.published_dir through this module
    from .config import Config

S = TypeVar("S", bound="StateDir")


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def of(cls: type[S], config: Config) -> S:
        return cls(Path(config.paths.state_dir))

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
    def last_check(self) -> Path:
        return self.root / "last-check.json"

    @property
    def last_report(self) -> Path:
        return self.root / "last-report.json"

    @property
    def forward_mark(self) -> Path:
        return self.root / "forwarded"

    @property
    def vcenter(self) -> Path:
        return self.root / "vcenter.json"

    @property
    def scrub(self) -> Path:
        return self.root / "scrub.json"

    @property
    def repair_list(self) -> Path:
        return self.root / "repair.json"

    @property
    def lock(self) -> Path:
        return self.root / "sync.lock"

    def switch_leftovers(self) -> list[Path]:
        """Temporary links of a switch of `published` cut short (fsutil.atomic_symlink's)."""
        return list(self.root.glob(f".{self.published.name}.*.tmp"))


def read_json(path: Path) -> dict[str, Any] | None:
    """A state file's object; None when it is missing. OSError and ValueError (not JSON, not an
    object) propagate: the caller says why it cannot tell."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def read_json_or_none(path: Path) -> dict[str, Any] | None:
    """A state file's object; None when it is missing, unreadable or no object."""
    return fsutil.read_json_object(path)


def write_json(path: Path, data: Any, *, indent: int | None = None) -> None:
    fsutil.atomic_write(path, json.dumps(data, indent=indent) + "\n")
