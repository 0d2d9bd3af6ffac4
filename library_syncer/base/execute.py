"""The one place that starts processes: argv lists (never a shell), output streamed line by line
into a callback or the log, the last lines kept for the error message, timeouts, and clean
termination of the child when we are interrupted.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import CommandFailed, SyncerError

log = logging.getLogger(__name__)
TAIL_LINES = 20


@dataclass
class CommandResult:
    argv: list[str]
    returncode: int
    output: str = ""  # captured stdout (capture=True only)
    tail: list[str] = field(default_factory=list)  # last lines of stderr (+stdout when streamed)
    seconds: float = 0.0


class CommandTimeout(SyncerError):
    pass


def _terminate(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after a grace period: never leave a child behind."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run(
    argv: Sequence[str],
    *,
    on_line: Callable[[str], None] | None = None,
    capture: bool = False,
    check: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    cwd: str | None = None,
) -> CommandResult:
    """Run argv. Lines (split on \\n and \\r, for progress meters) go to `on_line` or DEBUG log.

    With `capture=True`, stdout is returned whole in `CommandResult.output` and only stderr is
    streamed. With `check=True`, a non-zero exit raises CommandFailed carrying the tail.
    """
    argv = [str(a) for a in argv]
    log.debug("running: %s", " ".join(argv))
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    except FileNotFoundError:
        raise SyncerError(f"{argv[0]}: command not found",
                          hint="install it or set its path in the settings file") from None
    except PermissionError:
        raise SyncerError(f"{argv[0]}: permission denied (not executable?)") from None
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    captured = bytearray()
    emit = on_line or (lambda line: log.debug("%s: %s", os.path.basename(argv[0]), line))
    try:
        _pump(process, emit, tail, captured if capture else None, started, timeout, argv, input)
        # The streams can close long before the process ends (a daemonising child): the
        # timeout still holds.
        try:
            returncode = process.wait(timeout=_remaining(started, timeout))
        except subprocess.TimeoutExpired:
            raise _timed_out(argv, timeout) from None
    except BaseException:
        _terminate(process)
        raise
    result = CommandResult(argv, returncode, captured.decode("utf-8", "replace"), list(tail),
                    time.monotonic() - started)
    if check and returncode != 0:
        raise CommandFailed(argv, returncode, result.tail)
    return result


def _remaining(started: float, timeout: float | None) -> float | None:
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))


def _timed_out(argv: list[str], timeout: float | None) -> CommandTimeout:
    return CommandTimeout(f"{os.path.basename(argv[0])} did not finish within {timeout:.0f} s")


def _pump(process: subprocess.Popen, emit: Callable[[str], None], tail: collections.deque,
          captured: bytearray | None, started: float, timeout: float | None,
          argv: list[str], input: bytes | None = None) -> None:
    """Read stdout and stderr line by line and feed `input` to stdin, all in one loop: a child
    that writes while it reads never blocks against us, whatever the sizes."""
    selector = selectors.DefaultSelector()
    assert process.stdout is not None and process.stderr is not None
    selector.register(process.stdout, selectors.EVENT_READ, "out")
    selector.register(process.stderr, selectors.EVENT_READ, "err")
    pending = memoryview(input or b"")
    if process.stdin is not None:
        os.set_blocking(process.stdin.fileno(), False)  # write what fits, never wait in write
        if pending:
            selector.register(process.stdin, selectors.EVENT_WRITE, "in")
        else:
            process.stdin.close()
    partial = {"out": b"", "err": b""}
    open_streams = 2
    try:
        while open_streams:
            remaining = _remaining(started, timeout)
            if remaining is not None and remaining <= 0:
                _terminate(process)
                raise _timed_out(argv, timeout)
            for key, _ in selector.select(timeout=remaining):
                if key.data == "in":
                    pending = _feed(process, selector, pending)
                    continue
                chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                    rest = partial[key.data]
                    if rest:
                        _line(rest, emit, tail)
                    continue
                if key.data == "out" and captured is not None:
                    captured.extend(chunk)
                    continue
                buffer = partial[key.data] + chunk
                *lines, partial[key.data] = buffer.replace(b"\r", b"\n").split(b"\n")
                for line in lines:
                    if line:
                        _line(line, emit, tail)
    finally:
        selector.close()
        if process.stdin is not None and not process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()


def _feed(process: subprocess.Popen, selector: selectors.BaseSelector,
          pending: memoryview) -> memoryview:
    """Write what the pipe takes now; close stdin when all is written or the child closed it."""
    assert process.stdin is not None
    try:
        pending = pending[os.write(process.stdin.fileno(), pending[:65536]):]
    except BlockingIOError:
        return pending
    except BrokenPipeError:  # the child stopped reading: its output says why
        pending = pending[:0]
    if not pending:
        selector.unregister(process.stdin)
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
    return pending


def _line(raw: bytes, emit: Callable[[str], None], tail: collections.deque) -> None:
    line = raw.decode("utf-8", "replace").rstrip()
    if line:
        tail.append(line)
        emit(line)


def capture(argv: Sequence[str], **kwargs) -> str:
    """Run a small command and return its stdout (raises CommandFailed on failure)."""
    return run(argv, capture=True, **kwargs).output


def spawn(argv: Sequence[str], *, log_file: str, env: Mapping[str, str] | None = None
          ) -> subprocess.Popen:
    """Start a long-running daemon (the demo's sshd and caddy), output appended to `log_file`.

    Stop it with `stop()`; the caller owns it and must stop it in a `finally`.
    """
    argv = [str(a) for a in argv]
    log.debug("starting: %s", " ".join(argv))
    with open(log_file, "ab") as output:
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                    stderr=subprocess.STDOUT,
                                    env=dict(env) if env is not None else None)
        except FileNotFoundError:
            raise SyncerError(f"{argv[0]}: command not found",
                              hint="install it or set its path in the settings file") from None


def stop(process: subprocess.Popen) -> None:
    """SIGTERM a spawned daemon, SIGKILL after a grace period."""
    _terminate(process)
