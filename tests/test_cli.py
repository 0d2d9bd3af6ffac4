"""The command line surface: version, help with an example for every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from library_syncer import __version__
from library_syncer.cli.main import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"library-syncer {__version__}"


def _leaf_parsers(parser, prefix=()):
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            if sub._subparsers:
                yield from _leaf_parsers(sub, (*prefix, name))
            else:
                yield (*prefix, name), sub


def test_every_command_has_help_with_an_example():
    leaves = list(_leaf_parsers(build_parser()))
    assert len(leaves) >= 15
    for words, parser in leaves:
        text = parser.format_help()
        assert "example:\n  library-syncer " + words[0] in text, words


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "library_syncer", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "sync" in out and "manifest" in out


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["sync", "--no-such-flag"])
    assert caught.value.code == 2


def test_timer_run_on_an_unconfigured_host_succeeds_and_says_why(tmp_path, capsys):
    settings = tmp_path / "library-syncer.toml"
    settings.write_text(f'[paths]\nstate_dir = "{tmp_path / "state"}"\n')
    assert main(["sync", "--skip-unconfigured", "--config", str(settings)]) == 0
    assert f"not configured yet: sync.peer is empty in {settings}" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()
    # Without the flag (a manual run), the same file is a configuration error naming the key.
    assert main(["sync", "--config", str(settings)]) == 3
    assert "sync.peer" in capsys.readouterr().err


def test_timer_run_with_an_invalid_file_still_fails(tmp_path):
    settings = tmp_path / "library-syncer.toml"
    settings.write_text('[sync]\nport = "x"\n')
    assert main(["sync", "--skip-unconfigured", "--config", str(settings)]) == 3
