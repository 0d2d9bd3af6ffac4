"""sync/runner.py: the one place rsync is started (streams run several, each in a thread)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from library_syncer.sync import runner


def _script(path: Path, text: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{text}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_environment_rsync_would_read_is_cleaned(tmp_path: Path, monkeypatch) -> None:
    fake = _script(tmp_path / "rsync", "import os\nprint(sorted(k for k in os.environ "
                                       "if k.startswith(('RSYNC_', 'TZ'))))\n")
    monkeypatch.setenv("RSYNC_RSH", "ssh -p 2")
    monkeypatch.setenv("RSYNC_PROTECT_ARGS", "1")
    monkeypatch.delenv("TZ", raising=False)
    result = runner.run(runner.Job([str(fake)], capture=True, env={"TZ": "UTC"}))
    assert result.output.strip() == "['TZ']"
    assert os.environ["RSYNC_RSH"] == "ssh -p 2"  # ours, untouched
