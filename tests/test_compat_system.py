"""The client against older servers (issue 14): a Debian 11 server (OpenSSH 8.4, rsync 3.2.3 and its
Perl rrsync) in systemd-nspawn, set up as the Docker-based original was (user `syncer`, its
authorized_keys line forcing `rrsync -ro /syncer/library/`, no trace), and the same server
standing for rsync 3.1 (no `--compress-choice`: tests/harness/oldserver.py). The client is this
tree's `library-syncer sync` on the host with the host's rsync; a first sync and delta syncs, one
SSH login per run (sshd's own log), a new version and a renamed item costing only their changed
blocks, and an option the old peer refuses dropped with one warning."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.checks import compare_site, snapshot_problems
from tests.harness import oldserver
from tests.harness import sshd as sshd_harness
from tests.test_sync_basis import _disk, _patched
from tests.test_sync_helpers import (
    add_ovf_item,
    last_run,
    published,
    random_bytes,
    sync,
    write_config,
)

pytestmark = pytest.mark.system

MB = 1 << 20
DISK = 16 * MB
KINDS = ("original", "old_rrsync", "old_rsync")


@pytest.fixture(scope="module")
def old(tmp_path_factory) -> Iterator[tuple[oldserver.OldServer, dict[str, Path]]]:
    """One Debian 11 server for the module; a client key forced to each kind of command."""
    sshd_harness.require_root()
    work = sshd_harness.make_work_dir("compat-old-server")
    library = work / "library"
    library.mkdir(mode=0o755)
    keys = {}
    for kind in KINDS:
        (work / kind).mkdir(mode=0o700)
        keys[kind] = sshd_harness.keygen(work / kind / "id_syncer")
    try:
        with oldserver.running(work / "server", library, {k: v[1] for k, v in keys.items()}
                               ) as server:
            yield server, {k: v[0] for k, v in keys.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def library(old, fixtures_dir) -> Path:
    """The server's library, emptied and given the ttylinux OVF template and a 16 MiB disk."""
    server, _ = old
    for entry in server.library.iterdir():
        shutil.rmtree(entry)
    add_ovf_item(server.library, fixtures_dir)
    _disk(server.library / "photon-5", "photon-5-disk1.vmdk", random_bytes(DISK, 5))
    return server.library


def _config(work_dir: Path, server: oldserver.OldServer, key: Path, **sync: object) -> Path:
    """The client's settings as a site of the original has them: user syncer, PEER:/ (the
    forced rrsync's folder), compression on (zstd, the default)."""
    (work_dir / "client-ssh").mkdir(mode=0o700, exist_ok=True)
    values = {"remote_path": "/", "compress": True, "connect_timeout": "10s",
              "io_timeout": "30s", **sync}
    return write_config(work_dir, server, key, **values)


def _synced(config: Path, server: oldserver.OldServer, library: Path, logins: int = 1) -> str:
    """One run: success, exactly `logins` SSH logins at the server, and the published snapshot
    complete, self-consistent and equal to the server's library. Returns its stderr."""
    before = server.logins()
    result = sync(config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert server.logins() - before == logins, (server.logins() - before, server.log()[-2000:])
    state = config.parent / "state"
    assert snapshot_problems(published(state)) == []
    assert compare_site(state / "published", library) == []
    return result.stderr


def _wire(config: Path) -> int:
    record = last_run(config.parent / "state")
    return record["bytes_received"] + record["bytes_sent"]


def _warnings(stderr: str, word: str) -> list[str]:
    return [line for line in stderr.splitlines() if word in line]


def test_first_and_delta_sync_against_the_original_server_on_debian_11(old, library, work_dir):
    server, keys = old
    assert server.version("rsync").startswith("rsync  version 3.2.3"), server.version("rsync")
    config = _config(work_dir, server, keys["original"])
    first = _synced(config, server, library)
    assert not _warnings(first, "refuses"), first
    assert _wire(config) > DISK  # the first sync fetched the library

    disk = library / "photon-5" / "photon-5-disk1.vmdk"
    changed = _patched(disk.read_bytes(), 0.05, seed=6)
    disk.write_bytes(changed)
    _synced(config, server, library)
    assert _wire(config) < 0.07 * DISK, last_run(config.parent / "state")
    assert (published(config.parent / "state") / "photon-5" / disk.name).read_bytes() == changed

    # A run with nothing to fetch, and one without connection sharing: four logins (the read
    # of what the upstream declares — nothing, here —, the dry run, the transfer and the site
    # report, which this original server refuses, quietly), which shows the count above is
    # one per connection.
    _synced(config, server, library)
    _synced(_config(work_dir, server, keys["original"], share_connection=False), server,
            library, logins=4)


def test_a_new_version_and_a_renamed_item_cost_only_their_changed_blocks(old, library,
                                                                         work_dir):
    server, keys = old
    config = _config(work_dir, server, keys["original"])
    _synced(config, server, library)

    old_disk = (library / "photon-5" / "photon-5-disk1.vmdk").read_bytes()
    _disk(library / "photon-5.1", "photon-5.1-disk1.vmdk", _patched(old_disk, 0.05, seed=7))
    stderr = _synced(config, server, library)
    assert "fetched as differences from a copy this site has" in stderr, stderr
    assert _wire(config) < 0.07 * DISK, last_run(config.parent / "state")

    (library / "photon-5").rename(library / "photon-5-archive")
    _synced(config, server, library)
    assert _wire(config) < 0.01 * DISK, last_run(config.parent / "state")


@pytest.mark.parametrize("kind", ["old_rrsync", "old_rsync"])
def test_an_option_an_older_server_refuses_is_dropped_with_one_warning(old, library, work_dir,
                                                                       kind):
    """rsync 3.1 (or its Perl rrsync) refuses --compress-choice: the run warns once, goes on
    without it (compression negotiated: zlib), over the same single connection, and publishes;
    a delta sync then works as well."""
    server, keys = old
    config = _config(work_dir, server, keys[kind])
    stderr = _synced(config, server, library)
    refused = _warnings(stderr, "refuses")
    assert len(refused) == 1 and "--compress-choice" in refused[0], stderr
    assert f"syncer@127.0.0.1:{server.port}" in refused[0]
    assert ("rsync 3.1.3" in refused[0]) == (kind == "old_rsync"), refused[0]

    disk = library / "photon-5" / "photon-5-disk1.vmdk"
    disk.write_bytes(_patched(disk.read_bytes(), 0.05, seed=8))
    stderr = _synced(config, server, library)
    assert len(_warnings(stderr, "refuses")) == 1, stderr
    assert _wire(config) < 0.07 * DISK, last_run(config.parent / "state")


def test_compression_off_sends_nothing_an_older_server_refuses(old, library, work_dir):
    server, keys = old
    config = _config(work_dir, server, keys["old_rrsync"], compress=False)
    assert not _warnings(_synced(config, server, library), "refuses")
