"""`config import-env`: the Docker version's compose/.env settings become equivalent TOML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from library_syncer.base import config
from library_syncer.base.errors import ExitStatus
from library_syncer.cli.main import main
from library_syncer.host import migrate
from library_syncer.sync import run as sync
from library_syncer.sync.layout import Layout
from tests.test_check import site  # noqa: F401 - the fixture


def _import(capsys, *files: Path) -> tuple[str, str]:
    assert main(["config", "import-env", *map(str, files)]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def _load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "library-syncer.toml"
    path.write_text(text)
    return config.load(path)


def test_original_sample_files_give_the_same_effective_settings(fixtures_dir, tmp_path, capsys):
    original = fixtures_dir / "original"
    out, err = _import(capsys, original / "client-docker-compose.yaml",
                       original / "server-docker-compose.yaml")
    cfg = _load(tmp_path, out)
    # client: what the original container did with its environment and port mappings
    assert cfg.sync.peer == "deb01.lab.example.net"
    assert cfg.sync.port == 2222
    assert 'schedule = "0 21 * * 5"' in out  # kept as written; converted when loaded
    assert cfg.sync.schedule == "Fri *-*-* 21:00:00"
    assert cfg.sync.random_delay == 21600
    assert cfg.sync.bandwidth_limit == "0"
    assert cfg.sync.timezone == "UTC"
    assert cfg.library.name == "Library"
    assert cfg.web.browse is True
    assert cfg.web.tls == "custom" and cfg.web.hostname == "library.lab.example.net"
    assert cfg.web.cert_file == Path("/etc/library-syncer/tls/cert.pem")
    assert cfg.web.key_file == Path("/etc/library-syncer/tls/key.pem")
    assert (cfg.web.http_port, cfg.web.https_port) == (80, 443)
    # server: SYNCER_UID, the published port and the library volume
    assert cfg.server.uid == 31337
    assert cfg.server.port == 2222
    assert cfg.server.library == original / "data" / "library"
    # what cannot be carried over is named, on stderr and in the file
    assert "TZ=UTC: the server role has no schedule" in err
    assert "# Not carried over:\n#   " in out and "TZ=UTC: the server role" in out
    assert f"{original}/data/ssh/id_syncer /etc/library-syncer/ssh/id_syncer" in out
    assert f"{original}/data/certs/cert.pem /etc/library-syncer/tls/cert.pem" in out
    assert "Traceback" not in err


def test_client_file_alone_validates_and_names_nothing(fixtures_dir, tmp_path, capsys):
    out, err = _import(capsys, fixtures_dir / "original" / "client-docker-compose.yaml")
    assert "[server]" not in out
    assert _load(tmp_path, out).sync.peer == "deb01.lab.example.net"
    assert err == ""


def test_env_file_delay_off_acme_and_unknown_values(tmp_path, capsys):
    env = tmp_path / "client.env"
    env.write_text("# the client\nexport SYNC_PEER=192.0.2.5\nSYNC_DELAY=false\n"
                   "SYNC_DELAY_MAX_SECONDS=600\nTLS_NAME='library.example.org'\n"
                   'LIBRARY_NAME="Site templates"  \nSYNC_PORT=22x\nFOO=bar\n'
                   "SYNC_SCHEDULE=0 3 * * *\n")
    out, err = _import(capsys, env)
    cfg = _load(tmp_path, out)
    assert cfg.sync.peer == "192.0.2.5"
    assert cfg.sync.random_delay == 0  # SYNC_DELAY=false wins over the maximum
    assert cfg.web.tls == "acme" and cfg.web.hostname == "library.example.org"
    assert cfg.library.name == "Site templates"
    assert cfg.sync.port == 2222  # not carried over, named:
    assert "SYNC_PORT: sync.port expects an integer 1-65535; left at its default" in err
    assert "FOO=bar: not a setting of the Docker version" in err
    assert cfg.sync.schedule == "*-*-* 03:00:00"


def test_compose_map_form_with_comments_and_quotes(tmp_path, capsys):
    compose = tmp_path / "docker-compose.yaml"
    compose.write_text("""\
version: '3'
services:
  client:   # a comment
    image: "ghcr.io/jbowdre/library-syncer-client:latest"
    environment:
      SYNC_PEER: "server.example.net"   # the server
      SYNC_DELAY: "true"
      SYNC_MAX_BW: 10M
      LIBRARY_BROWSE: 'false'
    ports:
      - "127.0.0.1:8080:80"
""")
    out, err = _import(capsys, compose)
    cfg = _load(tmp_path, out)
    assert cfg.sync.peer == "server.example.net"
    assert cfg.sync.random_delay == 21600  # SYNC_DELAY=true: the original's default maximum
    assert cfg.sync.bandwidth_limit == "10M"
    assert cfg.web.browse is False
    assert (cfg.web.listen, cfg.web.http_port) == ("127.0.0.1", 8080)
    assert cfg.web.tls == "off"
    assert err == ""


def test_yaml_subset_parser():
    data = migrate.parse_yaml("a:\n  b:\n  - x=1 # c\n  - 'y=#2'\n  c: \"q: r\"\nd: e\n")
    assert data == {"a": {"b": ["x=1", "y=#2"], "c": "q: r"}, "d": "e"}


def test_unreadable_input_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "docker-compose.yaml"
    bad.write_text("services:\n  c:\n    environment: [A=1]\n")
    result = subprocess.run([sys.executable, "-m", "library_syncer", "config", "import-env",
                             str(bad), str(tmp_path / "missing.env")],
                            capture_output=True, text=True)
    assert result.returncode == ExitStatus.CONFIG
    assert result.stderr.startswith(f"library-syncer: {bad}: not readable as a docker-compose "
                                    "file: line 3: flow style")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_docker_client_library_seeds_the_first_snapshot(site):  # noqa: F811
    """docs/operations.md: the old ./data/library copied (times kept) into the staging tree is
    what the first sync resumes from: nothing is downloaded again."""
    old_library = site.work / "data" / "library"  # what the Docker client had synced
    old_library.mkdir(parents=True)
    source = site.sshd.dir.parent / "server-library"
    subprocess.run(["cp", "-a", f"{source}/.", str(old_library)], check=True)
    (old_library / "lib.json").write_text("{}")  # the original client's own manifests
    staging = Layout.of(site.config).staging
    staging.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", f"{old_library}/.", str(staging)], check=True)
    record = sync.run(site.config, retry=False)
    assert record.outcome == "ok", record.message
    assert record.files_changed == 1  # only the stale lib.json, deleted; no file transferred
    assert record.bytes_received < record.total_size / 100
    assert record.items == 1
