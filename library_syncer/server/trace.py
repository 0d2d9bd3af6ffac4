"""The origin trace: which revision of the library the origin declares, for the sites to verify.

Debian's mirror network (ftpsync) puts a small trace file in the tree it distributes; ours says
which settled state of the library a site holds. The server role writes, inside the exported
library, a hidden folder the manifests and the web page never list:

    <library>/.library-syncer/trace.json   origin, serial, time, every file (path, size, mtime ns)
                                           and its content (SHA-256, serial of its last change):
                                           the revision document, base/revision.py
    <library>/.library-syncer/serial       "<origin> <serial>": all a cheap change check reads
    <library>/.library-syncer/settling     while the library changed since the last revision: the
                                           serial to come and when, at the earliest (a site that
                                           pulls meanwhile says so and tries later, sync/run.py)

A revision is declared only once the library has **settled**: no file or folder changed for
`server.settle`. "Changed" is the inode change time (ctime) of every entry, hidden ones included:
a file being copied in, a copy that restores an old mtime at the end (`cp -p`, rsync), a rename and
a deletion (its folder's ctime) all move it, and ctime is what an NFS server reports too (inotify
sees nothing there). So the scan is stat-only and stateless; a timer runs it every minute.

Declaring hashes what is new: a file whose size and mtime are those of the previous revision keeps
its digest; the others are read, then every file is stat'ed again, and a file that moved while
it was read makes this tick "settling" (it is not settled), never a declaration.

The serial only grows: the next one is above the last one this host declared (kept in the
server's state directory, so a deleted or restored trace cannot lower it). The serial of the
trace on disk counts only when that state is missing (a reinstalled origin): whoever can write
the library must not be able to push the serial to its bound (revision.MAX_SERIAL), after which
no revision could be declared. The files are written atomically (trace first): a site pulling
meanwhile sees the old trace or the new one, never a mix. The folder and its files are read and
written without following links, every read within a bound (server/trace_files.py).

With server.signing_key set, each revision is also signed (`statement`, base/statement.py): at
its declaration, and again whenever the statement is older than a seventh of
server.statement_validity (daily by default), the key changed, or it is missing, so a site
always holds a statement far from its expiry while the origin runs, revision or not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..base import fsutil, revision, statement
from ..base.errors import SyncerError
from . import trace_files

if TYPE_CHECKING:  # the dispatcher's range and trace answers import this module: start fast
    from ..base.config import Config

log = logging.getLogger(__name__)

TRACE_DIR = ".library-syncer"
TRACE_FILE = "trace.json"
SERIAL_FILE = "serial"
SETTLING_FILE = "settling"
MAX_SETTLING_BYTES = 4096  # read from an upstream: bounded
STATEMENT_FILE = statement.FILE_NAME
STATE_FILE = "trace-state.json"
MAX_STATE_BYTES = 4096
RESIGN_PARTS = 7  # a statement is signed again once a seventh of its validity has passed
FORMAT = revision.FORMAT

Listing = revision.Listing


@dataclass(frozen=True)
class Scan:
    files: Listing  # what a site will receive (regular files outside the trace folder)
    newest_change_ns: int  # the latest ctime of any entry, hidden ones included
    entries: int


Trace = revision.Revision  # the document is defined once, in base/revision.py


@dataclass(frozen=True)
class Outcome:
    """What one tick found: a new revision declared, still settling, or nothing new."""

    state: str  # "declared", "settling", "unchanged", "relay"
    serial: int
    files: int
    size: int
    settles_in: float = 0.0  # seconds, when settling
    signed_until: str = ""  # when declared with server.signing_key: the statement's expiry

    def line(self) -> str:
        what = f"{self.files} files, {self.size:,} bytes"
        if self.state == "declared":
            signed = f"; signed, valid until {self.signed_until}" if self.signed_until else ""
            return f"revision {self.serial} declared ({what}){signed}"
        if self.state == "relay":
            return (f"relay: exporting the published snapshot (revision {self.serial} of its "
                    "origin); a relay declares no revisions of its own")
        if self.state == "settling":
            return (f"library changing: revision {self.serial + 1} is declared once nothing "
                    f"changed for the settle time (in {self.settles_in:.0f} s at the earliest)")
        return f"no change since revision {self.serial} ({what})"


@dataclass(frozen=True)
class Pending:
    """The origin's word that its library changed since `serial - 1` was declared: revision
    `serial` comes once it settled, at `due` (epoch seconds) at the earliest."""

    origin: str
    serial: int
    due: float

    def to_json(self) -> str:
        due = datetime.fromtimestamp(self.due, timezone.utc).isoformat(timespec="seconds")
        return json.dumps({"format": 1, "origin": self.origin, "serial": self.serial,
                           "due": due}) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Pending:
        data = json.loads(text)
        origin, serial = data["origin"], data["serial"]
        if data.get("format") != 1 or not isinstance(origin, str) or type(serial) is not int \
                or not 0 < serial < revision.MAX_SERIAL:
            raise ValueError("not a settling notice")
        return cls(origin, serial, datetime.fromisoformat(data["due"]).timestamp())


def read_pending(root: Path) -> Pending | None:
    """The settling notice a tree holds (None: none, or not one)."""
    try:
        with trace_files.folder(root, TRACE_DIR, create=False) as folder:
            notice = None if folder is None else \
                trace_files.read(folder, SETTLING_FILE, MAX_SETTLING_BYTES)
        return None if notice is None else Pending.from_json(notice.decode())
    except (OSError, SyncerError, ValueError, KeyError, TypeError, AttributeError,
            UnicodeDecodeError):
        return None


def scan(library: Path) -> Scan:
    """Every entry's ctime; every regular file's size and mtime (outside the trace folder)."""
    files: Listing = {}
    newest, entries = os.stat(library).st_ctime_ns, 0
    stack = [(library, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as found:
            for entry in found:
                rel = f"{prefix}{entry.name}"
                if rel == TRACE_DIR:
                    continue  # our own writes are not a change of the library
                st = entry.stat(follow_symlinks=False)
                entries += 1
                newest = max(newest, st.st_ctime_ns)
                if stat.S_ISDIR(st.st_mode):
                    stack.append((Path(entry.path), rel + "/"))
                elif stat.S_ISREG(st.st_mode):
                    files[rel] = (st.st_size, st.st_mtime_ns)
    return Scan(files, newest, entries)


def read_files(library: Path, *names: str, limit: int) -> dict[str, bytes]:
    """The named files of the trace folder that are there (each a regular file within
    `limit` bytes; a link, a larger file or a folder that is a link: left out)."""
    found = {}
    try:
        with trace_files.folder(library, TRACE_DIR, create=False) as folder:
            for name in names if folder is not None else ():
                with contextlib.suppress(trace_files.TooLarge):
                    data = trace_files.read(folder, name, limit)
                    if data is not None:
                        found[name] = data
    except (OSError, SyncerError):
        return {}
    return found


def read_document(library: Path) -> tuple[bytes, Trace] | None:
    """trace.json's bytes and the revision they hold (None: none, or not one)."""
    data = read_files(library, TRACE_FILE, limit=statement.MAX_DOCUMENT_BYTES).get(TRACE_FILE)
    try:
        return None if data is None else (data, Trace.from_json(data.decode()))
    except (ValueError, UnicodeDecodeError):
        return None


def read(library: Path) -> Trace | None:
    """The trace in `library` (None when there is none or it cannot be read as one)."""
    found = read_document(library)
    return found[1] if found else None


def _last_serial(state_dir: Path) -> int | None:
    """The last serial this host declared; None when it has no record (a new host)."""
    try:
        with open(state_dir / STATE_FILE, "rb") as handle:
            value = json.loads(handle.read(MAX_STATE_BYTES)).get("serial", 0)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return 0
    return value if type(value) is int and 0 <= value < revision.MAX_SERIAL else 0


def origin_name(config: Config) -> str:
    """server.name, or this host's short name."""
    return config.server.name or socket.gethostname().split(".")[0] or "origin"


def is_relay(config: Config) -> bool:
    """A relay exports its own published snapshot (server.library inside paths.state_dir): the
    revisions there are the origin's, carried down unchanged; a relay never declares its own."""
    library = config.server.library.resolve()
    return library.is_relative_to(config.paths.state_dir.resolve())


def tick(config: Config, now: float | None = None) -> Outcome:
    """Scan the library; declare a new revision when it settled and differs from the last."""
    server = config.server
    library = server.library
    if not library.is_dir():
        raise SyncerError(f"{library}: the library folder does not exist",
                          hint="create it or set server.library")
    if is_relay(config):
        current = read(library)
        return Outcome("relay", current.serial if current else 0, 0, 0)
    now = time.time() if now is None else now
    found = scan(library)
    size = sum(s for s, _ in found.files.values())
    held = read_document(library)
    current = held[1] if held else None
    serial = _base_serial(server.state_dir, current)
    origin = origin_name(config)
    if current is not None and current.origin == origin and current.files == found.files \
            and current.content is not None:
        _settled(library)  # a change undone before it settled
        _keep_signed(config, library, held, now)  # type: ignore[arg-type]
        return Outcome("unchanged", current.serial, len(found.files), size)
    if held is not None and held[1].origin == origin:
        _keep_signed(config, library, held, now)  # settling may last: the statement may not
    quiet = now - found.newest_change_ns / 1e9
    if quiet < server.settle:
        return _settling(library, Outcome("settling", serial, len(found.files), size,
                                          server.settle - quiet), origin, now)
    digests = _digests(library, found.files, current)
    if digests is None or scan(library).files != found.files:
        return _settling(library, Outcome("settling", serial, len(found.files), size,
                                          server.settle), origin, now)
    content = revision.next_content(found.files, digests, serial + 1,
                                    current.content if current else None)
    trace = Trace(origin, serial + 1,
                  datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
                  found.files, content)
    document = trace.to_json().encode()
    signed = _signed_statement(config, document, trace, now)  # before any write: a key that
    _declare(library, server.state_dir, trace, document, signed)  # cannot sign declares nothing
    _settled(library)
    until = statement.Statement.parse(statement.split(signed)[0]).valid_until if signed else ""
    return Outcome("declared", trace.serial, len(found.files), size, signed_until=until)


def _base_serial(state_dir: Path, current: Trace | None) -> int:
    """The serial the next revision follows: this host's record; the trace on disk's only when
    there is no record. SyncerError when no serial is left below revision.MAX_SERIAL."""
    last = _last_serial(state_dir)
    on_disk = current.serial if current else 0
    if last is None:
        last = on_disk
    elif on_disk > last:
        log.warning("the trace in the library says revision %d, this host declared %d last: "
                    "not declared here, ignored (%s is the record)", on_disk, last,
                    state_dir / STATE_FILE)
    if last + 1 >= revision.MAX_SERIAL:
        raise SyncerError(f"serial {last}: no serial left below {revision.MAX_SERIAL}",
                          hint=f"the trace's serial was forged; remove {state_dir / STATE_FILE}"
                          " and the library's .library-syncer folder, then declare again")
    return last


def _signed_statement(config: Config, document: bytes, trace: Trace, now: float
                      ) -> bytes | None:
    """The statement file of `trace` signed by server.signing_key (None: no key set)."""
    from . import signing

    key = config.server.signing_key
    if key is None:
        return None
    fingerprint = signing.public_key(key).fingerprint
    line = statement.Statement.for_document(document, trace, fingerprint, now,
                                            config.server.statement_validity).to_bytes()
    return statement.join(line, signing.sign(line, key))


def _keep_signed(config: Config, library: Path, held: tuple[bytes, Trace], now: float) -> None:
    """Sign the current revision again when its statement is missing, names another document
    or key, or a seventh of its validity has passed (the serial stays: nothing moves on the
    sites but the expiry)."""
    from . import signing

    key = config.server.signing_key
    if key is None:
        return
    document, trace = held
    validity = config.server.statement_validity
    if _statement_current(library, document, trace, signing.public_key(key).fingerprint, now,
                          validity):
        return
    signed = _signed_statement(config, document, trace, now)
    with trace_files.folder(library, TRACE_DIR, create=True) as folder:
        trace_files.write(folder, STATEMENT_FILE, signed or b"")  # type: ignore[arg-type]
    log.info("revision %d signed, valid for %s", trace.serial, _span(validity))


def _statement_current(library: Path, document: bytes, trace: Trace, fingerprint: str,
                       now: float, validity: float) -> bool:
    """The library's statement names this document and key, and is young enough to keep."""
    raw = read_files(library, STATEMENT_FILE, limit=statement.MAX_STATEMENT_BYTES)
    try:
        found = statement.Statement.parse(statement.split(raw[STATEMENT_FILE])[0])
    except (KeyError, ValueError):
        return False  # none there, or not one
    expected = statement.Statement.for_document(document, trace, fingerprint, found.signed_at,
                                                found.expires - found.signed_at)
    return found == expected and now - found.signed_at < validity / RESIGN_PARTS and \
        found.expires > now


def _span(seconds: float) -> str:
    from ..base.units import format_duration

    return format_duration(seconds)


def _settling(library: Path, outcome: Outcome, origin: str, now: float) -> Outcome:
    """Tell the sites pulling meanwhile that what they get is not a revision yet, and when one
    comes (the folder's own writes are not a change: scan() skips it)."""
    notice = Pending(origin, outcome.serial + 1, now + outcome.settles_in)
    with trace_files.folder(library, TRACE_DIR, create=True) as folder:
        trace_files.write(folder, SETTLING_FILE, notice.to_json().encode())  # type: ignore
    return outcome


def _settled(library: Path) -> None:
    """After the declaration (a site reading both sees a notice for a serial already declared,
    which it ignores)."""
    with trace_files.folder(library, TRACE_DIR, create=False) as folder:
        if folder is not None:
            trace_files.remove(folder, SETTLING_FILE)


def _digests(library: Path, files: Listing, current: Trace | None) -> dict[str, str] | None:
    """SHA-256 of every file, read only where size or mtime differ from the previous revision;
    None when a file changed or vanished while it was read (the library is not settled)."""
    known = current.content.files if current is not None and current.content else {}
    digests = {}
    for path, facts in sorted(files.items()):
        if path in known and current is not None and current.files.get(path) == facts:
            digests[path] = known[path].sha256
            continue
        full = library / path
        try:
            digests[path] = revision.sha256_file(full)
            st = os.stat(full, follow_symlinks=False)
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != facts:
            return None
    return digests


def _declare(library: Path, state_dir: Path, trace: Trace, document: bytes,
             signed: bytes | None) -> None:
    state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    with trace_files.folder(library, TRACE_DIR, create=True) as folder:
        assert folder is not None
        # The state first: a crash after it skips a serial, never repeats one.
        fsutil.atomic_write(state_dir / STATE_FILE, json.dumps({"serial": trace.serial}) + "\n")
        trace_files.write(folder, TRACE_FILE, document)
        if signed is not None:  # after the document: its digest names the new one
            trace_files.write(folder, STATEMENT_FILE, signed)
        else:  # a key taken away: no statement of an older revision stays behind
            trace_files.remove(folder, STATEMENT_FILE)
        trace_files.write(folder, SERIAL_FILE, f"{trace.origin} {trace.serial}\n".encode())
