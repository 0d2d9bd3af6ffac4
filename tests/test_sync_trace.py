"""A site pulls only declared revisions of the origin, never half of a template being copied in,
and never rolls back to an older revision or another origin (real sshd with forced rrsync -ro,
real rsync; the origin's trace written by server/trace.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from library_syncer.base import config as config_module
from library_syncer.server import trace
from tests.fleet.checks import snapshot_problems
from tests.test_sync_helpers import last_run, published, random_bytes, sync, write_config

MB = 1 << 20


def _declare(work_dir: Path, library: Path, name: str = "hq") -> int:
    """The origin's trace timer, once the library has settled."""
    settings = work_dir / f"server-{name}.toml"
    settings.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{work_dir / "srv-state"}"'
                        f'\nsettle = "60s"\nname = "{name}"\n')
    outcome = trace.tick(config_module.load(settings), now=time.time() + 61)
    assert outcome.state in ("declared", "unchanged"), outcome
    return outcome.serial


def _disk(library: Path, item: str, data: bytes) -> Path:
    path = library / item / f"{item}.vmdk"
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)
    return path


def _published_serial(state: Path) -> tuple[str, int]:
    data = json.loads((published(state) / ".library-syncer" / "trace.json").read_text())
    return data["origin"], data["serial"]


def _site_at_revision_1(work_dir, sshd, client_key, server_library) -> tuple[Path, Path, str]:
    """The origin declared revision 1; a site published it: its settings, state, snapshot."""
    _disk(server_library, "ubuntu", random_bytes(2 * MB, 1))
    assert _declare(work_dir, server_library) == 1
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    assert _published_serial(state) == ("hq", 1)
    return config, state, os.readlink(state / "published")


def test_a_site_publishes_the_declared_revision_and_never_a_template_still_arriving(
        work_dir, sshd, client_key, server_library):
    config, state, before = _site_at_revision_1(work_dir, sshd, client_key, server_library)

    # an administrator is copying a new template in: not declared yet
    _disk(server_library, "windows", random_bytes(3 * MB, 2)[: 2 * MB])
    result = sync(config)

    assert result.returncode == 5, result.stderr
    assert "what arrived is not revision 1 of hq (" in result.stderr and \
        "the library changed upstream during the transfer" in result.stderr and \
        "windows/windows.vmdk is not in the revision" in result.stderr
    assert os.readlink(state / "published") == before  # nothing published
    assert "windows" not in json.dumps(json.loads((published(state) / "items.json").read_text()))

    _disk(server_library, "windows", random_bytes(3 * MB, 2))  # the copy completes, settles
    assert _declare(work_dir, server_library) == 2
    result = sync(config)

    assert result.returncode == 0, result.stderr
    assert _published_serial(state) == ("hq", 2)
    snap = published(state)
    assert (snap / "windows" / "windows.vmdk").read_bytes() == random_bytes(3 * MB, 2)
    assert snapshot_problems(snap) == []
    items = json.loads((snap / "items.json").read_text())["items"]
    assert sorted(i["name"] for i in items) == ["ubuntu", "windows"]  # the trace is not an item


def test_while_the_origin_settles_a_site_says_so_and_ends_at_once_with_try_later(
        work_dir, sshd, client_key, server_library):
    config, state, before = _site_at_revision_1(work_dir, sshd, client_key, server_library)

    # a template arrives; the origin's trace timer ticks before it settled
    _disk(server_library, "windows", random_bytes(2 * MB, 2))
    settings = work_dir / "server-hq.toml"
    outcome = trace.tick(config_module.load(settings))
    assert outcome.state == "settling"
    result = sync(config)

    assert result.returncode == 12, result.stderr
    line = [x for x in result.stderr.splitlines() if "settling" in x][-1]
    assert "the origin has not declared a revision yet (settling): hq's library changed since " \
        "revision 1 of hq, revision 2 is due at " in line and " UTC at the earliest" in line
    assert "retrying" not in result.stderr  # nothing is torn: not retried
    record = last_run(state)
    assert (record["outcome"], record["exit_status"], record["attempts"]) == ("settling", 12, 1)
    assert record["bytes_received"] > 2 * MB  # what crossed the link is counted (and kept)
    assert os.readlink(state / "published") == before  # nothing published

    assert _declare(work_dir, server_library) == 2
    assert sync(config).returncode == 0
    assert _published_serial(state) == ("hq", 2)
    assert not (published(state) / ".library-syncer" / trace.SETTLING_FILE).exists()


def test_an_older_revision_or_another_origin_is_never_published(
        work_dir, sshd, client_key, server_library):
    _disk(server_library, "ubuntu", random_bytes(1 * MB, 3))
    _declare(work_dir, server_library)
    old_trace = (server_library / ".library-syncer" / "trace.json").read_text()
    _disk(server_library, "photon", random_bytes(1 * MB, 4))
    assert _declare(work_dir, server_library) == 2
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    before = os.readlink(state / "published")

    # the upstream is restored from an old backup: revision 1, without photon
    (server_library / ".library-syncer" / "trace.json").write_text(old_trace)
    (server_library / "photon" / "photon.vmdk").unlink()
    (server_library / "photon").rmdir()
    result = sync(config)

    assert result.returncode == 11, result.stderr
    assert "offers revision 1 of hq, older than revision 2 of hq published here" in result.stderr
    assert os.readlink(state / "published") == before
    assert last_run(state)["outcome"] == "stale"

    # another origin: refused unless the operator names it
    (server_library / ".library-syncer").rename(server_library / ".old-trace")
    _declare(work_dir, server_library, name="new-hq")
    result = sync(config)
    assert result.returncode == 11 and "refusing another origin" in result.stderr
    assert 'sync.accept_origin = "new-hq"' in result.stderr
    accepting = write_config(work_dir, sshd, client_key[0], accept_origin="new-hq")
    result = sync(accepting)
    assert result.returncode == 0, result.stderr
    assert _published_serial(state)[0] == "new-hq"


def test_a_server_without_a_trace_works_as_before(work_dir, sshd, client_key, server_library):
    _disk(server_library, "ubuntu", random_bytes(1 * MB, 5))
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    _disk(server_library, "photon", random_bytes(1 * MB, 6))
    assert sync(config).returncode == 0
    assert not (published(state) / ".library-syncer" / "trace.json").exists()
    assert sorted(p.name for p in published(state).iterdir()
                  if p.is_dir() and not p.name.startswith(".")) == ["photon", "ubuntu"]


def test_only_the_origins_trace_comes_down_never_an_upstreams_own_state(
        work_dir, sshd, client_key, server_library):
    _disk(server_library, "ubuntu", random_bytes(1 * MB, 7))
    _declare(work_dir, server_library)
    hidden = server_library / ".library-syncer"
    for name in ("manifest-state.json", "published-before.json", "hash-cache.json"):
        (hidden / name).write_text('{"planted": "by the upstream"}')
    config = write_config(work_dir, sshd, client_key[0])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    assert sync(config).returncode == 0  # a second run: its own state kept through --delete
    ours = published(state) / ".library-syncer"
    assert (ours / "trace.json").read_text() == (hidden / "trace.json").read_text()
    assert "planted" not in "".join(p.read_text() for p in ours.iterdir() if p.is_file())
    assert not (ours / "hash-cache.json").exists()
    assert json.loads((ours / "manifest-state.json").read_text())  # this site's own
