"""The reader of a published snapshot (web/published.py): as the manifests say, as vCenter reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from library_syncer.web import published
from tests.harness.caddy import write_library


def _write(root: Path, name: str, doc: object) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(doc))


def test_a_built_library_reads_as_its_manifests_say(tmp_path: Path):
    root = tmp_path / "lib"
    write_library(root, 3, disk_size=2**20)
    lib = json.loads((root / "lib.json").read_text())
    items = json.loads((root / "items.json").read_text())["items"]
    found = published.read(root)
    assert (found.name, found.id, found.version, found.content_version) == (
        lib["name"], lib["id"], lib["version"], lib["contentVersion"])
    assert sorted((i.name, i.id, i.version) for i in found.items) == sorted(
        (i["name"], i["id"], i["version"]) for i in items)
    assert found.size == sum(f["size"] for i in items for f in i["files"])
    assert {i.name: i.vapp for i in found.items}["ttylinux"] is False


def test_items_href_is_followed_and_item_json_completes_an_entry(tmp_path: Path):
    _write(tmp_path, "lib.json", {"name": "L", "version": "2", "itemsHref": "list%20of.json"})
    _write(tmp_path, "list of.json", {"items": [{"name": "a", "selfHref": "a/item.json"}, 7]})
    _write(tmp_path, "a/item.json", {"id": "x", "type": "vcsp.iso", "files": [
        {"name": "a.iso", "size": 5, "hrefs": ["a/a.iso"]},
        {"name": "b", "size": "5", "hrefs": ["http://elsewhere/b"]}]})
    found = published.read(tmp_path)
    assert (found.name, found.id, found.version) == ("L", None, "2")
    [item] = found.items  # an entry that is not an object is no item
    assert (item.name, item.id, item.type, item.vapp) == ("a", "x", "vcsp.iso", None)
    assert item.files == (published.File("a.iso", 5, "a/a.iso"), published.File("b", None, None))
    assert found.size is None  # one size is no whole number: the total is not known


@pytest.mark.parametrize("href", ["../outside.json", "/etc/passwd", "http://x/items.json", 3])
def test_a_link_out_of_the_snapshot_is_not_followed(tmp_path: Path, href: object):
    _write(tmp_path, "lib.json", {"name": "L", "itemsHref": href})
    _write(tmp_path, "items.json", {"items": []})
    _write(tmp_path.parent / "outside.json", "x", {"items": [{"name": "evil"}]})
    assert published.read(tmp_path).items == ()


def test_a_missing_or_torn_manifest_is_said_clearly(tmp_path: Path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        published.read(tmp_path)
    _write(tmp_path, "lib.json", ["not", "an", "object"])
    with pytest.raises(published.Unreadable, match=r"lib\.json: not a JSON object$"):
        published.read(tmp_path)
    _write(tmp_path, "lib.json", {"name": "L"})
    (tmp_path / "items.json").write_text('{"items": [{"na')  # torn mid-write
    with pytest.raises(published.Unreadable, match=r"items\.json: not valid JSON \(") as torn:
        published.read(tmp_path)
    assert torn.value.detail.startswith("Unterminated string")
    _write(tmp_path, "items.json", {"items": {}})
    with pytest.raises(published.Unreadable, match=r'items\.json: no "items" list'):
        published.read(tmp_path)
    monkeypatch.setattr(published, "MAX_MANIFEST_BYTES", 10)
    with pytest.raises(published.Unreadable, match=r"lib\.json: larger than 10 bytes"):
        published.read(tmp_path)
