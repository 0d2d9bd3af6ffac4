"""`config generate|show|validate`: the example round-trips; the conffile is its output."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from library_syncer.base import config
from library_syncer.base import config_toml as config_cmd
from library_syncer.base.config import SECTIONS
from library_syncer.base.errors import ExitStatus
from library_syncer.cli.main import main

TOP = Path(__file__).resolve().parent.parent
CONFFILE = TOP / "etc" / "library-syncer" / "library-syncer.toml"


def _generate(capsys) -> str:
    assert main(["config", "generate"]) == 0
    return capsys.readouterr().out


def test_generated_file_loads_and_equals_the_defaults(tmp_path, capsys):
    path = tmp_path / "library-syncer.toml"
    path.write_text(_generate(capsys))
    loaded = config.load(path)
    assert loaded == config.defaults(path)


def test_generated_file_names_every_key_its_default_and_docker_variable(capsys):
    text = _generate(capsys)
    for name, cls in SECTIONS.items():
        assert f"\n[{name}]\n" in text
        for spec in fields(cls):
            assert f"\n{spec.name} = " in text, f"{name}.{spec.name}"
            docker = spec.metadata.get("doc")
            if docker:
                assert f"# Docker: {docker}." in text
    for variable in ("SYNC_PEER", "SYNC_SCHEDULE", "SYNC_DELAY_MAX_SECONDS", "SYNC_MAX_BW",
                     "TLS_CUSTOM_CERT", "LIBRARY_BROWSE", "SYNCER_UID", "TZ"):
        assert variable in text
    assert 'random_delay = "6h"' in text and 'min_free_space = "1G"' in text


def test_every_setting_has_a_description():
    missing = [key for key in config_cmd.all_keys() if not config_cmd.DESCRIPTIONS.get(key)]
    missing += [name for name in SECTIONS if not config_cmd.DESCRIPTIONS.get(name)]
    assert missing == []
    stale = set(config_cmd.DESCRIPTIONS) - set(config_cmd.all_keys()) - set(SECTIONS)
    assert stale == set()


def test_shipped_conffile_is_the_generated_file(capsys):
    assert CONFFILE.read_text() == _generate(capsys), (
        "regenerate it: library-syncer config generate > etc/library-syncer/library-syncer.toml")


def test_show_prints_effective_settings_that_load_back(tmp_path, capsys):
    path = tmp_path / "site.toml"
    path.write_text('[sync]\npeer = "deb01.example"\nidentity_file = "ssh/id"\n'
                    'random_delay = "1h 30min"\nmin_free_space = 1000\n'
                    '[web]\nallow = ["192.0.2.7/24"]\n')
    assert main(["config", "show", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert f'identity_file = "{tmp_path}/ssh/id"' in out  # resolved against the file
    assert 'random_delay = "1h 30min"' in out and "min_free_space = 1000" in out
    again = tmp_path / "again.toml"
    again.write_text(out)
    first, second = config.load(path), config.load(again)
    for name in SECTIONS:
        assert getattr(first, name) == getattr(second, name), name


def test_validate_ok(tmp_path, capsys):
    path = tmp_path / "ok.toml"
    path.write_text('[sync]\npeer = "192.0.2.10"\n')
    assert main(["config", "validate", "-c", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: valid"


def test_validate_reports_every_problem_one_line_each_without_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[sync]\nport = "22x"\nschedul = "daily"\n[web]\ntls = "custom"\n'
                    f'cert_file = "{tmp_path}/missing.pem"\n')
    result = subprocess.run([sys.executable, "-m", "library_syncer", "config", "validate",
                             "-c", str(path)], capture_output=True, text=True)
    assert result.returncode == ExitStatus.CONFIG
    lines = result.stderr.strip().splitlines()
    assert f'library-syncer: {path}: sync.port: found "22x", expected an integer 1-65535' in lines
    assert any('sync.schedul: unknown key; did you mean "schedule"?' in line for line in lines)
    assert "Traceback" not in result.stderr
    # The file-level problems come first; once they are fixed, the web files are checked.
    path.write_text('[web]\ntls = "custom"\n'
                    f'cert_file = "{tmp_path}/missing.pem"\nkey_file = "{tmp_path}/k.pem"\n')
    result = subprocess.run([sys.executable, "-m", "library_syncer", "config", "validate",
                             "-c", str(path)], capture_output=True, text=True)
    assert result.returncode == ExitStatus.CONFIG
    assert "web.cert_file" in result.stderr and "missing.pem" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "library_syncer", "config", "show",
                             "-c", str(tmp_path / "nope.toml")], capture_output=True, text=True)
    assert result.returncode == ExitStatus.CONFIG
    assert result.stderr.strip().splitlines() == [
        f"library-syncer: {tmp_path}/nope.toml: file not found; create it from the commented "
        "example (library-syncer config generate)"]


def _all_parsers(parser, words=()):
    yield words, parser
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            yield from _all_parsers(sub, (*words, name))


def test_every_command_and_command_group_help_has_an_example():
    from library_syncer.cli.main import build_parser

    seen = []
    for words, parser in _all_parsers(build_parser()):
        text = parser.format_help()
        assert "\nexample:\n  library-syncer" in text, " ".join(words) or "(top level)"
        seen.append(" ".join(words))
    assert {"config", "config import-env", "status", "check", "demo", "server"} <= set(seen)


def test_traceback_only_with_debug(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[sync\n")
    argv = [sys.executable, "-m", "library_syncer"]
    plain = subprocess.run([*argv, "config", "validate", "-c", str(path)],
                           capture_output=True, text=True)
    debug = subprocess.run([*argv, "--debug", "config", "validate", "-c", str(path)],
                           capture_output=True, text=True)
    assert plain.returncode == debug.returncode == ExitStatus.CONFIG
    assert "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1 and "invalid TOML" in plain.stderr
    assert "Traceback (most recent call last)" in debug.stderr
