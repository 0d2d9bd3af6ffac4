"""What an upstream declares, read before anything is pulled: its serial file ("<origin>
<serial>") and, from an origin that signs, its statement — one small rsync of at most two files
of a few kilobytes (`--max-size`: a forged "serial" of 300 MB is left where it is).

The run reads it before the dry run, so that a stale, forged or unsigned upstream costs this
read and not a transfer (sync/trace_check.py:refuse_declared); the change check of sync/poll.py
reads the serial the same way. What the pull brings afterwards is checked again in full: the
declaration is the upstream's claim until the statement's signature and the document agree.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..base import execute, statement
from ..base.config import SyncConfig
from ..base.revision import MAX_SERIAL, ORIGIN_RE
from ..server.trace import SERIAL_FILE, STATEMENT_FILE, TRACE_DIR
from . import rsync, runner

MAX_BYTES = statement.MAX_STATEMENT_BYTES  # the serial file (~20 bytes) and the statement


@dataclass(frozen=True)
class Declared:
    """What the upstream's trace folder holds; `origin`/`serial` None when its serial file is
    missing or not one (a statement alone still counts: the site verifies it)."""

    origin: str | None
    serial: int | None
    statement: bytes | None  # the statement file (line and signature), unverified


def fetch(sync: SyncConfig, ssh_extra: Sequence[str] = ()) -> Declared | None:
    """The upstream's declaration; None when it has no trace folder (the Docker-based original,
    a server before traces). Network and server errors are raised as the pull's would be."""
    result, found = read_trace_files(
        sync, lambda tmp: rsync.declared_argv(sync, tmp, MAX_BYTES, ssh_extra),
        (SERIAL_FILE, STATEMENT_FILE), MAX_BYTES)
    if _missing(result):
        return None
    error = rsync.classify(result.returncode, result.tail, rsync.Stats(), sync)
    if error is not None:
        error.message = f"reading the upstream's revision: {error.message}"
        raise error
    return Declared(*_serial(found[SERIAL_FILE]), found[STATEMENT_FILE])


def read_trace_files(sync: SyncConfig, argv_for: Callable[[Path], list[str]],
                     names: Sequence[str], limit: int,
                     on_line: Callable[[str], None] | None = None
                     ) -> tuple[execute.CommandResult, dict[str, bytes | None]]:
    """Run the rsync `argv_for(folder)` that fetches some of the upstream's trace folder into a
    temporary folder, and read the files `names` from it (None: missing, unreadable or over
    `limit` bytes). The output goes to `on_line`, or is captured."""
    with tempfile.TemporaryDirectory(prefix="library-syncer-trace-") as tmp:
        timeout = sync.connect_timeout + sync.io_timeout + 30
        result = runner.run(runner.Job(argv_for(Path(tmp)), on_line=on_line,
                                       capture=on_line is None, timeout=timeout))
        return result, {name: _bytes(Path(tmp) / name, limit) for name in names}


def _missing(result: execute.CommandResult) -> bool:
    """No trace folder: rsync's own "No such file" (status 23), or rrsync's refusal of a path
    that does not exist, said before it starts rsync (the connection then closes: 12)."""
    return result.returncode in (12, 23) and any(
        "No such file" in line and TRACE_DIR in line for line in result.tail)


def _bytes(path: Path, limit: int) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if len(data) <= limit else None


def _serial(data: bytes | None) -> tuple[str | None, int | None]:
    """(origin, serial) of a serial file's bytes; (None, None) when they are not one."""
    try:
        origin, serial = (data or b"").decode("ascii").split()
        number = int(serial)
    except (UnicodeDecodeError, ValueError):
        return None, None
    if not ORIGIN_RE.fullmatch(origin) or not serial.isdigit() or not 0 < number < MAX_SERIAL:
        return None, None
    return origin, number

