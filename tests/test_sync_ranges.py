"""A large new file in byte ranges over several connections (sync/ranges.py, server/ranges.py),
against a real sshd, the server role's dispatcher and the real rsync: the server answers a
range named by the revision's digest and nothing else (no path of the client's, no link, no
byte past the file); a run with one large new file spreads it over sync.streams connections
(counted at the server) and publishes it byte for byte; pieces that hash wrong are repaired by
the normal pass as differences; a server without ranges (rrsync alone: a release before them)
gets the file whole; an upstream without a revision document (the Docker original) gets no
range request at all. A stream that ends first takes over the second half of another's piece,
whose server stops where the site says (format 2): every byte crosses once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.server import ranges as server_ranges
from library_syncer.server import trace
from library_syncer.sync import basis, ranges, rsync, ssh, streams
from library_syncer.sync.retry import Transfer
from tests.fleet.checks import snapshot_problems
from tests.harness import sshd as harness
from tests.harness.wait import wait_for
from tests.test_sync_faults import _descendants, _start_sync
from tests.test_sync_helpers import cli, published, random_bytes, sha256, write_config
from tests.test_sync_trace import _declare, _disk

MB = 1 << 20


def _debug_sync(config: Path) -> subprocess.CompletedProcess:
    return cli("--debug", "sync", "--config", str(config))


def _cut(size: int, path: str = "big/big.vmdk") -> ranges.Cut:
    return ranges.Cut(path, size, 1, "0" * 64)


def _listing(files: dict[str, int]) -> list[basis.Listed]:
    return basis.parse_listing(f">f+++++++++ {size} {path}" for path, size in files.items())


# --- the plan ------------------------------------------------------------------------------------


def test_one_large_new_file_is_cut_into_one_piece_per_stream():
    cut = _cut(128 * MB)
    shares = streams.plan(_listing({cut.path: cut.size}), 4, {cut.path: cut})
    assert len(shares) == 4 and all(not s.paths for s in shares)
    pieces = sorted((p for s in shares for p in s.pieces), key=lambda p: p.offset)
    assert [(p.offset, p.length) for p in pieces] == [(i * 32 * MB, 32 * MB) for i in range(4)]
    assert streams.plan(_listing({cut.path: cut.size}), 4) == []  # not cut: one connection


def test_pieces_cover_the_file_exactly_beside_whole_files():
    cut = _cut(100 * MB + 12345)
    listed = _listing({cut.path: cut.size, "a/a.vmdk": 30 * MB, "b/b.vmdk": 20 * MB})
    shares = streams.plan(listed, 4, {cut.path: cut})
    assert sorted(p for s in shares for p in s.paths) == ["a/a.vmdk", "b/b.vmdk"]
    pieces = sorted((p for s in shares for p in s.pieces), key=lambda p: p.offset)
    assert pieces[0].offset == 0 and sum(p.length for p in pieces) == cut.size
    assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(pieces))
    assert max(s.size for s in shares) - min(s.size for s in shares) <= 20 * MB


def test_only_new_files_without_a_basis_are_cut():
    listed = basis.parse_listing([
        ">f+++++++++ 40000000 new/new.vmdk", ">f.st...... 40000000 changed/changed.vmdk",
        ">f+++++++++ 40000000 seeded/seeded.vmdk", ">f+++++++++ 30000000 small/small.vmdk"])
    found = ranges.candidates(listed, {"seeded/seeded.vmdk"})
    assert [f.path for f in found] == ["new/new.vmdk"]
    long_name = "x" * (ranges.MAX_NAME + 1)  # its temporary file's name would not fit
    assert ranges.candidates(basis.parse_listing([f">f+++++++++ 40000000 i/{long_name}"]),
                             set()) == []


# --- the server's answer ------------------------------------------------------------------------


@contextlib.contextmanager
def _origin(work_dir: Path, client_key, mib: int, seed: int, item: str = "big"):
    """The server role over a declared library of one disk of `mib` MiB: (server, library,
    disk, the site's key)."""
    library = work_dir / "library"
    library.mkdir(mode=0o755)
    disk = _disk(library, item, random_bytes(mib * MB, seed))
    _declare(work_dir, library)
    key, pub = client_key
    server = harness.start_server_role(work_dir / "origin", library, sites={"paris": pub})
    try:
        yield server, library, disk, key
    finally:
        server.stop()


@pytest.fixture
def origin(work_dir, client_key):
    with _origin(work_dir, client_key, 40, 7) as found:
        yield found


def _ask(work_dir: Path, server, key: Path, request: str, said: bytes = b""
         ) -> subprocess.CompletedProcess:
    """The answer to `request`, the site saying `said` on stdin."""
    config = write_config(work_dir, server, key)
    sync_config = config_module.load(config).sync
    return subprocess.run(ssh.argv(sync_config, ["-T", sync_config.peer, request]),
                          input=said, capture_output=True, timeout=60)


@pytest.mark.parametrize("said, end", [
    (b"end {cut}\n", 30 * MB),  # stops where the site says
    (b"noise\nend x\nend {cut}\nend {later}\n", 30 * MB),  # the lowest end said counts
    (b"end {past}\n", 40 * MB),  # an end past the range changes nothing
    (b"", 40 * MB),  # nothing said: the whole range
])
def test_a_range_of_format_2_stops_where_the_site_says(origin, work_dir, said, end):
    server, _, disk, key = origin
    request = f"library-syncer-range 2 {sha256(disk)} 0 {40 * MB}"
    got = _ask(work_dir, server, key, request,
               said.replace(b"{cut}", b"%d" % (30 * MB)).replace(b"{later}", b"%d" % (35 * MB))
               .replace(b"{past}", b"%d" % (50 * MB)))
    assert got.returncode == 0, got.stderr
    assert got.stdout == disk.read_bytes()[:end]


def test_the_piece_with_most_left_is_halved_and_its_server_told(tmp_path):
    cut = _cut(64 * MB)
    read, write = os.pipe()
    board = ranges.Board()
    first = ranges.Running(ranges.Piece(cut, 0, 32 * MB), write)
    second = ranges.Running(ranges.Piece(cut, 32 * MB, 32 * MB), write)
    old = ranges.Running(ranges.Piece(cut, 0, 64 * MB))  # format 1: its range cannot be shortened
    first.position, second.position = 30 * MB, 40 * MB
    for running in (first, second, old):
        board.add(running)
    taken = board.take()
    assert taken == ranges.Piece(cut, 52 * MB, 12 * MB) and second.end == 52 * MB
    assert os.read(read, 100) == b"end %d\n" % (52 * MB)
    again = board.take()  # 12 MiB left: split again
    assert again == ranges.Piece(cut, 46 * MB, 6 * MB) and second.end == 46 * MB
    assert board.take() is None  # 6 MiB and 2 MiB left: not worth a session
    assert (first.end, board.taken) == (32 * MB, 2)
    os.close(read)
    os.close(write)


def test_a_stream_that_ends_first_takes_over_the_rest_of_another_ones_piece(
        work_dir, client_key, caplog):
    """Two streams at 8 MiB/s each: one fetches a small file and is done in a moment, the other
    has a 48 MiB piece; the first takes over the second half of what is left."""
    with _origin(work_dir, client_key, 48, 31) as (server, library, disk, key):
        _disk(library, "small", random_bytes(MB, 32))
        _declare(work_dir, library)
        sync = config_module.load(write_config(work_dir, server, key, report=False,
                                               bandwidth_limit="16M")).sync
        revision = trace.read(library)
        assert revision is not None and revision.content is not None
        rel = "big/big.vmdk"
        cut = ranges.Cut(rel, *revision.files[rel], revision.content.files[rel].sha256)
        shares = [streams.Share((), cut.size, (ranges.Piece(cut, 0, cut.size),)),
                  streams.Share(("small/small.vmdk",), MB)]
        tree = work_dir / "staging"
        tree.mkdir()
        done = Transfer()
        with caplog.at_level(logging.INFO, logger="library-syncer"):
            well = streams.fetch(sync, tree, [], shares, rsync.PeerOptions(sync), done,
                                 take_over=True)
    assert well == 2, caplog.text
    assert "1 of 1 file(s) in ranges verified" in caplog.text
    assert re.search(r"; [1-9]\d* range\(s\) taken over", caplog.text), caplog.text
    assert sha256(tree / rel) == sha256(disk)
    assert os.stat(tree / rel).st_mtime_ns == cut.mtime_ns
    assert cut.size + MB <= done.bytes_received < cut.size + 2 * MB  # each byte once


def test_the_server_sends_exactly_the_range_of_the_file_the_digest_names(origin, work_dir):
    server, _, disk, key = origin
    digest = sha256(disk)
    got = _ask(work_dir, server, key, f"library-syncer-range 1 {digest} {5 * MB} {MB + 3}")
    assert got.returncode == 0, got.stderr
    assert got.stdout == disk.read_bytes()[5 * MB:6 * MB + 3]


@pytest.mark.parametrize("words, said", [
    ("{other} 0 10", "holds no file with that digest"),
    ("{digest} {size} 1", "past the file's end"),
    ("{digest} 0 {more}", "past the file's end"),
    ("{digest} -1 10", "decimal numbers"),
    ("../../etc/passwd 0 10", "lower-case SHA-256"),
])
def test_the_server_refuses_what_the_revision_does_not_hold(origin, work_dir, words, said):
    server, _, disk, key = origin
    request = "library-syncer-range 1 " + words.format(
        other="a" * 64, digest=sha256(disk), size=disk.stat().st_size,
        more=disk.stat().st_size + 1)
    got = _ask(work_dir, server, key, request)
    assert got.returncode == 1 and got.stdout == b""
    assert said in got.stderr.decode()


def test_the_server_never_follows_a_link_nor_sends_a_file_that_changed(origin, work_dir):
    server, _, disk, key = origin
    digest = sha256(disk)
    secret = work_dir / "secret.vmdk"
    secret.write_bytes(disk.read_bytes())
    os.rename(disk, work_dir / "moved.vmdk")
    disk.symlink_to(secret)  # the declared path now a link out of the library
    got = _ask(work_dir, server, key, f"library-syncer-range 1 {digest} 0 10")
    assert got.returncode == 1 and got.stdout == b"" and b"a link" in got.stderr
    disk.unlink()
    disk.write_bytes(b"shorter")
    got = _ask(work_dir, server, key, f"library-syncer-range 1 {digest} 0 5")
    assert got.returncode == 1 and b"changed since the revision" in got.stderr


def test_the_server_refuses_a_revision_naming_a_path_out_of_the_library(tmp_path):
    with pytest.raises(server_ranges.RangeRefused, match="outside the library"):
        server_ranges.open_inside(tmp_path, "../etc/passwd")
    with pytest.raises(server_ranges.RangeRefused, match="outside the library"):
        server_ranges.open_inside(tmp_path, ".library-syncer/statement")


# --- a run --------------------------------------------------------------------------------------


def _logins(server: harness.Sshd) -> int:
    return server.log().count("Accepted publickey")


def test_a_large_new_file_crosses_in_ranges_over_several_connections(work_dir, client_key):
    with _origin(work_dir, client_key, 80, 11) as (server, _, disk, key):
        config = write_config(work_dir, server, key, streams=4, report=False)
        before = _logins(server)
        result = _debug_sync(config)
        assert result.returncode == 0, result.stderr
        # the run's connection (which carries the first piece) and one per other piece
        assert _logins(server) - before == 1 + 3
        assert "1 of 1 file(s) in ranges verified" in result.stderr
        out = published(work_dir / "state")
        assert sha256(out / "big" / "big.vmdk") == sha256(disk)
        assert (out / "big" / "big.vmdk").stat().st_mtime_ns == disk.stat().st_mtime_ns
        assert snapshot_problems(out) == []
        assert not list(out.rglob(ranges.TEMP_PREFIX + "*"))
        assert _received(result.stderr) < MB  # the normal pass found the disk done


def test_pieces_that_hash_wrong_are_made_good_by_the_normal_pass(work_dir, client_key, tmp_path):
    """A range answer altered on the way (a wrapper around ssh flips its first byte): the file
    does not verify, takes its place as a basis, and the normal pass fetches its differences."""
    wrapper = tmp_path / "flipping-ssh"
    wrapper.write_text("#!/bin/sh\n"
                       'case "$*" in *library-syncer-range*) '
                       "ssh \"$@\" | python3 -c 'import sys; d = sys.stdin.buffer.read(); "
                       "sys.stdout.buffer.write(bytes([d[0] ^ 1]) + d[1:])' ;;\n"
                       '*) exec ssh "$@" ;;\nesac\n')
    wrapper.chmod(0o755)
    with _origin(work_dir, client_key, 64, 12) as (server, _, disk, key):
        config = write_config(work_dir, server, key, streams=2, report=False, ssh=str(wrapper))
        result = _debug_sync(config)
        assert result.returncode == 0, result.stderr
        assert "do not hash to the digest the revision declares" in result.stderr
        out = published(work_dir / "state")
        assert sha256(out / "big" / "big.vmdk") == sha256(disk)
        received = _received(result.stderr)
        assert received < 16 * MB, received  # differences, not the 64 MiB again


def _received(stderr: str) -> int:
    """The normal pass's bytes received (rsync's last summary line)."""
    found = re.findall(r"rsync: sent [\d,]+ bytes  received ([\d,]+) bytes", stderr)
    return int(found[-1].replace(",", ""))


def test_a_server_without_ranges_gets_the_file_whole(work_dir, sshd, client_key, server_library):
    """rrsync alone (a release before ranges, with a revision document): every piece is
    refused, nothing is left behind, and the normal pass fetches the file whole."""
    disk = _disk(server_library, "big", random_bytes(64 * MB, 13))
    _declare(work_dir, server_library)
    key, _ = client_key
    config = write_config(work_dir, sshd, key, streams=4, report=False)
    result = _debug_sync(config)
    assert result.returncode == 0, result.stderr
    assert "range of big/big.vmdk" in result.stderr  # said, as a stream that stopped
    out = published(work_dir / "state")
    assert sha256(out / "big" / "big.vmdk") == sha256(disk)
    assert not list(out.rglob(ranges.TEMP_PREFIX + "*"))


def test_an_upstream_without_a_document_gets_no_range_request(work_dir, sshd, client_key,
                                                              server_library):
    """The Docker original: no trace folder, so the run does not even read a document."""
    disk = _disk(server_library, "big", random_bytes(64 * MB, 14))
    key, _ = client_key
    config = write_config(work_dir, sshd, key, streams=4, report=False)
    before = _logins(sshd)
    result = _debug_sync(config)
    assert result.returncode == 0, result.stderr
    assert "library-syncer-range" not in sshd.log() and "range of" not in result.stderr
    assert _logins(sshd) - before == 1
    assert sha256(published(work_dir / "state") / "big" / "big.vmdk") == sha256(disk)


def test_a_run_killed_while_ranges_arrive_leaves_the_library_whole_and_the_next_converges(
        work_dir, client_key):
    with _origin(work_dir, client_key, 2, 15, item="one") as (server, library, first, key):
        config = write_config(work_dir, server, key, streams=4, report=False)
        assert cli("sync", "--config", str(config)).returncode == 0
        state = work_dir / "state"
        held = os.readlink(state / "published")
        disk = _disk(library, "big", random_bytes(64 * MB, 16))
        _declare(work_dir, library)
        slow = write_config(work_dir, server, key, streams=4, report=False,
                            bandwidth_limit="2M")
        process = _start_sync(slow)
        temp = state / "staging" / "big" / (ranges.TEMP_PREFIX + "big.vmdk")
        wait_for(lambda: temp.exists() and temp.stat().st_blocks * 512 > 2 * MB,
                 timeout=60, what="pieces arriving")
        _kill_tree(process)
        arrived = temp.stat().st_blocks * 512
        assert os.readlink(state / "published") == held  # nothing switched
        assert sha256(published(state) / "one" / "one.vmdk") == sha256(first)
        config = write_config(work_dir, server, key, streams=4, report=False)
        result = _debug_sync(config)
        assert result.returncode == 0, result.stderr
        assert "resuming 1 file(s) from the byte ranges" in result.stderr
        run = json.loads((state / "last-run.json").read_text())
        assert run["bytes_received"] < 64 * MB - arrived + MB  # what arrived is not sent again
        out = published(state)
        assert sha256(out / "big" / "big.vmdk") == sha256(disk)
        assert not list(state.rglob(ranges.TEMP_PREFIX + "*"))
        assert snapshot_problems(out) == []


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the sync and everything it started (its ssh processes), as a crash would."""
    for pid in [process.pid, *_descendants(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)
