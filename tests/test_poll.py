"""Change polling (`sync --if-changed`) against the real server role: sshd with the forced-command
dispatcher and rrsync -ro, the origin's trace from server/trace.py, real rsync. Logins are counted
in sshd's own log (LogLevel VERBOSE: one "Accepted publickey" per SSH connection)."""

from __future__ import annotations

import json
import os
import re
import time
import tracemalloc
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.server import trace
from library_syncer.sync import poll
from tests.harness import sshd as harness
from tests.test_sync_helpers import cli, published, random_bytes, write_config

MB = 1 << 20


def _declare(root: Path, library: Path) -> int:
    settings = root / "origin.toml"
    settings.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{root / "trace-state"}"'
                        f'\nsettle = "60s"\nname = "hq"\n')
    return trace.tick(config_module.load(settings), now=time.time() + 61).serial


def _disk(library: Path, item: str, data: bytes) -> None:
    path = library / item / f"{item}.vmdk"
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


@pytest.fixture
def origin(work_dir: Path, client_key):
    library = work_dir / "library"
    library.mkdir(mode=0o755)
    _disk(library, "ubuntu", random_bytes(1 * MB, 1))
    key, pub = client_key
    server = harness.start_server_role(work_dir / "origin", library, sites={"paris": pub})
    config = write_config(work_dir, server, key, report=False, poll_interval="15min")
    yield server, library, config
    server.stop()


def _logins(server) -> int:
    return server.log().count("Accepted publickey")


def _poll(config: Path):
    return cli("sync", "--if-changed", "--config", str(config))


def _snapshots(work_dir: Path) -> list[str]:
    return sorted(p.name for p in (work_dir / "state" / "snapshots").iterdir())


def test_unchanged_origin_costs_one_session_and_touches_nothing(work_dir, origin):
    server, library, config = origin
    assert _declare(work_dir, library) == 1
    first = _poll(config)  # nothing published yet: the full sync
    assert first.returncode == 0, first.stderr
    assert "nothing is published yet: syncing" in first.stderr
    before = (_snapshots(work_dir), (work_dir / "state" / "last-run.json").read_text())
    logins = _logins(server)

    result = _poll(config)

    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and "origin unchanged (revision 1 of hq); nothing to do" in said[0], said
    assert _logins(server) == logins + 1  # one SSH session, no more
    assert (_snapshots(work_dir), (work_dir / "state" / "last-run.json").read_text()) == before
    check = json.loads((work_dir / "state" / "last-check.json").read_text())
    assert check["moved"] is False and check["seen"] == "revision 1 of hq" and check["checked"]
    status = cli("status", "--json", "--config", str(config))
    assert json.loads(status.stdout)["last_check"]["seen"] == "revision 1 of hq", status.stdout


def test_a_new_declared_revision_is_synced_and_published(work_dir, origin):
    _server, library, config = origin
    _declare(work_dir, library)
    assert _poll(config).returncode == 0
    _disk(library, "photon", random_bytes(1 * MB, 2))
    # copied in but not declared yet: the serial has not moved, nothing to do
    result = _poll(config)
    assert "origin unchanged (revision 1 of hq)" in result.stderr, result.stderr
    assert not (published(work_dir / "state") / "photon").exists()

    assert _declare(work_dir, library) == 2
    result = _poll(config)

    assert result.returncode == 0, result.stderr
    assert "the origin moved to revision 2 of hq (published: revision 1 of hq): syncing" in \
        result.stderr
    snap = published(work_dir / "state")
    assert (snap / "photon" / "photon.vmdk").read_bytes() == random_bytes(1 * MB, 2)
    assert json.loads((snap / ".library-syncer" / "trace.json").read_text())["serial"] == 2
    assert "origin unchanged (revision 2 of hq)" in _poll(config).stderr


def test_without_a_trace_the_listing_digest_decides(work_dir, origin):
    server, library, config = origin  # no trace declared: the Docker-based original's case
    assert _poll(config).returncode == 0
    logins = _logins(server)
    result = _poll(config)
    assert result.returncode == 0, result.stderr
    assert "origin unchanged (listing " in result.stderr and "1 files); nothing to do" in \
        result.stderr, result.stderr
    assert _logins(server) == logins + 1
    snapshots = _snapshots(work_dir)

    # same size, another modification time: a rewritten disk
    path = library / "ubuntu" / "ubuntu.vmdk"
    path.write_bytes(random_bytes(1 * MB, 3))
    os.utime(path, (time.time() + 5, time.time() + 5))
    result = _poll(config)

    assert "the origin's library differs from what is published" in result.stderr, result.stderr
    assert _snapshots(work_dir) != snapshots
    assert (published(work_dir / "state") / "ubuntu" / "ubuntu.vmdk").read_bytes() == \
        random_bytes(1 * MB, 3)
    said = _poll(config).stderr
    shown = re.search(r"origin unchanged \(listing ([0-9a-f]{12})", said)
    assert shown, said
    # `status` (this check's line) and `server sites` (the report's digest) show the same digits
    from library_syncer.sync import report as site_report
    from library_syncer.sync.layout import Layout

    reported = site_report.listing_digest(published(work_dir / "state"),
                                          Layout(work_dir / "state").ova_store)
    assert reported is not None and reported[7:19] == shown.group(1)


def test_a_check_skips_while_a_run_holds_the_lock(work_dir, origin):
    from library_syncer.sync import lock

    server, library, config = origin
    _declare(work_dir, library)
    (work_dir / "state").mkdir(exist_ok=True)
    logins = _logins(server)
    with lock.hold(work_dir / "state" / "sync.lock"):
        result = _poll(config)
    assert result.returncode == 0, result.stderr
    assert "a sync is running; this check is skipped" in result.stderr, result.stderr
    assert _logins(server) == logins  # not even a connection
    assert not (work_dir / "state" / "last-run.json").exists()


def test_an_unreachable_origin_fails_the_check_in_one_line(work_dir, origin):
    server, library, config = origin
    assert _poll(config).returncode == 0  # published: the next poll reads the serial
    _declare(work_dir, library)
    server.stop()
    result = _poll(config)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()
              or "library-syncer:" in line]
    assert len(errors) == 1 and "change check:" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_stale_upstream_is_not_synced_at_every_poll(work_dir, origin):
    """A relay behind this site (its serial file older than the published revision): the check
    says so and starts no run (a full run would pull and refuse it every 15 minutes)."""
    _server, library, config = origin
    assert _declare(work_dir, library) == 1
    _disk(library, "photon", random_bytes(1 * MB, 2))
    assert _declare(work_dir, library) == 2
    assert _poll(config).returncode == 0  # publishes revision 2
    (library / ".library-syncer" / "serial").write_text("hq 1\n")  # the stale relay's word
    runs = (work_dir / "state" / "last-run.json").read_text()

    result = _poll(config)

    assert result.returncode == 0, result.stderr
    assert "revision 1 of hq, older than revision 2 of hq published (a stale upstream)" in \
        result.stderr and "syncing" not in result.stderr, result.stderr
    assert (work_dir / "state" / "last-run.json").read_text() == runs  # no run started


def test_an_oversized_serial_is_never_read(work_dir, origin):
    """The serial is read with a bound (sync/declared.py, rsync --max-size): a 32 MiB "serial"
    stays on the server; the check treats the revision as unknown and the full run decides."""
    _server, library, config = origin
    assert _declare(work_dir, library) == 1
    assert _poll(config).returncode == 0
    (library / ".library-syncer" / "serial").write_bytes(b"hq 1" + b" " * (32 * MB))
    logins = _logins(_server)

    result = _poll(config)

    assert result.returncode == 0, result.stderr
    assert "the server declares no revision (published: revision 1 of hq): syncing" in \
        result.stderr, result.stderr
    assert _logins(_server) > logins
    tracemalloc.start()
    try:
        assert poll.origin_serial(config_module.load(config).sync) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 * MB, f"{peak:,} bytes held while reading the serial"
