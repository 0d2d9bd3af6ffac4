"""What a run must fetch: every file of the upstream's library, each new, changed or already here.
The space check, the bases of new files (sync/basis.py), the streams and the byte ranges
(sync/streams.py, sync/ranges.py) are chosen from it; the pull that follows is the truth, and
what it brings is checked in full whatever the plan said.

Two ways to know it:
- **from the revision document** the upstream declared (`of_revision`), when it answered it in
  one command (sync/declared.py:ask) and the document is the one its declaration names: every
  file's size and modification time, compared here with staging and the site's copies as rsync's
  quick check compares them. No dry run: its session costs about eight round trips before the
  first byte, seconds on a satellite link (docs/sync.md, "Round trips before the first byte").
- **from a dry run** (`of_dry_run`): everywhere else — the Docker-based original, an older server,
  an exclude pattern that names a path (rsync's to apply), a library below sync.remote_path.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..base.config import SyncConfig
from ..base.revision import Revision
from ..server.trace import TRACE_DIR, TRACE_FILE
from . import basis, rsync

# The upstream's own manifests and page, which the pull never takes (rsync.SERVER_MANIFESTS).
_TOP_MANIFESTS = frozenset({"lib.json", "items.json", "index.html"})


@dataclass(frozen=True)
class Plan:
    listing: list[basis.Listed]  # every file the server has, in the order it was listed
    transferred_size: int  # the bytes of the files to fetch, whole
    files_transferred: int
    total_size: int  # the library's bytes
    from_document: bool = False


def traced(sync: SyncConfig, published: Path | None) -> bool:
    """Whether the upstream may declare a revision document for what this site pulls: the
    library's top is pulled, and nothing is published yet or what is came with a document
    (never an attempt on every run against the Docker-based original)."""
    return not sync.remote_path.strip("/") and (
        published is None or (published / TRACE_DIR / TRACE_FILE).is_file())


def documented(sync: SyncConfig, published: Path | None) -> bool:
    """Whether a run may plan from the upstream's document: traced, and the pull's filters are
    ours to apply exactly (_simple: names, not paths; else a dry run applies rsync's own)."""
    return traced(sync, published) and all(map(_simple, sync.exclude)) and \
        not any("/" in pattern for pattern in sync.include)


def _simple(pattern: str) -> bool:
    """An rsync exclude pattern that names a file or folder (at any depth; a trailing `/`:
    folders only) with `*`, `?` and `[...]`, which match within one name, as fnmatch's do on
    one name. Not: a path, `**`, an escape, a `+ `/`- ` prefix or `!`."""
    name = pattern[:-1] if pattern.endswith("/") else pattern
    return bool(name) and "/" not in name and "**" not in name and "\\" not in name and \
        not name.startswith(("+ ", "- ", "!"))


def of_dry_run(stats: rsync.Stats) -> Plan:
    """The plan of a dry run's listing and statistics."""
    return Plan(basis.parse_listing(stats.listed), stats.transferred_size,
                stats.files_transferred, stats.total_size)


def of_revision(revision: Revision, tree: Path, link_dests: Sequence[Path],
                sync: SyncConfig) -> Plan | None:
    """The plan of the declared `revision` against staging `tree` and the site's copies
    `link_dests` (what the pull links from), with the pull's filters (sync.include, sync.exclude:
    `documented`); None when the document names a path the pull could not take as it is (a dry
    run decides then)."""
    listing = []
    for path, (size, mtime_ns) in sorted(revision.files.items()):
        if not _plain(path):
            return None
        if not _taken(path, sync.include, sync.exclude):
            continue
        here = _file(tree / path)
        if here is not None and _same(here, size, mtime_ns):
            listing.append(basis.Listed(path, size, new=False))
            continue
        elsewhere = [found for d in link_dests if (found := _file(Path(d) / path)) is not None]
        if any(_same(found, size, mtime_ns) for found in elsewhere):
            listing.append(basis.Listed(path, size, new=False))  # linked, not fetched
            continue
        new = here is None and not elsewhere  # as rsync lists it, a partial file or not
        listing.append(basis.Listed(path, size, new=new, fetched=True))
    fetched = [f for f in listing if f.fetched]
    return Plan(listing, sum(f.size for f in fetched), len(fetched),
                sum(f.size for f in listing), from_document=True)


def _plain(path: str) -> bool:
    """A relative path of plain components, as rsync would list it (never `..`, never a name
    rsync escapes: the bases are linked at these paths)."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and \
        all(p not in ("", ".", "..") for p in parts) and \
        all(c.isprintable() and c != "\\" for c in path)


def _taken(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether the pull takes `path` (rsync.filter_options): not one of the upstream's manifests
    (hidden from the pull), not excluded (a pattern matching its name or a folder's above it),
    and with sync.include, inside an item folder it names."""
    parts = PurePosixPath(path).parts
    if (len(parts) == 1 and parts[0] in _TOP_MANIFESTS) or (len(parts) == 2 and
                                                            parts[1] == "item.json"):
        return False
    for pattern in exclude:
        names = parts[:-1] if pattern.endswith("/") else parts
        if any(fnmatch.fnmatchcase(name, pattern.rstrip("/")) for name in names):
            return False
    if not include:
        return True
    return len(parts) > 1 and any(fnmatch.fnmatchcase(parts[0], p) for p in include)


def _file(path: Path) -> os.stat_result | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _same(st: os.stat_result, size: int, mtime_ns: int) -> bool:
    """rsync's quick check as the pull makes it (--modify-window=-1: to the nanosecond)."""
    return st.st_size == size and st.st_mtime_ns == mtime_ns

