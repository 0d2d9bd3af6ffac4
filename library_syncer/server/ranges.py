"""A byte range of one file of the current revision, for a site that fetches a large new file
over several connections at once (sync/ranges.py, issue 24).

The request is `library-syncer-range 1 <sha256> <offset> <length>`: the file is named by the
digest the revision document (`.library-syncer/trace.json`) declares for it, never by a path
the client chose, so a site's parallel sessions read the same content even when a relay
publishes another snapshot between them (the digest is then in neither, or in both with the
same bytes). The answer is exactly `length` bytes on stdout and status 0, or one line on stderr
and status 1.

Format 2 (the same words, `library-syncer-range 2 …`; sites of 0.6.0 ask it of servers that
answer `library-syncer-trace`) lets the site shorten the range while it is sent: a line
`end <offset>` on stdin, an offset of the file inside the range, makes the answer stop there
(status 0). A site whose stream finished early takes over the second half of another stream's
range, and no byte crosses twice (sync/ranges.py, "Taking over"). The server reads stdin between
chunks of CHUNK bytes, at most MAX_CONTROL bytes of it in all.

Held to what `rrsync -ro` allows and less: only files the revision lists (inside the library,
never its trace folder), every path component opened from the library's descriptor without
following a link, a regular file whose size is still the declared one, a range inside it, sent
by the kernel (sendfile: no buffer grows with the length). The library path is resolved once,
so the document and the file come from the same snapshot. The bytes are the site's to verify:
it hashes the whole file against the digest (the origin's share may be rewritten under us).
"""

from __future__ import annotations

import os
import select
import stat
import sys
from pathlib import Path, PurePosixPath

from .dispatch import RANGE_COMMAND as COMMAND
from .trace import TRACE_DIR, read_document

FORMATS = ("1", "2")
CHUNK = 256 << 10  # bytes sent between two looks at stdin (format 2)
MAX_CONTROL = 4096  # what a site may write to stdin in all
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RangeRefused(ValueError):
    """The request cannot be answered (said to the client in one line)."""


def parse(words: list[str]) -> tuple[str, int, int]:
    """(digest, offset, length) of a request's words; RangeRefused when it is not one."""
    if len(words) != 5 or words[1] not in FORMATS:
        raise RangeRefused(f"expected `{COMMAND} {FORMATS[-1]} SHA256 OFFSET LENGTH`")
    digest, offset, length = words[2:]
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise RangeRefused("the digest is not a lower-case SHA-256")
    if not (offset.isdigit() and length.isdigit() and len(offset) < 20 and len(length) < 20):
        raise RangeRefused("offset and length are decimal numbers")
    return digest, int(offset), int(length)


def locate(library: Path, digest: str) -> tuple[str, int]:
    """The first path (in sorted order) the revision declares with `digest`, and its size."""
    found = read_document(library)
    if found is None or found[1].content is None:
        raise RangeRefused("this library declares no revision with content digests")
    revision = found[1]
    for path in sorted(revision.content.files):
        if revision.content.files[path].sha256 == digest:
            return path, revision.files[path][0]
    raise RangeRefused(f"revision {revision.serial} holds no file with that digest")


def open_inside(library: Path, rel: str) -> int:
    """A descriptor of the regular file `rel` below `library`, no component a link."""
    parts = PurePosixPath(rel).parts
    if not parts or parts[0] in ("/", TRACE_DIR) or any(p in ("", ".", "..") for p in parts):
        raise RangeRefused("the revision names a path outside the library")
    fd = os.open(library, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        target = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    except OSError as error:
        raise RangeRefused(f"the file cannot be opened ({error.strerror}): a link, or gone "
                           "since the revision was declared") from None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(target).st_mode):
        os.close(target)
        raise RangeRefused("the revision names something that is not a regular file")
    return target


def send(out: int, source: int, offset: int, length: int, control: Control | None = None
         ) -> None:
    """Copy `length` bytes of `source` from `offset` to `out` (a pipe to sshd); with `control`
    (format 2), up to the end it says, looked at between chunks."""
    os.set_blocking(source, True)
    end = offset + length
    while offset < (end if control is None else control.end(offset, end)):
        step = min(end - offset, 1 << 30) if control is None else \
            min(control.end(offset, end) - offset, CHUNK)
        sent = os.sendfile(out, source, offset, step)
        if sent == 0:
            raise RangeRefused("the file got shorter while it was sent")
        offset += sent


class Control:
    """The site's `end <offset>` lines on stdin (format 2): the lowest end said so far."""

    def __init__(self, fd: int) -> None:
        self.fd, self.said, self.lowest = fd, b"", None
        os.set_blocking(fd, False)

    def end(self, position: int, end: int) -> int:
        """Where the answer stops now: `end`, or a lower end the site said (not below
        `position`: what is sent is sent)."""
        while self.fd >= 0 and select.select([self.fd], [], [], 0)[0]:
            try:
                chunk = os.read(self.fd, MAX_CONTROL + 1 - len(self.said))
            except BlockingIOError:
                break
            if not chunk or len(self.said) + len(chunk) > MAX_CONTROL:
                self.fd = -1  # the site closed stdin, or says too much: nothing more is read
                break
            self.said += chunk
            for line in self.said.split(b"\n")[:-1]:
                word, _, value = line.decode("ascii", "replace").partition(" ")
                if word == "end" and value.isdigit() and len(value) < 20:
                    said = int(value)
                    self.lowest = said if self.lowest is None else min(said, self.lowest)
        return max(position, min(end, self.lowest if self.lowest is not None else end))


def serve(library: Path, words: list[str]) -> int:
    """Answer one request (the dispatcher's branch); status 0 when every byte was sent."""
    try:
        digest, offset, length = parse(words)
        root = Path(os.path.realpath(library))  # one snapshot for the document and the file
        rel, size = locate(root, digest)
        if offset + length > size:
            raise RangeRefused(f"bytes {offset}+{length} are past the file's end ({size})")
        fd = open_inside(root, rel)
        try:
            if os.fstat(fd).st_size != size:
                raise RangeRefused("the file changed since the revision was declared")
            sys.stdout.flush()
            control = Control(sys.stdin.fileno()) if words[1] == "2" else None
            send(sys.stdout.fileno(), fd, offset, length, control)
        finally:
            os.close(fd)
    except RangeRefused as refused:
        print(f"library-syncer: range refused: {refused}", file=sys.stderr, flush=True)
        return 1
    except OSError as error:  # the site went away, or the disk failed: said, never a crash
        print(f"library-syncer: range not sent: {error.strerror or error}", file=sys.stderr,
              flush=True)
        return 1
    return 0
