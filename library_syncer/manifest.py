"""The VCSP v2 manifest engine: lib.json, items.json and one item.json per item, for vCenter.

`build()` scans a library folder (one sub-folder per item), hashes what changed (a cache keyed on
file identity makes an unchanged rebuild read no content), verifies OVF `.mf` digests in the same
read, keeps ids and versions stable across rebuilds and snapshots, and writes the JSON atomically:
item.json files, then items.json, then lib.json last. docs/manifest.md is the user-facing account.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, unquote

from . import fsutil, ovf
from .errors import ExitStatus, SyncerError

LIB_FILE, ITEMS_FILE, ITEM_FILE = "lib.json", "items.json", "item.json"
DESCRIPTION_FILE = "item-description.txt"  # the sidecar: plain UTF-8 text, never listed
STATE_DIR_NAME = ".library-syncer"
STATE_FILE, CACHE_FILE = "manifest-state.json", "hash-cache.json"
STATE_FORMAT = 1
MAX_NAME = 80
MAX_DESCRIPTION = 4000
TIME_FORMAT = "%Y-%m-%dT%H:%MZ"  # what VMware's own VCSP publishers write
TYPE_OVF, TYPE_ISO, TYPE_OTHER = "vcsp.ovf", "vcsp.iso", "vcsp.other"
_TEMP_SUFFIXES = (".part", ".tmp", ".partial", ".swp", ".crdownload", "~")


class LibraryPathError(SyncerError):
    exit_status = ExitStatus.CONFIG


@dataclass(frozen=True)
class ItemProblem:
    """Why an item was left out of the library: names the item and, when known, the file."""

    item: str
    file: str | None
    message: str

    def __str__(self) -> str:
        folder = self.item.rsplit("/", 1)[0]  # an ISO of a folder of ISOs: its file is there
        where = f"{folder}/{self.file}" if self.file else self.item
        return f"item {self.item!r} left out: {where}: {self.message}"


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


# ----------------------------------------------------------------------------- scanning


@dataclass
class ScannedFile:
    name: str
    path: Path
    st: os.stat_result


@dataclass
class Candidate:
    """One item as found on disk, before hashing."""

    key: str  # folder (or folder/iso-stem for a folder of several ISOs): the item's identity
    folder: str
    type: str
    files: list[ScannedFile]
    descriptor: str | None = None  # the .ovf file name
    mf: str | None = None
    description: str = ""
    problems: list[ItemProblem] = field(default_factory=list)


def _printable(name: str) -> str:
    """A name for messages, with undecodable bytes shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8(name: str, where: str, warnings: list[str]) -> bool:
    """JSON (and vCenter) need UTF-8 names; os.scandir hands undecodable bytes as surrogates."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        warnings.append(f"{where}: the name is not valid UTF-8, not listed (rename it)")
        return False
    return True


def _ignored(name: str) -> bool:
    """Never listed: our own files, hidden ones (.vSphere-HA, rsync temps), editor/partial files."""
    return (name.startswith(".") or name in (ITEM_FILE, DESCRIPTION_FILE)
            or name.endswith(_TEMP_SUFFIXES))


def _read_description(path: Path, key: str, warnings: list[str]) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        warnings.append(f"{path}: cannot read the description ({error.strerror}); left empty")
        return ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        warnings.append(f"{path}: not UTF-8; invalid bytes replaced")
        text = data.decode("utf-8", errors="replace")
    text = text.strip()
    if len(text) > MAX_DESCRIPTION:
        warnings.append(f"{path}: description cut to {MAX_DESCRIPTION} characters")
        text = text[:MAX_DESCRIPTION]
    return text


def _iso_children_dirs(entries: list[os.DirEntry]) -> set[str]:
    """Sub-folders we create for a folder of several ISOs (they hold only our item.json)."""
    stems = {Path(e.name).stem for e in entries if e.name.lower().endswith(".iso")}
    own = set()
    for entry in entries:
        if entry.name in stems and entry.is_dir(follow_symlinks=False):
            try:
                if {e.name for e in os.scandir(entry.path)} <= {ITEM_FILE}:
                    own.add(entry.name)
            except OSError:
                pass
    return own


def _scan_item(root: Path, folder: str, include_certs: bool,
               warnings: list[str]) -> list[Candidate]:
    path = root / folder
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as error:
        return [Candidate(folder, folder, TYPE_OTHER, [], problems=[
            ItemProblem(folder, None, f"cannot read the folder ({error.strerror})")])]
    own_dirs = _iso_children_dirs(entries)
    files: list[ScannedFile] = []
    description = ""
    for entry in entries:
        name = entry.name
        if name == DESCRIPTION_FILE and entry.is_file(follow_symlinks=False):
            description = _read_description(Path(entry.path), folder, warnings)
        if _ignored(name) or name in own_dirs:
            continue
        if not _utf8(name, f"{folder}/{_printable(name)}", warnings):
            continue
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            warnings.append(f"{folder}/{name}: a symbolic link, not listed (links are never "
                            "followed)")
        elif stat.S_ISDIR(st.st_mode):
            warnings.append(f"{folder}/{name}: a sub-folder inside an item, not listed (an item "
                            "is one folder of files)")
        elif not stat.S_ISREG(st.st_mode):
            warnings.append(f"{folder}/{name}: not a regular file, not listed")
        else:
            files.append(ScannedFile(name, Path(entry.path), st))
    return _classify(folder, files, description, include_certs, warnings)


def _classify(folder: str, files: list[ScannedFile], description: str, include_certs: bool,
              warnings: list[str]) -> list[Candidate]:
    if not files:
        warnings.append(f"{folder}: an empty folder, not an item")
        return []
    lower = [f.name.lower() for f in files]
    ovfs = [f for f, low in zip(files, lower, strict=True) if low.endswith(".ovf")]
    if len(ovfs) == 1:
        mfs = [f for f, low in zip(files, lower, strict=True) if low.endswith(".mf")]
        listed = [f for f in files if include_certs or not f.name.lower().endswith(".cert")]
        for ova in [f for f in listed if f.name.lower().endswith(".ova")]:
            # The unpacked .ovf is the template; the archive would be a second, useless download.
            warnings.append(f"{folder}/{ova.name}: an OVA beside an unpacked .ovf, not listed")
            listed.remove(ova)
        cand = Candidate(folder, folder, TYPE_OVF, listed, descriptor=ovfs[0].name,
                         description=description)
        if len(mfs) > 1:
            cand.problems.append(ItemProblem(folder, None, "several .mf manifests; keep one"))
        elif mfs:
            cand.mf = mfs[0].name
        return [cand]
    if len(ovfs) > 1:
        warnings.append(f"{folder}: {len(ovfs)} .ovf descriptors in one folder; published as "
                        "vcsp.other (put each template in its own folder)")
    if any(low.endswith(".ova") for low in lower):
        warnings.append(f"{folder}: holds an .ova; vCenter reads OVF templates (unpack it: "
                        "`tar xf`), published as vcsp.other")
    if files and all(low.endswith(".iso") for low in lower):
        if len(files) == 1:
            return [Candidate(folder, folder, TYPE_ISO, files, description=description)]
        # VMware's own publisher: a folder of ISOs is one item per ISO.
        return [Candidate(f"{folder}/{Path(f.name).stem}", folder, TYPE_ISO, [f],
                          description=description) for f in files]
    return [Candidate(folder, folder, TYPE_OTHER, files, description=description)]


def scan(root: Path, include_certs: bool, warnings: list[str],
         exclude: Path | None = None) -> list[Candidate]:
    candidates: list[Candidate] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name in (LIB_FILE, ITEMS_FILE):
            continue
        if exclude is not None and Path(entry.path).resolve() == exclude:
            continue  # the state directory, when someone put it inside the library
        if not _utf8(entry.name, _printable(entry.name), warnings):
            continue
        if entry.is_symlink():
            warnings.append(f"{entry.name}: a symbolic link at the library root, not followed")
        elif entry.is_dir(follow_symlinks=False):
            candidates.extend(_scan_item(root, entry.name, include_certs, warnings))
        elif not _ignored(entry.name):
            warnings.append(f"{entry.name}: a file at the library root is not an item (put it "
                            "in a folder of its own)")
    return candidates


# ----------------------------------------------------------------------------- naming


def shorten(name: str, limit: int = MAX_NAME) -> str:
    """Cut to `limit` characters keeping a short extension (`.ovf`, `.iso`) when there is one."""
    if len(name) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) <= 10:
        return stem[: limit - len(ext) - 1] + "." + ext
    return name[:limit]


def _variant(name: str, number: int) -> str:
    suffix = f"~{number}"
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) <= 10:
        return shorten(stem, MAX_NAME - len(ext) - 1 - len(suffix)) + suffix + "." + ext
    return shorten(name, MAX_NAME - len(suffix)) + suffix


def assign_names(keys: list[str], previous: dict[str, str]) -> dict[str, str]:
    """Unique names of at most 80 characters; an item keeps the name it had if still free."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for key in keys:  # first the names already published, so a newcomer never steals one
        old = previous.get(key)
        if old and len(old) <= MAX_NAME and old not in taken:
            names[key] = old
            taken.add(old)
    for key in keys:
        if key in names:
            continue
        base = shorten(key.rsplit("/", 1)[-1] if "/" in key else key)
        name, number = base, 1
        while name in taken:
            number += 1
            name = _variant(base, number)
        names[key] = name
        taken.add(name)
    return names


def href(*segments: str) -> str:
    """A root-relative href, each segment percent-encoded (spaces, #, %, ?, unicode)."""
    return "/".join(quote(part, safe="") for segment in segments for part in segment.split("/"))


# ----------------------------------------------------------------------------- previous state


@dataclass
class Record:
    """What we remember of an item: identity, versions and what the subscriber last saw."""

    id: str
    created: str
    version: int
    content_version: int
    name: str = ""
    files: tuple[tuple[str, int, str], ...] = ()  # (name, size, etag), sorted
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
    files = tuple(sorted((str(f["name"]), _int(f["size"]), str(f.get("etag", "")))
                         for f in item["files"]))
    version = _int(item["version"])
    return key, Record(id=str(item["id"]), created=str(item["created"]), version=version,
                       content_version=_int(item.get("contentVersion", version)),
                       name=str(item["name"]), files=files, type=str(item["type"]),
                       description=str(item.get("description", "")), vapp=vapp,
                       parent=parent)


def _load_json(path: Path, warnings: list[str], what: str) -> object | None:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        warnings.append(f"{path}: unreadable or not valid JSON ({error}); {what}")
        return None


def _items_from_json(previous: Path, warnings: list[str]) -> tuple[dict[str, Record], bool]:
    data = _load_json(previous / ITEMS_FILE, warnings, "ids recovered from the item.json files")
    raw: list = []
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        raw = data["items"]
        found = True
    else:
        found = False
        if data is not None:
            warnings.append(f"{previous / ITEMS_FILE}: has no \"items\" list; rebuilt")
        raw = [_load_json(p, warnings, "ignored") for p in sorted(previous.glob("*/" + ITEM_FILE))]
        raw += [_load_json(p, warnings, "ignored")
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
    lib = _load_json(previous / LIB_FILE, warnings, "rebuilt (ids recovered where possible)")
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
    # A library version is never below any item's: keeps versions monotonic if lib.json was lost.
    prev.lib_version = max([prev.lib_version, *(r.version for r in prev.items.values())])
    return prev


def _previous_from_state(path: Path, warnings: list[str]) -> Previous | None:
    data = _load_json(path, warnings, "recovering ids and versions from the published JSON")
    if data is None:
        return None
    try:
        if data["format"] != STATE_FORMAT:
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
                files=tuple(tuple(f) for f in raw["files"]), type=raw["type"],
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


# ----------------------------------------------------------------------------- hashing + cache

READ_BUFFER = 4 * 1024 * 1024
CACHE_FORMAT = 1


@dataclass(frozen=True)
class HashJob:
    key: tuple[str, str]  # (item key, file name)
    path: Path
    st: os.stat_result
    algorithms: frozenset[str]  # sha256 (the etag) plus the .mf's algorithm when it lists the file
    keep: str | None = None  # "ovf" or "mf": parse the bytes of this same read (no second read)


@dataclass(frozen=True)
class FileDigest:
    size: int
    digests: dict[str, str]
    summary: dict | None = None  # what parse_summary() made of a descriptor or .mf


@dataclass
class HashStats:
    files: int = 0
    bytes: int = 0


def parse_summary(kind: str, data: bytes) -> dict:
    """What the build needs of a descriptor (vApp flag, local references) or of a .mf (its
    entries), or the error: small and JSON-able, so the hash cache keeps it with the digests."""
    if len(data) > ovf.MAX_DESCRIPTOR_BYTES:
        return {"kind": kind, "error": "larger than 64 MiB: not a descriptor or manifest"}
    try:
        if kind == "mf":
            entries = ovf.parse_mf(data)
            return {"kind": kind,
                    "entries": {n: [e.algorithm, e.digest] for n, e in entries.items()}}
        desc = ovf.parse_descriptor(data)
    except ovf.OvfError as error:
        return {"kind": kind, "error": str(error)}
    return {"kind": kind, "vapp": desc.is_vapp,
            "refs": [[r.href, r.size] for r in desc.references if not r.external]}


class HashCache:
    """Digests by file identity, so an unchanged file is never read again.

    Key: (st_dev, st_ino); valid while size, mtime_ns and ctime_ns match. One exception, for the
    sync's hard-link snapshots: creating a hard link changes the inode's ctime, so a staging file
    that *is* the published snapshot's file at the same path (same device and inode; published
    files are never modified in place) is trusted on size and mtime alone.
    """

    def __init__(self, path: Path | None, entries: dict[str, list] | None = None, *,
                 link_source: Path | None = None, root: Path | None = None) -> None:
        self.path = path
        self.loaded = entries or {}
        self.used: dict[str, list] = {}
        self.link_source = link_source
        self.root = root

    @classmethod
    def load(cls, path: Path, warnings: list[str], *, link_source: Path | None = None,
             root: Path | None = None) -> HashCache:
        data = _load_json(path, warnings, "every file will be hashed again")
        entries: dict[str, list] = {}
        if isinstance(data, dict) and data.get("format") == CACHE_FORMAT \
                and isinstance(data.get("entries"), dict):
            entries = data["entries"]
        elif data is not None:
            warnings.append(f"{path}: not a hash cache of this version; every file will be "
                            "hashed again")
        return cls(path, entries, link_source=link_source, root=root)

    @staticmethod
    def _key(st: os.stat_result) -> str:
        return f"{st.st_dev}:{st.st_ino}"

    def _linked(self, job: HashJob) -> bool:
        if self.link_source is None or self.root is None:
            return False
        try:
            other = os.lstat(self.link_source / job.path.relative_to(self.root))
        except (OSError, ValueError):
            return False
        return (other.st_dev, other.st_ino) == (job.st.st_dev, job.st.st_ino)

    def lookup(self, job: HashJob) -> FileDigest | None:
        key = self._key(job.st)
        entry = self.used.get(key) or self.loaded.get(key)
        try:
            size, mtime_ns, ctime_ns, digests, summary = entry  # type: ignore[misc]
        except (TypeError, ValueError):
            return None
        if (size, mtime_ns) != (job.st.st_size, job.st.st_mtime_ns):
            return None
        if ctime_ns != job.st.st_ctime_ns and not self._linked(job):
            return None
        if not isinstance(digests, dict) or not job.algorithms <= digests.keys():
            return None
        if job.keep and not (isinstance(summary, dict) and summary.get("kind") == job.keep):
            return None
        self.used[key] = [size, mtime_ns, job.st.st_ctime_ns, digests, summary]
        return FileDigest(size, dict(digests), summary)

    def store(self, st: os.stat_result, result: FileDigest) -> None:
        self.used[self._key(st)] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                    result.digests, result.summary]

    def save(self) -> None:
        """Keep only the entries of files seen in this build; rewrite only when they changed."""
        if self.path is None or self.used == self.loaded:
            return
        payload = {"format": CACHE_FORMAT, "entries": dict(sorted(self.used.items()))}
        fsutil.atomic_write(self.path, json.dumps(payload, separators=(",", ":")) + "\n")


def _read_and_hash(job: HashJob) -> tuple[os.stat_result, FileDigest] | str:
    """One pass over the file feeds every digest it needs (and keeps a descriptor's bytes)."""
    try:
        fd = os.open(job.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        return f"cannot read ({error.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        hashers = [hashlib.new(name) for name in sorted(job.algorithms)]
        kept = bytearray() if job.keep else None
        buffer = bytearray(READ_BUFFER)
        view = memoryview(buffer)
        total = 0
        with open(fd, "rb", buffering=0, closefd=False) as handle:
            while n := handle.readinto(buffer):
                chunk = view[:n]
                for hasher in hashers:
                    hasher.update(chunk)
                if kept is not None and len(kept) <= ovf.MAX_DESCRIPTOR_BYTES:
                    kept += chunk
                total += n
        after = os.fstat(fd)
    except OSError as error:
        return f"cannot read ({error.strerror})"
    finally:
        os.close(fd)
    if total != st.st_size or (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        return "changed while being read (a copy still running?); run again when it is complete"
    summary = parse_summary(job.keep, bytes(kept)) if job.keep and kept is not None else None
    return st, FileDigest(total, {h.name: h.hexdigest() for h in hashers}, summary)


def hash_files(jobs: list[HashJob], cache: HashCache, workers: int = 0
               ) -> tuple[dict[tuple[str, str], FileDigest | str], HashStats]:
    """Digests for every job: from the cache when the file is unchanged, else read once.

    Misses are read by a thread pool, largest first: hashlib releases the GIL, so two files are
    hashed on two cores at once. Returns results keyed like the jobs (a str is the error).
    """
    results: dict[tuple[str, str], FileDigest | str] = {}
    misses: list[HashJob] = []
    for job in jobs:
        hit = cache.lookup(job)
        if hit is not None:
            results[job.key] = hit
        else:
            misses.append(job)
    misses.sort(key=lambda j: j.st.st_size, reverse=True)
    stats = HashStats()
    threads = workers if workers > 0 else (os.cpu_count() or 1)
    threads = max(1, min(threads, len(misses)))
    if threads == 1:
        outcomes = map(_read_and_hash, misses)
    else:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hash")
        outcomes = pool.map(_read_and_hash, misses)
    for job, outcome in zip(misses, outcomes, strict=True):
        if isinstance(outcome, str):
            results[job.key] = outcome
            continue
        st, digest = outcome
        cache.store(st, digest)
        results[job.key] = digest
        stats.files += 1
        stats.bytes += digest.size
    if threads > 1:
        pool.shutdown()
    return results, stats


# ----------------------------------------------------------------------------- building


@dataclass
class Built:
    key: str
    cand: Candidate
    files: tuple[tuple[str, int, str], ...]
    vapp: bool


def _now() -> str:
    return datetime.now(timezone.utc).strftime(TIME_FORMAT)


def _new_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


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
        "files": [{"name": name, "size": size, "etag": etag,
                   "hrefs": [href(b.cand.folder, name)]} for name, size, etag in b.files],
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


def _next_records(built: list[Built], prev: Previous, names: dict[str, str],
                  now: str) -> tuple[dict[str, Record], list[str]]:
    records: dict[str, Record] = {}
    changed: list[str] = []
    for b in built:
        old = prev.items.get(b.key)
        rec = Record(id=old.id if old else _new_id(), created=old.created if old else now,
                     version=old.version if old else 1,
                     content_version=old.content_version if old else 1,
                     name=names[b.key], files=b.files, type=b.cand.type,
                     description=b.cand.description, vapp=b.vapp)
        if old is not None:
            content = (old.files, old.type, old.vapp) != (b.files, b.cand.type, b.vapp)
            meta = (old.name, old.description) != (rec.name, rec.description)
            if content:
                rec.content_version += 1
            if content or meta:
                rec.version += 1
            if content or meta or b.key not in prev.published:
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


def _write_items(root: Path, items: list[tuple[str, dict]]) -> None:
    for key, item in items:
        folder = root / key
        folder.mkdir(exist_ok=True)  # a folder of several ISOs: one sub-folder per ISO item
        fsutil.write_if_changed(folder / ITEM_FILE, _dumps(item))


def _remove_stale(root: Path, stale: Iterable[str]) -> None:
    """item.json of items no longer published (left out or removed), so no reader finds them."""
    for key in stale:
        path = root / key / ITEM_FILE
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            continue
        folder = path.parent
        if "/" in key and not any(folder.iterdir()):
            folder.rmdir()


def build(root: Path, *, name: str, state_dir: Path | None = None, previous: Path | None = None,
          include_certs: bool = True, workers: int = 0, description: str = "",
          cache: HashCache | None = None) -> BuildReport:
    """Write lib.json, items.json and every item.json for the library folder `root`.

    Broken items are left out and reported in `problems`; the rest is published. Raises
    LibraryPathError when `root` is not a folder. See docs/manifest.md.
    """
    root = Path(root)
    _check_root(root)
    state_dir = Path(state_dir) if state_dir is not None else root / STATE_DIR_NAME
    previous = Path(previous) if previous is not None else root
    state_dir.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    prev = load_previous(state_dir / STATE_FILE, previous, warnings)

    cands = scan(root, include_certs, warnings, exclude=state_dir.resolve())
    if cache is None:
        linked = previous.resolve() if previous.resolve() != root.resolve() else None
        cache = HashCache.load(state_dir / CACHE_FILE, warnings, link_source=linked, root=root)
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
    names = assign_names([b.key for b in built], {k: r.name for k, r in prev.items.items()})
    records, changed = _next_records(built, prev, names, now)
    removed = sorted(prev.published - set(records))
    changed += [prev.items[k].name for k in removed if k in prev.items]

    lib_id = prev.lib_id or _new_id()
    content_moved = bool(removed) or any(
        prev.items.get(k) is None or prev.items[k].content_version != r.content_version
        or k not in prev.published for k, r in records.items())
    lib_version = max(prev.lib_version, 1)
    lib_content = max(prev.lib_content_version, 1)
    meta_moved = (prev.lib_name, prev.lib_description) != (name, description)
    if prev.lib_id is not None:
        if content_moved:
            lib_content += 1
        if changed or meta_moved or content_moved:
            lib_version += 1
    lib = {"vcspVersion": "2", "version": str(lib_version), "contentVersion": str(lib_content),
           "name": name, "id": lib_id, "created": prev.lib_created or now,
           "capabilities": {"transferIn": ["httpGet"], "transferOut": ["httpGet"]},
           "itemsHref": ITEMS_FILE}
    if description:
        lib["description"] = description

    items = sorted((b.key, _item_json(b, records[b.key], lib_id)) for b in built)
    _write_items(root, items)
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
        problems=tuple(problems), warnings=tuple(warnings), files_hashed=stats.files,
        bytes_hashed=stats.bytes, content_bytes=sum(size for r in records.values()
                                                    for _, size, _ in r.files))

