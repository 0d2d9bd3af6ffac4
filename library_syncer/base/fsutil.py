"""Filesystem helpers: atomic writes for everything a web server or subscriber may read."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(fd: int, data: bytes, mode: int) -> None:
    """Write `data` to the new file `fd` (closed after), give it `mode`, fsync it."""
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fchmod(handle.fileno(), mode)
        os.fsync(handle.fileno())


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644, *,
                 sync_dir: bool = True) -> None:
    """Write `data` to `path` so readers see the old content or the new, never a mix.

    Temp file in the same directory, fsync, `os.replace`, then fsync the directory so the rename
    survives a crash. `sync_dir=False` lets a caller writing many files sync the directory once.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        write_synced(fd, data, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def read_json_object(path: Path) -> dict | None:
    """A small JSON state file's object; None when it is missing, unreadable or no object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_if_changed(path: Path, data: bytes | str, mode: int = 0o644) -> bool:
    """Atomically write only when the content differs (keeps mtimes and ETags stable)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        if Path(path).read_bytes() == data:
            return False
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass
    atomic_write(path, data, mode)
    return True


def atomic_symlink(target: str | Path, link: Path) -> None:
    """Point `link` at `target` atomically (create a temp symlink, rename it over the old one)."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)
