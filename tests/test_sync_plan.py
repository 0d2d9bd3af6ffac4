"""The run's plan from the upstream's revision document, without a dry run (sync/plan.py, issue 24:
round trips before the first byte), and the one command that answers the declaration and the
document (server/trace_answer.py, sync/declared.py:ask).

The plan from the document must be the dry run's: shown against the real rsync's dry run of the
same staging tree, site copies and filters, over a real sshd and the server role.
"""

from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.base.revision import Revision
from library_syncer.server import trace, trace_answer
from library_syncer.sync import declared, plan, rsync, runner
from tests.harness import sshd as harness
from tests.test_sync_helpers import random_bytes, write_config
from tests.test_sync_trace import _declare, _disk

MB = 1 << 20


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    shutil.copy2(source, target)  # the same size and modification time, to the nanosecond


def _library(work_dir: Path) -> Path:
    """Items a–e, a folder the default sync.exclude names, and manifests the pull hides."""
    library = work_dir / "library"
    library.mkdir(mode=0o755)
    for n, item in enumerate("abcde"):
        _disk(library, item, random_bytes((n + 1) * MB, 40 + n))
        (library / item / f"{item}.ovf").write_text(f"<ovf {item}/>\n")
    for path, text in ((".vSphere-HA/state", "x" * 5000), ("lib.json", "{}"),
                       ("a/item.json", "{}"), ("e/.hidden", "kept")):
        (library / path).parent.mkdir(mode=0o755, exist_ok=True)
        (library / path).write_text(text)
    _declare(work_dir, library)
    return library


def _site(work_dir: Path, library: Path) -> tuple[Path, Path]:
    """Staging holds a as it is and d's interrupted pull; the published copy holds b as it is,
    c's disk rewritten since; e is nowhere."""
    staging, copies = work_dir / "staging", work_dir / "published"
    _copy(library / "a" / "a.vmdk", staging / "a" / "a.vmdk")
    _copy(library / "a" / "a.ovf", staging / "a" / "a.ovf")
    partial = staging / "d" / rsync.PARTIAL_DIR / "d.vmdk"
    partial.parent.mkdir(mode=0o755, parents=True)
    partial.write_bytes((library / "d" / "d.vmdk").read_bytes()[:MB])
    _copy(library / "b" / "b.vmdk", copies / "b" / "b.vmdk")
    _copy(library / "c" / "c.vmdk", copies / "c" / "c.vmdk")
    os.utime(copies / "c" / "c.vmdk", ns=(1, 1))
    return staging, copies


def _facts(found: plan.Plan) -> set[tuple[str, int, bool, bool]]:
    return {(f.path, f.size, f.new, f.fetched) for f in found.listing
            if not f.path.startswith(trace.TRACE_DIR + "/")}


@pytest.mark.parametrize("include", [(), ("[a-c]", "e*")])
def test_the_plan_from_the_document_is_the_dry_runs(work_dir, client_key, include):
    library = _library(work_dir)
    staging, copies = _site(work_dir, library)
    key, pub = client_key
    server = harness.start_server_role(work_dir / "origin", library, sites={"paris": pub})
    try:
        settings = write_config(work_dir, server, key, report=False, include=list(include))
        sync = config_module.load(settings).sync
        stats = rsync.Stats()
        argv = rsync.pull_argv(sync, staging, [copies], dry_run=True)
        assert runner.run(runner.Job(argv, on_line=stats.feed)).returncode == 0
        told = declared.ask(sync, [])
    finally:
        server.stop()
    dry = plan.of_dry_run(stats)
    assert told is not None and told.found.serial is not None
    revision = Revision.from_json(told.document.decode())
    assert plan.documented(sync, None)
    documented = plan.of_revision(revision, staging, [copies], sync)
    assert documented is not None and documented.from_document
    assert _facts(documented) == _facts(dry)
    expected = {"a/a.vmdk": (False, False), "b/b.vmdk": (False, False), "c/c.vmdk": (False, True),
                "d/d.vmdk": (True, True), "e/e.vmdk": (True, True)}
    for path, (new, fetched) in expected.items():  # each case is there, as rsync sees it
        item = path.split("/")[0]
        if include and item == "d":
            continue
        assert (path, os.path.getsize(library / path), new, fetched) in _facts(documented)
    assert not any(f.path.startswith((".vSphere-HA", "lib.json", "a/item.json"))
                   for f in documented.listing)
    trace_files = sum(f.size for f in dry.listing if f.fetched and f.path.startswith(".lib"))
    assert documented.transferred_size == dry.transferred_size - trace_files
    assert documented.files_transferred == len([f for f in documented.listing if f.fetched])


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a//b", "a/./b", "a/b\\c",
                                  "a/b\nc"])
def test_a_document_naming_a_path_rsync_would_not_gets_a_dry_run(tmp_path, path):
    revision = Revision("hq", 2, "2026-12-03T00:00:00+00:00", {"a/a.vmdk": (1, 1), path: (1, 1)})
    sync = config_module.SyncConfig()
    assert plan.of_revision(revision, tmp_path, [], sync) is None


@pytest.mark.parametrize(("settings", "documented"), [
    ({}, True),  # the default exclude (.vSphere-HA) is a name
    ({"exclude": ("*.iso", "tmp/", "[Cc]ache")}, True),
    ({"exclude": ("isos/*.iso",)}, False), ({"exclude": ("**/tmp",)}, False),
    ({"exclude": ("- x",)}, False), ({"exclude": ("\\*",)}, False),
    ({"include": ("win*",)}, True), ({"include": ("win*/disks",)}, False),
    ({"remote_path": "/windows"}, False),
])
def test_a_run_plans_from_the_document_only_where_it_applies_the_filters_as_rsync(settings,
                                                                                  documented):
    sync = config_module.SyncConfig(**settings)
    assert plan.documented(sync, None) is documented


def test_nothing_published_with_a_document_means_no_answer_is_asked_for(tmp_path):
    """What the site publishes came from the Docker-based original: a dry run, as before."""
    assert not plan.documented(config_module.SyncConfig(), tmp_path)
    (tmp_path / trace.TRACE_DIR).mkdir()
    (tmp_path / trace.TRACE_DIR / trace.TRACE_FILE).write_text("{}")
    assert plan.documented(config_module.SyncConfig(), tmp_path)


# --- the answer ----------------------------------------------------------------------------------


def _answer(frames: bytes, head: bytes | None = None) -> bytes:
    return (head if head is not None else trace_answer.header()) + zlib.compress(frames)


def test_the_answer_holds_the_trace_folder_byte_for_byte(work_dir, client_key):
    library = _library(work_dir)
    key, pub = client_key
    server = harness.start_server_role(work_dir / "origin", library, sites={"paris": pub})
    try:
        sync = config_module.load(write_config(work_dir, server, key, report=False)).sync
        told = declared.ask(sync, [])
    finally:
        server.stop()
    folder = library / trace.TRACE_DIR
    assert told is not None
    assert told.document == (folder / trace.TRACE_FILE).read_bytes()
    assert (told.found.origin, told.found.serial) == ("hq", 1)
    assert told.found.statement is None  # an origin that does not sign
    assert 0 < told.received < len(told.document)  # compressed


def test_rrsync_alone_gives_no_answer_and_the_run_lists_by_rsync(work_dir, sshd, client_key,
                                                                  server_library):
    _disk(server_library, "one", random_bytes(MB, 50))
    _declare(work_dir, server_library)
    key, _ = client_key
    sync = config_module.load(write_config(work_dir, sshd, key, report=False)).sync
    assert declared.ask(sync, []) is None


@pytest.mark.parametrize("raw", [
    b"",
    _answer(b"serial 5\nhq 1\nstatement -\ntrace.json -\n", head=b"library-syncer-trace 2\n"),
    trace_answer.header() + b"not zlib",
    _answer(b"serial 5\nhq 1\nstatement -\n"),  # a frame missing
    _answer(b"serial 5\nhq 1\nstatement -\ntrace.json -\nmore"),  # more after the frames
    _answer(b"serial 9\nhq 1\nstatement -\ntrace.json -\n"),  # shorter than it says
    _answer(b"statement -\nserial 5\nhq 1\ntrace.json -\n"),  # out of order
    _answer(b"serial 9000\n" + b"x" * 9000 + b"statement -\ntrace.json -\n"),  # over its bound
    _answer(b"serial 5\nhq 1\nstatement -\ntrace.json -\n") + b"trailing",
])
def test_what_is_not_an_answer_is_none(raw):
    assert declared.parse_answer(raw) is None


def test_an_answer_is_parsed_frame_by_frame():
    frames = trace_answer.frames({trace.SERIAL_FILE: b"hq 7\n", trace.TRACE_FILE: b"{}"})
    told = declared.parse_answer(_answer(frames))
    assert told is not None
    assert (told.found.origin, told.found.serial, told.found.statement) == ("hq", 7, None)
    assert told.document == b"{}"


def test_the_server_refuses_another_form_of_the_command(work_dir, capsys):
    assert trace_answer.serve(work_dir, ["library-syncer-trace", "2"]) == 1
    assert "expected `library-syncer-trace 1`" in capsys.readouterr().err
