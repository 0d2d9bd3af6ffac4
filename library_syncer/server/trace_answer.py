"""The upstream's trace folder in one answer, for a site that plans its run from the revision
document instead of a dry run (sync/declared.py:ask, issue 24: round trips before the first byte).

The request is `library-syncer-trace 1`. The answer is one header line, `library-syncer-trace 1`,
then a zlib stream of three frames in this order: the serial file, the statement and trace.json,
each `<name> <length>\\n<bytes>`, or `<name> -\\n` when the folder lacks it (or it is a link, or
over its bound). A session channel and one command: about two round trips, where an rsync of the
same files costs its version, filter, file-list and end-of-run exchanges (about eight).

Read-only and held to less than `rrsync -ro`: three fixed names in the trace folder, read without
following a link (server/trace_files.py), from the library path resolved once (one snapshot for
the three). The site verifies what it gets exactly as it verifies an rsync of them: the
statement's signature, and the document against the statement's size and digest.
"""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

from ..base import statement
from .dispatch import TRACE_COMMAND as COMMAND
from .trace import SERIAL_FILE, STATEMENT_FILE, TRACE_FILE, read_files

FORMATS = ("1",)
NAMES = (SERIAL_FILE, STATEMENT_FILE, TRACE_FILE)  # the order of the frames


def header(form: str = FORMATS[-1]) -> bytes:
    return f"{COMMAND} {form}\n".encode()


def frames(found: dict[str, bytes]) -> bytes:
    """The frames of `found` (name → bytes) in NAMES order, a missing one as `<name> -`."""
    out = []
    for name in NAMES:
        data = found.get(name)
        out.append(f"{name} -\n".encode() if data is None else
                   f"{name} {len(data)}\n".encode() + data)
    return b"".join(out)


def serve(library: Path, words: list[str]) -> int:
    """Answer one request (the dispatcher's branch); status 0 when the answer was sent."""
    if len(words) != 2 or words[1] not in FORMATS:
        print(f"library-syncer: trace refused: expected `{COMMAND} {FORMATS[-1]}`",
              file=sys.stderr, flush=True)
        return 1
    root = Path(os.path.realpath(library))  # one snapshot for the three files
    found = read_files(root, SERIAL_FILE, STATEMENT_FILE, limit=statement.MAX_STATEMENT_BYTES)
    found |= read_files(root, TRACE_FILE, limit=statement.MAX_DOCUMENT_BYTES)
    try:
        sys.stdout.buffer.write(header() + zlib.compress(frames(found), 6))
        sys.stdout.buffer.flush()
    except OSError as error:  # the site went away: said, never a crash
        print(f"library-syncer: trace not sent: {error.strerror or error}", file=sys.stderr,
              flush=True)
        return 1
    return 0
