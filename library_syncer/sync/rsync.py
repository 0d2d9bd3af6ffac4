"""rsync command lines for the pull (pure functions of SyncConfig), its statistics, and what its
exit status means for the run (success, retry, or a specific error).

Options are chosen for `rrsync -ro` on the server: no -s (secluded args) and no -k/-K/-L, which
rrsync refuses when restricted to a folder. Symbolic links, devices and special files are never
transferred (no -l/-D): a link in the library could otherwise expose the client's own files
through the web server.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..base.config import SyncConfig
from ..base.errors import DiskFull, HostKeyError, NetworkError, PartialTransfer, SyncerError
from ..base.units import bwlimit_bytes_per_second
from ..server import trace
from . import ssh

log = logging.getLogger("library-syncer")

PARTIAL_DIR = ".rsync-partial"
CHECK_IO_TIMEOUT = 60  # seconds: `check`'s listing
LISTING_FORMAT = "%i %l %n"  # itemized changes (11 characters), size, name
# The server's own manifests and page are never copied nor trusted: the client writes its own.
# "hide" rules act on the sender only, so a stale copy on our side is still deleted.
SERVER_MANIFESTS = ("/lib.json", "/items.json", "/*/item.json", "/index.html")
# Transient: worth retrying with the partial progress kept.
RETRY_CODES = {5, 10, 12, 30, 35, 255}
EXIT_MEANING = {
    1: "syntax or usage error", 2: "protocol incompatibility", 3: "errors selecting files",
    4: "action not supported by the server", 5: "error starting the client-server protocol",
    10: "error in socket I/O", 11: "error in file I/O", 12: "error in the rsync data stream",
    13: "errors with program diagnostics", 14: "error in IPC code", 20: "interrupted",
    21: "waitpid error", 22: "out of memory", 23: "partial transfer", 24: "files vanished",
    25: "--max-delete stopped deletions", 30: "I/O timeout", 35: "connection timeout",
    255: "ssh failed",
}


def _host(peer: str) -> str:
    return f"[{peer}]" if ":" in peer else peer


def source(sync: SyncConfig) -> str:
    """`peer:/path/` (the trailing slash: the folder's contents, not the folder)."""
    path = sync.remote_path if sync.remote_path.endswith("/") else sync.remote_path + "/"
    return f"{_host(sync.peer)}:{path}"


def _io_timeout(sync: SyncConfig) -> str:
    return f"--timeout={max(1, int(sync.io_timeout))}"


def common_options(sync: SyncConfig, ssh_extra: Sequence[str] = (),
                   bwlimit: str | None = None) -> list[str]:
    """`bwlimit`: instead of sync.bandwidth_limit (a stream's share of it)."""
    # --modify-window=-1: compare mtimes to the nanosecond. rsync's default (whole seconds)
    # never re-sends a same-size file rewritten within the second of the previous sync.
    argv = ["--recursive", "--times", "--modify-window=-1", "--perms", "--chmod=D0755,F0644",
            "--no-inc-recursive", _io_timeout(sync), "-e", ssh.rsh(sync, ssh_extra)]
    rate = sync.bandwidth_limit if bwlimit is None else bwlimit
    if rate not in ("0", ""):
        argv.append(f"--bwlimit={rate}")
    if sync.compress:
        argv += ["--compress", "--compress-choice=zstd"]
    return argv


def filter_options(sync: SyncConfig) -> list[str]:
    # From the upstream's hidden folder only the origin's trace (and its settling notice) comes
    # down; the rest there (an upstream site's own manifest state and snapshot history) is
    # excluded, which also keeps rsync's --delete away from this site's own state in staging.
    hidden = f"/{trace.TRACE_DIR}"
    argv = [f"--filter=+ {hidden}/", f"--filter=+ {hidden}/{trace.TRACE_FILE}",
            f"--filter=+ {hidden}/{trace.SERIAL_FILE}",
            f"--filter=+ {hidden}/{trace.SETTLING_FILE}",
            f"--filter=+ {hidden}/{trace.STATEMENT_FILE}", f"--filter=- {hidden}/*"]
    argv += [f"--exclude={pattern}" for pattern in sync.exclude]
    argv += [f"--filter=H {name}" for name in SERVER_MANIFESTS]
    if sync.include:  # only the named item folders (and all they hold), nothing else on top
        argv += [f"--filter=+ /{pattern}/***" for pattern in sync.include]
        argv += ["--filter=- /*"]
    return argv


def pull_argv(sync: SyncConfig, dest: Path, link_dests: list[Path], *,
              dry_run: bool = False, ssh_extra: Sequence[str] = ()) -> list[str]:
    """Pull the library into `dest` (staging), hard-linking what is unchanged in `link_dests`
    and delta-transferring changed files against them; interrupted files resume from the
    partial dir. `ssh_extra`: options for ssh (the run's shared connection)."""
    argv = [sync.rsync, *common_options(sync, ssh_extra), "--delete",
            *_into_staging(sync, link_dests, dry_run)]
    if dry_run:
        # Every file with its itemized change and size (name2: unchanged ones too): what is new
        # gets a basis (sync/basis.py), and the listing says what the server has now.
        argv += ["--dry-run", "--info=stats2,name2", f"--out-format={LISTING_FORMAT}"]
    else:
        argv += ["--info=progress2,stats2"]
    return [*argv, source(sync), f"{dest}/"]


def _into_staging(sync: SyncConfig, link_dests: list[Path], dry_run: bool) -> list[str]:
    """What every pull into staging shares: resumable, filtered, the site's copies as bases."""
    argv = [f"--partial-dir={PARTIAL_DIR}", *filter_options(sync)]
    argv += [f"--link-dest={Path(d).resolve()}" for d in link_dests]
    if sync.block_size and not dry_run:
        argv.append(f"--block-size={sync.block_size}")
    return argv


STREAM_SSH = ssh.OWN_CONNECTION  # a stream's own TCP connection


def bwlimit_share(rate: str, streams: int) -> str:
    """Each of `streams` concurrent pulls' share of the rate `rate` (KiB/s, at least 1), so that
    their sum stays within it; "0" (unlimited) stays unlimited."""
    if rate in ("0", "") or streams <= 1:
        return rate
    return str(max(1, bwlimit_bytes_per_second(rate) // streams // 1024))


def stream_argv(sync: SyncConfig, dest: Path, link_dests: list[Path], files_from: Path,
                streams: int, via: Sequence[str] = STREAM_SSH) -> list[str]:
    """One of `streams` concurrent pulls (sync/streams.py) of the files named in `files_from`
    (NUL-separated, relative to the library) into `dest`: the pull's options, filters and bases
    without --delete (the normal pass that follows deletes), over its own SSH connection (or
    the ssh options `via`), with its share of the bandwidth limit."""
    argv = [sync.rsync, *common_options(sync, via,
                                        bwlimit_share(sync.bandwidth_limit, streams)),
            *_into_staging(sync, link_dests, dry_run=False),
            f"--files-from={files_from}", "--from0", "--info=progress2,stats2"]
    return [*argv, source(sync), f"{dest}/"]


def refetch_argv(sync: SyncConfig, dest: Path, files_from: Path,
                 ssh_extra: Sequence[str] = (), *, by_checksum: bool = False) -> list[str]:
    """Fetch again the files named in `files_from` (NUL-separated, relative to the library) into
    `dest`, each as its differences from the file already there: a basis rsync's quick check
    kept (`by_checksum`: compared by whole-file checksum, so the same content stays as it is, a
    hard link stays one), or the scrub's private copy of a rotted file (sync/repair.py; its
    mtime 0 fails the quick check). No --link-dest: rsync links a --link-dest file of the same
    size and mtime even over a destination file. No --delete."""
    argv = [sync.rsync, *common_options(sync, ssh_extra), *_into_staging(sync, [], dry_run=False)]
    if by_checksum:
        argv.append("--checksum")
    argv += [f"--files-from={files_from}", "--from0", "--info=stats2"]
    return [*argv, source(sync), f"{dest}/"]


def list_argv(sync: SyncConfig) -> list[str]:
    """List the top of the server's library (`check`): the handshake and the key, nothing
    transferred. Its own I/O timeout: `check` answers within a minute whatever the settings."""
    return [sync.rsync, "--list-only", f"--timeout={CHECK_IO_TIMEOUT}", "-e", ssh.rsh(sync),
            source(sync)]


def listing_argv(sync: SyncConfig, ssh_extra: Sequence[str] = ()) -> list[str]:
    """The whole library as the pull would see it (the change check without a trace): every
    file with its size and mtime, through the pull's own filters, nothing transferred."""
    return [sync.rsync, "--list-only", "--recursive", "--no-human-readable", _io_timeout(sync),
            "-e", ssh.rsh(sync, ssh_extra), *filter_options(sync), source(sync)]


def declared_argv(sync: SyncConfig, dest: Path, max_size: int,
                  ssh_extra: Sequence[str] = ()) -> list[str]:
    """Fetch the upstream's serial file ("<origin> <serial>") and statement, if it has them,
    into the folder `dest`: nothing else of its trace folder, nothing over `max_size` bytes."""
    return _trace_files_argv(sync, dest, max_size, (trace.SERIAL_FILE, trace.STATEMENT_FILE),
                             ssh_extra)


def document_argv(sync: SyncConfig, dest: Path, max_size: int,
                  ssh_extra: Sequence[str] = (), basis: Path | None = None) -> list[str]:
    """Fetch the upstream's revision document (trace.json) alone into the folder `dest`,
    nothing over `max_size` bytes, as its differences from the one in the folder `basis` (the
    published document: a few kilobytes cross for a new revision, nothing for the same one)."""
    argv = _trace_files_argv(sync, dest, max_size, (trace.TRACE_FILE,), ssh_extra)
    extra = ["--times", "--info=stats2"]
    if basis is not None:
        extra.append(f"--copy-dest={Path(basis).resolve()}")
    return [argv[0], *extra, *argv[1:]]


def _trace_files_argv(sync: SyncConfig, dest: Path, max_size: int, names: Sequence[str],
                      ssh_extra: Sequence[str]) -> list[str]:
    folder = f"{sync.remote_path.rstrip('/')}/{trace.TRACE_DIR}/"
    return [sync.rsync, "--recursive", f"--max-size={max_size}", _io_timeout(sync),
            "-e", ssh.rsh(sync, ssh_extra), *(f"--filter=+ /{name}" for name in names),
            "--filter=- *", f"{source(sync).rsplit(':', 1)[0]}:{folder}", f"{dest}/"]


# --- statistics -----------------------------------------------------------------------------

_STAT = re.compile(r"^(Number of files|Number of regular files transferred|Number of deleted "
                   r"files|Total file size|Total transferred file size|Literal data|Matched data"
                   r"|Total bytes sent|Total bytes received):\s*([\d,.]+)")
_PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%\s+(\S+)\s+(\d+:\d\d:\d\d)")
_ERROR_PATH = re.compile(r'"([^"]+)"')


_STAT_FIELDS = {
    "Number of files": "files", "Number of regular files transferred": "files_transferred",
    "Number of deleted files": "files_deleted", "Total file size": "total_size",
    "Total transferred file size": "transferred_size", "Literal data": "literal",
    "Matched data": "matched", "Total bytes sent": "bytes_sent",
    "Total bytes received": "bytes_received",
}


@dataclass
class Stats:
    files: int = 0
    files_transferred: int = 0
    files_deleted: int = 0
    total_size: int = 0
    transferred_size: int = 0
    literal: int = 0
    matched: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    errors: list[str] = field(default_factory=list)  # rsync's own error lines
    skipped: int = 0  # links and special files not transferred
    listed: list[str] = field(default_factory=list)  # the dry run's LISTING_FORMAT lines

    def feed(self, line: str) -> bool:
        """Take one output line; True when it was a statistics, listing or error line."""
        match = _STAT.match(line)
        if match:
            number = int(float(match.group(2).replace(",", "")))
            setattr(self, _STAT_FIELDS[match.group(1)], number)
            return True
        if len(line) > 12 and line[11] == " " and line[0] in "<>ch.*":
            self.listed.append(line)
            return True
        if line.startswith("skipping non-regular file"):
            self.skipped += 1
            return True
        if line.startswith(("rsync:", "rsync error:", "rsync warning:", "file has vanished")):
            self.errors.append(line)
            return True
        return False

    @property
    def vanished(self) -> list[str]:
        """Sender paths rsync reported as vanished (deleted at the server while listed)."""
        return [m.group(1) for line in self.errors if line.startswith("file has vanished")
                for m in [_ERROR_PATH.search(line)] if m]

    @property
    def failed_files(self) -> list[str]:
        """Paths named in rsync's error lines (for a partial transfer)."""
        names = []
        for line in self.errors:
            match = _ERROR_PATH.search(line)
            if match and match.group(1) not in names:
                names.append(match.group(1))
        return names


@dataclass(frozen=True)
class Progress:
    bytes: int
    percent: int
    rate: str
    eta: str


def parse_progress(line: str) -> Progress | None:
    """A `--info=progress2` line: `  1,234,567  12%   10.50MB/s    0:01:23 (xfr#3, to-chk=5/10)`."""
    match = _PROGRESS.match(line)
    if not match:
        return None
    return Progress(int(match.group(1).replace(",", "")), int(match.group(2)), match.group(3),
                    match.group(4))


# --- what an exit status means --------------------------------------------------------------


class TransientError(NetworkError):
    """A failure worth retrying (the partial progress is kept). `lasting`: what it is when no
    retry is left (default: a network error)."""

    lasting: type[SyncerError] = NetworkError


def _last(tail: list[str]) -> str:
    """The most telling line: ssh's own complaint, else rsync's last message."""
    for line in tail:
        if line.startswith("ssh:") or line.startswith("kex_exchange_identification"):
            return line
    for line in reversed(tail):
        if not line.startswith(("rsync error:", "sent ", "total size")) and "%" not in line:
            return line
    return tail[-1] if tail else "no output"


def classify(returncode: int, tail: list[str], stats: Stats, sync: SyncConfig,
             needed: int | None = None) -> SyncerError | None:
    """None for success (0, or 24: files vanished while listed), else the error to raise."""
    if returncode in (0, 24):
        return None
    lines = [*tail, *stats.errors]
    text = "\n".join(lines)
    target = f"{sync.user}@{sync.peer}:{sync.port}"
    if "No space left on device" in text or "Disk quota exceeded" in text:
        need = f"; about {needed:,} bytes were needed" if needed else ""
        return DiskFull(f"the staging tree ran out of disk space{need}",
                        hint="free space on the state directory's filesystem; the next run "
                             "resumes where this one stopped")
    kind = ssh.diagnose(lines)
    if kind == "host_key_changed":
        return HostKeyError(f"{target}: the server's host key has CHANGED; refusing to connect",
                            hint="if the server was reinstalled, remove its old key with "
                                 f"ssh-keygen -R '{ssh.host_pattern(sync)}' -f {sync.known_hosts} "
                                 "and run library-syncer trust-host; otherwise investigate")
    if kind == "host_key_unknown":
        return HostKeyError(f"{target}: the server's host key is not in {sync.known_hosts}",
                            hint="run library-syncer trust-host --fingerprint SHA256:… with the "
                                 "fingerprint shown by `library-syncer server keys` on the server")
    if kind == "auth":
        return NetworkError(f"{target}: the server refused this site's key "
                            f"({sync.identity_file})",
                            hint=f"on the server: library-syncer server authorize "
                                 f"{sync.identity_file}.pub --site NAME")
    refused = _refused_option(lines)
    if refused is not None:
        option, line = refused
        return OptionRefused(f"{target}: the server refused the transfer: {line}", option=option,
                             server=_server_version(lines))
    if "rrsync" in text and ("disabled" in text or "not allowed" in text or "error" in text):
        return NetworkError(f"{target}: the server refused the transfer: {_last(lines)}")
    if returncode == 23:
        files = stats.failed_files
        shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
        return PartialTransfer(f"some files could not be transferred: {shown or _last(lines)}",
                               hint="nothing was published; fix them on the server (permissions?)"
                                    " and the next run completes the transfer")
    meaning = EXIT_MEANING.get(returncode, f"exit status {returncode}")
    if kind == "unreachable":
        return TransientError(f"{target}: {_last(lines)}")
    message = f"{target}: rsync failed ({meaning}, status {returncode}): {_last(lines)}"
    if returncode in RETRY_CODES:
        return TransientError(message)
    return SyncerError(message)


# --- options an older server lacks ----------------------------------------------------------

# Options the pull can do without, with what the run does instead. The server's rsync (and the
# Perl rrsync of rsync < 3.2.4, which checks every option against its own list) refuses what it
# does not know: rsync before 3.2.0 has no --compress-choice. Without it, --compress alone
# lets the two rsyncs agree on a method (zstd with 3.2+, zlib with older ones).
DROPPABLE = {
    "--compress-choice": ("rsync before 3.2.0 lacks it",
                          "compression is negotiated instead (zlib with such a server)"),
}
# rsync's own refusal, any version: `rsync: on remote machine: --compress-choice=zstd: unknown
# option` (then `rsync error: syntax or usage error (code 1) … [server=3.1.3]`).
_UNKNOWN_OPTION = re.compile(r"^rsync: (?:on remote machine: )?(--[\w-]+)(?:=\S*)?: "
                             r"unknown option")
# A server rsync 3.2+ built without the method: `unknown compress name: zstd` (its side) or
# `Your --compress-choice value (zstd) was refused by the server.` (ours).
_UNKNOWN_COMPRESS = re.compile(r"unknown compress name: |Your --compress-choice value .* was "
                               r"refused by the server")
# The Perl rrsync of rsync < 3.2.4 stops at the first long option it does not list, naming none
# (`/usr/bin/rrsync: invalid rsync-command syntax or options`).
_RRSYNC_UNKNOWN = re.compile(r"rrsync\S*: invalid rsync-command syntax or options")
_SERVER_VERSION = re.compile(r"\[(?:server|sender)=([\w.+~-]+)\]")


class OptionRefused(NetworkError):
    """The server refused an option of ours (`option`; None when its refusal names none)."""

    def __init__(self, message: str, *, option: str | None, server: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.server = server


def _refused_option(lines: Sequence[str]) -> tuple[str | None, str] | None:
    """(the option, the line saying so) when the server refused an option as unknown."""
    for line in lines:
        match = _UNKNOWN_OPTION.match(line)
        if match:
            return match.group(1), line
        if _UNKNOWN_COMPRESS.search(line):
            return "--compress-choice", line
        if _RRSYNC_UNKNOWN.search(line):
            return None, line
    return None


def _server_version(lines: Sequence[str]) -> str | None:
    for line in lines:
        match = _SERVER_VERSION.search(line)
        if match:
            return match.group(1)
    return None


def _has(argv: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in argv)


class PeerOptions:
    """What this run's server accepts: an option it refuses as unknown is dropped (one warning)
    and the step is run again without it; later steps of the run never send it."""

    def __init__(self, sync: SyncConfig) -> None:
        self.sync = sync
        self.dropped: list[str] = []

    def adapt(self, argv: Sequence[str]) -> list[str]:
        """`argv` without the options dropped so far."""
        return [a for a in argv if not any(a == d or a.startswith(d + "=") for d in self.dropped)]

    def drop(self, error: OptionRefused, argv: Sequence[str]) -> bool:
        """Drop what `error` refused from the rest of the run; False when there is nothing we
        can do without (the refusal is final). A refusal naming no option drops every
        droppable one `argv` still sends."""
        sent = [o for o in DROPPABLE if _has(self.adapt(argv), o)]
        chosen = [error.option] if error.option in sent else [] if error.option else sent
        if not chosen:
            return False
        self.dropped += chosen
        server = f"{self.sync.user}@{self.sync.peer}:{self.sync.port}"
        if error.server:
            server += f", rsync {error.server}"
        log.warning("the server (%s) refuses %s: %s; this run goes on without it: %s", server,
                    ", ".join(chosen), "; ".join(DROPPABLE[o][0] for o in chosen),
                    "; ".join(DROPPABLE[o][1] for o in chosen))
        return True

    def run(self, argv: Sequence[str], attempt: Callable[[list[str]], Stats]) -> Stats:
        """`attempt(argv)` without what the server refused; again once per dropped option."""
        while True:
            try:
                return attempt(self.adapt(argv))
            except OptionRefused as error:
                if not self.drop(error, argv):
                    raise
