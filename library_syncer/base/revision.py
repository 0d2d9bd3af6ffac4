"""The revision document: the one statement of what revision N of an origin's library holds.

It is the origin's trace (`<library>/.library-syncer/trace.json`, written by server/trace.py),
read by every node below it (sync/trace_check.py, manifest/vcsp.py). The document grew once; its
first part is untouched so that sites released before the growth still read it:

    {"format": 1, "origin": "hq", "serial": 42, "time": "…",
     "files": [[path, size, mtime_ns], …],                      ← format 1 (every release reads it)
     "content": {"format": 1,                                   ← added: its own version
                 "files": [[path, sha256_hex, changed_serial], …],
                 "items": [[folder, first_serial, removed_serial], …]}}

- `changed_serial` of a file: the serial at which that path last got other content (by SHA-256);
  a new mtime over the same bytes keeps it.
- an item is a top-level folder: `first_serial` is the serial at which it (last) appeared,
  `removed_serial` the serial at which a file last left it (0: none ever did), so that an item's
  tokens can move when its newest file goes.

A format-1 reader (`server/trace.py:Trace.from_json` as released) checks `"format": 1` and rows
of exactly three values and ignores other top-level keys, so the `content` key is invisible to
it. The bytes are canonical (keys sorted, no spaces, ASCII, rows sorted, one final newline), so
the same revision always serialises to the same bytes: the next trust work signs them.

It also holds the token rules every manifest value follows (docs/manifest.md, "Tokens"), because
the origin's serials are what they are derived from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field

FORMAT = 1  # the trace (listing) part; never changes: old sites demand exactly 1
CONTENT_FORMAT = 1  # the `content` part; a reader ignores a content of a format it does not know
MAX_SERIAL = 10**15  # far above any real serial; keeps BASE + serial inside a Java long
BASE = 10**18  # every token derived from a serial is above every token derived from a time
LONG_MAX = 2**63 - 1  # java.lang.Long.MAX_VALUE: vCenter parses every etag with Long.valueOf
CHUNK = 4 << 20
ORIGIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # as server.name and site names

Listing = dict[str, tuple[int, int]]  # path → (size, mtime_ns)
# uuid5 namespace of every id this tool derives (a fixed random uuid, never to change).
NAMESPACE = uuid.UUID("6f1c9d0e-5b7a-4c1e-9a53-2f7d8e4b1a60")


@dataclass(frozen=True)
class FileFact:
    sha256: str
    changed: int  # serial at which this path last got other content


@dataclass(frozen=True)
class ItemFact:
    first: int  # serial at which the folder (last) appeared
    removed: int  # serial at which a file last left the folder (0: never)


@dataclass(frozen=True)
class Content:
    files: dict[str, FileFact] = field(default_factory=dict)
    items: dict[str, ItemFact] = field(default_factory=dict)

    def to_obj(self) -> dict:
        return {"format": CONTENT_FORMAT,
                "files": [[p, f.sha256, f.changed] for p, f in sorted(self.files.items())],
                "items": [[k, i.first, i.removed] for k, i in sorted(self.items.items())]}


def _serial(value: object, limit: int = MAX_SERIAL) -> int:
    if type(value) is not int or not 0 <= value < limit:  # type: ignore[operator]
        raise ValueError("a serial is an integer from 0 to 10**15")
    return value  # type: ignore[return-value]


def _content(obj: object, serial: int) -> Content | None:
    """The content part; None for one of a later format (this release cannot read it)."""
    if not isinstance(obj, dict):
        raise ValueError("malformed content")
    if obj.get("format") != CONTENT_FORMAT:
        return None
    files, items = obj.get("files"), obj.get("items")
    if not isinstance(files, list) or not isinstance(items, list):
        raise ValueError("malformed content")
    found: dict[str, FileFact] = {}
    for row in files:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                and isinstance(row[1], str) and len(row[1]) == 64
                and all(c in "0123456789abcdef" for c in row[1])):
            raise ValueError("malformed content file entry")
        found[row[0]] = FileFact(row[1], _serial(row[2], serial + 1))
    folders: dict[str, ItemFact] = {}
    for row in items:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)):
            raise ValueError("malformed content item entry")
        folders[row[0]] = ItemFact(_serial(row[1], serial + 1), _serial(row[2], serial + 1))
    return Content(found, folders)


@dataclass(frozen=True)
class Revision:
    origin: str
    serial: int
    time: str
    files: Listing
    content: Content | None = None  # None: an origin from before the content part

    def to_json(self) -> str:
        data: dict = {"format": FORMAT, "origin": self.origin, "serial": self.serial,
                      "time": self.time,
                      "files": [[p, s, m] for p, (s, m) in sorted(self.files.items())]}
        if self.content is not None:
            data["content"] = self.content.to_obj()
        return json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Revision:
        """Parse a revision document (ours or an upstream's); ValueError when it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a format-1 trace")
        origin, serial, when, rows = (data.get(k) for k in ("origin", "serial", "time", "files"))
        if not isinstance(origin, str) or not ORIGIN_RE.fullmatch(origin) or \
                not isinstance(when, str) or len(when) > 40 or not isinstance(rows, list):
            raise ValueError("malformed trace header")  # names are printed and made labels
        serial = _serial(serial)
        files: Listing = {}
        for row in rows:
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                    and all(type(v) is int and v >= 0 for v in row[1:])):
                raise ValueError("malformed trace entry")
            files[row[0]] = (row[1], row[2])
        content = _content(data["content"], serial) if "content" in data else None
        if content is not None and set(content.files) != set(files):
            raise ValueError("the content part does not list the trace's files")
        return cls(origin, serial, when, files, content)


def item_of(path: str) -> str | None:
    """The item (top-level folder) a path belongs to; None for a file at the library root."""
    head, sep, _ = path.partition("/")
    return head if sep else None


def next_content(files: Listing, digests: dict[str, str], serial: int,
                 previous: Content | None) -> Content:
    """The content part of revision `serial`: changed serials carried over from `previous`
    where the digest is the same, `serial` where it is new or other."""
    before = previous or Content()
    facts = {}
    for path in files:
        old = before.files.get(path)
        facts[path] = old if old is not None and old.sha256 == digests[path] else \
            FileFact(digests[path], serial)
    def members(paths) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for path in paths:
            key = item_of(path)
            if key is not None:
                found.setdefault(key, set()).add(path)
        return found

    now, then = members(facts), members(before.files)
    items: dict[str, ItemFact] = {}
    for key, paths in now.items():
        old = before.items.get(key)
        if old is None:
            items[key] = ItemFact(serial, 0)
            continue
        items[key] = ItemFact(old.first, serial if then.get(key, set()) - paths else old.removed)
    return Content(facts, items)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


# --- tokens: what vCenter reads as numbers (docs/manifest.md, "Tokens") -------------------------


def traced_token(serial: int) -> int:
    return BASE + serial


def time_token(ns: int) -> int:
    """A token from a time in nanoseconds: microseconds, inside [1, BASE)."""
    return min(max(ns // 1000, 1), BASE - 1)


def grown(previous: int, derived: int) -> int:
    """A token that changed: above the previous one, the derived one where that is higher."""
    return min(max(previous + 1, derived), LONG_MAX)


def is_token(text: object) -> bool:
    """A canonical decimal Java long from 0: what every token this tool serves is."""
    return isinstance(text, str) and text.isascii() and text.isdigit() and \
        (text == "0" or not text.startswith("0")) and int(text) <= LONG_MAX


# --- ids: a function of what they name -------------------------------------------------------


def library_id(name: str) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, 'library:' + name)}"


def item_id(lib_id: str, key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.UUID(lib_id.removeprefix('urn:uuid:')), 'item:' + key)}"
