"""The last hop: a subscriber applying vCenter's rules (tests/harness/vcenter_model.py) follows a
site through many runs of the real sync (real sshd with forced rrsync -ro, real rsync) and
downloads nothing when nothing changed and exactly the changed files otherwise: a change, a
rename, a new version as a new item, a delete, the site losing all its state, a site switched to
another upstream, a relay failover, and an upstream without a trace (the Docker original) that
later declares revisions."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from library_syncer.base import config as config_module
from library_syncer.base import revision
from library_syncer.server import trace
from tests.harness import sshd as sshd_harness
from tests.harness import vcenter_model
from tests.test_sync_failover import Upstream, _settings, site  # noqa: F401 (a fixture)
from tests.test_sync_helpers import last_run, published, random_bytes, sync, write_config

KB = 1 << 10


def _put(library: Path, rel: str, seed: int, size: int = 64 * KB) -> None:
    path = library / rel
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_bytes(random_bytes(size, seed))
    os.chmod(path, 0o644)


def _declare(work_dir: Path, library: Path) -> int:
    settings = work_dir / "origin.toml"
    settings.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{work_dir / "srv-state"}"'
                        '\nsettle = "60s"\nname = "hq"\n')
    outcome = trace.tick(config_module.load(settings), now=time.time() + 61)
    assert outcome.state in ("declared", "unchanged"), outcome
    return outcome.serial


def _run(config: Path) -> None:
    result = sync(config)
    assert result.returncode == 0, result.stderr


def _pull(vc: vcenter_model.Subscriber, state: Path) -> vcenter_model.Result:
    """One vCenter synchronisation against the site's published library; it must end holding
    exactly what the site serves, with no error and no broken rule."""
    snap = published(state)
    result = vc.sync(vcenter_model.dir_fetch(snap))
    assert result.errors == [] and result.violations == [], result
    assert vcenter_model.same_content(vc, snap) == []
    return result


def _tokens(state: Path) -> dict[str, object]:
    """Everything a subscriber compares, by item folder: id, versions, each file's etag."""
    snap = published(state)
    lib = json.loads((snap / "lib.json").read_text())
    found: dict[str, object] = {"library": (lib["id"], int(lib["version"]))}
    for item in json.loads((snap / "items.json").read_text())["items"]:
        for token in (item["version"], item["contentVersion"], lib["version"],
                      *(f["etag"] for f in item["files"])):
            assert revision.is_token(token), token  # a decimal Java long, canonical
        found[item["selfHref"].rsplit("/", 1)[0]] = (
            item["id"], int(item["version"]), int(item["contentVersion"]),
            {f["name"]: int(f["etag"]) for f in item["files"]})
    return found


def _json_bytes(state: Path) -> dict[str, bytes]:
    snap = published(state)
    return {str(p.relative_to(snap)): p.read_bytes() for p in snap.rglob("*.json")
            if ".library-syncer" not in p.parts}


def _never_back(before: dict, after: dict, changed: set[tuple[str, str]] = frozenset()) -> None:
    """Ids equal; versions never lower; an etag equal unless its file changed, then higher."""
    assert after["library"][0] == before["library"][0]
    assert after["library"][1] >= before["library"][1]
    for folder, value in after.items():
        if folder == "library" or folder not in before:
            continue
        item_id, version, content, etags = value
        old_id, old_version, old_content, old_etags = before[folder]
        assert item_id == old_id and version >= old_version and content >= old_content
        for name, etag in etags.items():
            if name in old_etags:
                if (folder, name) in changed:
                    assert etag > old_etags[name], (folder, name)
                else:
                    assert etag == old_etags[name], (folder, name)


def test_a_traced_site_through_change_rename_new_version_delete_and_total_state_loss(
        work_dir, sshd, client_key, server_library):
    _put(server_library, "ubuntu/ubuntu.vmdk", 1)
    _put(server_library, "ubuntu/notes.txt", 2, 100)
    _put(server_library, "photon/photon.iso", 3)
    _declare(work_dir, server_library)
    config, state = write_config(work_dir, sshd, client_key[0]), work_dir / "state"
    vc = vcenter_model.Subscriber()
    _run(config)
    assert sorted(_pull(vc, state).downloads) == [
        ("photon", "photon.iso"), ("ubuntu", "notes.txt"), ("ubuntu", "ubuntu.vmdk")]
    first = _tokens(state)
    assert all(etag > revision.BASE for key, value in first.items() if key != "library"
               for etag in value[3].values())  # traced: derived from the origin's serials

    # no change: not a byte moves, vCenter does not even read items.json
    before = _json_bytes(state)
    _run(config)
    result = _pull(vc, state)
    assert result.downloads == [] and not result.looked
    assert _json_bytes(state) == before

    # a change: only that file
    _put(server_library, "ubuntu/ubuntu.vmdk", 4)
    _declare(work_dir, server_library)
    _run(config)
    assert _pull(vc, state).downloads == [("ubuntu", "ubuntu.vmdk")]
    _never_back(first, _tokens(state), changed={("ubuntu", "ubuntu.vmdk")})

    # a rename: a new item (new id), the old one removed
    (server_library / "photon").rename(server_library / "photon-5")
    _declare(work_dir, server_library)
    _run(config)
    result = _pull(vc, state)
    assert result.downloads == [("photon-5", "photon.iso")] and result.removed == ["photon"]

    # a new version published as a new item: its files only
    shutil.copytree(server_library / "ubuntu", server_library / "ubuntu-2")
    _put(server_library, "ubuntu-2/ubuntu.vmdk", 5)
    _declare(work_dir, server_library)
    _run(config)
    result = _pull(vc, state)
    assert sorted(result.downloads) == [("ubuntu-2", "notes.txt"), ("ubuntu-2", "ubuntu.vmdk")]

    # a delete: nothing to download, the item goes
    shutil.rmtree(server_library / "ubuntu")
    _declare(work_dir, server_library)
    _run(config)
    result = _pull(vc, state)
    assert result.downloads == [] and result.removed == ["ubuntu"]

    # the site loses everything (state folder, snapshots, published): same ids, nothing back,
    # nothing downloaded
    held = _tokens(state)
    shutil.rmtree(state)
    _run(config)
    result = _pull(vc, state)
    assert result.downloads == [] and result.looked
    _never_back(held, _tokens(state))
    assert _tokens(state)["library"][1] > held["library"][1]


def test_two_sites_at_one_revision_serve_the_same_tokens_and_a_relay_failover_costs_nothing(
        work_dir, client_key, site):  # noqa: F811 (the fixture)
    relay, origin = site("relay"), site("origin")
    for number, item in enumerate(("ubuntu", "centos", "photon")):
        origin.disk(item, number + 1)
    origin.declare()
    relay.copy_of(origin)  # the relay holds the origin's revision, trace included
    near = work_dir / "near"
    (near / "client-ssh").mkdir(parents=True)
    a = _settings(work_dir, client_key[0], [relay, origin])
    b = _settings(near, client_key[0], [origin])
    _run(a)
    _run(b)
    assert _tokens(work_dir / "state") | {"library": None} == \
        _tokens(near / "state") | {"library": None}  # ids, versions, etags: all the same

    vc = vcenter_model.Subscriber()
    assert len(_pull(vc, work_dir / "state").downloads) == 3
    # the vCenter is pointed at the other site: it reads the items, downloads nothing
    result = _pull(vc, near / "state")
    assert result.downloads == [] and result.looked

    # the relay goes down; a new revision reaches site A from the origin: only the change
    relay.server.stop()
    origin.disk("centos", 9)
    origin.declare()
    _run(a)
    assert last_run(work_dir / "state")["upstream_index"] == 1  # the origin served
    assert _pull(vc, work_dir / "state").downloads == [("centos", "centos.vmdk")]
    _run(b)  # and B, at the same revision, still serves exactly the same tokens
    assert _tokens(work_dir / "state") | {"library": None} == \
        _tokens(near / "state") | {"library": None}
    assert _pull(vc, near / "state").downloads == []


def test_an_upstream_without_a_trace_then_with_one(work_dir, sshd, client_key, server_library):
    """The Docker original (its own key line, no trace) declares nothing: tokens are the files'
    mtimes (rsync keeps them), ids still derive from names; then the site moves to an origin
    that declares revisions of the same library, and no token goes back."""
    _put(server_library, "ubuntu/ubuntu.vmdk", 1)
    _put(server_library, "photon/photon.iso", 2)
    original = sshd_harness.start_sshd(work_dir / "original", authorized_lines=[
        sshd_harness.original_rrsync_line(client_key[1], server_library)])
    try:
        _untraced_then_traced(work_dir, original, sshd, client_key, server_library)
    finally:
        original.stop()


def _untraced_then_traced(work_dir, original, sshd, client_key, server_library) -> None:
    config, state = write_config(work_dir, original, client_key[0]), work_dir / "state"
    vc = vcenter_model.Subscriber()
    _run(config)
    assert len(_pull(vc, state).downloads) == 2
    first = _tokens(state)
    disk = server_library / "ubuntu" / "ubuntu.vmdk"
    assert first["ubuntu"][3] == {"ubuntu.vmdk": disk.stat().st_mtime_ns // 1000}

    _run(config)
    assert _pull(vc, state).downloads == []
    _put(server_library, "ubuntu/ubuntu.vmdk", 3)
    _run(config)
    assert _pull(vc, state).downloads == [("ubuntu", "ubuntu.vmdk")]
    _never_back(first, _tokens(state), changed={("ubuntu", "ubuntu.vmdk")})

    # total state loss against an untraced upstream: same ids, same etags, nothing downloaded
    held = _tokens(state)
    shutil.rmtree(state)
    _run(config)
    assert _pull(vc, state).downloads == []
    _never_back(held, _tokens(state))

    # the site moves to an origin that declares revisions: unchanged files keep their tokens, a
    # change goes above every untraced one
    held = _tokens(state)
    _declare(work_dir, server_library)
    config = write_config(work_dir, sshd, client_key[0])
    _run(config)
    assert _pull(vc, state).downloads == []
    _never_back(held, _tokens(state))
    _put(server_library, "photon/photon.iso", 4)
    _declare(work_dir, server_library)
    _run(config)
    assert _pull(vc, state).downloads == [("photon", "photon.iso")]
    assert _tokens(state)["photon"][3]["photon.iso"] > revision.BASE
    _never_back(held, _tokens(state), changed={("photon", "photon.iso")})
