"""Several TCP connections for a large run (sync/streams.py), against a real sshd and the real
rsync: a large run's largest files cross over sync.streams connections at once (counted at the
server: its accepted logins), the result is byte for byte what one connection publishes, a
stream killed mid-file is made good by the normal pass, a small run keeps its one connection,
and the bandwidth limit is shared among the streams. The `sshd` fixture forces plain
`rrsync -ro` (the Docker original's shape); one test goes through our server role's dispatcher.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from library_syncer.base.config import SyncConfig
from library_syncer.sync import basis, rsync, streams
from tests.fleet.checks import snapshot_problems
from tests.harness import sshd as harness
from tests.harness.wait import wait_for
from tests.test_sync_faults import _descendants, _start_sync
from tests.test_sync_helpers import published, random_bytes, sha256, sync, write_config

MB = 1 << 20
# 96 MiB in six large files (over streams.MIN_BYTES; four shares of at least
# streams.MIN_SHARE) and a small one (the normal pass's).
LARGE = {"alpha": 24, "bravo": 20, "charlie": 18, "delta": 16, "echo": 10, "foxtrot": 8}


def _library(library: Path) -> None:
    for seed, (name, size) in enumerate(LARGE.items(), start=1):
        _file(library / name / f"{name}.iso", random_bytes(size * MB, seed))
    _file(library / "small" / "small.iso", random_bytes(100_000, 99))


def _file(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _logins(server: harness.Sshd) -> int:
    return server.log().count("Accepted publickey")


def _contents(root: Path) -> dict[str, str]:
    """Every data file below root (not our manifests nor hidden state): path → SHA-256."""
    root = Path(os.path.realpath(root))
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix == ".iso"
            and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def _stream_processes(pid: int) -> list[tuple[int, list[str]]]:
    """The sync's rsync stream processes (their argv names a --files-from list)."""
    found = []
    for child in _descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == "rsync" and any(a.startswith("--files-from=")
                                                         for a in argv):
            found.append((child, argv))
    return found


# --- the plan and the argv ----------------------------------------------------------------------


def _listing(files: dict[str, int], flags: str = ">f+++++++++") -> list[basis.Listed]:
    return basis.parse_listing(f"{flags} {size} {path}" for path, size in files.items())


def test_a_large_run_is_dealt_largest_first_into_shares_of_about_equal_bytes():
    files = {f"i{n}/disk.vmdk": size * MB for n, size in enumerate([40, 30, 20, 10, 10, 5])}
    listed = [*_listing(files), *_listing({"small/a.ovf": 2000}),
              *_listing({"same/disk.vmdk": 90 * MB}, ".f         ")]  # unchanged: not fetched
    shares = streams.plan(listed, 3)
    assert [s.size // MB for s in shares] == [40, 40, 35]
    assert sorted(p for s in shares for p in s.paths) == sorted(files)
    assert shares[0].paths == ("i0/disk.vmdk",)


def test_small_runs_and_single_files_keep_one_connection():
    assert streams.plan(_listing({"a/d.vmdk": 40 * MB, "b/d.vmdk": 23 * MB}), 4) == []
    assert streams.plan(_listing({"a/d.vmdk": 500 * MB}), 4) == []  # one file: byte ranges
    assert streams.plan(_listing({"a/d.vmdk": 40 * MB, "b/d.vmdk": 40 * MB}), 1) == []
    many_small = {f"i{n}/f.ovf": MB - 1 for n in range(100)}  # under MIN_FILE each
    assert streams.plan(_listing(many_small), 4) == []
    assert len(streams.plan(_listing({"a/d.vmdk": 40 * MB, "b/d.vmdk": 40 * MB}), 4)) == 2
    # one file dominates: the other share would not be worth its handshake
    assert streams.plan(_listing({"a/d.vmdk": 100 * MB, "b/d.vmdk": 2 * MB}), 4) == []
    # 64 MiB in many files: no more streams than shares of 16 MiB
    assert len(streams.plan(_listing({f"i{n}/d.vmdk": 4 * MB for n in range(16)}), 8)) == 4


def test_the_bandwidth_limit_is_shared_among_the_streams():
    assert rsync.bwlimit_share("8M", 4) == "2048"
    assert rsync.bwlimit_share("1000", 3) == "333"
    assert rsync.bwlimit_share("2", 4) == "1"  # never 0: that would be unlimited
    assert rsync.bwlimit_share("0", 4) == "0"
    assert rsync.bwlimit_share("8M", 1) == "8M"


def test_a_stream_is_the_pull_on_its_own_connection_without_deletions(tmp_path):
    sync_config = SyncConfig(peer="hq", bandwidth_limit="8M", include=("ubuntu-*",),
                             exclude=(".vSphere-HA",))
    dest, link = tmp_path / "staging", tmp_path / "published"
    argv = rsync.stream_argv(sync_config, dest, [link], tmp_path / "list", 4)
    pull = rsync.pull_argv(sync_config, dest, [link])
    assert "--delete" not in argv
    assert [a for a in argv if a.startswith(("--filter", "--exclude", "--link-dest",
                                             "--partial-dir", "--block-size"))] == \
        [a for a in pull if a.startswith(("--filter", "--exclude", "--link-dest",
                                          "--partial-dir", "--block-size"))]
    assert f"--files-from={tmp_path / 'list'}" in argv and "--from0" in argv
    assert "--bwlimit=2048" in argv and "--bwlimit=8M" in pull
    rsh = argv[argv.index("-e") + 1]
    assert "ControlPath=none" in rsh and "ControlMaster=no" in rsh
    assert argv[-2:] == pull[-2:]


# --- live ---------------------------------------------------------------------------------------


def test_a_large_run_uses_several_connections_and_publishes_what_one_connection_does(
        work_dir, sshd, client_key, server_library):
    _library(server_library)
    many = write_config(work_dir, sshd, client_key[0], state=work_dir / "many", streams=4,
                        report=False)
    before = _logins(sshd)
    result = sync(many)
    assert result.returncode == 0, result.stderr
    # the run's own connection (which carries the first stream) and three streams
    assert _logins(sshd) - before == 1 + 3
    assert "4 stream(s) fetched" in result.stderr and "(4 of 4 ended well)" in result.stderr

    one = write_config(work_dir, sshd, client_key[0], state=work_dir / "one", streams=1,
                       report=False)
    before = _logins(sshd)
    single = sync(one)
    assert single.returncode == 0, single.stderr
    assert _logins(sshd) - before == 1 and "stream" not in single.stderr

    expected = _contents(server_library)
    assert len(expected) == len(LARGE) + 1
    assert _contents(published(work_dir / "many")) == expected
    assert _contents(published(work_dir / "one")) == expected
    assert snapshot_problems(published(work_dir / "many")) == []
    assert snapshot_problems(published(work_dir / "one")) == []


def test_a_small_run_keeps_one_connection(work_dir, sshd, client_key, server_library):
    _file(server_library / "small" / "small.iso", random_bytes(3 * MB, 7))
    _file(server_library / "other" / "other.iso", random_bytes(2 * MB, 8))
    config = write_config(work_dir, sshd, client_key[0], streams=4, report=False)
    before = _logins(sshd)
    result = sync(config)
    assert result.returncode == 0, result.stderr
    assert _logins(sshd) - before == 1 and "stream" not in result.stderr


def test_a_killed_stream_is_made_good_by_the_normal_pass_and_the_limit_is_shared(
        work_dir, sshd, client_key, server_library):
    _library(server_library)
    # 16 MiB/s for the run: 4 MiB/s for each of four streams (a share of 26 MiB takes 6 s).
    config = write_config(work_dir, sshd, client_key[0], streams=4, report=False,
                          bandwidth_limit="16M")
    process = _start_sync(config)
    try:
        running = wait_for(lambda: (found := _stream_processes(process.pid)) and
                           len(found) == 4 and found, timeout=60, what="four rsync streams")
        assert all("--bwlimit=4096" in argv for _, argv in running)  # 4 x 4096 KiB/s = 16 MiB/s
        victim = next(child for child in _descendants(running[0][0])
                      if Path(f"/proc/{child}/comm").read_text().strip() == "ssh")
        wait_for(lambda: _partial_bytes(work_dir / "state") > MB, timeout=30,
                 what="a stream mid-file")
        os.kill(victim, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert re.search(r"stream \d of 4 \(\d+ file\(s\), [\d.]+ MB\) stopped: .*the normal pass "
                     r"fetches what it left", stderr), stderr
    assert "(3 of 4 ended well)" in stderr
    assert _contents(published(work_dir / "state")) == _contents(server_library)
    assert snapshot_problems(published(work_dir / "state")) == []


def _partial_bytes(state: Path) -> int:
    """Bytes written so far into rsync's temporary files anywhere in the staging tree."""
    total = 0
    for path in (state / "staging").rglob(".*"):
        if path.is_file():
            total += path.stat().st_size
    return total


@pytest.mark.parametrize("count", [3])
def test_streams_go_through_the_server_roles_dispatcher(work_dir, client_key, count):
    library = work_dir / "library"
    library.mkdir(mode=0o755)
    _library(library)
    key, pub = client_key
    server = harness.start_server_role(work_dir / "origin", library, sites={"paris": pub})
    try:
        config = write_config(work_dir, server, key, streams=count, report=False)
        before = _logins(server)
        result = sync(config)
        assert result.returncode == 0, result.stderr
        assert _logins(server) - before == count  # the first stream is the run's connection
        assert f"({count} of {count} ended well)" in result.stderr
        assert _contents(published(work_dir / "state")) == _contents(library)
        assert snapshot_problems(published(work_dir / "state")) == []
    finally:
        server.stop()
