"""`library-syncer demo --once`: the whole main job on loopback, and nothing left behind."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

from library_syncer.base.errors import ExitStatus
from library_syncer.host import demo
from tests.harness import sshd as sshd_harness


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def _account_exists() -> bool:
    try:
        pwd.getpwnam(demo.DEMO_USER)
        return True
    except KeyError:
        return False


def test_demo_once_walks_the_library_and_leaves_nothing_behind():
    sshd_harness.require_root()
    had_account = _account_exists()
    result = subprocess.run([sys.executable, "-m", "library_syncer", "demo", "--once"],
                            capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    workdir = Path(re.search(r"^demo: working in (\S+)$", out, re.MULTILINE).group(1))
    assert "server: example library with 3 items: ttylinux, ttylinux-ova, vapp-two-vms" in out
    assert re.search(r"forced command: /\S+/library-syncer server dispatch --rrsync /\S+/rrsync ",
                     out)
    assert re.search(r"^client: \[127\.0\.0\.1\]:\d+: recorded SHA256:\S+ in ", out, re.MULTILINE)
    assert "sync ok: 3 items (3 changed)" in result.stderr  # the sync's own summary
    url = re.search(r"^vCenter subscription URL: (http://127\.0\.0\.1:\d+/lib\.json)$", out,
                    re.MULTILINE)
    assert url, out
    # the library version is a time in microseconds (docs/manifest.md, "Tokens")
    assert re.search(r'^walk: lib\.json "library-syncer demo" version \d{16}, 3 items$', out,
                     re.MULTILINE), out
    for item in ("ttylinux", "ttylinux-ova", "vapp-two-vms"):
        assert re.search(rf"^  {item} +vcsp\.ovf +3 files .* sizes and etags match$", out,
                         re.MULTILINE), item
    assert "walk: ok (9 files," in out
    # nothing running, nothing left on disk, the account only if it was there before
    assert not workdir.exists()
    assert list(Path("/run").glob("library-syncer-demo.*")) == []
    assert _processes_mentioning(str(workdir)) == []
    assert _account_exists() == had_account


def test_demo_keeps_a_given_workdir_with_a_usable_settings_file(work_dir, capsys):
    from library_syncer.base import config
    from library_syncer.cli.main import main
    from library_syncer.host import status

    target = work_dir / "demo"
    assert main(["demo", "--once", "--workdir", str(target)]) == 0
    assert "walk: ok" in capsys.readouterr().out
    settings = target / "library-syncer.toml"
    cfg = config.load(settings)
    assert (cfg.published_dir / "lib.json").is_file()
    report = status.gather(settings)
    assert report["last_sync"]["outcome"] == "ok"
    assert report["library"]["items"] == 3
    assert _processes_mentioning(str(target)) == []


def test_demo_refuses_a_world_writable_workdir(tmp_path):
    result = subprocess.run([sys.executable, "-m", "library_syncer", "demo", "--once",
                             "--workdir", str(tmp_path / "x")], capture_output=True, text=True)
    assert result.returncode == ExitStatus.FAILURE
    assert "/tmp is writable by others and sshd refuses keys below it" in result.stderr
    assert "Traceback" not in result.stderr
