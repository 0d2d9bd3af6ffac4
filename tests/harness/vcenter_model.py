"""A subscriber that applies vCenter's rules to a published library: lib.json → items.json →
each item's files, with its own stored state, reporting what it would download.

Separate from the engine on purpose: it imports nothing from library_syncer, so a rule the
engine gets wrong is not shared by the model. Each rule names its source; where no public
source says what vCenter does, the rule is marked ASSUMED and the model is strict both ways
(it downloads on any difference, and reports a *violation* where a subscriber using the other
plausible rule would miss a change).

Sources:
- [127] lamw/vmware-scripts issue #127, cls.log of vCenter 8: `VcspGetFileActivity.phaseBegin` →
  `VcspSyncStrategy.isContentOutdated` → `java.lang.Long.valueOf(etag)`; a hex etag fails the
  item's sync with NumberFormatException.
- [JDK] java.lang.Long.parseLong/valueOf (Java SE 8+ docs): an optional '+' or '-', then at least
  one decimal digit (Character.digit: any Unicode decimal digit), the value within
  [-2**63, 2**63 - 1]; anything else (empty, spaces, '0x', a fraction) throws.
- [lamw] lamw/vmware-scripts python/make_vcsp_2022.py (VMware's sample VCSP publisher):
  versions as decimal strings, item names cut to 80 characters, hrefs relative to the library
  root, `generationNum` written beside the etag as a JSON number.
- [API] vSphere Automation API, content library model: "the set of library items is always the
  same as those in the source library"; an item's version "is same as in publisher library".
- [issue20] this project's issue 20 (measured): vCenter acts only when lib.json's version moves.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
MAX_NAME = 80  # [lamw] "max size of name is 80 chars"

Fetch = Callable[[str], bytes]  # href relative to the library root → body (FileNotFoundError)


class JavaNumberFormatError(ValueError):
    pass


def long_value_of(text: object) -> int:
    """java.lang.Long.valueOf(String) [JDK]: what vCenter applies to every etag [127]."""
    if not isinstance(text, str) or not text:
        raise JavaNumberFormatError(f"For input string: {text!r}")
    sign, digits = (text[0], text[1:]) if text[0] in "+-" else ("", text)
    if not digits:
        raise JavaNumberFormatError(f"For input string: {text!r}")
    value = 0
    for char in digits:
        digit = unicodedata.decimal(char, None)  # Character.digit(c, 10)
        if digit is None:
            raise JavaNumberFormatError(f"For input string: {text!r}")
        value = value * 10 + digit
    value = -value if sign == "-" else value
    if not LONG_MIN <= value <= LONG_MAX:
        raise JavaNumberFormatError(f"For input string: {text!r}")
    return value


def dir_fetch(root: Path) -> Fetch:
    """Read a published snapshot folder as the web server serves it."""
    base = Path(root).resolve()

    def fetch(href: str) -> bytes:
        path = (base / unquote(href)).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            raise FileNotFoundError(href)
        return path.read_bytes()
    return fetch


@dataclass
class StoredFile:
    etag: int
    size: int
    sha256: str


@dataclass
class StoredItem:
    name: str
    version: int
    content_version: int
    files: dict[str, StoredFile] = field(default_factory=dict)


@dataclass
class Result:
    """One synchronisation: what was downloaded, the errors vCenter would show, and the
    violations (rules a publisher must keep for every vCenter behaviour we cannot observe)."""

    downloads: list[tuple[str, str]] = field(default_factory=list)  # (item name, file name)
    errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    looked: bool = False  # lib.json's version moved, so the items were read
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class Subscriber:
    """One subscribed library in a vCenter; `sync(fetch)` is one synchronisation."""

    def __init__(self) -> None:
        self.library_id: str | None = None
        self.version: int | None = None
        self.content_version: int | None = None
        self.items: dict[str, StoredItem] = {}  # item id → what this vCenter holds

    def sync(self, fetch: Fetch) -> Result:
        result = Result()
        try:
            lib = json.loads(fetch("lib.json"))
        except (FileNotFoundError, ValueError) as error:
            result.errors.append(f"lib.json: {error}")
            return result
        try:
            version = long_value_of(lib.get("version"))
            content_version = long_value_of(lib.get("contentVersion", lib.get("version")))
        except JavaNumberFormatError as error:
            result.errors.append(f"lib.json: {error}")
            return result
        if self.library_id is not None and lib.get("id") != self.library_id:
            # ASSUMED: a subscription is to one library; another id is another library.
            result.violations.append(f"lib.json: library id {self.library_id} became "
                                     f"{lib.get('id')}")
        if self.version is not None:
            if version < self.version:
                result.violations.append(f"lib.json: version went back {self.version} → "
                                         f"{version}")
            if content_version < (self.content_version or 0):
                result.violations.append("lib.json: contentVersion went back")
            if version == self.version:  # [issue20] nothing moved: vCenter stops here
                self._check_unmoved(fetch, lib, result)
                return result
        result.looked = True
        self._sync_items(fetch, lib, result)
        if not result.errors:
            self.library_id, self.version = lib.get("id"), version
            self.content_version = content_version
        return result

    def _items(self, fetch: Fetch, lib: dict, result: Result) -> list[dict] | None:
        href = lib.get("itemsHref", "items.json")
        try:
            _relative(href)
            data = json.loads(fetch(href))
        except (FileNotFoundError, ValueError) as error:
            result.errors.append(f"{href}: {error}")
            return None
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list):
            result.errors.append(f"{href}: no items list")
            return None
        return items

    def _check_unmoved(self, fetch: Fetch, lib: dict, result: Result) -> None:
        """The version did not move: a publisher that changed anything anyway would leave
        this vCenter behind for good [issue20]."""
        items = self._items(fetch, lib, result)
        if items is None:
            return
        now = {i.get("id"): i for i in items}
        if set(now) != set(self.items):
            result.violations.append("items changed but lib.json's version did not move")
            return
        for item_id, item in now.items():
            stored = self.items[item_id]
            etags = {f.get("name"): f.get("etag") for f in item.get("files", [])}
            if etags != {n: str(f.etag) for n, f in stored.files.items()} or \
                    item.get("version") != str(stored.version):
                result.violations.append(f"{item.get('name')}: changed but lib.json's version "
                                         "did not move")

    def _sync_items(self, fetch: Fetch, lib: dict, result: Result) -> None:
        items = self._items(fetch, lib, result)
        if items is None:
            return
        names: set[str] = set()
        seen: set[str] = set()
        for item in items:
            name, item_id = item.get("name"), item.get("id")
            if not isinstance(name, str) or not name or len(name) > MAX_NAME:
                result.errors.append(f"item {name!r}: name empty or over {MAX_NAME} "
                                     "characters")  # [lamw]
                continue
            if name in names:  # ASSUMED: item names are unique within a library
                result.errors.append(f"item {name!r}: duplicate name")
                continue
            if not isinstance(item_id, str) or item_id in seen:
                result.errors.append(f"item {name!r}: missing or duplicate id")
                continue
            names.add(name)
            seen.add(item_id)
            self._sync_item(fetch, item, result)
        for item_id in sorted(set(self.items) - seen):  # [API] the set is the publisher's
            result.removed.append(self.items.pop(item_id).name)

    def _sync_item(self, fetch: Fetch, item: dict, result: Result) -> None:
        name, item_id = item["name"], item["id"]
        try:
            version = long_value_of(item.get("version"))
            content_version = long_value_of(item.get("contentVersion", item.get("version")))
        except JavaNumberFormatError as error:
            result.errors.append(f"item {name!r}: {error}")
            return
        stored = self.items.get(item_id)
        if stored is not None:
            if version < stored.version or content_version < stored.content_version:
                result.violations.append(f"item {name!r}: version went back")
            if version == stored.version:
                # ASSUMED: an item whose version did not move is not read again.
                etags = {f.get("name"): f.get("etag") for f in item.get("files", [])}
                if etags != {n: str(f.etag) for n, f in stored.files.items()}:
                    result.violations.append(f"item {name!r}: files changed, version did not")
                return
        self_href = item.get("selfHref")
        try:
            _relative(self_href)
            detail = json.loads(fetch(self_href))
        except (FileNotFoundError, ValueError, TypeError) as error:
            result.errors.append(f"item {name!r}: selfHref {self_href!r}: {error}")
            return
        if detail != item:
            result.violations.append(f"item {name!r}: item.json differs from items.json")
        files: dict[str, StoredFile] = {}
        old = stored.files if stored else {}
        for entry in item.get("files", []):
            got = self._sync_file(fetch, name, entry, old, stored is not None and
                                  content_version == stored.content_version, result)
            if got is None:
                return  # the item's sync fails as a whole [127]
            files[entry["name"]] = got
        if stored is None:
            result.added.append(name)
        self.items[item_id] = StoredItem(name, version, content_version, files)

    def _sync_file(self, fetch: Fetch, item_name: str, entry: dict, old: dict[str, StoredFile],
                   same_content_version: bool, result: Result) -> StoredFile | None:
        file_name = entry.get("name")
        try:
            etag = long_value_of(entry.get("etag"))  # [127] isContentOutdated
        except JavaNumberFormatError as error:
            result.errors.append(f"item {item_name!r}: {file_name}: {error}")
            return None
        generation = entry.get("generationNum")
        if generation is not None and long_value_of(str(generation)) != etag:
            result.violations.append(f"{item_name}/{file_name}: generationNum is not the etag")
        stored = old.get(file_name)
        if stored is not None:
            if etag < stored.etag:  # a subscriber comparing with ">" would miss the change
                result.violations.append(f"{item_name}/{file_name}: etag went back "
                                         f"{stored.etag} → {etag}")
            if etag == stored.etag:  # ASSUMED: not outdated; not downloaded again
                if entry.get("size") != stored.size:
                    result.violations.append(f"{item_name}/{file_name}: size changed, etag did "
                                             "not")
                return stored
            if same_content_version:
                result.violations.append(f"{item_name}/{file_name}: etag moved but the item's "
                                         "contentVersion did not")
        hrefs = entry.get("hrefs")
        if not isinstance(hrefs, list) or not hrefs:
            result.errors.append(f"item {item_name!r}: {file_name}: no hrefs")
            return None
        try:
            _relative(hrefs[0])
            body = fetch(hrefs[0])
        except (FileNotFoundError, ValueError) as error:
            result.errors.append(f"item {item_name!r}: {file_name}: {error}")
            return None
        if len(body) != entry.get("size"):
            result.errors.append(f"item {item_name!r}: {file_name}: {len(body)} bytes, the "
                                 f"manifest says {entry.get('size')}")
            return None
        result.downloads.append((item_name, file_name))
        return StoredFile(etag, len(body), hashlib.sha256(body).hexdigest())


def _relative(href: object) -> None:
    """[lamw] hrefs are relative to the library root: no scheme, no absolute path, no '..'."""
    if not isinstance(href, str) or not href:
        raise ValueError(f"href {href!r} is not a string")
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith("/") or \
            ".." in unquote(parts.path).split("/"):
        raise ValueError(f"href {href!r} leaves the library")


def same_content(subscriber: Subscriber, root: Path) -> list[str]:
    """Every stored file whose bytes differ from what the library now serves (the end state a
    subscriber must reach: the publisher's content, byte for byte)."""
    fetch = dir_fetch(root)
    items = json.loads(fetch("items.json"))["items"]
    wrong = []
    for item in items:
        stored = subscriber.items.get(item["id"])
        if stored is None:
            wrong.append(f"{item['name']}: not held")
            continue
        for entry in item["files"]:
            held = stored.files.get(entry["name"])
            body = fetch(entry["hrefs"][0])
            if held is None or held.sha256 != hashlib.sha256(body).hexdigest():
                wrong.append(f"{item['name']}/{entry['name']}: stale")
    return wrong
