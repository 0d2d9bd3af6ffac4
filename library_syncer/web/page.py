"""The human page at the site root: a static index.html rendered from the manifests.

An administrator who opens the URL in a browser sees the library's name and version, the origin
revision the site holds (as `status` names it), when it was last synced, the URL to paste into
vCenter, and every item with its type, size, version, vApp flag and files. It is written into
the snapshot next to lib.json (atomically, before the switch), so it always describes exactly the
snapshot that is served. No JavaScript, no external assets.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..base import fsutil, render
from ..base.errors import VerifyError
from ..base.units import format_bytes

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


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VerifyError(f"{path}: not found; build the manifests first") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise VerifyError(f"{path}: not valid JSON ({error})") from None


def _safe_href(href: Any) -> str | None:
    """Only relative links inside the library (a hand-edited manifest cannot inject a URL)."""
    if not isinstance(href, str) or not href:
        return None
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith("/") or ".." in unquote(href).split("/"):
        return None
    return href


def _is_vapp(item: dict[str, Any]) -> bool | None:
    if item.get("type") != "vcsp.ovf":
        return None
    for entry in item.get("metadata") or []:
        if isinstance(entry, dict) and entry.get("key") == "type-metadata":
            try:
                value = json.loads(entry.get("value") or "{}")
            except ValueError:
                return False
            flag = value.get("isVappTemplate") if isinstance(value, dict) else None
            return flag is True or str(flag).lower() == "true"
    return False


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _item_row(item: dict[str, Any]) -> ItemRow:
    files = [f for f in item.get("files") or [] if isinstance(f, dict)]
    rows = [FileRow(name=str(f.get("name", "")), size=format_bytes(_int(f.get("size"))),
                    href=_safe_href((f.get("hrefs") or [None])[0]))
            for f in files]
    kind = str(item.get("type", ""))
    return ItemRow(
        name=str(item.get("name", "")),
        description=str(item.get("description") or ""),
        type=TYPE_LABELS.get(kind, kind),
        size=format_bytes(sum(_int(f.get("size")) for f in files)),
        version=str(item.get("version", "")),
        vapp=_is_vapp(item),
        files=rows,
    )


def _items(root: Path, items_doc: Any) -> list[dict[str, Any]]:
    """Items from items.json; an entry without files is completed from its own item.json."""
    items = items_doc.get("items") if isinstance(items_doc, dict) else None
    if not isinstance(items, list):
        raise VerifyError(f"{root / 'items.json'}: no \"items\" list")
    complete = []
    for item in items:
        if not isinstance(item, dict):
            continue
        href = _safe_href(item.get("selfHref"))
        if "files" not in item and href:
            item = {**item, **_load(root / unquote(href))}
        complete.append(item)
    return sorted(complete, key=lambda i: str(i.get("name", "")).lower())


def render_index(root: Path, *, url: str, synced_at: datetime | None = None,
                 revision: OriginRevision | None = None) -> str:
    """The page's HTML for the library whose lib.json is in `root`; `revision`: the origin's
    revision it holds (None: its upstream declares none, e.g. the Docker-based original)."""
    library = _load(root / "lib.json")
    if not isinstance(library, dict):
        raise VerifyError(f"{root / 'lib.json'}: not a JSON object")
    items_href = _safe_href(library.get("itemsHref")) or "items.json"
    items = _items(root, _load(root / unquote(items_href)))
    total = sum(_int(f.get("size")) for item in items for f in item.get("files") or []
                if isinstance(f, dict))
    when = (synced_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return render.render(
        "index.html.j2",
        name=str(library.get("name", "")),
        version=str(library.get("version", "")),
        library_id=str(library.get("id", "")),
        synced_at=when.strftime("%Y-%m-%d %H:%M:%S UTC"),
        synced_iso=when.isoformat(timespec="seconds"),
        url=url,
        revision=revision,
        items=[_item_row(item) for item in items],
        total=format_bytes(total),
    )


def write_index(root: Path, *, url: str, synced_at: datetime | None = None,
                revision: OriginRevision | None = None) -> None:
    """Render root/index.html from root/lib.json, items.json and item.json, atomically."""
    root = Path(root)
    fsutil.atomic_write(root / "index.html", render_index(root, url=url, synced_at=synced_at,
                                                          revision=revision))
    log.debug("wrote %s", root / "index.html")
