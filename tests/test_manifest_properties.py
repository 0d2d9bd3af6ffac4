"""Property-based: any sequence of add/modify/delete/rename keeps the manifest rules.

A hypothesis state machine edits a real library folder, rebuilds (in place, after losing the
state, or as the sync does: a new hard-linked snapshot with the previous one as `previous`), and
checks after every build: ids are the function of what they name and names are stable, every
token is a decimal Java long, an etag grows exactly when its file's content changed (with the
state; never goes back without it), versions move exactly when what a subscriber downloads moved,
every href resolves to a file of the listed size, and a build with no change leaves every JSON
byte as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from library_syncer.base import revision
from library_syncer.manifest import vcsp as manifest
from tests.test_manifest import _link_tree as link_tree

in_folder = manifest.StatePlace.folder  # the state read and written in one folder

FOLDERS = ["alpha", "beta gamma", "x#y", "ünï", "q?%25", "L" * 85 + "1", "L" * 85 + "2"]
FILES = ["a.bin", "b b.txt", "c#1.bin", "ü.txt", "d%20.bin"]
contents = st.binary(min_size=0, max_size=48)


def _put(path: Path, data: bytes) -> None:
    """Write as rsync does: a new inode renamed into place (never in place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.XXXXXX")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.json")
            if ".library-syncer" not in p.parts}


def _link_tree(source: Path, dest: Path) -> None:
    """A tree hard-linked to `source`, without its JSON or hidden state (as rsync's link-dest)."""
    link_tree(source, dest)
    dest.mkdir(exist_ok=True)


class LibraryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = Path(tempfile.mkdtemp(prefix="manifest-prop-"))
        self.root = self.base / "snap0"
        self.root.mkdir()
        self.state = self.base / "state"
        self.generation = 0
        self.model: dict[str, dict[str, bytes]] = {}  # folder -> file -> content
        self.descriptions: dict[str, str] = {}
        self.published: dict[str, dict] | None = None  # folder -> item of the last build
        self.published_model: dict[str, tuple] = {}
        self.lib: dict | None = None
        self.ever_ids: set[str] = set()
        self.json_before: dict[str, bytes] = {}
        self.lost = False  # this build lost the state: recovered from the published JSON
        self.traced = False

    def teardown(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------------ edits

    @rule(folder=st.sampled_from(FOLDERS), name=st.sampled_from(FILES), data=contents)
    def put_file(self, folder: str, name: str, data: bytes) -> None:
        _put(self.root / folder / name, data)
        self.model.setdefault(folder, {})[name] = data

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_file(self, data: st.DataObject) -> None:
        folder = data.draw(st.sampled_from(sorted(self.model)))
        name = data.draw(st.sampled_from(sorted(self.model[folder])))
        (self.root / folder / name).unlink()
        del self.model[folder][name]
        if not self.model[folder]:
            del self.model[folder]  # an empty folder is not an item

    @precondition(lambda self: self.model)
    @rule(data=st.data(), new=st.sampled_from(FILES))
    def rename_file(self, data: st.DataObject, new: str) -> None:
        folder = data.draw(st.sampled_from(sorted(self.model)))
        old = data.draw(st.sampled_from(sorted(self.model[folder])))
        if new in self.model[folder]:
            return
        (self.root / folder / old).rename(self.root / folder / new)
        self.model[folder][new] = self.model[folder].pop(old)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_item(self, data: st.DataObject) -> None:
        folder = data.draw(st.sampled_from(sorted(self.model)))
        shutil.rmtree(self.root / folder)
        del self.model[folder]
        self.descriptions.pop(folder, None)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), new=st.sampled_from(FOLDERS))
    def rename_item(self, data: st.DataObject, new: str) -> None:
        old = data.draw(st.sampled_from(sorted(self.model)))
        if new in self.model or (self.root / new).exists():
            return
        (self.root / old).rename(self.root / new)
        self.model[new] = self.model.pop(old)
        if old in self.descriptions:
            self.descriptions[new] = self.descriptions.pop(old)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), text=st.sampled_from(["", "Gold image", "Ünïcode ✓"]))
    def describe(self, data: st.DataObject, text: str) -> None:
        folder = data.draw(st.sampled_from(sorted(self.model)))
        _put(self.root / folder / manifest.DESCRIPTION_FILE, text.encode())
        self.descriptions[folder] = text

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def touch_same_content(self, data: st.DataObject) -> None:
        folder = data.draw(st.sampled_from(sorted(self.model)))
        name = data.draw(st.sampled_from(sorted(self.model[folder])))
        _put(self.root / folder / name, self.model[folder][name])  # new inode, new mtime

    @rule(junk=st.sampled_from([".hidden", "x.part", "y.tmp", "z~", "item.json"]),
          folder=st.sampled_from(FOLDERS))
    def junk(self, junk: str, folder: str) -> None:
        if folder in self.model:  # never listed, never an item on its own
            _put(self.root / folder / junk, b"junk")

    # ------------------------------------------------------------------ builds

    @rule()
    def build_in_place(self) -> None:
        self._build(self.root, previous=self.root)

    @rule()
    def build_after_losing_state(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
        self.lost = True
        self._build(self.root, previous=self.root)
        self.lost = False

    @rule()
    def sync_snapshot(self) -> None:
        """As the sync does: a new staging tree hard-linked to the last one, no JSON in it."""
        self.generation += 1
        staging = self.base / f"snap{self.generation}"
        _link_tree(self.root, staging)
        previous, self.root = self.root, staging
        self._build(staging, previous=previous)
        shutil.rmtree(previous)

    def _build(self, root: Path, previous: Path) -> None:
        report = manifest.build(root, name="Prop", state=in_folder(self.state), previous=previous,
                                workers=2)
        assert report.problems == ()
        assert all("\n" not in w for w in report.warnings)
        self._check(root, report)

    # ------------------------------------------------------------------ the rules

    def _check(self, root: Path, report: manifest.BuildReport) -> None:
        lib = json.loads((root / "lib.json").read_bytes())
        items = json.loads((root / "items.json").read_bytes())["items"]
        by_folder = {unquote(i["selfHref"]).rsplit("/", 1)[0]: i for i in items}
        assert set(by_folder) == set(self.model)
        names = [i["name"] for i in items]
        assert len(set(names)) == len(names) and all(len(n) <= 80 for n in names)
        assert lib["id"] == revision.library_id("Prop")
        assert revision.is_token(lib["version"]) and revision.is_token(lib["contentVersion"])
        now: dict[str, tuple] = {}
        etags: dict[str, dict[str, int]] = {}
        for folder, item in by_folder.items():
            assert json.loads((root / folder / "item.json").read_bytes()) == item
            assert item["id"] == revision.item_id(lib["id"], folder)
            assert revision.is_token(item["version"]) and revision.is_token(item["contentVersion"])
            assert int(item["version"]) >= int(item["contentVersion"])
            listed = {}
            for entry in item["files"]:
                path = root / unquote(entry["hrefs"][0])
                assert path.parent == root / folder
                assert path.stat().st_size == entry["size"]
                assert revision.is_token(entry["etag"])
                assert entry["generationNum"] == int(entry["etag"])
                listed[entry["name"]] = path.read_bytes()
            assert listed == self.model[folder]
            assert item["description"] == self.descriptions.get(folder, "")
            now[folder] = (tuple(sorted(listed.items())), item["description"])
            etags[folder] = {e["name"]: int(e["etag"]) for e in item["files"]}
        changed = set()
        if self.published is not None:
            assert lib["created"] == self.lib["created"]
            for folder, item in by_folder.items():
                old = self.published.get(folder)
                if old is None:
                    changed.add(folder)
                    continue
                assert (item["created"], item["name"]) == (old["created"], old["name"])
                before = self.published_model[folder][0]
                moved = set()
                for name, token in etags[folder].items():
                    was = self.etags[folder].get(name)
                    if was is None:
                        continue
                    if self.lost:  # the JSON cannot say whether the content changed
                        assert token >= was
                    elif dict(before)[name] == dict(now[folder][0])[name]:
                        assert token == was, "an unchanged file's etag moved"
                    else:
                        assert token > was, "a changed file's etag did not grow"
                    if token != was:
                        moved.add(name)
                content = set(etags[folder]) != set(self.etags[folder]) or bool(moved)
                meta = now[folder][1] != self.published_model[folder][1]
                cv, v = int(item["contentVersion"]), int(item["version"])
                old_cv, old_v = int(old["contentVersion"]), int(old["version"])
                # traced, a revision may raise a version alone (a hidden file or an empty
                # description sidecar came or went: the derived value moved)
                alone = self.traced  # may grow without a visible change
                assert (cv > old_cv) if content else (cv == old_cv or (alone and cv > old_cv))
                assert (v > old_v) if content or meta else (v == old_v or (alone and v > old_v))
                if content or meta or (v, cv) != (old_v, old_cv):
                    changed.add(folder)
            changed |= set(self.published) - set(by_folder)
            if changed:
                assert int(lib["version"]) > int(self.lib["version"])
            else:
                assert lib["version"] == self.lib["version"]
                assert _json_files(root) == self.json_before
        assert len(report.items_changed) == len(changed) or self.published is None
        self.etags = etags
        self.ever_ids |= {i["id"] for i in items}
        self.last_ids = {f: i["id"] for f, i in by_folder.items()}
        self.published, self.published_model, self.lib = by_folder, now, lib
        self.json_before = _json_files(root)

    def _last_id(self, folder: str) -> str | None:
        return getattr(self, "last_ids", {}).get(folder)

    @invariant()
    def state_stays_out_of_the_library(self) -> None:
        if (self.root / "items.json").exists():
            hrefs = (self.root / "items.json").read_text()
            assert manifest.STATE_DIR_NAME not in hrefs


LibraryMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_library_machine = LibraryMachine.TestCase


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """What the origin's trace lists: every regular file outside the hidden state folder."""
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not path.is_symlink() and rel.parts[0] != manifest.STATE_DIR_NAME \
                and path.suffix != ".json":
            st = path.stat()
            found[rel.as_posix()] = (st.st_size, st.st_mtime_ns)
    return found


class TracedLibraryMachine(LibraryMachine):
    """The same edits with an origin declaring a revision before every build: after any
    history (state lost or not, snapshots or in place), the site serves exactly the ids and
    tokens a site built from nothing at that revision serves — what makes two sites at one
    revision, and a site that lost everything, identical to a vCenter."""

    def __init__(self) -> None:
        super().__init__()
        self.revision: revision.Revision | None = None
        self.traced = True

    def _declare(self, root: Path) -> revision.Revision:
        files = _listing(root)
        digests = {p: revision.sha256_file(root / p) for p in files}
        serial = (self.revision.serial if self.revision else 0) + 1
        content = revision.next_content(files, digests, serial,
                                        self.revision.content if self.revision else None)
        self.revision = revision.Revision("hq", serial, "t", files, content)
        assert revision.Revision.from_json(self.revision.to_json()) == self.revision
        return self.revision

    def _build(self, root: Path, previous: Path) -> None:
        doc = self._declare(root)
        report = manifest.build(root, name="Prop", state=in_folder(self.state), previous=previous,
                                workers=2, revision_doc=doc)
        assert report.problems == ()
        self._check(root, report)
        fresh = self.base / "fresh"
        shutil.rmtree(fresh, ignore_errors=True)
        _link_tree(root, fresh)
        manifest.build(fresh, name="Prop", state=in_folder(self.base / "fresh-state"),
                       previous=self.base / "nothing", workers=2, revision_doc=doc)
        shutil.rmtree(self.base / "fresh-state")
        assert _served(fresh) == _served(root)
        assert all(etag > revision.BASE for item in _served(root).values()
                   for etag in item[3].values())


def _served(root: Path) -> dict[str, tuple]:
    items = json.loads((root / "items.json").read_bytes())["items"]
    # the two names cut to the same 80 characters are told apart in the order they came
    return {i["id"]: (i["version"], i["contentVersion"],
                      "" if i["name"].startswith("L" * 70) else i["name"],
                      {f["name"]: int(f["etag"]) for f in i["files"]}) for i in items}


TracedLibraryMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_traced_library_machine = TracedLibraryMachine.TestCase
