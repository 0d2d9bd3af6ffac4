"""A site that pins the origin's keys (sync.origin_keys) publishes only revisions the origin
signed (base/statement.py, sync/trace_check.py:refuse_unsigned): real sshd with the forced
dispatcher, real rsync, real `ssh-keygen -Y` signatures written by the origin's trace tick. What a
writable share or a relay could do to the statement or the document is refused with exit status
13, and the published library stays as it was."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.base import statement
from library_syncer.server import signing, trace
from tests.fleet.checks import snapshot_problems
from tests.test_sync_helpers import last_run, published, random_bytes, sync, write_config
from tests.test_sync_trace import _disk

MB = 1 << 20
UNSIGNED = 13


def _origin_settings(work_dir: Path, library: Path, key: Path) -> Path:
    settings = work_dir / "server-hq.toml"
    settings.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{work_dir / "srv-state"}"'
                        f'\nsettle = "60s"\nname = "hq"\nsigning_key = "{key}"\n')
    return settings


def _declare(settings: Path) -> int:
    outcome = trace.tick(config_module.load(settings), now=time.time() + 61)
    assert outcome.state == "declared", outcome
    return outcome.serial


def _pin(work_dir: Path, *keys: Path) -> Path:
    path = work_dir / "origin_keys"
    path.write_text("".join(signing.allowed_signers_line("hq", signing.public_key(k)) + "\n"
                            for k in keys))
    return path


@pytest.fixture
def signed_site(work_dir, sshd, client_key, server_library):
    """An origin that signs revision 1; a site that pins its key and published it."""
    key = work_dir / "keys" / "revision"
    signing.keygen(key, "hq")
    settings = _origin_settings(work_dir, server_library, key)
    _disk(server_library, "ubuntu", random_bytes(2 * MB, 1))
    assert _declare(settings) == 1
    site = write_config(work_dir, sshd, client_key[0], origin_keys=str(_pin(work_dir, key)))
    first = sync(site)
    assert first.returncode == 0, first.stderr
    return site, settings, work_dir / "state"


def _held(state: Path) -> tuple[str, str]:
    return os.readlink(state / "published"), (published(state) / "items.json").read_text()


def _refused(site: Path, state: Path, before: tuple[str, str], said: str) -> None:
    result = sync(site)
    assert result.returncode == UNSIGNED, result.stderr
    assert said in result.stderr, result.stderr
    assert _held(state) == before  # the last good snapshot is still the one served
    assert last_run(state)["outcome"] == "unsigned"


def test_a_signed_revision_is_published_with_its_statement(signed_site, server_library):
    site, settings, state = signed_site
    snap = published(state)
    assert (snap / ".library-syncer" / statement.FILE_NAME).is_file()  # a relay passes it on
    assert snapshot_problems(snap) == []
    _disk(server_library, "windows", random_bytes(MB, 2))
    assert _declare(settings) == 2
    assert sync(site).returncode == 0
    assert json.loads((published(state) / ".library-syncer" / "trace.json").read_text()
                      )["serial"] == 2


def test_a_revision_without_the_statement_is_refused(signed_site, server_library):
    site, _, state = signed_site
    before = _held(state)
    _disk(server_library, "windows", random_bytes(MB, 2))
    # the share is writable: the new file is declared by someone without the key
    (server_library / ".library-syncer" / statement.FILE_NAME).unlink()
    _refused(site, state, before, "comes without the origin's signed statement")


def test_a_document_other_than_the_signed_one_is_refused(signed_site, server_library):
    site, _, state = signed_site
    before = _held(state)
    document = server_library / ".library-syncer" / "trace.json"
    data = json.loads(document.read_text())
    data["serial"] = 2  # a forged revision 2, under the statement of revision 1
    document.write_text(json.dumps(data))
    (server_library / ".library-syncer" / "serial").write_text("hq 2\n")
    _refused(site, state, before, "not the document revision 1 of the statement")


def test_a_key_the_site_does_not_pin_is_refused(signed_site, server_library, work_dir):
    site, settings, state = signed_site
    before = _held(state)
    rogue = work_dir / "keys" / "rogue"
    signing.keygen(rogue, "hq")
    _origin_settings(work_dir, server_library, rogue)  # someone signs with another key
    _disk(server_library, "windows", random_bytes(MB, 2))
    assert _declare(settings) == 2
    _refused(site, state, before, "refused: ")


def test_a_library_without_a_trace_is_refused_by_a_pinning_site(signed_site, server_library):
    site, _, state = signed_site
    before = _held(state)
    shutil.rmtree(server_library / ".library-syncer")  # as the Docker original serves it
    _refused(site, state, before, "the upstream declares no revision")
