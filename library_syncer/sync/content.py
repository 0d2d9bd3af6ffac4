"""The content check: every file a site is about to publish has the bytes the origin declared.

The revision document (base/revision.py) gives each file's SHA-256; sync/trace_check.py has
already compared paths, sizes and modification times, which is all rsync's quick check looks at.
Here the bytes themselves are compared, after the manifest build, from the digests the build
computed anyway (the hash cache reads only new inodes: a file linked from the published
snapshot was checked when it was published, and rot there is the scrub's to find). What the
build does not read (an OVA archive, now in the site's archive store; a file outside an item)
is hashed here with the same cache.

A file that differs is removed from staging (or the store), so that the next pull fetches it
again rather than keeping it on the quick check, and the run publishes nothing: Unsigned (exit
status 13), and the next upstream is tried. Whoever sits between the origin and the site (a
relay, a writable share, a rotting disk) can then withhold a revision, but never alter one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..base.config import SyncConfig
from ..base.errors import Unsigned
from ..manifest.hashing import FileDigest, HashCache, HashJob, hash_files
from . import trace_check
from .layout import Layout

log = logging.getLogger("library-syncer")


def refuse_altered(tree: Path, layout: Layout, built: dict[str, str], cache: HashCache,
                   sync: SyncConfig, workers: int = 0) -> None:
    """Raise Unsigned unless every file of the revision `tree` holds has its declared SHA-256;
    `built`: the digests the manifest build computed (path → hex). No trace, or one without
    the content part (an older origin): nothing to compare with."""
    offered = trace_check.read(tree)
    if offered is None or offered.content is None:
        return
    expected = {path: fact.sha256 for path, fact in offered.content.files.items()
                if not trace_check.excluded(path, sync)}
    found = dict(built)
    found.update(_hash_rest(tree, layout, [p for p in expected if p not in built], cache,
                            workers))
    altered = sorted(path for path, digest in expected.items()
                     if path in found and found[path] != digest)
    if not altered:
        return
    for path in altered:
        _drop(tree, layout, path)
    problems = [f"{path} has other bytes (SHA-256)" for path in altered]
    raise Unsigned(
        f"what arrived is not revision {offered.serial} of {offered.origin} as the origin "
        f"declared it: {trace_check.describe(problems)}; nothing is published",
        hint="the next run fetches them again (from the next upstream, if this one keeps "
             "serving them); see docs/trust.md")


def _where(tree: Path, layout: Layout, path: str) -> Path | None:
    """The file at `path` of the revision: in staging, or an archive moved to the store."""
    for place in (tree / path, layout.ova_store / path):
        if place.is_file() and not place.is_symlink():
            return place
    return None


def _hash_rest(tree: Path, layout: Layout, paths: list[str], cache: HashCache,
               workers: int) -> dict[str, str]:
    jobs = []
    for path in paths:
        place = _where(tree, layout, path)
        if place is not None:  # missing ones were refused by the pull's check already
            jobs.append(HashJob(key=("", path), path=place, st=place.lstat(),
                                algorithms=frozenset({"sha256"})))
    if not jobs:
        return {}
    results, stats = hash_files(jobs, cache, workers)
    cache.save()
    if stats.files:
        log.debug("content check: hashed %d file(s) the build did not read", stats.files)
    return {key[1]: result.digests["sha256"] for key, result in results.items()
            if isinstance(result, FileDigest)}


def _drop(tree: Path, layout: Layout, path: str) -> None:
    place = _where(tree, layout, path)
    if place is not None:
        place.unlink()
        log.warning("%s does not have the bytes the origin declared: removed, to be fetched "
                    "again", path)
