"""`config generate|show|validate`: the conffile is `generate`'s output and names only a few
settings, commented out; `generate --all` is the reference with every default; both round-trip."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from library_syncer.base import config, paths
from library_syncer.base import config_toml as config_cmd
from library_syncer.base.config import SECTIONS
from library_syncer.base.errors import ExitStatus
from library_syncer.cli.main import main

TOP = Path(__file__).resolve().parent.parent
CONFFILE = TOP / "etc" / "library-syncer" / "library-syncer.toml"
# What the conffile shows, spelled out here too: changing it is a decision (every host that
# edited the file is asked once by dpkg), not a side effect of adding a setting.
CONFFILE_KEYS = ["library.name", "sync.peer", "sync.bandwidth_limit", "sync.schedule",
                 "sync.random_delay", "sync.poll_interval", "web.tls", "web.hostname",
                 "server.library", "server.listen"]
COMMENTED_KEY = re.compile(r"^# ([a-z_]+) = (.*)$")


def _generate(capsys, *options: str) -> str:
    assert main(["config", "generate", *options]) == 0
    return capsys.readouterr().out


def _named_keys(text: str) -> tuple[list[str], list[str]]:
    """The `section.key` lines of a generated file: (commented out, active)."""
    section, commented, active = "", [], []
    for line in text.splitlines():
        if header := re.fullmatch(r"\[([a-z]+)\]", line):
            section = header.group(1)
        elif match := COMMENTED_KEY.match(line):
            commented.append(f"{section}.{match.group(1)}")
        elif line and not line.startswith("#"):
            active.append(f"{section}.{line.split(' = ')[0]}")
    return commented, active


def _uncommented(text: str) -> str:
    return "\n".join(line[2:] if COMMENTED_KEY.match(line) else line
                     for line in text.splitlines()) + "\n"


def test_generated_files_load_and_equal_the_defaults(tmp_path, capsys):
    for options in ((), ("--all",)):
        path = tmp_path / "library-syncer.toml"
        path.write_text(_generate(capsys, *options))
        assert config.load(path) == config.defaults(path), options


def test_conffile_names_only_its_few_settings_commented_out(capsys):
    text = _generate(capsys)
    commented, active = _named_keys(text)
    assert commented == CONFFILE_KEYS == list(config_cmd.FIRST_SETTINGS) and active == []
    assert "\n[library]\n" in text and "\n[metrics]\n" not in text  # no empty sections
    for where in ("library-syncer config generate --all", str(paths.REFERENCE_SETTINGS_FILE),
                  "library-syncer config show", "library-syncer config validate",
                  "library-syncer apply", "library-syncer check"):
        assert where in text, where
    assert all(len(line) <= config_cmd.COMMENT_WIDTH for line in text.splitlines())


def test_conffile_shows_the_real_defaults_and_takes_an_uncommented_setting(tmp_path, capsys):
    """Uncommenting the lines as they are changes nothing; uncommenting one line with a value
    (the [section] line is already there) sets exactly that setting."""
    text = _generate(capsys)
    path = tmp_path / "library-syncer.toml"
    path.write_text(_uncommented(text))
    assert config.load(path) == config.defaults(path)
    path.write_text(text.replace('\n# peer = ""\n', '\npeer = "deb01.example"\n'))
    loaded, defaults = config.load(path), config.defaults(path)
    assert loaded.sync.peer == "deb01.example"
    assert loaded.sync.upstream_list() and not defaults.sync.upstream_list()  # now configured
    assert loaded == config.Config(file=path, sync=config.SyncConfig(peer="deb01.example"))


def test_a_new_setting_changes_the_reference_not_the_conffile(monkeypatch, capsys):
    """A release that adds settings (to a section the conffile shows, and a new section) ships
    the same conffile, so dpkg has nothing to ask on a host whose operator edited it."""
    shipped, reference = _generate(capsys), _generate(capsys, "--all")

    @dataclass(frozen=True)
    class GrownSync(config.SyncConfig):
        new_knob: int = config.setting(7, config._int_range(0, 9), "an integer 0-9")

    @dataclass(frozen=True)
    class Extra:
        other_knob: bool = config.setting(True, config._bool, "true or false")

    @dataclass(frozen=True)
    class GrownConfig(config.Config):
        sync: config.SyncConfig = field(default_factory=GrownSync)
        extra: Extra = field(default_factory=Extra)

    monkeypatch.setattr(config_cmd, "SECTIONS", {**SECTIONS, "extra": Extra})
    monkeypatch.setattr(config, "defaults", lambda file=None: GrownConfig(file=file))
    grown = _generate(capsys, "--all")
    assert grown != reference and "\nnew_knob = 7\n" in grown and "\n[extra]\n" in grown
    assert _generate(capsys) == shipped


def test_reference_names_every_key_its_default_and_docker_variable(capsys):
    text = _generate(capsys, "--all")
    commented, active = _named_keys(text)
    assert commented == [] and active == config_cmd.all_keys()
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
    assert all(len(line) <= config_cmd.COMMENT_WIDTH for line in text.splitlines())


def test_every_setting_has_a_description():
    missing = [key for key in config_cmd.all_keys() if not config_cmd.DESCRIPTIONS.get(key)]
    missing += [name for name in SECTIONS if not config_cmd.DESCRIPTIONS.get(name)]
    assert missing == []
    stale = set(config_cmd.DESCRIPTIONS) - set(config_cmd.all_keys()) - set(SECTIONS)
    assert stale == set()


def test_shipped_conffile_is_the_generated_file(capsys):
    assert CONFFILE.read_text() == _generate(capsys), (
        "regenerate it: library-syncer config generate > etc/library-syncer/library-syncer.toml")


def test_the_documents_name_the_reference_where_the_package_installs_it():
    """tests/test_package.py checks the file is there in the installed package."""
    rules = (TOP / "packaging" / "debian" / "rules").read_text()
    examples = (TOP / "packaging" / "debian" / "library-syncer-common.examples").read_text()
    assert "generated_text(full=True)" in rules and "debian/examples/library-syncer.toml" in rules
    assert examples.split() == ["debian/examples/library-syncer.toml"]
    assert paths.REFERENCE_SETTINGS_FILE.parent.name == "examples"
    for document in ("README.md", "docs/operations.md", "docs/packaging.md"):
        assert str(paths.REFERENCE_SETTINGS_FILE) in (TOP / document).read_text(), document


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


def test_validate_warns_of_the_missing_published_library_only_on_a_site(tmp_path):
    """A server-only host has neither the synced copy nor Caddy: no warning about them there."""
    state = tmp_path / "state"
    server = tmp_path / "server.toml"
    server.write_text(f'[server]\nlibrary = "{tmp_path}"\n[paths]\nstate_dir = "{state}"\n')
    site = tmp_path / "site.toml"
    site.write_text(f'[sync]\npeer = "192.0.2.10"\n[paths]\nstate_dir = "{state}"\n')
    said = {}
    for name, path in (("server", server), ("site", site)):
        result = subprocess.run([sys.executable, "-m", "library_syncer", "config", "validate",
                                 "-c", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        said[name] = result.stderr
    assert said["server"] == ""
    assert f"{state}/published does not exist yet" in said["site"]


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
