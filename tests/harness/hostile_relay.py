"""What a hostile relay (or a writer of the origin's library share) can do to the tree a site
pulls: the site sees only the served tree, so tampering with the served library after the
origin's trace tick is exactly a relay serving a tampered copy (tests/test_hostile_relay.py).
Each function keeps what a quick check compares (size, mtime) where the attack would."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from library_syncer.base import revision, statement
from library_syncer.server import signing, trace


def keep_times(path: Path, like: os.stat_result) -> None:
    """Give `path` the atime and mtime (nanoseconds) of `like`."""
    os.utime(path, ns=(like.st_atime_ns, like.st_mtime_ns))


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of `path` in place; its size and mtime stay as they were (rot, or a
    tamperer who knows what rsync's quick check and the trace's listing compare)."""
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    keep_times(path, before)


def replace_content(path: Path, data: bytes) -> None:
    """Put other bytes in `path` under its own mtime (the same size: a mix of revisions)."""
    before = path.stat()
    assert len(data) == before.st_size, "a content swap keeps the size"
    path.write_bytes(data)
    keep_times(path, before)


def copy_library(library: Path, to: Path) -> Path:
    """A copy of the served tree with its mtimes (a relay's copy of an older revision)."""
    shutil.copytree(library, to, symlinks=True, copy_function=shutil.copy2)
    return to


def serve(library: Path, copy: Path) -> None:
    """Serve `copy` (trace, statement and files) at `library`'s path from now on."""
    for entry in library.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in copy.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, library / entry.name, symlinks=True,
                            copy_function=shutil.copy2)
        else:
            shutil.copy2(entry, library / entry.name, follow_symlinks=False)


def statement_path(library: Path) -> Path:
    return library / trace.TRACE_DIR / statement.FILE_NAME


def document_path(library: Path) -> Path:
    return library / trace.TRACE_DIR / trace.TRACE_FILE


def sign_again(library: Path, key: Path, *, namespace: str = statement.NAMESPACE,
               signed_at: float, validity: float) -> statement.Statement:
    """Replace the served statement with one made here (not by the origin's trace tick) for
    the served trace.json: signed by `key` with `ssh-keygen -Y sign -n namespace`, as of
    `signed_at`, valid for `validity` seconds from then."""
    document = document_path(library).read_bytes()
    found = revision.Revision.from_json(document.decode())
    made = statement.Statement.for_document(document, found, signing.public_key(key).fingerprint,
                                            signed_at, validity)
    line = made.to_bytes()
    statement_path(library).write_bytes(statement.join(line, signing.sign(line, key, namespace)))
    return made
