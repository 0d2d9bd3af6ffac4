"""The trace folder's files, read and written without following a link and within a bound.

`<library>/.library-syncer/` sits inside a tree others write (a CI pipeline, an NFS export), and
the trace service runs as root. Whoever can write the library could make the folder, or a file
in it, a symbolic link: to /etc (root would write trace.json there) or to /dev/zero (an unbounded
read, a MemoryError every minute). So the folder is opened with O_NOFOLLOW and every file
relative to that descriptor with O_NOFOLLOW: no path is resolved twice, no link is followed, and
a read stops at its bound.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from ..base import fsutil
from ..base.errors import SyncerError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TooLarge(ValueError):
    """A file in the trace folder is larger than its bound."""


def _refused(library: Path, name: str) -> SyncerError:
    return SyncerError(f"{library / name}: a symbolic link or not a folder; the trace service "
                       "never follows one (someone who can write the library made it)",
                       hint=f"remove it (rm {library / name}); the next tick writes a folder")


@contextlib.contextmanager
def folder(library: Path, name: str, create: bool) -> Iterator[int | None]:
    """A descriptor of `library/name` (None when it is missing and not `create`d); SyncerError
    when it is a link or not a folder."""
    top = os.open(library, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=top)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=top)
        except FileNotFoundError:
            if create:
                raise
            yield None
            return
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):  # a link, or a file
                raise _refused(library, name) from None
            raise
        try:
            yield fd
        finally:
            os.close(fd)
    finally:
        os.close(top)


def read(dir_fd: int, name: str, limit: int) -> bytes | None:
    """A regular file's bytes (None: missing, a link, or not a regular file); TooLarge past
    `limit` bytes (O_NONBLOCK: a FIFO planted there cannot hang the open)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > limit:  # refused before a byte is read
            raise TooLarge(f"{name}: larger than {limit} bytes")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{name}: larger than {limit} bytes")
    return data


def write(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """Replace `name` atomically (a temporary file, fsync, rename within the folder): a reader
    sees the old bytes or the new; a link named `name` is replaced, never followed."""
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode, dir_fd=dir_fd)
    try:
        fsutil.write_synced(fd, data, mode)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def remove(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
