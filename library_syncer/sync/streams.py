"""Several TCP connections for a large run: its largest files fetched over up to sync.streams SSH
connections at once, before the run's normal pull.

One TCP connection has one congestion window and one SSH channel window: on a long or lossy link
that, not the link, sets the pace (issue 24). When the plan (sync/plan.py) says the run has at least
MIN_BYTES in files of at least MIN_FILE to fetch (new or changed), those files are dealt, largest
first, into up to sync.streams shares of about equal bytes, and each share is pulled by its own
rsync over its own SSH connection (rsync.stream_argv), all at once, into the same staging tree
with the pull's filters, bases and partial dir, each with its share of sync.bandwidth_limit
(the sum stays within it). The first share goes over the run's connection, which the streams
leave idle otherwise: N streams cost N - 1 logins, and the first byte waits for no login.

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
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..base.config import SyncConfig
from ..base.units import format_bytes
from . import basis, ranges, rsync, runner, ssh
from .retry import Transfer

log = logging.getLogger("library-syncer")

MIN_BYTES = 64 << 20  # what a run must fetch in large files before it opens more connections
MIN_FILE = basis.MIN_SIZE  # smaller files stay with the normal pass (their set-up dominates)
MIN_SHARE = 16 << 20  # a stream's bytes at least: less is not worth its own handshake


@dataclass(frozen=True)
class Share:
    """One stream's work: pieces of cut files (sync/ranges.py), then whole files (paths
    relative to the library) in one rsync; and their bytes."""

    paths: tuple[str, ...]
    size: int
    pieces: tuple[ranges.Piece, ...] = ()


def plan(listing: Iterable[basis.Listed], streams: int,
         cuts: Mapping[str, ranges.Cut] | None = None) -> list[Share]:
    """The shares for the run's plan (sync/plan.py: its listing): none (the run keeps its one
    connection) unless the large files fetched hold MIN_BYTES and make at least two shares of
    MIN_SHARE. As many shares as sync.streams and MIN_SHARE allow; a file in `cuts` is dealt
    in pieces of about one share each, every other file whole; largest first onto the lightest
    share (balanced by bytes). A share of whole files left under MIN_SHARE (beside one that
    dominates) goes back to the normal pass."""
    cuts = cuts or {}
    files = [f for f in listing if f.fetched and f.size >= MIN_FILE]
    total = sum(f.size for f in files)
    count = min(streams, total // MIN_SHARE)
    piece = max(MIN_SHARE, -(-total // max(1, count)))
    units: list[tuple[int, str, ranges.Piece | None]] = []
    for file in files:
        if file.path in cuts:
            units += [(p.length, f"{file.path}\0{p.offset:020d}", p)
                      for p in ranges.pieces(cuts[file.path], piece)]
        else:
            units.append((file.size, file.path, None))
    count = min(count, len(units))
    if count < 2 or total < MIN_BYTES:
        return []
    heap: list[tuple[int, int, list[str], list[ranges.Piece]]] = [
        (0, index, [], []) for index in range(count)]
    for size, key, cut_piece in sorted(units, key=lambda u: (-u[0], u[1])):
        held, index, paths, pieces = heapq.heappop(heap)
        if cut_piece is None:
            paths.append(key)
        else:
            pieces.append(cut_piece)
        heapq.heappush(heap, (held + size, index, paths, pieces))
    shares = [Share(tuple(paths), size, tuple(pieces))
              for size, _, paths, pieces in sorted(heap, key=lambda s: s[1])
              if size >= MIN_SHARE or pieces]
    return shares if len(shares) >= 2 else []


def fetch(sync: SyncConfig, tree: Path, link_dests: list[Path], shares: Sequence[Share],
          peer: rsync.PeerOptions, done: Transfer, shared: Sequence[str] = (),
          take_over: bool = False) -> int:
    """Pull every share at once into `tree`; what they moved is counted in `done`. Returns how
    many streams ended well. A stream's failure is said and never raised: the normal pass
    fetches what it left (and fails as it would have, if the cause is lasting).

    The first stream goes over the run's connection when there is one (`shared`: its ssh
    options), idle while the streams run: its first byte follows the plan by a session's
    round trips, not a login's, and the run makes one login fewer. With `take_over` (the
    server answers range requests that can be shortened: one that answered
    `library-syncer-trace`), a stream with nothing left takes over the second half of the
    piece with most left (ranges.Board), so the streams end together."""
    if not shares:
        return 0
    started = time.monotonic()
    cut = {p.cut.path: p.cut for share in shares for p in share.pieces}
    unmade = ranges.prepare(tree, cut.values())
    if unmade:
        shares = [Share(s.paths, s.size, tuple(p for p in s.pieces if p.cut.path not in unmade))
                  for s in shares]
        cut = {path: c for path, c in cut.items() if path not in unmade}
    rate = ranges.share_rate(sync, len(shares))
    board = ranges.Board() if take_over and cut else None
    with tempfile.TemporaryDirectory(prefix="library-syncer-streams-") as lists, \
            ThreadPoolExecutor(max_workers=len(shares)) as pool:
        runs = [pool.submit(_stream, sync, tree, link_dests, share, peer, len(shares), rate,
                            Path(lists) / f"stream-{index + 1}",
                            shared if index == 0 and shared else ssh.OWN_CONNECTION, board,
                            shared or ssh.OWN_CONNECTION)
                for index, share in enumerate(shares)]
        ended = [run.result() for run in runs]
    got = {p: True for p in cut}
    for outcome in ended:
        done.count(outcome.stats)
        for piece in outcome.missing:
            got[piece.cut.path] = False
    whole = sum(ranges.finish(tree, cut[path], complete) for path, complete in got.items())
    well = sum(1 for outcome in ended if outcome.error is None)
    for index, (share, outcome) in enumerate(zip(shares, ended, strict=True)):
        if outcome.error is not None:
            pieces = f"{len(share.pieces)} piece(s), " if share.pieces else ""
            log.warning("stream %d of %d (%d file(s), %s%s) stopped: %s; the normal pass "
                        "fetches what it left", index + 1, len(shares), len(share.paths),
                        pieces, format_bytes(share.size), outcome.error)
    taken = f"; {board.taken} range(s) taken over" if board is not None and board.taken else ""
    log.info("%d stream(s) fetched %s in %.1f s (%d of %d ended well%s%s)", len(shares),
             format_bytes(sum(o.stats.bytes_received for o in ended)),
             time.monotonic() - started, well, len(shares),
             f"; {whole} of {len(cut)} file(s) in ranges verified" if cut else "", taken)
    return well


@dataclass
class _Outcome:
    stats: rsync.Stats
    missing: list[ranges.Piece]  # pieces that did not arrive
    error: str | None = None
    refused: bool = False  # the last piece's server said no (a server before ranges)


def _stream(sync: SyncConfig, tree: Path, link_dests: list[Path], share: Share,
            peer: rsync.PeerOptions, streams: int, rate: int, files_from: Path,
            via: Sequence[str], board: ranges.Board | None = None,
            take_via: Sequence[str] = ssh.OWN_CONNECTION) -> _Outcome:
    """One stream: its pieces one after the other, then its whole files in one rsync, each
    over the ssh options `via` (a connection of its own, or the run's); then (`board`) the ends
    of other streams' pieces it takes over, over `take_via` (the run's connection: a session,
    about 2 round trips, where a login of its own costs about 7). Never raises: what it could
    not fetch is the normal pass's."""
    outcome = _Outcome(rsync.Stats(), [])
    for number, piece in enumerate(share.pieces):
        if not _piece(sync, tree, piece, rate, via, board, outcome) and outcome.refused:
            outcome.missing += share.pieces[number + 1:]  # no ranges there: all refused
            break
    if share.paths:
        files_from.write_bytes(b"".join(os.fsencode(p) + b"\0" for p in share.paths))
        argv = peer.adapt(rsync.stream_argv(sync, tree, link_dests, files_from, streams,
                                               via))
        stats = rsync.Stats()
        result = runner.run(runner.Job(argv, on_line=partial(_line, stats)))
        outcome.stats.bytes_received += stats.bytes_received
        outcome.stats.bytes_sent += stats.bytes_sent
        error = rsync.classify(result.returncode, result.tail, stats, sync)
        if error is not None:
            outcome.error = error.message
    while board is not None and outcome.error is None and (taken := board.take()) is not None:
        log.debug("a stream took over bytes %d-%d of %s", taken.offset,
                  taken.offset + taken.length, taken.cut.path)
        _piece(sync, tree, taken, rate, take_via, board, outcome)
    return outcome


def _piece(sync: SyncConfig, tree: Path, piece: ranges.Piece, rate: int, via: Sequence[str],
           board: ranges.Board | None, outcome: _Outcome) -> bool:
    """Fetch one piece for a stream; what it moved and what it missed go to `outcome`."""
    try:
        outcome.stats.bytes_received += ranges.fetch(sync, tree, piece, rate, via, board)
        return True
    except ranges.PieceFailed as failed:
        outcome.stats.bytes_received += failed.got
        outcome.missing.append(failed.piece)
        outcome.error = f"range of {piece.cut.path}: {failed}"
        outcome.refused = failed.refused
        return False


def _line(stats: rsync.Stats, line: str) -> None:
    if not stats.feed(line) and rsync.parse_progress(line) is None:
        log.debug("rsync stream: %s", line)
