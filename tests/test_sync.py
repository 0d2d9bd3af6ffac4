"""`library-syncer sync` against a real sshd (forced `rrsync -ro`) with the real rsync.

Every test runs the command line as an operator would and checks the published tree: switched
to a complete new snapshot on success, exactly as it was on failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

from tests.fleet.checks import snapshot_problems
from tests.test_sync_helpers import (
    add_iso_item,
    add_ovf_item,
    items,
    last_run,
    published,
    sync,
    tree,
    write_config,
)

SUMMARY = re.compile(r"sync ok: (\d+) items \((\d+) changed\), [\d.]+ [kMG]?B received for "
                     r"[\d.]+ [kMG]?B( \(speedup \d+x\))?, library version (\d+), \d+ s")


def test_first_sync_publishes_a_complete_snapshot_and_ignores_server_manifests(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    add_ovf_item(server_library, fixtures_dir)
    add_iso_item(server_library, "tools", 3_000_000)
    # A server still running the original publishes its own (throw-away) manifests.
    (server_library / "lib.json").write_text('{"name": "server", "id": "bogus"}')
    (server_library / "items.json").write_text('{"items": []}')
    (server_library / "tools" / "item.json").write_text('{"id": "bogus"}')
    (server_library / "index.html").write_text("<p>server page</p>")
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"

    result = sync(config)

    assert result.returncode == 0, result.stderr
    match = SUMMARY.search(result.stderr)
    assert match, result.stderr
    assert match.group(1) == "2" and match.group(2) == "2"
    snap = published(state)
    assert snap.parent == state / "snapshots"
    assert snapshot_problems(snap) == []
    lib = json.loads((snap / "lib.json").read_text())
    assert lib["name"] == "Test library" and lib["id"] != "bogus"
    assert set(items(snap)) == {"ttylinux", "tools"}
    assert json.loads((snap / "tools" / "item.json").read_text()).get("id") != "bogus"
    assert "server page" not in (snap / "index.html").read_text() if \
        (snap / "index.html").exists() else True
    record = last_run(state)
    assert record["outcome"] == "ok" and record["exit_status"] == 0
    assert record["items"] == 2 and record["library_version"] == int(lib["version"])
    assert record["bytes_received"] > 3_000_000 and record["snapshot"] == snap.name
    assert not (state / "staging").exists()
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [snap, *snap.rglob("*")]
             if not p.name.startswith(".")}
    assert modes == {0o755, 0o644}, "the web server (another user) must read everything"


def test_unchanged_resync_links_everything_and_keeps_the_previous_snapshot(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    add_ovf_item(server_library, fixtures_dir)
    add_iso_item(server_library, "tools", 4_000_000)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    first = published(state)
    version = json.loads((first / "lib.json").read_text())["version"]
    before = tree(first)

    result = sync(config)

    assert result.returncode == 0, result.stderr
    second = published(state)
    assert second != first and first.is_dir(), "the previous snapshot is kept"
    assert tree(first) == before, "the previous snapshot was not touched"
    now = tree(second)
    for rel in ("tools/tools.iso", "ttylinux/ttylinux-pc_i486-16.1-disk1.vmdk"):
        assert now[rel][0] == before[rel][0], f"{rel} is not a hard link to the previous copy"
    assert json.loads((second / "lib.json").read_text())["version"] == version
    record = last_run(state)
    assert record["bytes_received"] < 50_000 and record["items_changed"] == []
    assert "(0 changed)" in result.stderr

    assert sync(config).returncode == 0  # a third run prunes the oldest snapshot
    assert not first.exists()
    assert sorted(p.name for p in (state / "snapshots").iterdir()) == sorted(
        [second.name, published(state).name])


def test_a_changed_file_is_delta_transferred_against_the_published_copy(
        work_dir, sshd, client_key, server_library):
    disk = add_iso_item(server_library, "big", 8 << 20, seed=3)
    add_iso_item(server_library, "small", 100_000, seed=4)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    before = tree(published(state))
    data = bytearray(disk.read_bytes())
    for offset in range(0, len(data), len(data) // 8):  # 1% changed at scattered offsets
        data[offset:offset + len(data) // 800] = os.urandom(len(data) // 800)
    disk.write_bytes(bytes(data))

    result = sync(config)

    assert result.returncode == 0, result.stderr
    snap = published(state)
    assert (snap / "big" / "big.iso").read_bytes() == bytes(data)
    assert tree(snap)["small/small.iso"][0] == before["small/small.iso"][0]
    record = last_run(state)
    assert record["bytes_received"] < 0.05 * len(data), record
    assert record["items_changed"] == ["big"] and record["files_changed"] == 1
    assert snapshot_problems(snap) == []


def test_an_item_deleted_at_the_server_disappears_at_the_client(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    add_ovf_item(server_library, fixtures_dir)
    add_iso_item(server_library, "old", 200_000)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    lib_id = json.loads((published(state) / "lib.json").read_text())["id"]
    kept_id = items(published(state))["ttylinux"]["id"]
    for path in (server_library / "old").iterdir():
        path.unlink()
    (server_library / "old").rmdir()

    result = sync(config)

    assert result.returncode == 0, result.stderr
    snap = published(state)
    assert not (snap / "old").exists()
    assert set(items(snap)) == {"ttylinux"}
    assert json.loads((snap / "lib.json").read_text())["id"] == lib_id
    assert items(snap)["ttylinux"]["id"] == kept_id, "ids continue across snapshots"
    assert last_run(state)["items_changed"] == ["old"]


def test_an_ova_item_is_published_unpacked_and_not_fetched_again(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    folder = server_library / "appliance"
    folder.mkdir(mode=0o755)
    ova = fixtures_dir / "ovf" / "ttylinux-pc_i486-16.1.ova"
    (folder / "ttylinux.ova").write_bytes(ova.read_bytes())
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"

    result = sync(config)

    assert result.returncode == 0, result.stderr
    snap = published(state)
    names = sorted(p.name for p in (snap / "appliance").iterdir())
    assert not [n for n in names if n.endswith(".ova")], names
    assert any(n.endswith(".ovf") for n in names) and any(n.endswith(".vmdk") for n in names)
    item = items(snap)["appliance"]
    assert item["type"] == "vcsp.ovf"
    assert snapshot_problems(snap) == []
    vmdk = next(n for n in names if n.endswith(".vmdk"))
    inode = (snap / "appliance" / vmdk).stat().st_ino

    result = sync(config)

    assert result.returncode == 0, result.stderr
    assert last_run(state)["bytes_received"] < 50_000, "the OVA was downloaded again"
    again = published(state)
    assert (again / "appliance" / vmdk).stat().st_ino == inode, "unpacked again"
    assert not list((again / "appliance").glob("*.ova"))
    assert last_run(state)["items_changed"] == []


def test_settings_without_a_peer_fail_with_one_line(work_dir, sshd, client_key):
    config = write_config(work_dir, sshd, client_key[0], peer="")
    result = sync(config)
    assert result.returncode == 3
    assert f"{config}: sync.peer: found nothing" in result.stderr
    assert "Traceback" not in result.stderr


def test_journal_fields_progress_notifications_and_metrics(work_dir, sshd, client_key,
                                                          server_library, caplog, monkeypatch):
    """In-process run: the summary record carries the structured fields journald gets, and
    sd_notify STATUS= messages reach a real notification socket."""
    import socket

    from library_syncer.base import config as config_module
    from library_syncer.sync import run as sync_module

    add_iso_item(server_library, "big", 6 << 20, seed=11)
    prom = work_dir / "metrics" / "library_syncer.prom"
    prom.parent.mkdir()
    config = config_module.load(write_config(work_dir, sshd, client_key[0], metrics=prom,
                                             bandwidth_limit="2500"))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(work_dir / "notify"))
    notify.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(work_dir / "notify"))
    caplog.set_level("INFO")

    record = sync_module.run(config)

    assert record.error is None and record.outcome == "ok"
    summary = [r for r in caplog.records if getattr(r, "fields", None)]
    assert len(summary) == 1 and summary[0].getMessage().startswith("sync ok: 1 item (1 changed)")
    fields = summary[0].fields
    assert fields["RUN_ID"] == record.run_id and fields["OUTCOME"] == "ok"
    assert int(fields["BYTES_RECEIVED"]) > 6 << 20 and fields["FILES_CHANGED"] == 1
    assert fields["ITEMS_CHANGED"] == 1
    assert fields["LIBRARY_VERSION"] == record.library_version > 10**15  # a time, in µs
    assert float(fields["DURATION"]) > 1 and fields["SPEEDUP"]
    messages = []
    while True:
        try:
            messages.append(notify.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            break
    notify.close()
    assert "STATUS=connecting" in messages
    assert any(m.startswith("STATUS=transferring: ") and "%" in m for m in messages), messages
    assert messages[-1].startswith("STATUS=sync ok: ")
    text = prom.read_text()
    assert 'library_syncer_last_run_outcome{outcome="ok"} 1' in text
    assert f"library_syncer_library_version {record.library_version}\n" in text
    assert f"library_syncer_last_run_bytes_received {record.bytes_received}" in text


def test_a_broken_item_is_left_out_and_the_rest_is_published(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    folder = add_ovf_item(server_library, fixtures_dir, "broken")
    disk = folder / "ttylinux-pc_i486-16.1-disk1.vmdk"
    data = bytearray(disk.read_bytes())
    data[1000] ^= 0xFF  # the .mf digest no longer matches
    disk.write_bytes(bytes(data))
    add_iso_item(server_library, "tools", 100_000)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"

    result = sync(config)

    assert result.returncode == 6, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("library-syncer: ") and "'broken'" in last, last
    snap = published(state)
    assert set(items(snap)) == {"tools"}
    # the unlisted folder's files stay (vCenter never sees them); everything listed is sound
    assert [p for p in snapshot_problems(snap) if "/broken/" not in p] == []
    record = last_run(state)
    assert record["outcome"] == "verify" and record["snapshot"] == snap.name
    assert record["last_success"] == record["finished"]


def test_an_ova_with_a_link_inside_is_refused_and_never_published(
        work_dir, sshd, client_key, server_library):
    folder = server_library / "evil"
    folder.mkdir(mode=0o755)
    with tarfile.open(folder / "evil.ova", "w") as archive:
        link = tarfile.TarInfo("evil.ovf")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        archive.addfile(link)
    os.chmod(folder / "evil.ova", 0o644)
    add_iso_item(server_library, "tools", 10_000)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"

    result = sync(config)

    assert result.returncode == 6, result.stderr
    assert "'evil' left out" in result.stderr and "link" in result.stderr
    snap = published(state)
    assert set(items(snap)) == {"tools"}
    assert not list(snap.rglob("*.ova")) and not (snap / "evil" / "evil.ovf").exists()


def test_sync_against_the_real_server_role_with_links_in_the_library(
        work_dir, client_key, server_library, fixtures_dir):
    """The server as `library-syncer server render/authorize` configures it; a symlink in the
    server's library (pointing outside it) is neither followed nor copied."""
    from tests.harness import sshd as sshd_harness

    add_ovf_item(server_library, fixtures_dir)
    outside = work_dir / "outside"
    outside.mkdir(mode=0o755)
    (outside / "secret.txt").write_text("secret")
    (server_library / "ttylinux" / "escape.txt").symlink_to(outside / "secret.txt")
    server = sshd_harness.start_server_role(work_dir / "role", server_library,
                                            sites={"paris": client_key[1]})
    try:
        config = write_config(work_dir, server, client_key[0])
        result = sync(config)
    finally:
        server.stop()

    assert result.returncode == 0, result.stderr
    snap = published(work_dir / "state")
    assert set(items(snap)) == {"ttylinux"}
    assert not (snap / "ttylinux" / "escape.txt").exists()
    assert not (snap / "ttylinux" / "escape.txt").is_symlink()
    assert "not transferred" in result.stderr


def test_an_emptied_server_library_is_not_published_unless_allowed(
        work_dir, sshd, client_key, server_library, fixtures_dir):
    add_ovf_item(server_library, fixtures_dir)
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    before = tree(state / "published")
    for path in sorted(server_library.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()

    refused = sync(config)

    assert refused.returncode == 6, refused.stderr
    assert "--allow-empty" in refused.stderr.splitlines()[-1]
    assert "sync failed (verify)" in refused.stderr
    assert tree(state / "published") == before
    allowed = sync(config, "--allow-empty")
    assert allowed.returncode == 0, allowed.stderr
    assert items(published(state)) == {}


def _logins(sshd) -> int:
    return sshd.log().count("Accepted publickey for")


def test_a_run_makes_one_ssh_handshake_and_leaves_no_master_behind(
        work_dir, sshd, client_key, server_library):
    add_iso_item(server_library, "tools", 2_000_000)
    runtime = work_dir / "run"
    shared = write_config(work_dir, sshd, client_key[0])
    before = _logins(sshd)
    result = sync(shared)
    assert result.returncode == 0, result.stderr
    # the dry run, the transfer and the report were sessions of one authenticated connection
    assert _logins(sshd) - before == 1, sshd.log()[-3000:]
    assert not list(runtime.glob("ssh-*")), "the run's control directory outlived it"
    masters = [line for line in _ps() if "ControlMaster=yes" in line and f"-p {sshd.port} " in line]
    assert masters == []

    add_iso_item(server_library, "tools", 2_000_000, seed=2)  # something to fetch again
    separate = write_config(work_dir, sshd, client_key[0], share_connection=False)
    before = _logins(sshd)
    assert sync(separate).returncode == 0
    # without sharing: the declaration read, the dry run, the pull and the report (refused by
    # this plain rrsync server, quietly) each log in
    assert _logins(sshd) - before == 4


def _ps() -> list[str]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                    out.append(handle.read().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return out


def test_paths_with_spaces_and_percent_signs_reach_ssh_intact(work_dir, sshd, client_key,
                                                              server_library):
    """ssh splits a `-o` file value on whitespace (UserKnownHostsFile takes a list) and expands
    %-tokens in file options, -i and -S: the key, known_hosts and the control socket live in
    folders named with both, and the run still verifies the host and shares one connection."""
    add_iso_item(server_library, "tools", 1_000_000)
    odd = work_dir / "site a%h b"
    (odd / "client-ssh").mkdir(parents=True)
    key = odd / "client-ssh" / "id %r key"
    key.write_bytes(client_key[0].read_bytes())
    key.chmod(0o600)
    config = write_config(odd, sshd, key)
    runtime = Path(tempfile.mkdtemp(prefix="ls %C "))  # short: a socket path has 107 bytes
    try:
        text = config.read_text().replace(f'runtime_dir = "{odd / "run"}"',
                                          f'runtime_dir = "{runtime}"')
        config.write_text(text)
        before = _logins(sshd)
        result = sync(config)
        assert result.returncode == 0, result.stderr
        assert _logins(sshd) - before == 1, result.stderr  # the master's socket was found
        assert set(items(published(odd / "state"))) == {"tools"}
        (odd / "client-ssh" / "known_hosts").write_text("")  # the host is no longer known
        refused = sync(config)
        assert refused.returncode == 8, refused.stderr  # checked against that very file
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
