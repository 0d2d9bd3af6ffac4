"""The subprocess choke point: streaming, tails, failures, timeouts, missing commands."""

from __future__ import annotations

import time

import pytest

from library_syncer.base import execute
from library_syncer.base.errors import CommandFailed, SyncerError


def test_lines_are_streamed_and_split_on_carriage_returns():
    seen: list[str] = []
    result = execute.run(["sh", "-c", "printf 'a\\rb\\nc\\n'; echo err >&2"], on_line=seen.append)
    assert result.returncode == 0
    assert sorted(seen) == ["a", "b", "c", "err"]


def test_capture_returns_stdout_whole():
    assert execute.capture(["printf", "x\\ny"]) == "x\ny"


def test_failure_carries_status_and_last_lines():
    with pytest.raises(CommandFailed) as caught:
        execute.run(["sh", "-c", "for i in $(seq 1 50); do echo line$i >&2; done; exit 3"])
    assert caught.value.returncode == 3
    assert caught.value.tail[-1] == "line50"
    assert len(caught.value.tail) == execute.TAIL_LINES
    assert "exited with status 3: line50" in str(caught.value)


def test_check_false_returns_the_status():
    assert execute.run(["false"], check=False).returncode == 1


def test_timeout_terminates_the_child():
    started = time.monotonic()
    with pytest.raises(execute.CommandTimeout, match="did not finish within 1 s"):
        execute.run(["sleep", "30"], timeout=1)
    assert time.monotonic() - started < 10


def test_missing_command_is_a_clear_error():
    with pytest.raises(SyncerError, match="no-such-command-here: command not found"):
        execute.run(["no-such-command-here"])


def test_input_is_fed_to_stdin():
    assert execute.capture(["cat"], input=b"hello") == "hello"
