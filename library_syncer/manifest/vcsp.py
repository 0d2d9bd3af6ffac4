"""The VCSP v2 manifest engine: lib.json, items.json and one item.json per item, for vCenter.

`build()` scans a library folder (one sub-folder per item), hashes what changed (a cache keyed on
file identity makes an unchanged rebuild read no content), verifies OVF `.mf` digests in the same
read, keeps ids and versions stable across rebuilds and snapshots, and writes the JSON atomically:
item.json files, then items.json, then lib.json last. docs/manifest.md is the user-facing account.

The parts live beside it: scan.py (items on disk, names, hrefs), hashing.py (digests and the hash
cache), state.py (ids and versions of the last build), tokens.py (etags and versions as vCenter
reads them); this module builds and writes.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..base import fsutil, revision
from ..base.errors import ExitStatus, SyncerError
from ..base.text import printable
from . import ovf
from .hashing import FileDigest, HashCache, HashJob, hash_files
from .scan import (
    DESCRIPTION_FILE,
    ITEM_FILE,
    ITEMS_FILE,
    LIB_FILE,
    TYPE_OVF,
    Candidate,
    ItemProblem,
    assign_names,
    href,
    scan,
    shorten,
)
from .state import STATE_FORMAT, Previous, Record, load_previous
from .tokens import Tokens, file_rows

__all__ = ["CACHE_FILE", "DESCRIPTION_FILE", "STATE_DIR_NAME", "STATE_FILE", "BuildReport",
           "HashCache", "ItemProblem", "LibraryPathError", "build", "href", "shorten"]

STATE_DIR_NAME = ".library-syncer"
STATE_FILE, CACHE_FILE = "manifest-state.json", "hash-cache.json"
TIME_FORMAT = "%Y-%m-%dT%H:%MZ"  # what VMware's own VCSP publishers write


class LibraryPathError(SyncerError):
    exit_status = ExitStatus.CONFIG


@dataclass(frozen=True)
class BuildReport:
    library_version: int
    items: int
    items_changed: tuple[str, ...]  # item names added, changed or removed
    problems: tuple[ItemProblem, ...]
    warnings: tuple[str, ...]
    files_hashed: int
    bytes_hashed: int
    content_bytes: int  # total size of the listed files
    # SHA-256 of every file the build read (path relative to the library): what the sync
    # compares with the origin's declared content without reading a file twice.
    digests: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- building


@dataclass
class Built:
    key: str
    cand: Candidate
    files: tuple[tuple[str, int, str], ...]
    vapp: bool


def _now() -> str:
    return datetime.now(timezone.utc).strftime(TIME_FORMAT)


def _descriptor_checks(cand: Candidate, digests: dict[str, FileDigest],
                       warnings: list[str]) -> bool:
    """References exist (sizes are only warned about); returns whether it is a vApp."""
    assert cand.descriptor is not None
    info = digests[cand.descriptor].summary
    if info is None or info.get("error"):
        message = info.get("error") if info else "not parsed"
        cand.problems.append(ItemProblem(cand.key, cand.descriptor,
                                         f"invalid OVF descriptor: {message}"))
        return False
    sizes = {f.name: f.st.st_size for f in cand.files}
    for ref_href, ref_size in info["refs"]:
        if ref_href not in sizes:
            cand.problems.append(ItemProblem(cand.key, ref_href,
                                             f"referenced by {cand.descriptor} but missing"))
        elif ref_size is not None and ref_size != sizes[ref_href]:
            warnings.append(f"{cand.key}/{ref_href}: {sizes[ref_href]} bytes on disk, the "
                            f"descriptor says {ref_size} (not an error: VMware tools often differ)")
    return bool(info["vapp"])


def _mf_checks(cand: Candidate, root: Path, digests: dict[str, FileDigest],
               expected: dict[str, ovf.MfEntry]) -> None:
    for name, entry in expected.items():
        if name not in digests:
            # Not listed but present (a .cert left out by --no-certs): nothing to verify.
            if not (root / cand.folder / name).is_file():
                cand.problems.append(ItemProblem(cand.key, name,
                                                 f"listed in {cand.mf} but missing"))
            continue
        actual = digests[name].digests.get(entry.algorithm)
        if actual != entry.digest:
            cand.problems.append(ItemProblem(
                cand.key, name, f"{entry.algorithm.upper()} digest does not match {cand.mf} "
                "(corrupt or incomplete copy)"))


def _mf_jobs(cands: list[Candidate]) -> list[HashJob]:
    """The .mf files go first: they say which digests the other files need."""
    return [HashJob(key=(c.key, f.name), path=f.path, st=f.st, algorithms=frozenset({"sha256"}),
                    keep="mf") for c in cands for f in c.files if f.name == c.mf]


def _mf_entries(cand: Candidate, result: FileDigest | str) -> dict[str, ovf.MfEntry]:
    assert cand.mf is not None
    if isinstance(result, str):
        return {}  # reported with the other unreadable files
    summary = result.summary or {}
    if "entries" not in summary:
        cand.problems.append(ItemProblem(cand.key, cand.mf,
                                         f"invalid manifest: {summary.get('error')}"))
        return {}
    return {name: ovf.MfEntry(algorithm, digest)
            for name, (algorithm, digest) in summary["entries"].items()}


def _jobs(cands: list[Candidate], mfs: dict[str, dict[str, ovf.MfEntry]]) -> list[HashJob]:
    jobs = []
    for cand in cands:
        expected = mfs.get(cand.key, {})
        for f in cand.files:
            if f.name == cand.mf:
                continue
            algorithms = {"sha256"}
            if f.name in expected:
                algorithms.add(expected[f.name].algorithm)
            jobs.append(HashJob(key=(cand.key, f.name), path=f.path, st=f.st,
                                algorithms=frozenset(algorithms),
                                keep="ovf" if f.name == cand.descriptor else None))
    return jobs


def _verify(cands: list[Candidate], root: Path, results: dict, mfs: dict,
            warnings: list[str]) -> list[Built]:
    built: list[Built] = []
    for cand in cands:
        digests: dict[str, FileDigest] = {}
        for f in cand.files:
            result = results[(cand.key, f.name)]
            if isinstance(result, str):
                cand.problems.append(ItemProblem(cand.key, f.name, result))
            else:
                digests[f.name] = result
        if cand.problems:
            continue
        vapp = False
        if cand.descriptor is not None:
            vapp = _descriptor_checks(cand, digests, warnings)
        _mf_checks(cand, root, digests, mfs.get(cand.key, {}))
        if cand.problems:
            continue
        files = tuple(sorted((f.name, digests[f.name].size, digests[f.name].digests["sha256"])
                             for f in cand.files))
        built.append(Built(cand.key, cand, files, vapp))
    return built


def _type_metadata(item_id: str, version: int, lib_id: str, vapp: bool) -> dict:
    # The entry VMware's own publishers write; vCenter reads it to show the OVF/vApp template type.
    value = {"id": item_id, "version": str(version), "libraryIdParent": lib_id,
             "isVappTemplate": "true" if vapp else "false", "vmTemplate": None,
             "vappTemplate": None, "networks": [], "storagePolicyGroups": None}
    return {"key": "type-metadata", "value": json.dumps(value, separators=(",", ":")),
            "type": "String", "domain": "SYSTEM", "visibility": "READONLY"}


def _item_json(b: Built, rec: Record, lib_id: str) -> dict:
    item = {
        "created": rec.created,
        "description": rec.description,
        "version": str(rec.version),
        "contentVersion": str(rec.content_version),
        # etag as VMware's publishers write it: a decimal string, with generationNum beside it
        # as a number (vCenter reads the etag with Long.valueOf: docs/manifest.md, "Tokens").
        "files": [{"name": name, "size": size, "etag": str(token), "generationNum": token,
                   "hrefs": [href(b.cand.folder, name)]} for name, size, _, token in rec.files],
        "id": rec.id,
        "name": rec.name,
        "properties": {},
        "selfHref": href(b.key, ITEM_FILE),
        "type": b.cand.type,
    }
    if b.cand.type == TYPE_OVF:
        item["metadata"] = [_type_metadata(rec.id, rec.version, lib_id, b.vapp)]
    return item


def _dumps(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _next_records(built: list[Built], prev: Previous, names: dict[str, str], now: str,
                  lib_id: str, tokens: Tokens) -> tuple[dict[str, Record], list[str]]:
    records: dict[str, Record] = {}
    changed: list[str] = []
    for b in built:
        item_id = revision.item_id(lib_id, b.key)
        old = prev.items.get(b.key)
        if old is not None and old.id != item_id:
            old = Record(id=old.id, created=now, version=old.version,
                         content_version=old.content_version, files=old.files)  # upgrade
        mtimes = {f.name: f.st.st_mtime_ns for f in b.cand.files}
        files = file_rows(b.cand.folder, b.files, mtimes, old, tokens)
        content_version, version = tokens.item(b.key, b.cand.folder, files)
        rec = Record(id=item_id, created=old.created if old else now, version=version,
                     content_version=content_version, name=names[b.key], files=files,
                     type=b.cand.type, description=b.cand.description, vapp=b.vapp)
        if old is not None:
            served = [(n, s, t) for n, s, _, t in files]
            content = ([(n, s, t) for n, s, _, t in old.files], old.type, old.vapp) != \
                (served, b.cand.type, b.vapp)
            meta = (old.name, old.description, old.id) != (rec.name, rec.description, rec.id)
            # Traced, the derived values only grow with the serials: taking them when higher keeps
            # this site's tokens equal to those of a site built from nothing at this revision.
            floor_cv = content_version if tokens.content is not None else 0
            floor_v = version if tokens.content is not None else 0
            rec.content_version = revision.grown(old.content_version, content_version) \
                if content else max(old.content_version, floor_cv)
            returned = b.key not in prev.published  # left out (broken), now back
            rec.version = revision.grown(old.version, max(version, rec.content_version)) \
                if content or meta or returned else max(old.version, floor_v, rec.content_version)
            if content or meta or returned or \
                    (rec.version, rec.content_version) != (old.version, old.content_version):
                changed.append(rec.name)
        else:
            changed.append(rec.name)
        records[b.key] = rec
    return records, changed


def _write_state(path: Path, lib: dict, records: dict[str, Record], published: list[str],
                 keep: dict[str, Record]) -> None:
    items = {key: {"id": r.id, "created": r.created, "version": r.version,
                   "contentVersion": r.content_version, "name": r.name,
                   "files": [list(f) for f in r.files], "type": r.type,
                   "description": r.description, "vapp": r.vapp}
             for key, r in sorted({**keep, **records}.items())}
    state = {"format": STATE_FORMAT,
             "library": {"id": lib["id"], "created": lib["created"],
                         "version": int(lib["version"]),
                         "contentVersion": int(lib["contentVersion"]), "name": lib["name"],
                         "description": lib.get("description", "")},
             "items": items, "published": sorted(published)}
    fsutil.write_if_changed(path, _dumps(state))


def _check_root(root: Path) -> None:
    try:
        st = root.stat()
    except FileNotFoundError:
        raise LibraryPathError(f"{root}: the library folder does not exist",
                               hint="create it or give the right path") from None
    except OSError as error:
        raise LibraryPathError(f"{root}: cannot open the library folder ({error.strerror})"
                               ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise LibraryPathError(f"{root}: not a folder; give the library folder (one sub-folder "
                               "per item)")


# --- hostile trees: what a server may hold where our own files go ---------------------------
# The sender's filter hides lib.json/items.json/item.json, but a hostile server ignores it; and
# rsync runs without -l today, but this code must not depend on that.


def _clear_for_manifest(root: Path, rel: str, warnings: list[str]) -> None:
    """Anything but a regular file at a manifest's name (a folder, a link, a FIFO) is removed,
    with one warning, so the manifest can be written there and nothing is read through it."""
    path = root / rel
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISREG(st.st_mode):
        return
    kind = ("a folder" if stat.S_ISDIR(st.st_mode) else
            "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a special file")
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # never follows a link inside
    else:
        path.unlink()
    warnings.append(f"{rel}: {kind} where the manifest {path.name} goes (not from this tool); "
                    "removed")


def _item_folder(root: Path, key: str, warnings: list[str]) -> Path:
    """The folder an item.json goes into, never through a link (a folder of several ISOs has
    one sub-folder per ISO; the server may have put a link there)."""
    folder = root / key
    try:
        st = folder.lstat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        folder.unlink()  # a link or file in the way of our own sub-folder (scan never lists it)
        warnings.append(f"{key}: {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'a file'} "
                        "where the item's folder goes; removed")
        st = None
    if st is None:
        folder.mkdir()
    return folder


def _write_items(root: Path, items: list[tuple[str, dict]], warnings: list[str]) -> None:
    for key, item in items:
        folder = _item_folder(root, key, warnings)
        _clear_for_manifest(root, f"{key}/{ITEM_FILE}", warnings)
        fsutil.write_if_changed(folder / ITEM_FILE, _dumps(item))


def _remove_stale(root: Path, stale: Iterable[str]) -> None:
    """item.json of items no longer published (left out or removed), so no reader finds them.
    Only our own regular file goes; nothing is followed through a link."""
    for key in stale:
        folder = root / key
        path = folder / ITEM_FILE
        try:
            if not stat.S_ISDIR(folder.lstat().st_mode) or not stat.S_ISREG(path.lstat().st_mode):
                continue
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            continue
        if "/" in key and not any(folder.iterdir()):
            folder.rmdir()


@dataclass(frozen=True)
class StatePlace:
    """Where a build finds the state it continues from (ids, versions, what was published) and
    where it writes the new one, with the hash cache. The caller decides; the build only
    follows it."""

    read: Path  # the state file to continue from (absent: a first build)
    write: Path  # the folder the new state goes to
    cache: Path  # the folder of the hash cache

    @classmethod
    def folder(cls, state_dir: Path) -> StatePlace:
        """Read and written in one folder (`manifest build --state DIR`, an origin)."""
        return cls(Path(state_dir) / STATE_FILE, Path(state_dir), Path(state_dir))

    @classmethod
    def travelling(cls, root: Path, previous: Path | None, cache: Path) -> StatePlace:
        """With the snapshots (the sync): written into `root/.library-syncer/`, read from the
        previous snapshot's, so the state advances only when the snapshot is published."""
        source = previous if previous is not None else root
        return cls(source / STATE_DIR_NAME / STATE_FILE, root / STATE_DIR_NAME, cache)


def build(root: Path, *, name: str, state: StatePlace | None = None,
          previous: Path | None = None, include_certs: bool = True, workers: int = 0,
          description: str = "", cache: HashCache | None = None,
          revision_doc: revision.Revision | None = None) -> BuildReport:
    """Write lib.json, items.json and every item.json for the library folder `root`.

    Broken items are left out and reported in `problems`; the rest is published. Raises
    LibraryPathError when `root` is not a folder. See docs/manifest.md.

    `state`: where the state is read and written (default: travelling with `root`, read from
    `previous`'s). `previous`: the tree published before (its files are the hash cache's link
    source). `revision_doc` is the origin's revision document the tree holds (None: no trace,
    the Docker original): the tokens derive from it (docs/manifest.md, "Tokens").
    """
    root = Path(root)
    _check_root(root)
    state = state or StatePlace.travelling(root, previous, root / STATE_DIR_NAME)
    previous = Path(previous) if previous is not None else root
    state_dir, state_in, cache_dir = state.write, state.read, state.cache
    state_dir.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    for own in (LIB_FILE, ITEMS_FILE):  # before anything reads them
        _clear_for_manifest(root, own, warnings)
    prev = load_previous(state_in, previous, warnings)

    cands = scan(root, include_certs, warnings, exclude=state_dir.resolve())
    if cache is None:
        cache = open_cache(root, previous, cache_dir, warnings)
    ok = [c for c in cands if not c.problems]
    results, stats = hash_files(_mf_jobs(ok), cache, workers)
    mfs = {c.key: _mf_entries(c, results[(c.key, c.mf)]) for c in ok if c.mf}
    ok = [c for c in ok if not c.problems]
    more, more_stats = hash_files(_jobs(ok, mfs), cache, workers)
    results.update(more)
    stats.files += more_stats.files
    stats.bytes += more_stats.bytes
    built = _verify(ok, root, results, mfs, warnings)
    problems = [p for c in cands for p in c.problems]

    now = _now()
    lib_id = revision.library_id(name)
    names = assign_names([b.key for b in built], {k: r.name for k, r in prev.items.items()})
    records, changed = _next_records(built, prev, names, now, lib_id, Tokens(root, revision_doc))
    removed = sorted(prev.published - set(records))
    changed += [prev.items[k].name for k in removed if k in prev.items]

    same_library = prev.lib_id == lib_id
    content_moved = bool(removed) or not same_library or any(
        prev.items.get(k) is None or prev.items[k].content_version != r.content_version
        or k not in prev.published for k, r in records.items())
    meta_moved = (prev.lib_name, prev.lib_description) != (name, description)
    # Library versions are times (microseconds): they move on anything this site publishes,
    # and a site rebuilt from nothing later still serves a higher one.
    clock = time.time_ns() // 1000
    lib_version, lib_content = prev.lib_version, prev.lib_content_version
    if content_moved:
        lib_content = revision.grown(lib_content, clock)
    if changed or meta_moved or content_moved:
        lib_version = revision.grown(lib_version, max(clock, lib_content))
    lib = {"vcspVersion": "2", "version": str(lib_version), "contentVersion": str(lib_content),
           "name": name, "id": lib_id,
           "created": prev.lib_created if same_library and prev.lib_created else now,
           "capabilities": {"transferIn": ["httpGet"], "transferOut": ["httpGet"]},
           "itemsHref": ITEMS_FILE}
    if description:
        lib["description"] = description

    items = sorted((b.key, _item_json(b, records[b.key], lib_id)) for b in built)
    _write_items(root, items, warnings)
    fsutil.write_if_changed(root / ITEMS_FILE, _dumps({"items": [i for _, i in items]}))
    fsutil.write_if_changed(root / LIB_FILE, _dumps(lib))  # last: it announces the new set
    broken_keys = {c.key for c in cands if c.problems}
    state_real = state_dir.resolve()
    folders = {e.name for e in os.scandir(root) if not e.name.startswith(".")
               and e.is_dir(follow_symlinks=False) and Path(e.path).resolve() != state_real}
    _remove_stale(root, (prev.published | broken_keys | folders) - set(records))

    # Left-out items keep their identity so they come back under the same id once fixed.
    keep = {k: prev.items[k] for k in broken_keys if k in prev.items}
    _write_state(state_dir / STATE_FILE, lib, records, list(records), keep)
    cache.save()
    return BuildReport(
        library_version=lib_version, items=len(records), items_changed=tuple(sorted(changed)),
        problems=tuple(problems), warnings=tuple(printable(w) for w in warnings),
        files_hashed=stats.files,
        bytes_hashed=stats.bytes, content_bytes=sum(size for r in records.values()
                                                    for _, size, _, _ in r.files),
        digests=_digests(root, cands, results))


def open_cache(root: Path, previous: Path, cache_dir: Path, warnings: list[str]) -> HashCache:
    """The hash cache of a build of `root` whose previous tree is `previous` (its hard links
    are trusted on size and mtime: manifest/hashing.py)."""
    linked = previous.resolve() if previous.resolve() != root.resolve() else None
    cache_dir.mkdir(parents=True, exist_ok=True)
    return HashCache.load(cache_dir / CACHE_FILE, warnings, link_source=linked, root=root)


def _digests(root: Path, cands: list[Candidate], results: dict) -> dict[str, str]:
    found = {}
    for cand in cands:
        for f in cand.files:
            result = results.get((cand.key, f.name))
            if isinstance(result, FileDigest) and "sha256" in result.digests:
                found[f.path.relative_to(root).as_posix()] = result.digests["sha256"]
    return found

