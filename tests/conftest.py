"""Shared fixtures. Every fixture starts real components; nothing external is mocked."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import fixtures, nspawn
from tests.harness import sshd as sshd_harness

# The package's own paths on this host. A test whose settings leave out a path falls back to
# these defaults: it writes into the host and may pass thanks to what an earlier run left there.
HOST_DEFAULTS = ("/etc/library-syncer", "/var/lib/library-syncer",
                 "/var/lib/library-syncer-server", "/srv/library-syncer")


@pytest.fixture(scope="session", autouse=True)
def host_defaults_untouched() -> Iterator[None]:
    before = {path for path in HOST_DEFAULTS if os.path.lexists(path)}
    yield
    made = sorted(p for p in HOST_DEFAULTS if os.path.lexists(p) and p not in before)
    assert not made, (f"the tests created {made} on this host: a test uses a default path "
                      "(give it one in its work directory), then remove them")


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VMware-shaped material built once per run (layout: tests/harness/fixtures.py)."""
    return fixtures.build(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture
def work_dir(request) -> Iterator[Path]:
    """A 0755 directory outside /tmp (sshd StrictModes), removed after the test."""
    path = sshd_harness.make_work_dir(request.node.name[:40].replace("/", "_"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def client_key(work_dir: Path) -> tuple[Path, str]:
    keydir = work_dir / "client-ssh"
    keydir.mkdir(mode=0o700)
    return sshd_harness.keygen(keydir / "id_syncer")


@pytest.fixture
def server_library(work_dir: Path) -> Path:
    library = work_dir / "server-library"
    library.mkdir(mode=0o755)
    return library


@pytest.fixture
def sshd(work_dir: Path, client_key: tuple[Path, str], server_library: Path
         ) -> Iterator[sshd_harness.Sshd]:
    """A real sshd whose only authorized key (client_key) is forced to rrsync -ro the library."""
    server = sshd_harness.start_sshd(
        work_dir / "sshd",
        authorized_lines=[sshd_harness.forced_rrsync_line(client_key[1], server_library)],
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The three .deb packages built from this tree (library-syncer-common, library-syncer,
    library-syncer-server), once per run, for the booted-systemd tests."""
    nspawn.require_tools()
    return nspawn.build_debs(tmp_path_factory.mktemp("debs"))


@pytest.fixture(scope="session")
def next_debs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The same tree as a later version, to upgrade to."""
    nspawn.require_tools()
    return nspawn.build_debs(tmp_path_factory.mktemp("next-debs"), "--version", nspawn.NEXT_VERSION)


@pytest.fixture(scope="module", params=nspawn.suites())
def suite(request: pytest.FixtureRequest) -> str:
    """The Debian suite a booted-systemd module runs on: each such module runs once per tested
    suite (bookworm, trixie; $LSYNC_TEST_SUITES), one container per suite."""
    return request.param

