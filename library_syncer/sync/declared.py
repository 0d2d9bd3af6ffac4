"""What an upstream declares, read before anything is pulled: its serial file ("<origin>
<serial>") and, from an origin that signs, its statement — one small rsync of at most two files
of a few kilobytes (`--max-size`: a forged "serial" of 300 MB is left where it is). A server of
this version answers them with its revision document in one command instead (`ask`,
server/trace_answer.py): about two round trips, and the run plans from the document (sync/plan.py)
without a dry run.

The run reads it before the dry run, so that a stale, forged or unsigned upstream costs this
read and not a transfer (sync/trace_check.py:refuse_declared); the change check of sync/poll.py
reads the serial the same way. What the pull brings afterwards is checked again in full: the
declaration is the upstream's claim until the statement's signature and the document agree.
"""

from __future__ import annotations

import os
import select
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..base import execute, statement
from ..base.config import SyncConfig
from ..base.revision import MAX_SERIAL, ORIGIN_RE
from ..server.dispatch import TRACE_COMMAND
from ..server.trace import SERIAL_FILE, STATEMENT_FILE, TRACE_DIR, TRACE_FILE
from . import rsync, runner, ssh

MAX_BYTES = statement.MAX_STATEMENT_BYTES  # the serial file (~20 bytes) and the statement
ANSWER_FORMAT = "1"
ANSWER_LIMIT = statement.MAX_DOCUMENT_BYTES + 2 * MAX_BYTES + 4096  # the frames, uncompressed


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



@dataclass(frozen=True)
class Told:
    """The upstream's answer to `ask`: its declaration, its document (None: it has none) and
    the bytes that crossed for them."""

    found: Declared
    document: bytes | None
    received: int


def ask(sync: SyncConfig, via: Sequence[str]) -> Told | None:
    """The upstream's declaration and revision document in one command of its dispatcher, over
    the ssh options `via` (the run's connection); None when it gives no such answer (the
    Docker-based original, rrsync alone, a server before this command, a network fault): the
    caller then reads them by rsync, which says any fault plainly and is retried."""
    argv = ssh.argv(sync, [*via, "-T", sync.peer, f"{TRACE_COMMAND} {ANSWER_FORMAT}"])
    raw = _output(argv, ANSWER_LIMIT, sync.connect_timeout + sync.io_timeout)
    return parse_answer(raw) if raw is not None else None


def parse_answer(raw: bytes) -> Told | None:
    """The Told of an answer's bytes (server/trace_answer.py); None when they are not one."""
    head = f"{TRACE_COMMAND} {ANSWER_FORMAT}\n".encode()
    if not raw.startswith(head):
        return None
    inflate = zlib.decompressobj()
    try:
        body = inflate.decompress(raw[len(head):], ANSWER_LIMIT + 1)
    except zlib.error:
        return None
    if len(body) > ANSWER_LIMIT or not inflate.eof or inflate.unused_data:
        return None
    files: dict[str, bytes | None] = {}
    for name, limit in ((SERIAL_FILE, MAX_BYTES), (STATEMENT_FILE, MAX_BYTES),
                        (TRACE_FILE, statement.MAX_DOCUMENT_BYTES)):
        line, newline, body = body.partition(b"\n")
        said, _, length = line.decode("ascii", "replace").partition(" ")
        if not newline or said != name or not (length == "-" or length.isdigit()):
            return None
        size = 0 if length == "-" else int(length)
        if size > limit or size > len(body):
            return None
        files[name], body = (None if length == "-" else body[:size]), body[size:]
    if body:
        return None
    return Told(Declared(*_serial(files[SERIAL_FILE]), files[STATEMENT_FILE]),
                files[TRACE_FILE], len(raw))


def _output(argv: list[str], limit: int, timeout: float) -> bytes | None:
    """What `argv` writes to stdout, if it ends with status 0 within `timeout` seconds having
    written at most `limit` bytes; None otherwise (it is killed)."""
    deadline = time.monotonic() + timeout
    chunks, size, status = [], 0, None
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        try:
            while size <= limit:
                left = deadline - time.monotonic()
                ready = select.select([process.stdout], [], [], max(0.0, left))[0]
                if not ready:
                    break
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    status = process.wait(timeout=max(0.1, deadline - time.monotonic()))
                    break
                chunks.append(chunk)
                size += len(chunk)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return b"".join(chunks) if status == 0 and size <= limit else None
