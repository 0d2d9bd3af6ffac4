"""Fewer round trips before the first byte (issue 24, item 4): a server of this version answers
the declaration and the document in one command, and the run plans without a dry run
(sync/plan.py, tests/test_sync_plan.py); before it, the declaration read, the dry run and (where a
run may cut a large new file) the document read are sessions of the run's connection at the
same time. Shown with the real rsync behind
a wrapper that makes each of the two wait until the other has started (so the run ends well only
if they overlap), against a real sshd and the server role; and a refusal of the declaration
still wins over the dry run that ran beside it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.harness import sshd as harness
from tests.test_sync_helpers import cli, published, random_bytes, sha256, sync, write_config
from tests.test_sync_trace import _declare, _disk

# Stands in front of rsync: the declaration read (its --max-size and serial filter), the dry run
# (--dry-run) and the document read (its trace.json filter) each say they started, then wait up
# to 20 s for the others named in MEET_KINDS; any other rsync goes straight through.
MEETS = """import os, shutil, sys, time
from pathlib import Path
args = sys.argv[1:]
folder = Path(os.environ["MEET_DIR"])
kinds = os.environ["MEET_KINDS"].split(",")
kind = "declared" if "--filter=+ /serial" in args else "dry" if "--dry-run" in args else \\
    "document" if "--filter=+ /trace.json" in args else None
if kind in kinds:
    (folder / kind).touch()
    deadline = time.monotonic() + 20
    while not all((folder / other).exists() for other in kinds):
        if time.monotonic() > deadline:
            (folder / f"{kind}-alone").touch()
            break
        time.sleep(0.01)
os.execv(shutil.which("rsync"), ["rsync", *args])
"""


def _meeting_rsync(folder: Path) -> Path:
    script = folder / "rsync-meets"
    script.write_text(f"#!{sys.executable}\n{MEETS}")
    script.chmod(0o755)
    return script


def _meet(work_dir: Path, monkeypatch) -> Path:
    """The folder where the wrapper's reads say they started (all three must meet)."""
    meet = work_dir / "meet"
    meet.mkdir()
    monkeypatch.setenv("MEET_DIR", str(meet))
    monkeypatch.setenv("MEET_KINDS", "declared,dry,document")
    return meet


def _serve(kind: str, dir: Path, library: Path, pub: str) -> harness.Sshd:
    """The server role (which answers library-syncer-trace), or rrsync alone (a server before
    it: the site reads and lists by rsync)."""
    if kind == "role":
        return harness.start_server_role(dir, library, sites={"paris": pub})
    return harness.start_sshd(dir, authorized_lines=[harness.forced_rrsync_line(pub, library)])


def test_the_declaration_the_dry_run_and_the_document_go_at_once(work_dir, sshd, client_key,
                                                                 server_library, monkeypatch):
    """Where the upstream answers no trace command (rrsync alone: a server before it), the
    three reads are sessions of the run's connection at once."""
    disk = _disk(server_library, "one", random_bytes(1 << 20, 21))
    _declare(work_dir, server_library)
    key, _ = client_key
    meet = _meet(work_dir, monkeypatch)
    config = write_config(work_dir, sshd, key, report=False, rsync=str(_meeting_rsync(work_dir)))
    result = sync(config)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in meet.iterdir()} == {"declared", "dry", "document"}  # none alone
    assert sha256(published(work_dir / "state") / "one" / "one.vmdk") == sha256(disk)


def test_a_server_that_answers_its_declaration_and_document_saves_the_dry_run(
        work_dir, client_key, monkeypatch):
    """Our server answers the declaration and the document in one command: no rsync reads them,
    no dry run lists, and the run publishes the library over its one login."""
    library = work_dir / "library"
    library.mkdir(mode=0o755)
    disk = _disk(library, "one", random_bytes(1 << 20, 24))
    _declare(work_dir, library)
    key, pub = client_key
    meet = _meet(work_dir, monkeypatch)
    server = harness.start_server_role(work_dir / "origin", library, sites={"paris": pub})
    try:
        config = write_config(work_dir, server, key, report=False,
                              rsync=str(_meeting_rsync(work_dir)))
        result = cli("--debug", "sync", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert "the revision document: 1 file(s)" in result.stderr
        assert not list(meet.iterdir())  # none of the three rsync reads ran
        assert server.log().count("Accepted publickey") == 1
        assert sha256(published(work_dir / "state") / "one" / "one.vmdk") == sha256(disk)
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["role", "rrsync"])
def test_a_refused_declaration_wins_before_anything_is_pulled(work_dir, client_key, kind):
    """A stale upstream (its serial below the published one): exit 11, nothing pulled; refused
    on the trace command's answer (the server role), or though the dry run beside the
    declaration read ended well (rrsync alone)."""
    library = work_dir / "library"
    library.mkdir(mode=0o755)
    _disk(library, "one", random_bytes(1 << 20, 22))
    _declare(work_dir, library)
    old = work_dir / "library-at-1"
    shutil.copytree(library, old, symlinks=True)
    _disk(library, "two", random_bytes(4 << 20, 23))
    _declare(work_dir, library)
    key, pub = client_key
    server = _serve(kind, work_dir / "origin", library, pub)
    try:
        config = write_config(work_dir, server, key, report=False)
        assert sync(config).returncode == 0  # revision 2 published
    finally:
        server.stop()
    stale = _serve(kind, work_dir / "stale", old, pub)
    try:
        config = write_config(work_dir, stale, key, report=False)
        result = sync(config)
        assert result.returncode == 11, result.stderr
        record = json.loads((work_dir / "state" / "last-run.json").read_text())
        assert record["outcome"] == "stale" and record["bytes_received"] < 64 << 10
        assert (published(work_dir / "state") / "two").is_dir()  # revision 2 still published
    finally:
        stale.stop()
