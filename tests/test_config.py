"""Configuration validation: every mistake is reported, one clear line each, nothing half-works."""

from __future__ import annotations

from pathlib import Path

import pytest

from library_syncer.base import config
from library_syncer.base.errors import ConfigError, ExitStatus
from library_syncer.cli.main import main


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "library-syncer.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_original():
    cfg = config.defaults(Path("/x.toml"))
    assert cfg.sync.port == 2222
    assert cfg.sync.schedule == "Fri *-*-* 21:00:00"
    assert cfg.sync.random_delay == 6 * 3600
    assert cfg.sync.bandwidth_limit == "0"
    assert cfg.sync.exclude == (".vSphere-HA",)
    assert cfg.server.uid == 31337
    assert cfg.library.name == "Library"
    assert cfg.published_dir == Path("/var/lib/library-syncer/published")


def test_valid_file_is_typed(tmp_path):
    path = _write(tmp_path, """
[library]
name = "Site templates"
[sync]
peer = "deb01.lab.example"
port = 2200
bandwidth_limit = "10M"
schedule = "0 21 * * 5"
random_delay = "1h 30min"
exclude = [".vSphere-HA", "*.iso"]
identity_file = "ssh/id"
[web]
tls = "custom"
hostname = "library.example"
allow = ["192.0.2.7/24"]
""")
    cfg = config.load(path)
    assert cfg.sync.peer == "deb01.lab.example"
    assert cfg.sync.port == 2200
    assert cfg.sync.schedule == "Fri *-*-* 21:00:00"
    assert cfg.sync.random_delay == 5400
    assert cfg.sync.identity_file == tmp_path / "ssh" / "id"  # relative to the file
    assert cfg.web.allow == ("192.0.2.0/24",)


def test_every_problem_is_reported_with_file_key_found_expected(tmp_path):
    path = _write(tmp_path, """
[sync]
port = "22x"
bandwidht_limit = 5
random_delay = "soon"
[web]
tls = "yes"
[nope]
x = 1
""")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    lines = str(caught.value).splitlines()
    assert f'{path}: sync.port: found "22x", expected an integer 1-65535' in lines
    assert f'{path}: sync.bandwidht_limit: unknown key; did you mean "bandwidth_limit"?' in lines
    assert any(line.startswith(f'{path}: sync.random_delay: found "soon", expected a duration')
               for line in lines)
    assert any("web.tls" in line and '"acme"' in line for line in lines)
    assert any("nope" in line and "unknown section" in line for line in lines)
    assert len(lines) == 5
    assert caught.value.exit_status == ExitStatus.CONFIG


@pytest.mark.parametrize(("text", "key"), [
    ("[sync]\nport = 0", "sync.port"),
    ("[sync]\nport = 70000", "sync.port"),
    ("[sync]\nport = true", "sync.port"),
    ('[sync]\nbandwidth_limit = "fast"', "sync.bandwidth_limit"),
    ('[sync]\nschedule = "0 21 * *"', "sync.schedule"),
    ('[sync]\nschedule = "61 * * * *"', "sync.schedule"),
    ('[sync]\nschedule = "0 0 1 * 5"', "sync.schedule"),
    ('[sync]\npeer = "bad host!"', "sync.peer"),
    ('[sync]\ntimezone = "Mars/Olympus"', "sync.timezone"),
    ('[sync]\nmin_free_space = "lots"', "sync.min_free_space"),
    ('[web]\nallow = ["not-a-network"]', "web.allow"),
    ('[web]\ntls = "acme"', "web.hostname"),
    ("[server]\nuid = -1", "server.uid"),
    ('[server]\nmax_startups = "many"', "server.max_startups"),
    ('[library]\nname = ""', "library.name"),
    ("sync = 3", "sync"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as caught:
        config.load(_write(tmp_path, text))
    assert f": {key}" in str(caught.value)


def test_missing_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.load(_write(tmp_path, "[sync\nport = 1"))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[library]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        config.load(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(tmp_path)


def test_cli_reports_config_error_in_one_line_without_traceback(tmp_path, capsys):
    path = _write(tmp_path, '[sync]\nport = "22x"\n')
    status = main(["config", "validate", "--config", str(path)])
    err = capsys.readouterr().err
    assert status == ExitStatus.CONFIG
    assert "Traceback" not in err
    assert f'library-syncer: {path}: sync.port: found "22x", expected an integer 1-65535' in err


@pytest.mark.parametrize(("section", "key"), [
    ("sync", "identity_file"), ("sync", "known_hosts"), ("sync", "ssh"), ("sync", "rsync"),
    ("paths", "runtime_dir"),
])
def test_paths_for_rsyncs_ssh_command_refuse_both_quote_kinds(tmp_path, capsys, section, key):
    """They go into rsync's -e string: refused when read, not a crash when the run starts."""
    path = _write(tmp_path, f"[{section}]\n{key} = '/opt/it\"s/x'\n")
    assert config.load(path)  # one kind of quote is fine
    path = _write(tmp_path, f"[{section}]\n{key} = '''/opt/it's \"q\"/x'''\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value) == (
        f"{path}: {section}.{key}: found \"/opt/it's \"q\"/x\", expected a path with ' or \" "
        "but not both (it goes into rsync's -e command)")
    assert main(["config", "validate", "--config", str(path)]) == ExitStatus.CONFIG
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(("section", "key"), [
    ("sync", "identity_file"), ("sync", "known_hosts"), ("paths", "runtime_dir"),
])
def test_paths_for_ssh_refuse_environment_variables(tmp_path, section, key):
    """ssh expands ${VAR} in its file options and has no escape for it (a % is escaped)."""
    path = _write(tmp_path, f"[{section}]\n{key} = '/opt/a b%h/x'\n")
    assert config.load(path)
    path = _write(tmp_path, f"[{section}]\n{key} = '/opt/${{HOME}}/x'\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value) == (
        f'{path}: {section}.{key}: found "/opt/${{HOME}}/x", expected a path without ${{ '
        "(ssh would read it as an environment variable)")
