"""The subprocess choke point: streaming, tails, failures, timeouts, missing commands."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from library_syncer.base import execute
from library_syncer.base.errors import CommandFailed, SyncerError

ROOT = Path(__file__).resolve().parent.parent


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


def test_large_input_to_a_child_that_writes_while_it_reads():
    """8 MiB through `cat`: writing all of stdin before reading stdout would deadlock once both
    pipes are full. Run in a child interpreter so a deadlock fails the test instead of hanging."""
    code = ("from library_syncer.base import execute; "
            "data = b'0123456789abcde\\n' * (1 << 19); "
            "out = execute.run(['cat'], input=data, capture=True, timeout=60).output; "
            "err = execute.run(['sh', '-c', 'cat >&2'], input=data[:1 << 20], timeout=60); "
            "print(out == data.decode(), len(err.tail))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", str(execute.TAIL_LINES)]


def test_a_child_that_stops_reading_is_no_crash():
    result = execute.run(["sh", "-c", "exec 0<&-; echo done"], input=b"x" * (4 << 20),
                         timeout=30)
    assert result.tail == ["done"]


def test_timeout_holds_after_the_child_closes_its_streams(tmp_path):
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(execute.CommandTimeout, match="did not finish within 1 s"):
        execute.run(["sh", "-c", f"echo $$ > {pid_file}; exec >&- 2>&-; exec sleep 20"],
                    timeout=1)
    assert time.monotonic() - started < 10
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists()  # terminated and reaped, not left behind
