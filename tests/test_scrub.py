"""The scrub (`sync --scrub`): every published file read against the origin's digests (or the
manifests'), and what rotted pulled again into a new snapshot by a normal run, never repaired in
place (real sshd with forced rrsync -ro, real rsync; sync/scrub.py, sync/repair.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from library_syncer.base import config as config_module
from library_syncer.host import check
from library_syncer.sync import scrub
from tests.test_sync_helpers import (
    cli,
    last_run,
    published,
    random_bytes,
    sha256,
    sync,
    write_config,
)
from tests.test_sync_signed import signed_site  # noqa: F401 - the fixture
from tests.test_sync_trace import _declare, _disk

MB = 1 << 20
DISK = "ubuntu/ubuntu.vmdk"


def _scrub(config: Path, env: dict | None = None) -> object:
    return cli("sync", "--scrub", "--config", str(config), env=env, timeout=300)


def _flip(path: Path, offset: int) -> None:
    """Rot: one byte of a published file changed in place, its size and times kept (what a bad
    sector looks like to everything but a reader of the bytes)."""
    st = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _site(work_dir: Path, sshd, client_key, server_library: Path, *, traced: bool = True,
          disk: int = 4 * MB, **settings) -> tuple[Path, Path]:
    """A site that published the server's library (a disk and an ISO); its settings, state."""
    _disk(server_library, "ubuntu", random_bytes(disk, 1))
    iso = server_library / "tools" / "tools.iso"
    iso.parent.mkdir(mode=0o755)
    iso.write_bytes(random_bytes(MB, 2))
    if traced:
        assert _declare(work_dir, server_library) == 1
    metrics = work_dir / "site.prom"
    config = write_config(work_dir, sshd, client_key[0], metrics=metrics, **settings)
    state = work_dir / "state"
    result = sync(config)
    assert result.returncode == 0, result.stderr
    return config, state


def _record(state: Path) -> dict:
    return json.loads((state / "scrub.json").read_text())


def _metrics(work_dir: Path) -> dict[str, float]:
    lines = (work_dir / "site.prom").read_text().splitlines()
    return {line.split()[0]: float(line.split()[1]) for line in lines
            if line.startswith("library_syncer_scrub_")}


def test_a_flipped_byte_is_found_and_pulled_again_into_a_new_snapshot(
        work_dir, sshd, client_key, server_library):
    size = 64 * MB
    config, state = _site(work_dir, sshd, client_key, server_library, disk=size)
    old = published(state)
    rotted = old / DISK
    _flip(rotted, 40 * MB + 12345)
    before = os.stat(rotted)

    result = _scrub(config)

    assert result.returncode == 14, result.stderr  # found and repaired
    assert f"1 rotted ({DISK})" in result.stderr and "pulling them again" in result.stderr
    new = published(state)
    assert new.name != old.name  # a new snapshot, switched as for any run
    assert sha256(new / DISK) == sha256(server_library / DISK)
    assert os.stat(new / DISK).st_ino != before.st_ino
    # the published inode was never written (only linked, as every run links its files): the
    # old snapshot still holds the rot
    after = os.stat(rotted)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
        (before.st_ino, before.st_size, before.st_mtime_ns)
    assert sha256(rotted) != sha256(server_library / DISK)
    # only the differing blocks crossed
    run = last_run(state)
    assert run["outcome"] == "ok" and run["snapshot"] == new.name
    assert run["bytes_received"] < size // 4, run["bytes_received"]
    record = _record(state)
    assert record["rotted"] == [DISK] and record["repair"] == "repaired"
    assert record["repair_snapshot"] == new.name and record["unrepaired"] == []
    assert record["files"] == 2 and record["bytes"] == size + MB
    assert record["reference"] == "revision 1 of hq and the manifests' digests"
    assert not (state / "repair.json").exists()
    figures = _metrics(work_dir)
    assert figures["library_syncer_scrub_rotted_files"] == 1
    assert figures["library_syncer_scrub_repair_pending_files"] == 0
    assert figures["library_syncer_scrub_files_checked"] == 2
    scrubbed = check.check_scrub(config_module.load(config))
    assert [r.status for r in scrubbed] == [check.WARN], scrubbed
    assert "1 rotted file(s), repaired in snapshot" in scrubbed[0].message

    again = _scrub(config)  # the next scrub finds the library whole
    assert again.returncode == 0, again.stderr
    assert published(state).name == new.name


def test_a_clean_library_reports_nothing_rotted_and_publishes_nothing(
        work_dir, sshd, client_key, server_library):
    config, state = _site(work_dir, sshd, client_key, server_library)
    before = os.readlink(state / "published")
    run_before = last_run(state)

    result = _scrub(config)

    assert result.returncode == 0, result.stderr
    assert "nothing rotted" in result.stderr
    assert os.readlink(state / "published") == before
    assert last_run(state) == run_before  # no run
    record = _record(state)
    assert (record["rotted"], record["repair"], record["files"]) == ([], "none", 2)
    assert record["unverified"] == 0  # the manifests and the page are not counted
    figures = _metrics(work_dir)
    assert figures["library_syncer_scrub_rotted_files"] == 0
    assert figures["library_syncer_scrub_bytes_read"] == 5 * MB
    assert figures["library_syncer_scrub_last_run_timestamp_seconds"] > time.time() - 60
    scrubbed = check.check_scrub(config_module.load(config))
    assert [r.status for r in scrubbed] == [check.OK], scrubbed
    assert "nothing rotted (2 files" in scrubbed[0].message


def test_a_repair_run_that_dies_or_fails_leaves_the_list_for_the_next_run(
        work_dir, sshd, client_key, server_library):
    config, state = _site(work_dir, sshd, client_key, server_library)
    old = os.readlink(state / "published")
    _flip(published(state) / DISK, 1000)

    # killed inside the repair run, after the manifests: nothing published, the list kept
    result = _scrub(config, env={"LIBRARY_SYNCER_CRASH_AT": "manifests"})
    assert result.returncode != 0
    assert os.readlink(state / "published") == old
    assert json.loads((state / "repair.json").read_text())["paths"] == [DISK]
    assert _record(state)["repair"] == "pending"
    pending = check.check_scrub(config_module.load(config))
    assert [r.status for r in pending] == [check.FAIL]
    assert "1 rotted file(s) wait to be pulled again" in pending[0].message

    # the repair run cannot reach the server: exit 15, the list kept
    unreachable = write_config(work_dir, sshd, client_key[0], port=1,
                               metrics=work_dir / "site.prom")
    result = _scrub(unreachable)
    assert result.returncode == 15, result.stderr
    assert "1 rotted published file(s) not repaired yet" in result.stderr
    assert _record(state)["repair"] == "failed"
    assert json.loads((state / "repair.json").read_text())["paths"] == [DISK]
    assert _metrics(work_dir)["library_syncer_scrub_repair_pending_files"] == 1

    # the next ordinary run pulls it again and clears the list once it published
    config = write_config(work_dir, sshd, client_key[0], metrics=work_dir / "site.prom")
    result = sync(config)
    assert result.returncode == 0, result.stderr
    assert "fetched 1 rotted file(s) again" in result.stderr
    assert sha256(published(state) / DISK) == sha256(server_library / DISK)
    assert not (state / "repair.json").exists()
    assert _scrub(config).returncode == 0


def test_an_untraced_upstream_is_checked_against_the_manifests_digests(
        work_dir, sshd, client_key, server_library):
    config, state = _site(work_dir, sshd, client_key, server_library, traced=False)
    assert not (published(state) / ".library-syncer" / "trace.json").exists()
    _flip(published(state) / "tools" / "tools.iso", 7)

    result = _scrub(config)

    assert result.returncode == 14, result.stderr
    record = _record(state)
    assert record["reference"] == "the manifests' digests"
    assert record["rotted"] == ["tools/tools.iso"] and record["repair"] == "repaired"
    assert sha256(published(state) / "tools" / "tools.iso") == \
        sha256(server_library / "tools" / "tools.iso")


def test_a_file_unpacked_from_an_ova_is_repaired_through_its_archive(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    folder = server_library / "appliance"
    folder.mkdir(mode=0o755)
    (folder / "ttylinux.ova").write_bytes(
        (fixtures_dir / "ovf" / "ttylinux-pc_i486-16.1.ova").read_bytes())
    os.chmod(folder / "ttylinux.ova", 0o644)
    _declare(work_dir, server_library)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    disk = published(state) / "appliance" / "ttylinux-pc_i486-16.1-disk1.vmdk"
    whole = sha256(disk)
    _flip(disk, 4096)

    result = _scrub(config)

    assert result.returncode == 14, result.stderr
    assert _record(state)["rotted"] == ["appliance/ttylinux-pc_i486-16.1-disk1.vmdk"]
    assert sha256(published(state) / "appliance" / disk.name) == whole
    assert "unpacked appliance/ttylinux.ova" in result.stderr


def test_a_rotted_trace_is_found_by_its_statement_and_pulled_again(
        signed_site, server_library):  # noqa: F811 - the fixture
    """Where the origin signs, the statement names trace.json's SHA-256: a flipped byte in the
    published trace.json is rot like any other (left there, every later run of a site that pins
    the origin's key would refuse the document the pull links from the published snapshot)."""
    site, _, state = signed_site
    document = published(state) / ".library-syncer" / "trace.json"
    _flip(document, 20)

    result = _scrub(site)

    assert result.returncode == 14, result.stderr
    assert "trace.json: not the document revision 1 of the statement" in result.stderr
    assert _record(state)["rotted"] == [".library-syncer/trace.json"]
    assert (published(state) / ".library-syncer" / "trace.json").read_bytes() == \
        (server_library / ".library-syncer" / "trace.json").read_bytes()
    assert sync(site).returncode == 0


def test_a_link_in_the_snapshot_is_never_followed(work_dir, tmp_path):
    snapshot = work_dir / "snapshot"
    (snapshot / "item").mkdir(parents=True)
    (snapshot / "item" / "disk.vmdk").write_bytes(b"x" * 100)
    secret = tmp_path / "secret"
    secret.write_bytes(b"y" * 100)
    (snapshot / "item" / "other.vmdk").symlink_to(secret)
    expected = scrub.Reference({"item/disk.vmdk": sha256(snapshot / "item" / "disk.vmdk"),
                                "item/other.vmdk": sha256(secret)}, frozenset(), "test")

    found = scrub.verify(snapshot, expected)

    assert (found.files, found.bytes, found.rotted) == (1, 100, [])
    assert found.unverified == ["item/other.vmdk"]


def test_the_rate_limit_holds_the_reading_back(work_dir):
    snapshot = work_dir / "snapshot"
    (snapshot / "item").mkdir(parents=True)
    (snapshot / "item" / "disk.vmdk").write_bytes(random_bytes(2 * MB, 3))
    expected = scrub.Reference({"item/disk.vmdk": sha256(snapshot / "item" / "disk.vmdk")},
                               frozenset({"item/disk.vmdk"}), "test")

    started = time.monotonic()
    found = scrub.verify(snapshot, expected, rate=4 * MB)

    assert found.bytes == 2 * MB and found.rotted == []
    assert time.monotonic() - started >= 0.45  # 2 MiB at 4 MiB/s
    (snapshot / "item" / "disk.vmdk").unlink()  # a published file gone is rot too
    assert scrub.verify(snapshot, expected).rotted == ["item/disk.vmdk"]
