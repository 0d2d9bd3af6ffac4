"""The pure parts of the sync: argv builders, rsync's statistics and exit-status meaning, the
lock, the snapshot switch and retention, the last-run record and the metrics file."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.base.errors import (
    DiskFull,
    ExitStatus,
    HostKeyError,
    LockHeld,
    NetworkError,
    PartialTransfer,
)
from library_syncer.sync import hostkeys, lock, metrics, rsync, snapshot, ssh, staging
from library_syncer.sync import last_run as state
from library_syncer.sync.last_run import RunRecord
from library_syncer.sync.layout import Layout, new_name


def _config(tmp_path: Path, **sync) -> config_module.Config:
    base = config_module.defaults(tmp_path / "library-syncer.toml")
    return replace(base, sync=replace(base.sync, peer="backup.example.org", **sync),
                   paths=replace(base.paths, state_dir=tmp_path / "state"))


def test_defaults_match_the_original_server():
    sync = config_module.defaults().sync
    assert (sync.user, sync.port, sync.remote_path) == ("syncer", 2222, "/")
    assert sync.exclude == (".vSphere-HA",)


def test_pull_argv_verifies_host_keys_and_avoids_what_rrsync_refuses(tmp_path):
    cfg = _config(tmp_path, bandwidth_limit="5M", identity_file=Path("/etc/k ey"))
    argv = rsync.pull_argv(cfg.sync, tmp_path / "staging", [tmp_path / "published"])
    assert argv[0] == "rsync" and argv[-2:] == ["backup.example.org:/", f"{tmp_path}/staging/"]
    for refused in ("-s", "--secluded-args", "--protect-args", "-k", "-K", "-L", "-l", "-a"):
        assert refused not in argv
    assert not [a for a in argv if a.startswith("-") and not a.startswith("--")
                and set(a[1:]) & set("skKL")], argv
    for wanted in ("--delete", "--partial-dir=.rsync-partial", "--bwlimit=5M", "--timeout=300",
                   f"--link-dest={(tmp_path / 'published').resolve()}",
                   "--exclude=.vSphere-HA", "--filter=H /lib.json", "--filter=H /items.json",
                   "--filter=H /*/item.json", "--compress", "--compress-choice=zstd"):
        assert wanted in argv, wanted
    remote = shlex.split(argv[argv.index("-e") + 1])  # rsync's -e quoting is shell-like here
    assert remote[:3] == ["ssh", "-p", "2222"] and 'IdentityFile="/etc/k ey"' in remote
    options = {remote[i + 1] for i, a in enumerate(remote) if a == "-o"}
    assert {"StrictHostKeyChecking=yes", "BatchMode=yes", "IdentitiesOnly=yes",
            f"UserKnownHostsFile={ssh.file_value(cfg.sync.known_hosts)}",
            "ConnectTimeout=30"} <= options
    assert [o for o in options if o.startswith("StrictHostKeyChecking=")] == [
        "StrictHostKeyChecking=yes"]  # the only host-key policy passed: checking on


def test_unlimited_bandwidth_and_no_compression_add_no_options(tmp_path):
    cfg = _config(tmp_path, bandwidth_limit="0", compress=False)
    argv = rsync.pull_argv(cfg.sync, tmp_path / "s", [], dry_run=True)
    assert not [a for a in argv if a.startswith(("--bwlimit", "--compress", "--link-dest"))]
    assert "--dry-run" in argv


def test_ipv6_peers_are_bracketed_and_host_patterns_carry_the_port(tmp_path):
    cfg = _config(tmp_path)
    cfg = replace(cfg, sync=replace(cfg.sync, peer="2001:db8::1"))
    assert rsync.source(cfg.sync) == "[2001:db8::1]:/"
    assert ssh.host_pattern(cfg.sync) == "[2001:db8::1]:2222"
    assert ssh.host_pattern(replace(cfg.sync, port=22)) == "2001:db8::1"


STATS = """\
Number of files: 5 (reg: 3, dir: 2)
Number of regular files transferred: 1
Number of deleted files: 2
Total file size: 52,428,800 bytes
Total transferred file size: 8,388,608 bytes
Literal data: 589,824 bytes
Matched data: 7,798,784 bytes
Total bytes sent: 1,234
Total bytes received: 601,002
rsync: [sender] send_files failed to open "/big/disk.vmdk": Permission denied (13)
skipping non-regular file "link"
"""


def test_statistics_and_failed_files_are_parsed():
    stats = rsync.Stats()
    for line in STATS.splitlines():
        stats.feed(line)
    assert (stats.files, stats.files_transferred, stats.files_deleted) == (5, 1, 2)
    assert stats.total_size == 52_428_800 and stats.transferred_size == 8_388_608
    assert (stats.bytes_sent, stats.bytes_received, stats.literal) == (1234, 601_002, 589_824)
    assert stats.failed_files == ["/big/disk.vmdk"] and stats.skipped == 1
    progress = rsync.parse_progress("    12,345,678  42%   10.50MB/s    0:01:23 (xfr#1, "
                                    "to-chk=3/5)")
    assert progress == rsync.Progress(12_345_678, 42, "10.50MB/s", "0:01:23")
    assert rsync.parse_progress("Number of files: 3") is None


@pytest.mark.parametrize(("code", "tail", "expected"), [
    (0, [], None),
    (24, ["file has vanished: \"/a\""], None),
    (255, ["ssh: connect to host x port 2222: Connection refused"], rsync.TransientError),
    (12, ["rsync: connection unexpectedly closed (0 bytes received so far)"],
     rsync.TransientError),
    (30, ["[receiver] io timeout after 300 seconds -- exiting"], rsync.TransientError),
    (10, [], rsync.TransientError),
    (255, ["@@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@@"], HostKeyError),
    (255, ["Host key verification failed."], HostKeyError),
    (255, ["syncer@x: Permission denied (publickey)."], NetworkError),
    (11, ["rsync: [receiver] write failed on \"/s/a\": No space left on device (28)"],
     DiskFull),
    (23, ['rsync: [sender] send_files failed to open "/a/b.vmdk": Permission denied (13)'],
     PartialTransfer),
    (12, ["rrsync error: option -L has been disabled on this server"], NetworkError),
])
def test_exit_statuses_are_classified(tmp_path, code, tail, expected):
    cfg = _config(tmp_path)
    error = rsync.classify(code, tail, rsync.Stats(), cfg.sync, needed=1000)
    if expected is None:
        assert error is None
        return
    assert type(error) is expected, error
    transient = isinstance(error, rsync.TransientError)
    assert transient == (expected is rsync.TransientError)
    if expected is PartialTransfer:
        stats = rsync.Stats()
        stats.feed(tail[0])
        listed = str(rsync.classify(code, [], stats, cfg.sync))
        assert "could not be transferred: /a/b.vmdk (" in listed, listed
        assert error.exit_status == ExitStatus.PARTIAL
    if expected is DiskFull:
        assert "1,000 bytes" in str(error)


def test_the_lock_names_its_holder(tmp_path):
    path = tmp_path / "sync.lock"
    with lock.hold(path):
        with pytest.raises(LockHeld) as refused, lock.hold(path):
            pass
        assert f"pid {os.getpid()}" in str(refused.value)
        assert refused.value.exit_status == ExitStatus.LOCKED
    with lock.hold(path):  # released
        pass


def _snapshot(layout: Layout, name: str, files: dict[str, bytes]) -> None:
    layout.staging.mkdir()
    for rel, data in files.items():
        (layout.staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (layout.staging / rel).write_bytes(data)
    snapshot.publish(layout, name)


def test_publish_switches_atomically_and_prune_keeps_the_previous(tmp_path):
    layout = Layout(tmp_path / "state")
    layout.prepare()
    assert layout.current() is None
    names = []
    for number, files in enumerate([{"x/a.iso": b"1"},
                                    {"x/a.iso": b"2", "x/.rsync-partial/a.iso": b"p"},
                                    {"x/a.iso": b"3"}]):
        names.append(new_name(layout))
        assert names[-1].startswith(f"{number + 1:06d}-")
        _snapshot(layout, names[-1], files)
    assert os.readlink(layout.published) == f"snapshots/{names[2]}"
    assert not (layout.snapshots / names[1] / "x" / ".rsync-partial").exists()
    assert snapshot.prune(layout, 2) == [names[0]]
    assert (layout.published / "x" / "a.iso").read_bytes() == b"3"
    assert sorted(p.name for p in layout.snapshots.iterdir()) == names[1:]


def test_the_space_check_says_how_much_is_needed(tmp_path):
    layout = Layout(tmp_path)
    free = staging.free_bytes(tmp_path)
    staging.check_space(layout, 1, 0)
    with pytest.raises(DiskFull) as error:
        staging.check_space(layout, free * 2, 0)
    assert f"{free * 2:,} bytes" in str(error.value)


def test_last_run_record_round_trips_and_metrics_are_prometheus_text(tmp_path):
    cfg = _config(tmp_path)
    (tmp_path / "state").mkdir()
    record = RunRecord(run_id="r1", started="2026-01-01T00:00:00+00:00",
                       finished="2026-01-01T00:00:42+00:00", outcome="ok", duration=42.0,
                       bytes_received=22_000_000, total_size=2_800_000_000, speedup=124.0,
                       items=3, items_changed=["a"], library_version=7, snapshot="s",
                       last_success="2026-01-01T00:00:42+00:00")
    record.error = RuntimeError("not stored")
    state.write(cfg, record)
    data = json.loads((tmp_path / "state" / "last-run.json").read_text())
    assert "error" not in data and data["library_version"] == 7
    loaded = state.read(cfg)
    assert loaded is not None and loaded.items_changed == ["a"] and loaded.error is None
    assert state.read_json(cfg)["outcome"] == "ok"

    text = metrics.render(record, metrics.Library(version=7, items=3, size=2_000))
    assert "library_syncer_last_success_timestamp_seconds 1767225642.0" in text
    assert "library_syncer_library_version 7" in text
    assert "library_syncer_library_size_bytes 2000" in text
    assert 'library_syncer_last_run_outcome{outcome="ok"} 1' in text
    assert 'library_syncer_last_run_outcome{outcome="network"} 0' in text
    for line in text.splitlines():  # every sample line: name{labels} number
        assert line.startswith("#") or len(line.split(" ")) == 2


def test_host_key_fingerprints_match_ssh_keygen(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    pub = (tmp_path / "k.pub").read_text()
    expected = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")],
                              capture_output=True, text=True, check=True).stdout.split()[1]
    key = hostkeys.parse_line(pub)
    assert key is not None and key.fingerprint == expected
    assert hostkeys.parse_line("[h]:2222 " + pub) == key


def test_progress_line_on_a_terminal(monkeypatch):
    import io

    from library_syncer.sync.progress import Reporter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    terminal = Terminal()
    reporter = Reporter(terminal)
    reporter.update(rsync.Progress(1000, 42, "10.50MB/s", "0:01:23"))
    reporter.done()
    assert "\r\033[K42% at 10.50MB/s, ETA 0:01:23" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r\033[K")
    quiet = io.StringIO()  # not a terminal (a log file, the journal): nothing
    Reporter(quiet).update(rsync.Progress(1000, 42, "10.50MB/s", "0:01:23"))
    assert quiet.getvalue() == ""


def test_rsh_quotes_any_path_as_rsync_splits_it(tmp_path):
    """The settings refuse paths with both kinds of quote; ssh.rsh copes all the same (no
    ValueError mid-run). Real rsync parses the -e string and runs a recording `ssh`."""
    odd = tmp_path / "it's \"odd\" dir"
    odd.mkdir()
    record = tmp_path / "argv"
    fake_ssh = odd / "ssh'\"x"
    fake_ssh.write_text(f"#!/bin/sh\nfor a in \"$0\" \"$@\"; do printf '%s\\n' \"$a\"; done "
                        f"> '{record}'\nexit 255\n")
    fake_ssh.chmod(0o755)
    identity = odd / "id 'a' \"b\""
    config = _config(tmp_path, ssh=str(fake_ssh), identity_file=identity,
                     known_hosts=odd / "known_hosts")
    subprocess.run(rsync.list_argv(config.sync), capture_output=True, timeout=30)
    args = record.read_text().splitlines()
    assert args[0] == str(fake_ssh)
    assert f"IdentityFile={ssh.file_value(identity)}" in args
    assert f"UserKnownHostsFile={ssh.file_value(odd / 'known_hosts')}" in args
