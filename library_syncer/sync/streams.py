"""Several TCP connections for a large run: its largest files fetched over up to sync.streams SSH
connections at once, before the run's normal pull.

One TCP connection has one congestion window and one SSH channel window: on a long or lossy link
that, not the link, sets the pace (issue 24). When the dry run says the run has at least
MIN_BYTES in files of at least MIN_FILE to fetch (new or changed), those files are dealt, largest
first, into up to sync.streams shares of about equal bytes, and each share is pulled by its own
rsync over its own SSH connection (rsync.stream_argv: never the run's shared master), all at
once, into the same staging tree with the pull's filters, bases and partial dir, each with its
share of sync.bandwidth_limit (the sum stays within it).

The normal pull then runs exactly as for any run: it finds those files done, fetches what a
stream did not, deletes, and the revision check follows. Correctness stays with that pass: a
stream that fails or is cut costs only what it moved, and its partial file (--partial-dir) is
where the normal pass resumes. Smaller runs never get here: one connection, one handshake.
"""

from __future__ import annotations

import heapq
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..base.config import SyncConfig
from ..base.units import format_bytes
from . import basis, rsync, runner
from .retry import Transfer

log = logging.getLogger("library-syncer")

MIN_BYTES = 64 << 20  # what a run must fetch in large files before it opens more connections
MIN_FILE = basis.MIN_SIZE  # smaller files stay with the normal pass (their set-up dominates)
MIN_SHARE = 16 << 20  # a stream's bytes at least: less is not worth its own handshake


@dataclass(frozen=True)
class Share:
    """One stream's files (paths relative to the library) and their bytes."""

    paths: tuple[str, ...]
    size: int


def plan(listed: Iterable[str], streams: int) -> list[Share]:
    """The shares for the dry run's listing (LISTING_FORMAT lines): none (the run keeps its one
    connection) unless the large files fetched hold MIN_BYTES and make at least two shares of
    MIN_SHARE. As many shares as sync.streams, the files and MIN_SHARE allow; largest file
    first onto the lightest share (balanced by bytes); a share left under MIN_SHARE (beside one
    file that dominates) goes back to the normal pass."""
    files = [f for f in basis.parse_listing(listed) if f.fetched and f.size >= MIN_FILE]
    total = sum(f.size for f in files)
    count = min(streams, len(files), total // MIN_SHARE)
    if count < 2 or total < MIN_BYTES:
        return []
    heap: list[tuple[int, int, list[str]]] = [(0, index, []) for index in range(count)]
    for file in sorted(files, key=lambda f: (-f.size, f.path)):
        size, index, paths = heapq.heappop(heap)
        paths.append(file.path)
        heapq.heappush(heap, (size + file.size, index, paths))
    shares = [Share(tuple(paths), size) for size, _, paths in sorted(heap, key=lambda s: s[1])
              if size >= MIN_SHARE]
    return shares if len(shares) >= 2 else []


def fetch(sync: SyncConfig, tree: Path, link_dests: list[Path], shares: Sequence[Share],
          peer: rsync.PeerOptions, done: Transfer) -> int:
    """Pull every share at once into `tree`; what they moved is counted in `done`. Returns how
    many streams ended well. A stream's failure is said and never raised: the normal pass
    fetches what it left (and fails as it would have, if the cause is lasting)."""
    if not shares:
        return 0
    started = time.monotonic()
    stats = [rsync.Stats() for _ in shares]
    with tempfile.TemporaryDirectory(prefix="library-syncer-streams-") as lists:
        jobs = []
        for index, share in enumerate(shares):
            files_from = Path(lists) / f"stream-{index + 1}"
            files_from.write_bytes(b"".join(os.fsencode(p) + b"\0" for p in share.paths))
            argv = peer.adapt(rsync.stream_argv(sync, tree, link_dests, files_from, len(shares)))
            jobs.append(runner.Job(argv, on_line=partial(_line, stats[index])))
        results = runner.run_all(jobs)
    ended = 0
    for index, (share, result, counted) in enumerate(zip(shares, results, stats, strict=True)):
        done.count(counted)
        error = rsync.classify(result.returncode, result.tail, counted, sync)
        if error is None:
            ended += 1
            continue
        log.warning("stream %d of %d (%d file(s), %s) stopped: %s; the normal pass fetches what "
                    "it left", index + 1, len(shares), len(share.paths),
                    format_bytes(share.size), error.message)
    log.info("%d stream(s) fetched %s in %.1f s (%d of %d ended well)", len(shares),
             format_bytes(sum(s.bytes_received for s in stats)), time.monotonic() - started,
             ended, len(shares))
    return ended


def _line(stats: rsync.Stats, line: str) -> None:
    if not stats.feed(line) and rsync.parse_progress(line) is None:
        log.debug("rsync stream: %s", line)
