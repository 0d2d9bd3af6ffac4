"""A hostile relay (issue 23, item 3): what a relay above a site, or anyone who can write the
origin's library share, can serve instead of the origin's revision, and how the site refuses it.

Real sshd with forced rrsync -ro, real rsync, real `ssh-keygen -Y` signatures made by the origin's
trace tick (tests/test_sync_signed.py). The sshd serves `server_library`: tampering with it after
the origin's tick is, from the site's view, a relay serving a tampered copy
(tests/harness/hostile_relay.py). Most attacks tamper with a new revision 2 (a new item), so the
site has something to pull and must refuse it rather than find nothing new.

Each refusal holds within the one run that met it (`_refused_in_one_run`): a non-zero exit status
of its own, the last good snapshot still served, last-run.json's outcome not "ok", the Prometheus
textfile saying so, and `library-syncer check` reporting it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from library_syncer.base.errors import ExitStatus
from library_syncer.server import signing
from tests.harness import hostile_relay as relay
from tests.test_sync_helpers import (
    cli,
    last_run,
    published,
    random_bytes,
    sha256,
    sync,
    write_config,
)
from tests.test_sync_signed import _declare, _held, _origin_settings, _pin
from tests.test_sync_trace import _declare as _declare_unsigned
from tests.test_sync_trace import _disk

MB = 1 << 20
UNSIGNED, STALE = int(ExitStatus.UNSIGNED), int(ExitStatus.STALE)
WEEK = 7 * 86400.0


@dataclass(frozen=True)
class Site:
    """A site below a relay, and the origin above it (its settings and signing key)."""

    config: Path
    state: Path
    metrics: Path
    origin: Path  # the origin's settings file (trace ticks)
    key: Path | None  # the origin's signing key
    library: Path  # what the relay serves the site


def _site(work_dir: Path, sshd, client_key, library: Path, key: Path | None) -> Site:
    metrics = work_dir / "metrics" / "site.prom"
    metrics.parent.mkdir(mode=0o755, exist_ok=True)
    pinned = {"origin_keys": str(_pin(work_dir, key))} if key else {}
    config = write_config(work_dir, sshd, client_key[0], metrics=metrics, **pinned)
    settings = _origin_settings(work_dir, library, key) if key else work_dir / "server-hq.toml"
    return Site(config, work_dir / "state", metrics, settings, key, library)


def _publish(site: Site, serial: int) -> None:
    result = sync(site.config)
    assert result.returncode == 0, result.stderr
    assert _published_serial(site.state) == serial


def _published_serial(state: Path) -> int:
    trace_json = published(state) / ".library-syncer" / "trace.json"
    return json.loads(trace_json.read_text())["serial"]


@pytest.fixture
def pinned_site(work_dir, sshd, client_key, server_library) -> Site:
    """An origin that signs revision 1 (one 2 MiB item); a site pinning its key published it."""
    key = work_dir / "keys" / "revision"
    signing.keygen(key, "hq")
    site = _site(work_dir, sshd, client_key, server_library, key)
    _disk(server_library, "ubuntu", random_bytes(2 * MB, 1))
    assert _declare(site.origin) == 1
    _publish(site, 1)
    return site


@pytest.fixture
def traced_site(work_dir, sshd, client_key, server_library) -> Site:
    """An origin that declares revision 1 unsigned; a site without pinned keys published it."""
    site = _site(work_dir, sshd, client_key, server_library, None)
    _disk(server_library, "ubuntu", random_bytes(2 * MB, 1))
    assert _declare_unsigned(work_dir, server_library) == 1
    _publish(site, 1)
    return site


def _revision_2(site: Site) -> Path:
    """The origin declares revision 2: a new item `windows` (its disk returned)."""
    disk = _disk(site.library, "windows", random_bytes(2 * MB, 2))
    assert _declare(site.origin) == 2
    return disk


# --- what every refusal must show, within the run that met it ---------------------------------


def _check_lines(site: Site) -> list[str]:
    result = cli("check", "-c", str(site.config))
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout.splitlines()


def _refused_in_one_run(site: Site, status: int | None, outcome: str | None, *said: str,
                        extra: tuple[str, ...] = (), max_received: int | None = None) -> None:
    """One `sync` refuses what the relay serves: exit `status` (None: any failure), each of
    `said` in its message, the published snapshot unchanged, last-run.json's outcome `outcome`
    (None: any but "ok"), the metrics textfile showing it, `check` reporting it; at most
    `max_received` bytes received when given. Every part that fails is named at once."""
    before = _held(site.state)
    checked_before = set(_check_lines(site))
    result = sync(site.config, *extra)
    problems = []

    def expect(holds: bool, what: str) -> None:
        if not holds:
            problems.append(what)

    expect("Traceback" not in result.stderr, "a traceback")
    expect(result.returncode != 0 if status is None else result.returncode == status,
           f"exit status {result.returncode}, expected {status or 'non-zero'}")
    expect(all(words in result.stderr for words in said), f"the message does not say {said}")
    expect(_held(site.state) == before, "another snapshot published")

    record = last_run(site.state)
    expect(record["outcome"] != "ok" and record["exit_status"] == result.returncode,
           f"last-run.json: outcome {record['outcome']}, exit status {record['exit_status']}")
    expect(outcome is None or record["outcome"] == outcome,
           f"last-run.json: outcome {record['outcome']}, expected {outcome}")
    if max_received is not None:
        expect(record["bytes_received"] < max_received,
               f"{record['bytes_received']:,} bytes received, expected < {max_received:,}")

    text = site.metrics.read_text()
    expect(f"library_syncer_last_run_exit_status {result.returncode}\n" in text and
           'library_syncer_last_run_outcome{outcome="ok"} 0\n' in text and
           f'library_syncer_last_run_outcome{{outcome="{record["outcome"]}"}} 1\n' in text,
           "the metrics do not show the failed run")

    # `check` reports the refusal: a FAIL line it did not print before this run (a stale
    # upstream, which the site outlives by keeping its library, is a warning)
    new = [line for line in _check_lines(site) if line not in checked_before]
    level = "warn" if record["outcome"] == "stale" else "FAIL"
    expect(any(line.startswith(level) and "last run" in line for line in new),
           f"check printed no new {level} line for the last run (new lines: {new})")
    assert not problems, "; ".join(problems) + "\n" + result.stderr


# --- what the site pins: the statement's signature, namespace, expiry and document ----------


def test_a_statement_signed_by_a_key_the_site_does_not_pin_is_refused(pinned_site, work_dir):
    rogue = work_dir / "keys" / "rogue"
    signing.keygen(rogue, "hq")
    _disk(pinned_site.library, "windows", random_bytes(2 * MB, 2))
    _origin_settings(work_dir, pinned_site.library, rogue)  # someone signs with another key
    assert _declare(pinned_site.origin) == 2
    _refused_in_one_run(pinned_site, UNSIGNED, "unsigned", "revision 2 of hq refused")


def test_a_statement_signed_in_another_namespace_is_refused(pinned_site):
    _revision_2(pinned_site)
    # the origin's own key, but a signature made for something else (a commit, a file)
    relay.sign_again(pinned_site.library, pinned_site.key, namespace="file@example.org",
                     signed_at=time.time(), validity=WEEK)
    _refused_in_one_run(pinned_site, UNSIGNED, "unsigned", "revision 2 of hq refused")


def test_an_expired_statement_is_refused(pinned_site):
    _revision_2(pinned_site)
    # freeze: the relay keeps serving a statement past its expiry (signed 8 days ago for 7)
    relay.sign_again(pinned_site.library, pinned_site.key, signed_at=time.time() - WEEK - 86400,
                     validity=WEEK)
    _refused_in_one_run(pinned_site, UNSIGNED, "unsigned", "expired")


def test_a_removed_trace_is_refused_by_a_pinning_site(pinned_site):
    _disk(pinned_site.library, "windows", random_bytes(2 * MB, 2))
    shutil.rmtree(pinned_site.library / ".library-syncer")
    _refused_in_one_run(pinned_site, UNSIGNED, "unsigned", "the upstream declares no revision")


def test_an_inflated_serial_in_the_trace_is_refused(pinned_site):
    _revision_2(pinned_site)
    document = relay.document_path(pinned_site.library)
    data = json.loads(document.read_text())
    data["serial"] = 10**15 - 1  # pushed to the bound: no revision could follow it
    document.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    (pinned_site.library / ".library-syncer" / "serial").write_text(f"hq {10**15 - 1}\n")
    _refused_in_one_run(pinned_site, UNSIGNED, "unsigned",
                        "not the document revision 2 of the statement")


def test_a_statement_for_another_document_is_refused(pinned_site):
    first = relay.statement_path(pinned_site.library).read_bytes()  # revision 1's, valid
    _revision_2(pinned_site)
    relay.statement_path(pinned_site.library).write_bytes(first)  # over revision 2's document
    _refused_in_one_run(pinned_site, UNSIGNED, "unsigned", "not the document revision 1")


# --- what the statement names: every file's content -------------------------------------------


def test_a_flipped_byte_with_size_and_mtime_kept_is_refused(pinned_site):
    disk = _revision_2(pinned_site)
    relay.flip_byte(disk, MB + 7)
    _refused_in_one_run(pinned_site, UNSIGNED, "unsigned", "windows/windows.vmdk")


def test_items_mixed_from_two_revisions_are_refused(pinned_site):
    """Revision 2 changes ubuntu's disk (same size) and adds windows; the relay serves revision
    2's statement, trace and windows with revision 1's ubuntu disk under revision 2's mtime."""
    ubuntu = pinned_site.library / "ubuntu" / "ubuntu.vmdk"
    first = ubuntu.read_bytes()
    _disk(pinned_site.library, "ubuntu", random_bytes(2 * MB, 3))
    _revision_2(pinned_site)
    relay.replace_content(ubuntu, first)
    _refused_in_one_run(pinned_site, UNSIGNED, "unsigned", "ubuntu/ubuntu.vmdk")


@pytest.mark.parametrize("path", ["ubuntu/extra.bin", "ubuntu/sub/item.json",
                                  "media/extra/item.json"])
def test_an_extra_file_is_refused(pinned_site, path):
    _revision_2(pinned_site)
    planted = pinned_site.library / path
    planted.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    planted.write_bytes(b'{"planted": true}\n')
    planted.chmod(0o644)
    _refused_in_one_run(pinned_site, None, None, path)


def test_a_missing_file_is_refused(pinned_site):
    _revision_2(pinned_site)
    (pinned_site.library / "ubuntu" / "ubuntu.vmdk").unlink()
    _refused_in_one_run(pinned_site, None, None, "ubuntu/ubuntu.vmdk")


# --- rollback: an older revision, replayed whole or by omission -------------------------------


def test_a_replayed_older_revision_is_refused_as_stale(pinned_site, work_dir):
    older = relay.copy_library(pinned_site.library, work_dir / "revision-1")
    _revision_2(pinned_site)
    _publish(pinned_site, 2)
    relay.serve(pinned_site.library, older)  # revision 1 whole: statement (valid), trace, files
    _refused_in_one_run(pinned_site, STALE, "stale", "revision 1", "revision 2")


def test_a_stale_upstream_is_refused_before_its_transfer(pinned_site, work_dir):
    """Revision 2 holds a 32 MiB file this site never had (it went from 1 to 3); a relay
    replaying revision 2 costs the site one small read, not the file."""
    big = 32 * MB
    _disk(pinned_site.library, "large", os.urandom(big))
    assert _declare(pinned_site.origin) == 2
    older = relay.copy_library(pinned_site.library, work_dir / "revision-2")
    shutil.rmtree(pinned_site.library / "large")
    _disk(pinned_site.library, "windows", random_bytes(MB, 2))
    assert _declare(pinned_site.origin) == 3
    _publish(pinned_site, 3)
    relay.serve(pinned_site.library, older)
    _refused_in_one_run(pinned_site, STALE, "stale", "revision 2", max_received=MB)


def test_a_removed_trace_after_a_traced_revision_is_refused_unless_allowed_once(traced_site):
    """Without pinned keys: rollback by omission (the upstream's .library-syncer/ removed) is
    refused; `sync --allow-untraced` accepts it for one run."""
    _disk(traced_site.library, "windows", random_bytes(MB, 2))
    shutil.rmtree(traced_site.library / ".library-syncer")
    _refused_in_one_run(traced_site, STALE, "stale", "the upstream declares no revision")

    result = sync(traced_site.config, "--allow-untraced")
    assert result.returncode == 0, result.stderr
    snap = published(traced_site.state)
    assert (snap / "windows" / "windows.vmdk").read_bytes() == random_bytes(MB, 2)
    assert not (snap / ".library-syncer" / "trace.json").exists()


# --- the basis: a new file like an old one in size and mtime ----------------------------------


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
def test_a_new_file_with_its_basis_size_and_mtime_gets_its_own_content(
        work_dir, sshd, client_key, server_library, traced):
    """Reproducible builds: a new item's disk has the same name, size and mtime as a published
    one (sync/basis.py picks that as its basis), other bytes. rsync's quick check must not keep
    the basis's content under the new name."""
    site = _site(work_dir, sshd, client_key, server_library, None)
    old = server_library / "ubuntu-24.04" / "disk.vmdk"
    old.parent.mkdir(mode=0o755)
    old.write_bytes(random_bytes(2 * MB, 1))
    if traced:
        assert _declare_unsigned(work_dir, server_library) == 1
    assert sync(site.config).returncode == 0

    new = server_library / "ubuntu-24.10" / "disk.vmdk"
    new.parent.mkdir(mode=0o755)
    new.write_bytes(random_bytes(2 * MB, 2))
    relay.keep_times(new, old.stat())
    if traced:
        assert _declare_unsigned(work_dir, server_library) == 2
    result = sync(site.config)

    assert result.returncode == 0, result.stderr
    snap = published(site.state)
    assert sha256(snap / "ubuntu-24.04" / "disk.vmdk") == sha256(old)
    assert sha256(snap / "ubuntu-24.10" / "disk.vmdk") == sha256(new), \
        "the basis's content was published under the new file's name"
