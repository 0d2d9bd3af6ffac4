"""File digests for the manifests: one read per changed file, a cache for the unchanged ones.

`hash_files()` serves each HashJob from the HashCache when the file is unchanged, else reads it
once on a thread pool, feeding every digest it needs and parsing a descriptor or .mf from the
same bytes. Used by vcsp.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..base import fsutil
from . import ovf
from .state import load_json

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
        data = load_json(path, warnings, "every file will be hashed again")
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
