"""What the last build published: item ids, versions and names, so rebuilds keep them stable.

Read from our state file when usable, completed (or replaced, when the state is lost or
malformed) by the published lib.json, items.json and item.json files. Used by vcsp.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from ..base import revision
from .scan import ITEM_FILE, ITEMS_FILE, LIB_FILE

# 2: files carry (name, size, sha256, token); 1 (read once, on upgrade): (name, size, sha256)
STATE_FORMAT = 2

FileRow = tuple[str, int, str, int]  # name, size, sha256 ("" when unknown), token (0: unknown)


@dataclass
class Record:
    """What we remember of an item: identity, versions and what the subscriber last saw."""

    id: str
    created: str
    version: int
    content_version: int
    name: str = ""
    files: tuple[FileRow, ...] = ()  # sorted by name
    type: str = ""
    description: str = ""
    vapp: bool = False
    parent: str = ""  # type-metadata's libraryIdParent: the library id, should lib.json be lost


@dataclass
class Previous:
    lib_id: str | None = None
    lib_created: str | None = None
    lib_version: int = 0
    lib_content_version: int = 0
    lib_name: str | None = None
    lib_description: str = ""
    items: dict[str, Record] = field(default_factory=dict)
    published: set[str] = field(default_factory=set)  # keys listed in the last items.json


def _int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a version")
    number = int(value)  # type: ignore[call-overload]
    if number < 0:
        raise ValueError("negative version")
    return number


def _token(etag: object) -> int:
    """A served etag as a token (0: not one of ours, e.g. the SHA-256 hex of older releases)."""
    return int(etag) if revision.is_token(etag) else 0  # type: ignore[arg-type]


def _state_file(row: list) -> FileRow:
    if len(row) == 3:  # format 1: the etag was the SHA-256
        return (str(row[0]), _int(row[1]), str(row[2]), 0)
    name, size, sha, token = row
    return (str(name), _int(size), str(sha), _int(token))


def _record_from_item(item: dict) -> tuple[str, Record]:
    self_href = item["selfHref"]
    if not isinstance(self_href, str) or not self_href.endswith("/" + ITEM_FILE):
        raise ValueError(f"selfHref {self_href!r} does not end with /{ITEM_FILE}")
    key = unquote(self_href[: -len(ITEM_FILE) - 1])
    parts = key.split("/")
    if len(parts) > 2 or any(p in ("", ".", "..") or "\\" in p for p in parts):
        raise ValueError(f"selfHref {self_href!r} is not an item folder of this library")
    vapp, parent = False, ""
    for meta in item.get("metadata") or []:
        if isinstance(meta, dict) and meta.get("key") == "type-metadata":
            value = json.loads(meta["value"])
            vapp = str(value.get("isVappTemplate")).lower() == "true"
            parent = str(value.get("libraryIdParent") or "")
    files = tuple(sorted((str(f["name"]), _int(f["size"]), "", _token(f.get("etag")))
                         for f in item["files"]))
    version = _int(item["version"])
    return key, Record(id=str(item["id"]), created=str(item["created"]), version=version,
                       content_version=_int(item.get("contentVersion", version)),
                       name=str(item["name"]), files=files, type=str(item["type"]),
                       description=str(item.get("description", "")), vapp=vapp,
                       parent=parent)


def load_json(path: Path, warnings: list[str], what: str) -> object | None:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        warnings.append(f"{path}: unreadable or not valid JSON ({error}); {what}")
        return None


def _items_from_json(previous: Path, warnings: list[str]) -> tuple[dict[str, Record], bool]:
    data = load_json(previous / ITEMS_FILE, warnings, "ids recovered from the item.json files")
    raw: list = []
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        raw = data["items"]
        found = True
    else:
        found = False
        if data is not None:
            warnings.append(f"{previous / ITEMS_FILE}: has no \"items\" list; rebuilt")
        raw = [load_json(p, warnings, "ignored") for p in sorted(previous.glob("*/" + ITEM_FILE))]
        raw += [load_json(p, warnings, "ignored")
                for p in sorted(previous.glob("*/*/" + ITEM_FILE))]
    records: dict[str, Record] = {}
    for item in raw:
        if item is None:
            continue
        try:
            key, record = _record_from_item(item)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            warnings.append(f"{previous / ITEMS_FILE}: an item entry is malformed ({error!r}); "
                            "rebuilt")
            continue
        records[key] = record
    return records, found


def _previous_from_json(previous: Path, warnings: list[str]) -> Previous:
    prev = Previous()
    lib = load_json(previous / LIB_FILE, warnings, "rebuilt (ids recovered where possible)")
    if isinstance(lib, dict):
        try:
            prev.lib_id = str(lib["id"])
            prev.lib_created = str(lib["created"])
            prev.lib_version = _int(lib["version"])
            prev.lib_content_version = _int(lib.get("contentVersion", 0))
            prev.lib_name = str(lib.get("name", ""))
            prev.lib_description = str(lib.get("description", ""))
        except (KeyError, TypeError, ValueError) as error:
            warnings.append(f"{previous / LIB_FILE}: malformed ({error!r}); rebuilt")
    elif lib is not None:
        warnings.append(f"{previous / LIB_FILE}: not a JSON object; rebuilt")
    prev.items, _ = _items_from_json(previous, warnings)
    prev.published = set(prev.items)
    if prev.lib_id is None:  # lib.json lost: the items still name their library
        parents = sorted({r.parent for r in prev.items.values() if r.parent})
        if len(parents) == 1:
            prev.lib_id = parents[0]
    return prev


def _previous_from_state(path: Path, warnings: list[str]) -> Previous | None:
    data = load_json(path, warnings, "recovering ids and versions from the published JSON")
    if data is None:
        return None
    try:
        if data["format"] not in (1, STATE_FORMAT):
            raise ValueError(f"format {data['format']!r}")
        lib = data["library"]
        prev = Previous(lib_id=lib["id"], lib_created=lib["created"],
                        lib_version=_int(lib["version"]),
                        lib_content_version=_int(lib["contentVersion"]), lib_name=lib["name"],
                        lib_description=lib.get("description", ""))
        for key, raw in data["items"].items():
            prev.items[key] = Record(
                id=raw["id"], created=raw["created"], version=_int(raw["version"]),
                content_version=_int(raw["contentVersion"]), name=raw["name"],
                files=tuple(_state_file(f) for f in raw["files"]), type=raw["type"],
                description=raw["description"], vapp=bool(raw["vapp"]))
        prev.published = set(data["published"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        warnings.append(f"{path}: malformed state ({error!r}); recovering from the published JSON")
        return None
    return prev


def load_previous(state_file: Path, previous: Path, warnings: list[str]) -> Previous:
    """Our state when usable, completed by the published JSON so versions never go backwards."""
    from_json = _previous_from_json(previous, warnings)
    state = _previous_from_state(state_file, warnings)
    if state is None:
        return from_json
    if from_json.lib_id == state.lib_id:
        state.lib_version = max(state.lib_version, from_json.lib_version)
        state.lib_content_version = max(state.lib_content_version, from_json.lib_content_version)
    for key, record in from_json.items.items():
        mine = state.items.get(key)
        if mine is None:
            continue
        if mine.id == record.id:
            mine.version = max(mine.version, record.version)
            mine.content_version = max(mine.content_version, record.content_version)
    return state



def published_digests(state_file: Path) -> dict[str, str] | None:
    """Every file the build that wrote `state_file` published, by its path in the library, with
    the SHA-256 it had then (the scrub's reference where the origin's revision document names
    none). Items left out (broken) are not published: their files are not here. None when the
    state is missing or unreadable (the published JSON carries no digests to fall back on)."""
    prev = _previous_from_state(state_file, [])
    if prev is None:
        return None
    found = {}
    for key in sorted(prev.published):
        record = prev.items.get(key)
        # A folder of several ISOs is one item per ISO, keyed folder/stem (scan.py): the files
        # are in the folder.
        folder = key.partition("/")[0]
        for name, _size, sha256, _token in record.files if record else ():
            if sha256:
                found[f"{folder}/{name}"] = sha256
    return found
