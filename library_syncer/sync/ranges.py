"""A large new file in byte ranges over several connections (issue 24, item 3).

One rsync session moves one file over one SSH channel: on a long or lossy link its window, not
the link, sets the pace, and a single new multi-GB disk cannot be spread over the streams of
sync/streams.py as whole files. So a new file with no basis at the site (rsync would send it
whole: nothing of it is here) is cut into pieces, each fetched over a stream's SSH connection
(the first stream's is the run's own) by a read-only range request to the server's dispatcher
(server/ranges.py), naming the file by the digest the upstream's revision document declares
for it.

The document is the one the run's plan came from (sync/plan.py), or (a server before 0.6.0) read
beside the declaration and the dry run (a third session of the run's connection at the same
time: no round trip of its own), as its differences from the published one; used only when the
declaration names it. An upstream without one (the Docker-based original, a server before
traces) gets no range request, and one that refuses it (a server before ranges) has its file
fetched whole by the normal pass.

The pieces land in a temporary file beside the file's place in staging; when all arrived and the
whole hashes to the declared digest, it takes the file's place with the declared modification
time, and the normal pass finds it done (its quick check compares size and time to the
nanosecond). Otherwise it takes the place without that time, and the normal pass fetches the
differences against what did arrive. The content check before the switch (sync/content.py) holds
either way: a range is never trusted more than a pull.

Taking over (`Board`, against a server of 0.6.0 or later): a stream with nothing left takes the
second half of what is left of the piece with most left, and that piece's server is told the
new end (range format 2), so the streams end together and no byte crosses twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..base import statement
from ..base.config import SyncConfig
from ..base.revision import Revision, sha256_file
from ..base.units import bwlimit_bytes_per_second
from ..server.dispatch import RANGE_COMMAND
from ..server.trace import TRACE_DIR, TRACE_FILE
from . import basis, declared, plan, rsync, ssh
from .declared import Declared

log = logging.getLogger("library-syncer")

MIN_CUT = 32 << 20  # a new file smaller than this is never cut (two pieces of streams.MIN_SHARE)
MIN_TAKE = 8 << 20  # a range with less left is not split: half of it (4 MiB) is worth a session
CHUNK = 1 << 20
TEMP_PREFIX = ".library-syncer-ranges."
MAX_NAME = 255 - len(TEMP_PREFIX)  # the temporary file's name must fit NAME_MAX too


@dataclass(frozen=True)
class Cut:
    """A new file the run may fetch in pieces: what the revision declares for it."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Piece:
    """Bytes [offset, offset + length) of a cut file."""

    cut: Cut
    offset: int
    length: int


class PieceFailed(Exception):
    def __init__(self, message: str, got: int, refused: bool, piece: Piece) -> None:
        super().__init__(message)
        self.got = got  # bytes that did cross the link
        self.refused = refused  # the server answered, and said no (a server before ranges)
        self.piece = piece  # what it was to fetch by then (less, when another took over its end)


class Running:
    """A piece being fetched: how far it came, and where it ends now."""

    def __init__(self, piece: Piece, control: int | None = None) -> None:
        self.piece = piece
        self.position = piece.offset  # bytes before it are written
        self.end = piece.offset + piece.length  # lowered when another stream takes over the rest
        self.control = control  # the request's stdin (format 2): where `end <offset>` is said


class Board:
    """Taking over (format 2, a server that answers `library-syncer-trace`): the pieces being
    fetched, so that a stream with nothing left takes the second half of the one with most left
    (pieces are equal, but connections sharing a link are not: one measured on profile A ended
    after 8 s, the last after 23 s). The other's server is told the new end on its stdin and
    stops there: no byte crosses twice."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: list[Running] = []
        self.taken = 0

    def add(self, running: Running) -> None:
        with self.lock:
            self.running.append(running)

    def remove(self, running: Running) -> None:
        with self.lock:
            self.running.remove(running)

    def take(self) -> Piece | None:
        """The second half of what is left of the piece with most left (at least MIN_TAKE);
        None when there is none."""
        with self.lock:
            left = [r for r in self.running
                    if r.control is not None and r.end - r.position >= MIN_TAKE]
            if not left:
                return None
            other = max(left, key=lambda r: r.end - r.position)
            split = other.position + (other.end - other.position) // 2
            try:
                os.write(other.control, f"end {split}\n".encode())
            except OSError:  # its request just ended
                return None
            piece = Piece(other.piece.cut, split, other.end - split)
            other.end = split
            self.taken += 1
            return piece


def candidates(listed: Iterable[basis.Listed], seeded: Iterable[str]) -> list[basis.Listed]:
    """New files of at least MIN_CUT that got no basis: nothing of them is at the site."""
    based = set(seeded)
    return [f for f in listed if f.fetched and f.new and f.size >= MIN_CUT
            and f.path not in based and len(os.fsencode(f.path.rsplit("/", 1)[-1])) <= MAX_NAME]


def cuts(found: Declared | None, new: list[basis.Listed], document: bytes | None
         ) -> dict[str, Cut]:
    """The files of `new` the upstream's document (read beside the declaration and the dry run:
    transfer.py's _shared_document) declares with the size the dry run listed."""
    revision = checked(document, found) if new else None
    if revision is None or revision.content is None:
        return {}
    chosen = {}
    for file in new:
        fact, listed = revision.content.files.get(file.path), revision.files.get(file.path)
        if fact is not None and listed is not None and listed[0] == file.size:
            chosen[file.path] = Cut(file.path, file.size, listed[1], fact.sha256)
    return chosen


def checked(document: bytes | None, found: Declared | None) -> Revision | None:
    """The revision `document` holds if it is the one the upstream declared: the statement's
    size and digest when it has one, the serial always; else None (no ranges this run)."""
    if document is None or found is None or found.serial is None:
        return None
    if found.statement is not None:
        try:
            claimed = statement.Statement.parse(statement.split(found.statement)[0])
        except statement.StatementRefused:
            return None
        if len(document) != claimed.document_size or \
                hashlib.sha256(document).hexdigest() != claimed.document_sha256:
            log.debug("the upstream's document is not the one its statement names: no ranges")
            return None
    try:
        revision = Revision.from_json(document.decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return revision if revision.serial == found.serial else None


def wanted(sync: SyncConfig, published: Path | None) -> bool:
    """Whether a run reads the upstream's document beside its declaration: it may cut files
    (sync.streams > 1, the library's top), and the upstream may declare one (nothing published
    yet, or what is published came with a document: never every run against the Docker
    original)."""
    return sync.streams > 1 and plan.traced(sync, published)


def read_document(sync: SyncConfig, ssh_extra: list[str], published: Path | None
                  ) -> tuple[bytes | None, rsync.Stats]:
    """The upstream's trace.json (what crossed the link in the statistics), fetched as its
    differences from the published one; None when there is none or it could not be read."""
    basis_dir = published / TRACE_DIR if published is not None else None
    stats = rsync.Stats()
    limit = statement.MAX_DOCUMENT_BYTES
    result, found = declared.read_trace_files(
        sync, lambda tmp: rsync.document_argv(sync, tmp, limit, ssh_extra, basis_dir),
        (TRACE_FILE,), limit, on_line=stats.feed)
    if result.returncode != 0 or found[TRACE_FILE] is None:
        log.debug("the upstream's revision document was not read (rsync status %d)",
                  result.returncode)
        return None, stats
    return found[TRACE_FILE], stats


def pieces(cut: Cut, size: int) -> list[Piece]:
    """`cut` in pieces of `size` bytes (the last one shorter)."""
    return [Piece(cut, offset, min(size, cut.size - offset))
            for offset in range(0, cut.size, size)]


def temp_path(tree: Path, cut: Cut) -> Path:
    place = tree / cut.path
    return place.with_name(TEMP_PREFIX + place.name)


def prepare(tree: Path, cuts: Iterable[Cut]) -> set[str]:
    """A temporary file of the right size beside each cut file's place (the pieces are written
    into it at their offsets; the normal pass deletes one a crash left). Returns the paths it
    could not make one for (said; those files go whole with the normal pass)."""
    failed = set()
    for cut in cuts:
        temp = temp_path(tree, cut)
        try:
            temp.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            with open(temp, "wb") as handle:
                handle.truncate(cut.size)
            os.chmod(temp, 0o644)
        except OSError as error:
            log.warning("%s: no byte ranges (%s); the normal pass fetches it whole", cut.path,
                        error.strerror or error)
            failed.add(cut.path)
    return failed


def resume(tree: Path) -> list[str]:
    """Before the dry run: what a killed run's pieces left takes its file's place, so that this
    run fetches the file as differences from what did arrive (resumable, as rsync's partial
    files are). Returns the paths given back."""
    back = []
    for temp in sorted(tree.rglob(TEMP_PREFIX + "*")):
        place = temp.with_name(temp.name[len(TEMP_PREFIX):])
        if temp.is_file() and not temp.is_symlink() and _has_data(temp) \
                and not place.exists():
            os.replace(temp, place)
            back.append(place.relative_to(tree).as_posix())
        else:
            temp.unlink(missing_ok=True)
    if back:
        log.info("resuming %d file(s) from the byte ranges a previous run fetched", len(back))
    return back


def fetch(sync: SyncConfig, tree: Path, piece: Piece, rate: int,
          via: Sequence[str] = ssh.OWN_CONNECTION, board: Board | None = None) -> int:
    """Fetch one piece over its own SSH connection (or the ssh options `via`) into the cut
    file's temporary file; returns the bytes written (all of the piece, up to where another
    stream took over: `board`, format 2) or raises PieceFailed. `rate`: bytes/s, 0 unlimited."""
    form = "1" if board is None else "2"
    request = f"{RANGE_COMMAND} {form} {piece.cut.sha256} {piece.offset} {piece.length}"
    argv = ssh.argv(sync, [*via, "-T", sync.peer, request])
    with open(temp_path(tree, piece.cut), "r+b") as target, \
            tempfile.TemporaryFile() as errors, \
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors,
                             stdin=subprocess.DEVNULL if board is None else subprocess.PIPE
                             ) as process:
        assert process.stdout is not None
        running = Running(piece, process.stdin.fileno() if process.stdin else None)
        got, status, written = 0, None, None
        if board is not None:
            board.add(running)
        try:
            got = _copy(process.stdout.fileno(), target.fileno(), running, rate,
                        sync.io_timeout, board.lock if board else threading.Lock())
            if board is not None:  # the bytes are hashed whole: the status adds nothing
                status = 0 if got == running.end - piece.offset else None
            elif got == piece.length:
                status = process.wait(timeout=sync.io_timeout)
        except subprocess.TimeoutExpired:
            pass
        except OSError as error:  # the staging disk (full): the normal pass says it plainly
            written = error.strerror or str(error)
        finally:
            if board is not None:
                board.remove(running)
            if process.poll() is None:
                process.kill()
                process.wait()
        errors.seek(0)
        said = errors.read(4096).decode(errors="replace").strip().splitlines()
    length = running.end - piece.offset
    ended = Piece(piece.cut, piece.offset, length)
    if written is not None:
        raise PieceFailed(f"writing {temp_path(tree, piece.cut)}: {written}", got,
                          refused=False, piece=ended)
    if status != 0 or got != length:
        message = said[-1] if said else f"ssh status {status}, {got} of {length} bytes"
        raise PieceFailed(message, min(got, length),
                          refused=status not in (None, 0, 255) and got == 0, piece=ended)
    return got


def _copy(source: int, target: int, running: Running, rate: int, timeout: float,
          lock: threading.Lock) -> int:
    """Write what `source` sends at the piece's offset up to its end (read under `lock`: another
    stream may lower it), at most `rate` bytes/s; nothing for `timeout` seconds ends it. Past
    the end: a request that can be shortened (format 2) keeps what is inside; any other gets
    one byte too many counted (not this piece)."""
    got, started, offset = 0, time.monotonic(), running.piece.offset
    while True:
        with lock:
            if offset + got >= running.end:
                return got
        ready, _, _ = select.select([source], [], [], timeout)
        if not ready:
            return got
        chunk = os.read(source, CHUNK)
        if not chunk:
            return got
        with lock:
            inside = chunk[:running.end - offset - got]
            running.position = offset + got + len(inside)
        if len(inside) < len(chunk) and running.control is None:
            return running.end - offset + 1  # more than asked: not this piece
        os.pwrite(target, inside, offset + got)
        got += len(inside)
        if rate:
            ahead = got / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


def finish(tree: Path, cut: Cut, complete: bool) -> bool:
    """The temporary file takes the cut file's place: with the declared time when every piece
    arrived and it hashes to the declared digest (True), else as a basis for the normal pass,
    or not at all when nothing arrived. A failure here is said, never raised: the normal pass
    fetches whatever is not in place."""
    temp, place = temp_path(tree, cut), tree / cut.path
    try:
        if complete and sha256_file(temp) == cut.sha256:
            os.utime(temp, ns=(cut.mtime_ns, cut.mtime_ns))
            os.replace(temp, place)
            return True
        if complete:
            log.warning("%s: the pieces fetched do not hash to the digest the revision "
                        "declares; the normal pass fetches its differences", cut.path)
        if complete or _has_data(temp):
            os.replace(temp, place)
        else:
            temp.unlink(missing_ok=True)
    except OSError as error:
        log.warning("%s: the pieces fetched cannot take its place (%s); the normal pass "
                    "fetches it", cut.path, error.strerror or error)
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
    return False


def _has_data(path: Path) -> bool:
    """Any block written (a file of holes only is nothing to start from)."""
    try:
        return path.stat().st_blocks > 0
    except OSError:
        return False


def share_rate(sync: SyncConfig, streams: int) -> int:
    """Bytes/s for each of `streams` connections: the bandwidth limit split (0: unlimited)."""
    share = rsync.bwlimit_share(sync.bandwidth_limit, streams)
    return 0 if share in ("0", "") else bwlimit_bytes_per_second(share)
