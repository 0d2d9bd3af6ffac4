"""The faults of issue 3, each against the real sshd/rrsync/rsync: the published tree is either
untouched or switched to a complete snapshot, and the next run recovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fleet.checks import snapshot_problems
from tests.harness import sshd as sshd_harness
from tests.harness.net import free_port
from tests.harness.wait import wait_for
from tests.test_sync_helpers import (
    REPO,
    add_iso_item,
    add_ovf_item,
    cli,
    items,
    last_run,
    published,
    random_bytes,
    sync,
    tree,
    write_config,
)


def _start_sync(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "library_syncer", "sync", "--config",
                             str(config), *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _temp_size(folder: Path) -> int:
    """Bytes rsync has written so far into its temp file (".name.XXXXXX") in `folder`."""
    sizes = [p.stat().st_size for p in folder.glob(".*") if p.is_file()] if folder.is_dir() \
        else []
    return max(sizes, default=0)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _descendants(pid: int) -> list[int]:
    found = _children(pid)
    for child in list(found):
        found += _descendants(child)
    return found


def _published_state(state: Path) -> tuple[str, dict]:
    return os.readlink(state / "published"), tree(state / "published")


def test_a_connection_killed_mid_transfer_resumes_without_resending(
        work_dir, sshd, client_key, server_library):
    add_iso_item(server_library, "small", 100_000)
    config = write_config(work_dir, sshd, client_key[0], bandwidth_limit="3000")
    state = work_dir / "state"
    assert sync(config).returncode == 0
    before = _published_state(state)
    size = 24 << 20
    add_iso_item(server_library, "big", size, seed=7)

    process = _start_sync(config, "--no-retry")
    wait_for(lambda: _temp_size(state / "staging" / "big") > 6 << 20, timeout=30,
             what="6 MB to arrive")
    for pid in _descendants(sshd.process.pid):  # the session's processes: the link dies
        os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 5, stderr
    assert "not retried" in stderr
    assert _published_state(state) == before, "the published tree changed"
    partial = state / "staging" / "big" / ".rsync-partial" / "big.iso"
    arrived = partial.stat().st_size
    assert arrived > 6 << 20

    config = write_config(work_dir, sshd, client_key[0])  # full speed now
    result = sync(config)

    assert result.returncode == 0, result.stderr
    received = last_run(state)["bytes_received"]
    resent = received - (size - arrived)
    assert resent < 0.10 * arrived, f"re-sent {resent} of {arrived} bytes already there"
    snap = published(state)
    assert (snap / "big" / "big.iso").read_bytes() == random_bytes(size, 7)
    assert not list(snap.rglob(".rsync-partial")), "partial dirs were published"
    assert snapshot_problems(snap) == []


def test_server_down_is_retried_then_fails_with_a_clear_line_and_the_next_run_works(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    add_ovf_item(server_library, fixtures_dir)
    config = write_config(work_dir, sshd, client_key[0], retry_budget="4s")
    state = work_dir / "state"
    assert sync(config).returncode == 0
    before = _published_state(state)
    add_iso_item(server_library, "new", 50_000)
    sshd.stop()
    try:
        started = time.monotonic()
        result = sync(config)
        took = time.monotonic() - started
    finally:
        sshd.start()

    assert result.returncode == 5, result.stderr
    assert result.stderr.count("retrying in") >= 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("library-syncer: ") and "Connection refused" in last
    assert "attempts" in last and "Traceback" not in result.stderr
    assert took < 30
    assert _published_state(state) == before
    assert last_run(state)["outcome"] == "network" and last_run(state)["exit_status"] == 5

    assert sync(config).returncode == 0
    assert "new" in items(published(state))


def test_a_wrong_port_fails_with_the_network_status(work_dir, sshd, client_key):
    config = write_config(work_dir, sshd, client_key[0], port=free_port())
    result = sync(config)
    assert result.returncode == 5
    assert "Connection refused" in result.stderr and "(not retried)" in result.stderr
    assert not (work_dir / "state" / "published").exists()


def test_a_changed_host_key_is_refused_and_nothing_is_touched(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    add_ovf_item(server_library, fixtures_dir)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    before = _published_state(state)
    record = last_run(state)
    known_hosts = (work_dir / "client-ssh" / "known_hosts").read_text()
    add_iso_item(server_library, "new", 50_000)
    sshd.stop()
    for key in sshd.dir.glob("ssh_host_ed25519_key*"):
        key.unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(sshd.dir / "ssh_host_ed25519_key")], check=True)
    sshd.start()

    result = sync(config)

    assert result.returncode == 8, result.stderr
    assert "host key has CHANGED" in result.stderr.splitlines()[-1]
    assert _published_state(state) == before
    assert not (state / "staging").exists()
    assert last_run(state)["outcome"] == "host_key"
    assert last_run(state)["last_success"] == record["finished"]

    trusted = cli("trust-host", "--config", str(config), "--yes")
    assert trusted.returncode == 8 and "CHANGED" in trusted.stderr
    assert (work_dir / "client-ssh" / "known_hosts").read_text() == known_hosts


def _fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


def test_trust_host_records_only_the_expected_key(work_dir, sshd, client_key, server_library,
                                                  fixtures_dir):
    add_ovf_item(server_library, fixtures_dir)
    config = write_config(work_dir, sshd, client_key[0], known_hosts=False)
    known = work_dir / "client-ssh" / "known_hosts"
    right = _fingerprint(sshd.dir / "ssh_host_ed25519_key.pub")

    refused = sync(config)
    assert refused.returncode == 8 and "trust-host" in refused.stderr

    no_answer = cli("trust-host", "--config", str(config))  # no terminal, no flag: no
    assert no_answer.returncode == 8 and not known.exists()
    wrong = cli("trust-host", "--config", str(config), "--fingerprint",
                "SHA256:" + "A" * 43)
    assert wrong.returncode == 8 and right in wrong.stderr and not known.exists()

    ok = cli("trust-host", "--config", str(config), "--fingerprint", right)
    assert ok.returncode == 0, ok.stderr
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519 " in known.read_text()
    again = cli("trust-host", "--config", str(config), "--fingerprint", right)
    assert again.returncode == 0 and "already trusted" in again.stdout
    assert sync(config).returncode == 0


@pytest.fixture
def small_state(work_dir):
    """The state directory on a 16 MiB tmpfs (unmounted afterwards)."""
    state = work_dir / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(state)],
                   check=True)
    yield state
    subprocess.run(["umount", "-l", str(state)], check=False)


def test_disk_full_fails_cleanly_with_the_space_needed(work_dir, sshd, client_key,
                                                       server_library, fixtures_dir,
                                                       small_state):
    add_ovf_item(server_library, fixtures_dir)
    add_iso_item(server_library, "tools", 2_000_000)
    config = write_config(work_dir, sshd, client_key[0], state=small_state)
    assert sync(config).returncode == 0
    before = _published_state(small_state)
    add_iso_item(server_library, "huge", 20 << 20, seed=9)

    result = sync(config)

    assert result.returncode == 7, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "not enough disk space" in last and "20 MB" in last, last
    assert _published_state(small_state) == before
    assert snapshot_problems(published(small_state)) == []
    assert last_run(small_state)["outcome"] == "disk_full"


def test_disk_filling_up_during_the_transfer_fails_cleanly_then_resumes(
        work_dir, sshd, client_key, server_library, small_state):
    add_iso_item(server_library, "tools", 1_000_000)
    config = write_config(work_dir, sshd, client_key[0], state=small_state,
                          bandwidth_limit="2000")
    assert sync(config).returncode == 0
    before = _published_state(small_state)
    add_iso_item(server_library, "big", 8 << 20, seed=5)

    process = _start_sync(config, "--no-retry")
    wait_for(lambda: _temp_size(small_state / "staging" / "big") > 1 << 20, timeout=30,
             what="data")
    filler = small_state / "filler"
    with open(filler, "wb") as out:  # someone else fills the disk
        try:
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        except OSError:
            pass
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 7, stderr
    assert "ran out of disk space" in stderr
    assert _published_state(small_state) == before
    filler.unlink()
    result = sync(config)
    assert result.returncode == 0, result.stderr
    assert (published(small_state) / "big" / "big.iso").read_bytes() == random_bytes(8 << 20, 5)


def test_a_second_sync_refuses_while_one_runs_and_an_interrupted_run_changes_nothing(
        work_dir, sshd, client_key, server_library):
    add_iso_item(server_library, "tools", 100_000)
    config = write_config(work_dir, sshd, client_key[0], bandwidth_limit="1000")
    state = work_dir / "state"
    assert sync(config).returncode == 0
    before = _published_state(state)
    add_iso_item(server_library, "big", 8 << 20, seed=2)
    first = _start_sync(config)
    wait_for(lambda: _temp_size(state / "staging" / "big") > 0, timeout=30, what="the first run")

    second = sync(config)

    assert second.returncode == 4, second.stderr
    assert f"pid {first.pid}" in second.stderr and "another sync is running" in second.stderr
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == 130, stderr
    assert _published_state(state) == before
    assert last_run(state)["outcome"] == "interrupted"
    assert (state / "staging" / "big" / ".rsync-partial" / "big.iso").stat().st_size > 0


def test_a_reader_never_sees_a_torn_library(work_dir, sshd, client_key, server_library,
                                            fixtures_dir):
    add_ovf_item(server_library, fixtures_dir)
    add_iso_item(server_library, "a", 2_000_000, seed=1)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    seen: set[str] = set()
    problems: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            snap = published(state)
            found = snapshot_problems(snap)
            if found and snap.exists():  # a pruned snapshot is gone whole, not torn
                problems.extend(found)
            seen.add(snap.name)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round in range(4):
            add_iso_item(server_library, "a", 2_000_000 + round * 4096, seed=10 + round)
            add_iso_item(server_library, f"b{round}", 300_000, seed=20 + round)
            result = sync(config)
            assert result.returncode == 0, result.stderr
            assert json.loads((published(state) / "items.json").read_text())
    finally:
        done.set()
        thread.join()
    assert problems == []
    assert len(seen) >= 3, seen


def test_works_against_the_docker_based_original_server(work_dir, client_key, fixtures_dir):
    """The original's authorized_keys line: rrsync -ro on /syncer/library/ (here: the test's
    library), ssh options instead of `restrict`, the client pulling PEER:/."""
    library = work_dir / "syncer" / "library"
    library.mkdir(parents=True, mode=0o755)
    os.chmod(library.parent, 0o755)
    add_ovf_item(library, fixtures_dir)
    line = sshd_harness.original_rrsync_line(client_key[1], library)
    server = sshd_harness.start_sshd(work_dir / "original", authorized_lines=[line])
    try:
        config = write_config(work_dir, server, client_key[0], remote_path="/")
        result = sync(config)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    snap = published(work_dir / "state")
    assert set(items(snap)) == {"ttylinux"}
    assert snapshot_problems(snap) == []


def test_a_file_the_server_cannot_read_is_a_partial_transfer_naming_it(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    add_ovf_item(server_library, fixtures_dir)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    before = _published_state(state)
    secret = add_iso_item(server_library, "locked", 10_000)
    os.chmod(secret, 0o600)  # the server's account (not root) cannot read it

    result = sync(config)

    assert result.returncode == 10, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "could not be transferred" in last and "locked.iso" in last, last
    assert _published_state(state) == before
    os.chmod(secret, 0o644)
    assert sync(config).returncode == 0
    assert "locked" in items(published(state))


def test_a_server_back_within_the_retry_budget_completes_the_same_run(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    add_ovf_item(server_library, fixtures_dir)
    config = write_config(work_dir, sshd, client_key[0], retry_budget="30s")
    sshd.stop()
    restart = threading.Timer(2.5, sshd.start)
    restart.start()
    try:
        result = sync(config)
    finally:
        restart.join()

    assert result.returncode == 0, result.stderr
    assert "retrying in" in result.stderr
    record = last_run(work_dir / "state")
    assert record["outcome"] == "ok" and record["attempts"] >= 2
    assert f"{record['attempts']} attempts" in result.stderr
    assert set(items(published(work_dir / "state"))) == {"ttylinux"}


def test_a_link_cut_mid_transfer_is_resumed_by_the_retry_in_the_same_run(
        work_dir, sshd, client_key, server_library):
    size = 16 << 20
    add_iso_item(server_library, "big", size, seed=8)
    config = write_config(work_dir, sshd, client_key[0], bandwidth_limit="4000",
                          retry_budget="60s")
    state = work_dir / "state"
    process = _start_sync(config)
    wait_for(lambda: _temp_size(state / "staging" / "big") > 5 << 20, timeout=30, what="5 MB")
    for pid in _descendants(sshd.process.pid):
        os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=90)

    assert process.returncode == 0, stderr
    assert "attempt 1 failed" in stderr
    record = last_run(state)
    assert record["attempts"] == 2
    # the retry received only what was missing (the first attempt's bytes are not counted:
    # rsync prints no statistics when the link dies), not the whole file again
    assert record["bytes_received"] < 0.8 * size, record
    assert (published(state) / "big" / "big.iso").read_bytes() == random_bytes(size, 8)
