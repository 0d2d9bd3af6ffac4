"""A published snapshot's library as its manifests say, read the way vCenter reads it.

lib.json first, then the items document its `itemsHref` names, and an item's own item.json
(its `selfHref`) when the items document lists no files for it. Every read is bounded, and a
link is followed only when it stays inside the snapshot: the files may be hand-edited or torn.
The one reader for `status`, the metrics and the index page (manifest/vcsp.py writes them).

The origin's revision a snapshot holds is not here: its trace belongs to the server package,
which this layer does not see (sync/trace_check.py reads it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

LIB_FILE = "lib.json"
ITEMS_FILE = "items.json"  # when lib.json names none
MAX_MANIFEST_BYTES = 64 << 20  # items.json of thousands of items is a few MB


class Unreadable(ValueError):
    """A manifest that is there but not what VCSP says: torn, hand-broken, far too large."""

    def __init__(self, path: Path, problem: str, detail: str = "") -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.detail = detail or problem  # the bare reason (a JSON parser's message)


@dataclass(frozen=True)
class File:
    name: str
    size: int | None  # None: the manifest gives no whole number
    href: str | None  # the first of its hrefs; None unless a plain relative path in the library


@dataclass(frozen=True)
class Item:
    name: str
    id: str
    version: str
    type: str  # vcsp.ovf, vcsp.iso, vcsp.other
    description: str
    vapp: bool | None  # None: not an OVF template
    files: tuple[File, ...]


@dataclass(frozen=True)
class Library:
    name: str | None  # None: lib.json says nothing of it
    id: str | None
    version: str | None
    content_version: str | None
    items: tuple[Item, ...]

    @property
    def size(self) -> int | None:
        """Bytes of every file the manifests list (None: a size is not a whole number)."""
        sizes = [f.size for item in self.items for f in item.files]
        return None if None in sizes else sum(s for s in sizes if s is not None)


def read(root: Path) -> Library:
    """The library published in `root`. Raises OSError (FileNotFoundError: nothing built
    there) or Unreadable."""
    root = Path(root)
    lib = _object(root / LIB_FILE)
    items_path = root / unquote(safe_href(lib.get("itemsHref")) or ITEMS_FILE)
    entries = _object(items_path).get("items")
    if not isinstance(entries, list):
        raise Unreadable(items_path, 'no "items" list')
    return Library(name=_text(lib.get("name")), id=_text(lib.get("id")),
                   version=_text(lib.get("version")),
                   content_version=_text(lib.get("contentVersion")),
                   items=tuple(_item(root, entry) for entry in entries
                               if isinstance(entry, dict)))


def safe_href(href: Any) -> str | None:
    """`href` when it is a plain relative link inside the library, else None (a hand-edited
    manifest must not lead a reader, or the page's visitor, anywhere else)."""
    if not isinstance(href, str) or not href:
        return None
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith("/") or ".." in unquote(href).split("/"):
        return None
    return href


def _load(path: Path) -> Any:
    with open(path, "rb") as handle:
        raw = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise Unreadable(path, f"larger than {MAX_MANIFEST_BYTES:,} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as error:  # UnicodeDecodeError is one
        raise Unreadable(path, f"not valid JSON ({error})", str(error)) from None


def _object(path: Path) -> dict[str, Any]:
    found = _load(path)
    if not isinstance(found, dict):
        raise Unreadable(path, "not a JSON object")
    return found


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _item(root: Path, entry: dict[str, Any]) -> Item:
    # vCenter reads an item's files from its item.json when the items document leaves them out.
    href = safe_href(entry.get("selfHref"))
    if "files" not in entry and href:
        entry = {**entry, **_object(root / unquote(href))}
    files = [f for f in entry.get("files") or [] if isinstance(f, dict)]
    return Item(name=str(entry.get("name", "")), id=str(entry.get("id", "")),
                version=str(entry.get("version", "")), type=str(entry.get("type", "")),
                description=str(entry.get("description") or ""), vapp=_is_vapp(entry),
                files=tuple(File(name=str(f.get("name", "")), size=_whole(f.get("size")),
                                 href=safe_href((f.get("hrefs") or [None])[0]))
                            for f in files))


def _is_vapp(item: dict[str, Any]) -> bool | None:
    """An OVF template's type-metadata says whether it is a vApp template."""
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
