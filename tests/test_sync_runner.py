"""sync/runner.py: the one place rsync is started, one process or several at once."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from library_syncer.sync import runner

# Stands for rsync: says it started, then waits (up to a deadline) for the other to say so too.
MEETS = """import sys, time
from pathlib import Path
mine, other = Path(sys.argv[1]), Path(sys.argv[2])
mine.touch()
deadline = time.monotonic() + 20
while not other.exists():
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.01)
"""


def _script(path: Path, text: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{text}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_several_rsync_processes_run_at_once(tmp_path: Path) -> None:
    """Each waits for the other to have started: they end well only if both run together."""
    fake = _script(tmp_path / "rsync", MEETS)
    a, b = tmp_path / "a", tmp_path / "b"
    results = runner.run_all([runner.Job([str(fake), str(a), str(b)]),
                              runner.Job([str(fake), str(b), str(a)])])
    assert [r.returncode for r in results] == [0, 0]


def test_results_come_in_the_order_of_the_jobs(tmp_path: Path) -> None:
    fake = _script(tmp_path / "rsync", "import sys\nprint(sys.argv[1])\n")
    jobs = [runner.Job([str(fake), name], capture=True) for name in ("one", "two", "three")]
    assert [r.output.strip() for r in runner.run_all(jobs, parallel=2)] == ["one", "two", "three"]
    assert runner.run_all([]) == []


def test_the_environment_rsync_would_read_is_cleaned(tmp_path: Path, monkeypatch) -> None:
    fake = _script(tmp_path / "rsync", "import os\nprint(sorted(k for k in os.environ "
                                       "if k.startswith(('RSYNC_', 'TZ'))))\n")
    monkeypatch.setenv("RSYNC_RSH", "ssh -p 2")
    monkeypatch.setenv("RSYNC_PROTECT_ARGS", "1")
    monkeypatch.delenv("TZ", raising=False)
    result = runner.run(runner.Job([str(fake)], capture=True, env={"TZ": "UTC"}))
    assert result.output.strip() == "['TZ']"
    assert os.environ["RSYNC_RSH"] == "ssh -p 2"  # ours, untouched
