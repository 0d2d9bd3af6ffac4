"""The forced command of every site key: a pull goes to `rrsync -ro`, a report to the validator.

sshd runs `library-syncer server dispatch --rrsync … --library … --state-dir … --keys …` for
every session of the `syncer` account, whatever the client asked (`ForceCommand` in the rendered
sshd_config, and `command=` on each authorized_keys line). The client's request is in
`SSH_ORIGINAL_COMMAND`:

- `library-syncer-report 1`: a site's report on stdin (at most reports.MAX_BYTES, read within
  READ_TIMEOUT), validated by `server/reports.py` and stored under the site name of the key that
  logged in. That name comes from the server's side only: sshd writes the authenticated key to
  the file `SSH_USER_AUTH` names (`ExposeAuthInfo yes`), and the site is the `site=` of that
  key's line in the root-owned authorized_keys. Any other word after the command is refused.
- `library-syncer-range 1 SHA256 OFFSET LENGTH`: bytes of one file of the current revision,
  named by its declared digest (server/ranges.py): a site fetching a large new file over several
  connections at once. Read-only and held to the library, as rrsync's reads are.
- `library-syncer-trace 1`: the trace folder's serial, statement and revision document in one
  answer (server/trace_answer.py): a site that plans its run from the document, not a dry run.
- anything else — an rsync sender, another command, no command at all: `exec` of
  `rrsync -ro <library>/`, with the environment sshd gave us (from /proc/self/environ, so not
  even the locale Python may add reaches it) and the default signal dispositions Python changed.
  rrsync reads `SSH_ORIGINAL_COMMAND` itself, so every pull and every refusal is rrsync's own,
  byte for byte, as before the dispatcher existed.

Before either, the session takes one of its key's slots and bounds its memory
(server/sessions.py: at most 8 sessions per key, 1 GiB of address space each), so one key
cannot hold the server's memory with stalled sessions.

This module imports nothing heavy before the exec: a pull costs one Python start-up more than
before, and nothing else.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path

from . import sessions

REPORT_COMMAND = "library-syncer-report"
RANGE_COMMAND = "library-syncer-range"  # server/ranges.py (not imported before it is asked for)
TRACE_COMMAND = "library-syncer-trace"  # server/trace_answer.py (likewise)
REPORT_FORMATS = ("1",)
READ_TIMEOUT = 20.0  # seconds for the whole report to arrive


def _original_environment() -> dict[bytes, bytes] | None:
    """The environment as sshd passed it to us (before Python's locale coercion)."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return None
    env = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            env[name] = value
    return env


def exec_rrsync(rrsync: str, library: str) -> None:
    """Become `rrsync -ro LIBRARY/` exactly as sshd would have started it."""
    for number in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; exec keeps that
        signal.signal(number, signal.SIG_DFL)
    env = _original_environment()
    argv = [rrsync, "-ro", library.rstrip("/") + "/"]
    sys.stdout.flush()
    sys.stderr.flush()
    if env is None:
        os.execv(rrsync, argv)
    os.execve(rrsync, argv, env)  # type: ignore[arg-type] - bytes environment


def read_bounded(fd: int, limit: int, timeout: float) -> bytes:
    """Read until EOF, at most `limit` + 1 bytes (the caller refuses more), within `timeout`."""
    from .reports import ReportRefused

    deadline = time.monotonic() + timeout
    chunks, size = [], 0
    while size <= limit:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ReportRefused(f"the report did not arrive within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def site_of_session(keys_file: Path) -> str:
    """The site name of the key this session authenticated with (never from the client)."""
    return key_of_session(keys_file).site


def _auth_info() -> str | None:
    """What sshd says about this session's authentication (ExposeAuthInfo), from a file this
    account owns; None when there is none."""
    auth = os.environ.get("SSH_USER_AUTH", "")
    try:
        if not auth or os.stat(auth).st_uid != os.getuid():
            return None
        with open(auth, "rb") as handle:
            return handle.read(65536).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None


def key_of_session(keys_file: Path):
    """The authorized_keys entry (sshd.SiteKey: site name, key) this session logged in with."""
    from ..base.config import ServerConfig
    from ..base.errors import SyncerError
    from .reports import ReportRefused
    from .sshd import AUTHORIZED_KEYS, read_authorized

    text = _auth_info()
    if text is None:
        raise ReportRefused("the server cannot tell which key logged in (ExposeAuthInfo)")
    blob = sessions.key_of(text)
    if blob is None:
        raise ReportRefused("reports need a session authenticated by exactly one key")
    if keys_file.name != AUTHORIZED_KEYS:
        raise ReportRefused("the server's key file is not an authorized_keys file")
    try:
        entries = read_authorized(ServerConfig(config_dir=keys_file.parent))
    except SyncerError:
        raise ReportRefused("the server's authorized_keys cannot be read") from None
    for entry in entries:
        if entry.blob == blob:
            return entry
    raise ReportRefused("this key is not bound to a site")


def _syslog(priority: int, message: str) -> None:
    import syslog

    syslog.openlog("library-syncer-dispatch", syslog.LOG_PID, syslog.LOG_AUTH)
    syslog.syslog(priority, message)


def receive_report(args, words: list[str]) -> int:
    """Validate and store one report; one line back, status 0 (stored) or 1 (refused)."""
    import syslog

    from ..base.config import ServerConfig
    from .reports import MAX_BYTES, ReportRefused, refresh_metrics, store

    site = "?"
    try:
        if len(words) != 2 or words[1] not in REPORT_FORMATS:
            raise ReportRefused(f"expected `{REPORT_COMMAND} {REPORT_FORMATS[-1]}`")
        entry = key_of_session(args.keys)
        site = entry.site
        payload = read_bounded(sys.stdin.fileno(), MAX_BYTES, READ_TIMEOUT)
        ignored = store(args.state_dir, site, payload, key=entry.fingerprint,
                        relay=entry.relay).ignored
    except ReportRefused as refused:
        print(f"library-syncer: report refused: {refused}", file=sys.stderr, flush=True)
        _syslog(syslog.LOG_NOTICE, f"report from site {site} refused: {refused}")
        return 1
    except OSError as error:
        print(f"library-syncer: report not stored: {error.strerror or error}", file=sys.stderr,
              flush=True)
        _syslog(syslog.LOG_WARNING, f"report from site {site} not stored: {error}")
        return 1
    except Exception as error:  # a report is refused, never a crash of the forced command
        print("library-syncer: report refused: the server could not read it", file=sys.stderr,
              flush=True)
        _syslog(syslog.LOG_ERR, f"report from site {site} refused: {type(error).__name__}")
        return 1
    note = "" if not ignored else (
        f"; {ignored} downstream report(s) ignored: this key is not a relay's "
        f"(on this server: library-syncer server relay {site})")
    print(f"report stored for site {site}{note}", flush=True)
    _release_slot()
    _syslog(syslog.LOG_INFO, f"report stored for site {site}{note}")
    server = ServerConfig(library=Path(args.library), state_dir=Path(args.state_dir),
                          config_dir=Path(args.keys).parent, report_grace=args.grace,
                          metrics_textfile=args.metrics_textfile, fleet_page=args.fleet_page)
    try:
        refresh_metrics(server)
    except OSError as error:
        _syslog(syslog.LOG_WARNING, f"{args.metrics_textfile}: not written: {error}")
    if server.fleet_page is not None:
        from .fleet_page import refresh

        try:
            refresh(server)
        except OSError as error:
            _syslog(syslog.LOG_WARNING, f"{server.fleet_page}: not written: {error}")
    return 0


_slot: int | None = None  # this session's slot (server/sessions.py), held until it ends


def limit_session(state_dir: Path) -> None:
    """Bound this session's memory and take one of its key's slots (sessions.TooManySessions
    when none is free); the slot's descriptor stays open through the exec."""
    global _slot
    sessions.bound_memory()
    text = _auth_info()
    blob = sessions.key_of(text) if text is not None else None
    if blob is not None:
        _slot = sessions.claim(state_dir, blob)


def _release_slot() -> None:
    """The report is answered: what follows (the metrics, the fleet page) is bounded work, and
    the site may start its next session at once."""
    global _slot
    if _slot is not None:
        os.close(_slot)
        _slot = None


def command(args) -> int:
    """`library-syncer server dispatch …`: what sshd runs for every session of the account."""
    try:
        limit_session(args.state_dir)
    except sessions.TooManySessions as refused:
        import syslog

        print(f"library-syncer: session refused: {refused}", file=sys.stderr, flush=True)
        _syslog(syslog.LOG_NOTICE, f"session refused: {refused}")
        return 1
    original = os.environ.get("SSH_ORIGINAL_COMMAND")
    words = original.split() if original is not None else []
    if words and words[0] == REPORT_COMMAND:
        return receive_report(args, words)
    if words and words[0] == RANGE_COMMAND:
        from .ranges import serve

        return serve(Path(args.library), words)
    if words and words[0] == TRACE_COMMAND:
        from .trace_answer import serve as answer

        return answer(Path(args.library), words)
    try:
        exec_rrsync(args.rrsync, args.library)
    except OSError as error:
        print(f"library-syncer: cannot run {args.rrsync}: {error.strerror or error}",
              file=sys.stderr, flush=True)
    return 127
