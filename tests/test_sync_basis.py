"""Every byte crosses the WAN once: a renamed item, a new template version published as a new item
and a cut-then-resumed transfer of one, against a real sshd (forced `rrsync -ro`) and the real
rsync. Bytes are what rsync counted on the wire (last-run.json: received + sent), and the
published snapshot a basis was linked from is checked bit for bit afterwards."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
from pathlib import Path

from tests.fleet.checks import snapshot_problems
from tests.harness.wait import wait_for
from tests.test_sync_faults import _descendants, _start_sync, _temp_size
from tests.test_sync_helpers import last_run, published, random_bytes, sync, write_config

MB = 1 << 20
DISK = 16 * MB


def _disk(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    os.chmod(path, 0o644)
    return path


def _patched(data: bytes, fraction: float, seed: int) -> bytes:
    """`data` with `fraction` of it rewritten in scattered 64 KiB runs (a patched guest disk)."""
    chunk, buffer, rng = 64 << 10, bytearray(data), random.Random(seed)
    for index in rng.sample(range(len(data) // chunk), int(len(data) * fraction / chunk)):
        buffer[index * chunk:(index + 1) * chunk] = rng.randbytes(chunk)
    return bytes(buffer)


def _digests(root: Path) -> dict[str, tuple[int, str]]:
    """Every file of a snapshot: (inode, SHA-256)."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        found[path.relative_to(root).as_posix()] = (path.stat().st_ino,
                                                    hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def _folders(snapshot: Path) -> list[str]:
    """The item folders of a snapshot (not its hidden state folder)."""
    return sorted(p.name for p in snapshot.iterdir() if p.is_dir() and not p.name.startswith("."))


def _wire(state: Path) -> int:
    record = last_run(state)
    return record["bytes_received"] + record["bytes_sent"]


def test_new_version_as_a_new_item_costs_only_its_changed_blocks(
        work_dir, sshd, client_key, server_library):
    old = random_bytes(DISK, 11)
    _disk(server_library / "ubuntu-2026-11", "ubuntu-2026-11-disk1.vmdk", old)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    before = published(state)
    kept = _digests(before)

    new = _patched(old, 0.05, seed=12)
    _disk(server_library / "ubuntu-2026-12", "ubuntu-2026-12-disk1.vmdk", new)
    result = sync(config)

    assert result.returncode == 0, result.stderr
    assert "fetched as differences from a copy this site has" in result.stderr
    wire = _wire(state)
    assert wire < 0.07 * DISK, f"{wire} bytes on the wire for a 5 % change of {DISK}"
    snap = published(state)
    assert (snap / "ubuntu-2026-12" / "ubuntu-2026-12-disk1.vmdk").read_bytes() == new
    assert snapshot_problems(snap) == []
    # the basis was a hard link to the published disk: that inode still holds the old bytes
    assert _digests(before) == kept
    assert (snap / "ubuntu-2026-11" / "ubuntu-2026-11-disk1.vmdk").read_bytes() == old


def test_a_renamed_item_costs_almost_nothing(work_dir, sshd, client_key, server_library):
    data = random_bytes(DISK, 21)
    _disk(server_library / "centos-build-41", "centos-disk1.vmdk", data)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    kept = _digests(published(state))

    (server_library / "centos-build-41").rename(server_library / "centos-7.9")
    result = sync(config)

    assert result.returncode == 0, result.stderr
    assert _wire(state) < 0.01 * DISK, last_run(state)
    snap = published(state)
    assert _folders(snap) == ["centos-7.9"]
    assert (snap / "centos-7.9" / "centos-disk1.vmdk").read_bytes() == data
    assert all(digest in kept.values() for rel, digest in _digests(
        published(state)).items() if rel.endswith(".vmdk"))


def test_a_wrong_guess_costs_little_more_than_no_guess(work_dir, sshd, client_key,
                                                       server_library):
    """Two sites fetch the same new disk, a template rebuilt from scratch under a related name:
    one has last month's disk, which the heuristics take as a basis although no block matches,
    the other has nothing to guess from."""
    _disk(server_library / "appliance-2026-11", "appliance-2026-11-disk1.vmdk",
          random_bytes(DISK, 31))
    guessing = write_config(work_dir, sshd, client_key[0], state=work_dir / "guessing")
    assert sync(guessing).returncode == 0
    shutil.rmtree(server_library / "appliance-2026-11")
    _disk(server_library / "appliance-2026-12", "appliance-2026-12-disk1.vmdk",
          random_bytes(DISK, 32))

    result = sync(guessing)
    assert result.returncode == 0, result.stderr
    assert "from appliance-2026-11/appliance-2026-11-disk1.vmdk" in result.stderr  # wrongly
    fresh = write_config(work_dir, sshd, client_key[0], state=work_dir / "fresh")
    assert sync(fresh).returncode == 0

    with_guess, without = _wire(work_dir / "guessing"), _wire(work_dir / "fresh")
    assert with_guess <= without + 0.005 * DISK, (with_guess, without)


def test_find_basis_off_fetches_a_new_version_whole(work_dir, sshd, client_key, server_library):
    old = random_bytes(4 * MB, 51)
    _disk(server_library / "photon-r1", "photon-r1.vmdk", old)
    config = write_config(work_dir, sshd, client_key[0], find_basis=False)
    state = work_dir / "state"
    assert sync(config).returncode == 0
    _disk(server_library / "photon-r2", "photon-r2.vmdk", _patched(old, 0.05, seed=52))
    result = sync(config)
    assert result.returncode == 0, result.stderr
    assert "fetched as differences" not in result.stderr
    assert last_run(state)["bytes_received"] > 4 * MB  # today's rsync alone: the whole disk


def test_a_cut_transfer_against_a_basis_resumes_and_never_touches_the_published_copy(
        work_dir, sshd, client_key, server_library):
    old = random_bytes(DISK, 41)
    _disk(server_library / "win-2026-11", "win-2026-11-disk1.vmdk", old)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    before = published(state)
    kept = _digests(before)

    # a 30 % change, sent slowly, cut once a third of it has arrived
    new = _patched(old, 0.30, seed=42)
    _disk(server_library / "win-2026-12", "win-2026-12-disk1.vmdk", new)
    slow = write_config(work_dir, sshd, client_key[0], bandwidth_limit="1000")
    process = _start_sync(slow, "--no-retry")
    wait_for(lambda: _temp_size(state / "staging" / "win-2026-12") > DISK // 3, timeout=30,
             what="a third of the new disk to be written")
    for pid in _descendants(sshd.process.pid):
        os.kill(pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert published(state) == before and _digests(before) == kept

    result = sync(config)

    assert result.returncode == 0, result.stderr
    snap = published(state)
    assert (snap / "win-2026-12" / "win-2026-12-disk1.vmdk").read_bytes() == new
    assert _digests(before) == kept  # the snapshot the basis came from, bit for bit
    assert snapshot_problems(snap) == []


def _items_listed(snap: Path) -> list[str]:
    import json

    return sorted(i["name"] for i in json.loads((snap / "items.json").read_text())["items"])


def test_include_pulls_and_publishes_only_the_named_items(work_dir, sshd, client_key,
                                                          server_library):
    for name, seed in (("ubuntu-22.04", 1), ("ubuntu-24.04", 2), ("windows-2022", 3)):
        _disk(server_library / name, f"{name}.iso", random_bytes(2 * MB, seed))
    state = work_dir / "state"
    ubuntu = write_config(work_dir, sshd, client_key[0], include=["ubuntu-*"])
    result = sync(ubuntu)

    assert result.returncode == 0, result.stderr
    snap = published(state)
    assert _folders(snap) == ["ubuntu-22.04", "ubuntu-24.04"]
    assert _items_listed(snap) == ["ubuntu-22.04", "ubuntu-24.04"]
    assert last_run(state)["bytes_received"] < 4.2 * MB  # the Windows image never crossed

    # the patterns change: the items no longer included leave the library, whole
    (state / "staging" / "ubuntu-22.04").mkdir(parents=True)  # as a failed run would leave it
    shutil.copy(snap / "ubuntu-22.04" / "ubuntu-22.04.iso", state / "staging" / "ubuntu-22.04")
    windows = write_config(work_dir, sshd, client_key[0], include=["windows-2022"])
    result = sync(windows)

    assert result.returncode == 0, result.stderr
    snap = published(state)
    assert _folders(snap) == ["windows-2022"]
    assert _items_listed(snap) == ["windows-2022"]
    assert snapshot_problems(snap) == []


def test_include_patterns_are_validated(work_dir, sshd, client_key):
    from tests.test_sync_helpers import cli

    config = write_config(work_dir, sshd, client_key[0], include=["ubuntu/*", ".hidden"])
    result = cli("config", "validate", "--config", str(config))
    assert result.returncode != 0
    assert "sync.include" in result.stderr and "Traceback" not in result.stderr
