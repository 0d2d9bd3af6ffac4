"""What a site checks against the origin's trace before it publishes (server/trace.py writes it).

- **Consistent pull.** After the transfer, the staging tree must hold exactly the trace's files
  (those the site's filters let through) with the trace's sizes and mtimes. A difference means
  the origin changed during the pull (or a file is missing): nothing is published, and the pull
  is retried, which fetches only what changed. A half-copied template is never declared by the
  origin (it waits until the library settles), so it can never reach a vCenter.
- **No rollback.** A site never publishes a revision older than the one it publishes now (a stale
  relay, a restored backup), and never a trace from another origin unless the operator named it
  in `sync.accept_origin`.
- **Settling.** When the pull differs from the trace and the origin says its library changed and
  is not declared yet (`.library-syncer/settling`), nothing is wrong and retrying cannot help:
  the run says so, with when the revision is due, and ends with "try later" (exit status 12).
- **Signed** (with `sync.origin_keys`): the revision must come with the origin's statement
  (base/statement.py), signed by a pinned key for that origin in our namespace, not expired, and
  naming exactly the trace.json that came with it; no statement, or no trace at all, is refused
  (Unsigned, exit status 13), and the next upstream is tried. Without pinned keys: as before.
- **No trace** (the Docker-based original, or a server before traces): today's behaviour.
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from ..base import statement
from ..base.config import SyncConfig
from ..base.errors import Settling, StaleUpstream, Unsigned
from ..server.trace import (
    SETTLING_FILE,
    STATEMENT_FILE,
    TRACE_DIR,
    TRACE_FILE,
    Trace,
    read_files,
    read_pending,
)
from . import declared
from .rsync import PARTIAL_DIR, SERVER_MANIFESTS

MAX_SHOWN = 3
_UNSIGNED_HINT = ("the upstream must carry the origin's signed statement (an origin with "
                  "server.signing_key; relays pass it on); see docs/trust.md")


@dataclass(frozen=True)
class Revision:
    origin: str
    serial: int

    def __str__(self) -> str:
        return f"revision {self.serial} of {self.origin}"


def read(root: Path) -> Trace | None:
    """The trace a tree holds (staging after a pull, or the published snapshot)."""
    try:
        return Trace.from_json((root / TRACE_DIR / TRACE_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def excluded(path: str, sync: SyncConfig) -> bool:
    """The client's filters, as rsync applies them to what it receives."""
    parts = PurePosixPath(path).parts
    if sync.include and (len(parts) < 2 or not any(
            fnmatch.fnmatchcase(parts[0], p) for p in sync.include)):
        return True
    for pattern in sync.exclude:
        anchored = pattern.startswith("/")
        target = pattern.lstrip("/").rstrip("/")
        if anchored and fnmatch.fnmatchcase("/".join(parts[:target.count("/") + 1]), target):
            return True
        if not anchored and any(fnmatch.fnmatchcase(part, target) for part in parts):
            return True
    return any(fnmatch.fnmatchcase("/" + path, hidden) for hidden in SERVER_MANIFESTS)


def _received(staging: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(staging):
        rel_dir = Path(dirpath).relative_to(staging).as_posix()
        dirnames[:] = [d for d in dirnames if d != PARTIAL_DIR
                       and not (rel_dir == "." and d == TRACE_DIR)]
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            found[rel] = (st.st_size, st.st_mtime_ns)
    return found


def differences(staging: Path, trace: Trace, sync: SyncConfig) -> list[str]:
    """Every way the staging tree differs from the trace (empty: it is that revision)."""
    expected = {p: v for p, v in trace.files.items() if not excluded(p, sync)}
    received = _received(staging)
    problems = []
    for path, (size, mtime) in sorted(expected.items()):
        got = received.get(path)
        if got is None:
            problems.append(f"{path} is missing")
        elif got[0] != size:
            problems.append(f"{path} has {got[0]:,} bytes, the revision {size:,}")
        elif got[1] != mtime:
            problems.append(f"{path} is not the revision's (another modification time)")
    problems += [f"{path} is not in the revision" for path in sorted(set(received) - set(expected))
                 if path not in ("lib.json", "items.json", "index.html")
                 and not _item_manifest(path)]
    return problems


def _item_manifest(path: str) -> bool:
    """An item's own item.json (rewritten by this site's build; rsync hides the server's): one
    below an item's folder is a file like any other, which the revision must declare."""
    return path.count("/") == 1 and path.endswith("/item.json")


def describe(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_SHOWN])
    more = f" and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    return shown + more


def refuse_rollback(offered: Trace | Revision, published: Trace | None, sync: SyncConfig) -> None:
    """Raise StaleUpstream for an older revision or another origin than the published one."""
    if published is None:
        return
    new, now = Revision(offered.origin, offered.serial), Revision(published.origin,
                                                                  published.serial)
    if new.origin != now.origin and new.origin != sync.accept_origin:
        raise StaleUpstream(
            f"the server offers {new}, but this site publishes {now}: refusing another origin",
            hint=f'if {new.origin} really is the new origin, set sync.accept_origin = '
                 f'"{new.origin}" for one run')
    if new.origin == now.origin and new.serial < now.serial:
        raise StaleUpstream(f"the server offers {new}, older than {now} published here: "
                            "keeping it (a stale upstream or a restored backup?)",
                            hint="nothing to do here; the next run pulls again")


def refuse_settling(staging: Path, offered: Trace, problems: list[str]) -> None:
    """Raise Settling when the origin said its library is between revisions (a notice for a
    serial above the offered one, from the same origin; an older notice is stale)."""
    pending = read_pending(staging)
    if pending is None or pending.origin != offered.origin or pending.serial <= offered.serial:
        return
    due = datetime.fromtimestamp(pending.due, timezone.utc)
    when = (f"due at {due:%H:%M:%S} UTC at the earliest" if pending.due > time.time()
            else "due at the origin's next trace tick")
    raise Settling(
        f"the origin has not declared a revision yet (settling): {pending.origin}'s library "
        f"changed since {Revision(offered.origin, offered.serial)}, revision {pending.serial} "
        f"is {when} ({describe(problems)}); nothing new published",
        hint="nothing to do: the next run, or the change check where it polls, picks it up")


def drop_settling_notice(staging: Path) -> None:
    """What is published is a declared revision: the origin's notice, pulled alongside, is not
    passed on (a relay would otherwise serve it to its sites over a consistent revision)."""
    (staging / TRACE_DIR / SETTLING_FILE).unlink(missing_ok=True)


def refuse_untraced(published: Trace | None, allow_untraced: bool) -> None:
    """Rollback by omission: once a site publishes a declared revision, an upstream that
    declares none (its trace folder removed, or an older server) is not followed silently."""
    if published is None or allow_untraced:
        return
    now = Revision(published.origin, published.serial)
    raise StaleUpstream(
        f"the upstream declares no revision, and this site publishes {now}: keeping it",
        hint="if the origin really stopped declaring revisions (moved back to a server without "
             "traces), run library-syncer sync --allow-untraced once")


def refuse_declared(found: declared.Declared | None, published: Trace | None,
                    sync: SyncConfig, allow_untraced: bool) -> None:
    """Before the pull, from the upstream's serial and statement alone (sync/declared.py): a
    stale, untraced or (with sync.origin_keys) unsigned upstream costs this small read, not a
    transfer. The pull is checked again in full."""
    if sync.origin_keys is not None:
        offered = _verified(found, sync.origin_keys)
        origin, serial = offered.origin, offered.serial
    elif found is None or found.origin is None or found.serial is None:
        if found is None:  # a trace folder without a readable serial is left to the pull
            refuse_untraced(published, allow_untraced)
        return
    else:
        origin, serial = found.origin, found.serial
    refuse_rollback(Revision(origin, serial), published, sync)


def _verified(found: declared.Declared | None, keys: Path) -> statement.Statement:
    if found is None:
        raise Unsigned("the upstream declares no revision, and this site accepts signed "
                       f"revisions only (sync.origin_keys = {keys})", hint=_UNSIGNED_HINT)
    if found.statement is None:
        said = f"revision {found.serial} of {found.origin}" if found.origin else \
            "the upstream's revision"
        raise Unsigned(f"{said} comes without the origin's signed statement",
                       hint=_UNSIGNED_HINT)
    said = "the upstream's statement"
    try:
        line, _ = statement.split(found.statement)
        claimed = statement.Statement.parse(line)  # unverified: it only names the refusal
        said = f"revision {claimed.serial} of {claimed.origin}"
        return statement.verify_file(found.statement, keys, claimed.origin)
    except statement.StatementRefused as error:
        raise Unsigned(f"{said} refused: {error}", hint=_UNSIGNED_HINT) from None


def refuse_unsigned(tree: Path, offered: Trace | None, sync: SyncConfig) -> None:
    """With sync.origin_keys, raise Unsigned unless `tree` holds a revision the pinned keys
    vouch for (docs/trust.md). The statement's content digests are the next step's."""
    if sync.origin_keys is None:
        return
    hint = _UNSIGNED_HINT
    if offered is None:
        raise Unsigned("the upstream declares no revision, and this site accepts signed "
                       f"revisions only (sync.origin_keys = {sync.origin_keys})", hint=hint)
    found = {**read_files(tree, STATEMENT_FILE, limit=statement.MAX_STATEMENT_BYTES),
             **read_files(tree, TRACE_FILE, limit=statement.MAX_DOCUMENT_BYTES)}
    if STATEMENT_FILE not in found or TRACE_FILE not in found:
        raise Unsigned(f"revision {offered.serial} of {offered.origin} comes without the "
                       "origin's signed statement", hint=hint)
    try:
        signed = statement.verify_file(found[STATEMENT_FILE], sync.origin_keys, offered.origin)
        statement.check_document(signed, found[TRACE_FILE])
    except statement.StatementRefused as error:
        raise Unsigned(f"revision {offered.serial} of {offered.origin} refused: {error}",
                       hint=hint) from None
