"""The human page at the site root: a static index.html rendered from the manifests.

An administrator who opens the URL in a browser sees the library's name and version, the origin
revision the site holds (as `status` names it), when it was last synced, the URL to paste into
vCenter, and every item with its type, size, version, vApp flag and files. It is written into
the snapshot next to lib.json (atomically, before the switch), so it always describes exactly the
snapshot that is served. No JavaScript, no external assets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..base import fsutil, render
from ..base.errors import VerifyError
from ..base.units import format_bytes
from . import published

log = logging.getLogger(__name__)

TYPE_LABELS = {
    "vcsp.ovf": "OVF template",
    "vcsp.iso": "ISO image",
    "vcsp.other": "Other file",
}


@dataclass(frozen=True)
class OriginRevision:
    """The origin's revision a snapshot holds (its trace: sync/trace_check.py reads it)."""

    origin: str
    serial: int
    declared: str = ""  # when the origin declared it (ISO 8601), if known

    def __str__(self) -> str:
        return f"revision {self.serial} of {self.origin}"


@dataclass(frozen=True)
class FileRow:
    name: str
    size: str
    href: str | None  # None when the manifest's href is not a plain relative path


@dataclass(frozen=True)
class ItemRow:
    name: str
    description: str
    type: str
    size: str
    version: str
    vapp: bool | None  # None: not an OVF template
    files: list[FileRow]


def _bytes(item: published.Item) -> int:
    return sum(f.size or 0 for f in item.files)  # a size that is no whole number counts 0


def _item_row(item: published.Item) -> ItemRow:
    return ItemRow(
        name=item.name,
        description=item.description,
        type=TYPE_LABELS.get(item.type, item.type),
        size=format_bytes(_bytes(item)),
        version=item.version,
        vapp=item.vapp,
        files=[FileRow(name=f.name, size=format_bytes(f.size or 0), href=f.href)
               for f in item.files],
    )


def _read(root: Path) -> published.Library:
    """The library, or a VerifyError that says which manifest is missing or broken."""
    try:
        return published.read(root)
    except FileNotFoundError as error:
        raise VerifyError(f"{error.filename}: not found; build the manifests first") from None
    except published.Unreadable as error:
        raise VerifyError(str(error)) from None


def render_index(root: Path, *, url: str, synced_at: datetime | None = None,
                 revision: OriginRevision | None = None) -> str:
    """The page's HTML for the library whose lib.json is in `root`; `revision`: the origin's
    revision it holds (None: its upstream declares none, e.g. the Docker-based original)."""
    library = _read(root)
    items = sorted(library.items, key=lambda item: item.name.lower())
    when = (synced_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return render.render(
        "index.html.j2",
        name=library.name or "",
        version=library.version or "",
        library_id=library.id or "",
        synced_at=when.strftime("%Y-%m-%d %H:%M:%S UTC"),
        synced_iso=when.isoformat(timespec="seconds"),
        url=url,
        revision=revision,
        items=[_item_row(item) for item in items],
        total=format_bytes(sum(_bytes(item) for item in items)),
    )


def write_index(root: Path, *, url: str, synced_at: datetime | None = None,
                revision: OriginRevision | None = None) -> None:
    """Render root/index.html from root/lib.json, items.json and item.json, atomically."""
    root = Path(root)
    fsutil.atomic_write(root / "index.html", render_index(root, url=url, synced_at=synced_at,
                                                          revision=revision))
    log.debug("wrote %s", root / "index.html")
