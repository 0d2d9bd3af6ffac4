"""One SSH connection for a whole run (OpenSSH connection sharing).

The dry run and the transfer are sessions of one master connection, so a run costs one key
exchange and one authentication instead of two (seconds on a satellite link, and the origin's
handshake CPU). The master is verified exactly as any of our connections (ssh.options: pinned
known_hosts, BatchMode, our key only); its sessions reuse that verified connection.

The control socket lives in a directory made for this run alone (mode 0700, in the runtime
directory) and removed at the end of the run: never shared across runs or users. The master
backgrounds itself once authenticated (ControlPersist) and exits by itself after IDLE seconds
without a session, so a run that dies without closing it leaves nothing behind for long. If the
master is gone (link drop, idle exit), the next session connects directly and ensure() starts a
new master before the next attempt.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from ..base import execute
from ..base.config import SyncConfig
from ..base.errors import SyncerError
from . import ssh

log = logging.getLogger("library-syncer")

# Seconds the master outlives its last session: retry waits, and a large run's streams for five
# minutes (the first stream is one of its sessions; if it ends first, the others may outlast it:
# a longer streams phase then costs one login more).
IDLE = 300
# The parent of the socket's directory: + /ssh-XXXXXXXX/master + ssh's .XXXXXXXXXXXXXXXX < 108
SOCKET_DIR_MAX = 107 - len("/ssh-XXXXXXXX/master") - 17


class SharedConnection:
    """The master of one run; `rsh_options()` makes a session use it."""

    def __init__(self, sync: SyncConfig, directory: Path) -> None:
        self.sync = sync
        self.socket = directory / "master"
        self.unavailable = False  # the master could not be set up: sessions connect directly
        self._starting = threading.Lock()  # steps that run at once start one master

    def _control(self, *argv: str, check: bool = False) -> execute.CommandResult:
        return execute.run([self.sync.ssh, *ssh.options(self.sync), "-S", ssh.path_arg(self.socket),
                            *argv, self.sync.peer], check=check, capture=True,
                           timeout=self.sync.connect_timeout + 30)

    def alive(self) -> bool:
        return self.socket.exists() and self._control("-O", "check").returncode == 0

    def ensure(self) -> None:
        """Start the master unless it is up. A failure is returned by ssh exactly as for a
        session (status 255 and ssh's own message), so rsync.classify names it the same way."""
        with self._starting:
            self._ensure()

    def _ensure(self) -> None:
        if self.unavailable or self.alive():
            return
        from . import rsync  # the exit classification lives with the other rsync/ssh statuses

        self.socket.unlink(missing_ok=True)
        result = self._control("-M", "-N", "-o", "ControlMaster=yes",
                               "-o", f"ControlPersist={IDLE}")
        if result.returncode != 0:
            error = rsync.classify(result.returncode or 255, result.tail, rsync.Stats(),
                                   self.sync)
            if type(error) is SyncerError:  # not a network, key or host-key problem
                log.warning("ssh connection sharing unavailable (%s); each step connects on its "
                            "own", error)
                self.unavailable = True
                return
            if error is not None:
                raise error
        log.debug("ssh: master connection to %s up (%s)", self.sync.peer, self.socket)

    def rsh_options(self) -> list[str]:
        """Options for the sessions: use the master's socket, never become a master."""
        if self.unavailable:
            return []
        return ["-o", f"ControlPath={ssh.file_value(self.socket)}", "-o", "ControlMaster=no"]

    def close(self) -> None:
        if self.socket.exists():
            self._control("-O", "exit")


def _private_dir(runtime_dir: Path) -> Path:
    """A fresh 0700 directory for this run's socket: in the runtime directory when we may write
    there (the service), else in the temporary directory (a manual run). A unix socket path
    holds at most 107 bytes (and ssh appends a 17-byte suffix while binding): a deeper runtime
    directory falls back to the temporary directory too."""
    for parent in (runtime_dir, Path(tempfile.gettempdir())):
        if len(str(parent)) > SOCKET_DIR_MAX:
            continue
        with contextlib.suppress(OSError):
            parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix="ssh-", dir=parent))
    return Path(tempfile.mkdtemp(prefix="ssh-"))


@contextlib.contextmanager
def shared(sync: SyncConfig, runtime_dir: Path) -> Iterator[SharedConnection | None]:
    """The run's shared connection (None when sync.share_connection is off); closed and its
    directory removed when the run ends, whatever happened."""
    if not sync.share_connection:
        yield None
        return
    directory = _private_dir(runtime_dir)
    connection = SharedConnection(sync, directory)
    try:
        yield connection
    finally:
        try:
            connection.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
