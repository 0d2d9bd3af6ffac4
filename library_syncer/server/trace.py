"""The origin trace: which revision of the library the origin declares, for the sites to verify.

Debian's mirror network (ftpsync) puts a small trace file in the tree it distributes; ours says
which settled state of the library a site holds. The server role writes, inside the exported
library, a hidden folder the manifests and the web page never list:

    <library>/.library-syncer/trace.json   origin, serial, time, every file (path, size, mtime ns)
    <library>/.library-syncer/serial       "<origin> <serial>": all a cheap change check reads

A revision is declared only once the library has **settled**: no file or folder changed for
`server.settle`. "Changed" is the inode change time (ctime) of every entry, hidden ones included:
a file being copied in, a copy that restores an old mtime at the end (`cp -p`, rsync), a rename and
a deletion (its folder's ctime) all move it, and ctime is what an NFS server reports too (inotify
sees nothing there). So the scan is stat-only and stateless; a timer runs it every minute.

The serial only grows: the next one is above both the last one this host declared (kept in the
server's state directory, so a deleted or restored trace cannot lower it) and the one on disk.
Both files are written atomically (trace first): a site pulling meanwhile sees the old trace or
the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..base import fsutil
from ..base.config import Config
from ..base.errors import SyncerError

TRACE_DIR = ".library-syncer"
TRACE_FILE = "trace.json"
SERIAL_FILE = "serial"
STATE_FILE = "trace-state.json"
FORMAT = 1

Listing = dict[str, tuple[int, int]]  # path → (size, mtime_ns)


@dataclass(frozen=True)
class Scan:
    files: Listing  # what a site will receive (regular files outside the trace folder)
    newest_change_ns: int  # the latest ctime of any entry, hidden ones included
    entries: int


@dataclass(frozen=True)
class Trace:
    origin: str
    serial: int
    time: str
    files: Listing

    def to_json(self) -> str:
        rows = [[path, size, mtime] for path, (size, mtime) in sorted(self.files.items())]
        return json.dumps({"format": FORMAT, "origin": self.origin, "serial": self.serial,
                           "time": self.time, "files": rows}, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Trace:
        """Parse a trace (from our origin or an upstream); ValueError when it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a format-1 trace")
        origin, serial, when, rows = (data.get(k) for k in ("origin", "serial", "time", "files"))
        if not isinstance(origin, str) or not origin or not isinstance(when, str) or \
                type(serial) is not int or serial < 0 or not isinstance(rows, list):
            raise ValueError("malformed trace header")
        files: Listing = {}
        for row in rows:
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                    and all(type(v) is int and v >= 0 for v in row[1:])):
                raise ValueError("malformed trace entry")
            files[row[0]] = (row[1], row[2])
        return cls(origin, serial, when, files)


@dataclass(frozen=True)
class Outcome:
    """What one tick found: a new revision declared, still settling, or nothing new."""

    state: str  # "declared", "settling", "unchanged", "relay"
    serial: int
    files: int
    size: int
    settles_in: float = 0.0  # seconds, when settling

    def line(self) -> str:
        what = f"{self.files} files, {self.size:,} bytes"
        if self.state == "declared":
            return f"revision {self.serial} declared ({what})"
        if self.state == "relay":
            return (f"relay: exporting the published snapshot (revision {self.serial} of its "
                    "origin); a relay declares no revisions of its own")
        if self.state == "settling":
            return (f"library changing: revision {self.serial + 1} is declared once nothing "
                    f"changed for the settle time (in {self.settles_in:.0f} s at the earliest)")
        return f"no change since revision {self.serial} ({what})"


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


def read(library: Path) -> Trace | None:
    """The trace in `library` (None when there is none or it cannot be read as one)."""
    try:
        return Trace.from_json((library / TRACE_DIR / TRACE_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _last_serial(state_dir: Path) -> int:
    try:
        value = json.loads((state_dir / STATE_FILE).read_text()).get("serial", 0)
        return value if type(value) is int else 0
    except (OSError, ValueError, AttributeError):
        return 0


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
    current = read(library)
    serial = max(_last_serial(server.state_dir), current.serial if current else 0)
    origin = origin_name(config)
    if current is not None and current.origin == origin and current.files == found.files:
        return Outcome("unchanged", current.serial, len(found.files), size)
    quiet = now - found.newest_change_ns / 1e9
    if quiet < server.settle:
        return Outcome("settling", serial, len(found.files), size, server.settle - quiet)
    trace = Trace(origin, serial + 1,
                  datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
                  found.files)
    _declare(library, server.state_dir, trace)
    return Outcome("declared", trace.serial, len(found.files), size)


def _declare(library: Path, state_dir: Path, trace: Trace) -> None:
    folder = library / TRACE_DIR
    folder.mkdir(mode=0o755, exist_ok=True)
    state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    # The state first: a crash after it skips a serial, never repeats one.
    fsutil.atomic_write(state_dir / STATE_FILE, json.dumps({"serial": trace.serial}) + "\n")
    fsutil.atomic_write(folder / TRACE_FILE, trace.to_json())
    fsutil.atomic_write(folder / SERIAL_FILE, f"{trace.origin} {trace.serial}\n")
