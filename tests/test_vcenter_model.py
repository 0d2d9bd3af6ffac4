"""The subscriber model itself (tests/harness/vcenter_model.py): it must refuse what vCenter
refuses and flag what a publisher must never do, or the scenario tests would prove nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.harness import vcenter_model as model

LONG_MAX = 2**63 - 1


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("42", 42), ("+7", 7), ("-7", -7), ("007", 7), (str(LONG_MAX), LONG_MAX),
    (str(-(2**63)), -(2**63)), ("١٢", 12),  # Character.digit accepts any Unicode digit
])
def test_long_value_of_accepts_what_java_accepts(text, value):
    assert model.long_value_of(text) == value


@pytest.mark.parametrize("text", [
    "", "+", "-", " 1", "1 ", "1.0", "0x10", "1e3", str(LONG_MAX + 1), str(-(2**63) - 1),
    "9d38a60e5008c8567ff2ea84273a0bf5", None, 12,
])
def test_long_value_of_refuses_what_java_refuses(text):
    with pytest.raises(model.JavaNumberFormatError):
        model.long_value_of(text)


def _library(tmp_path: Path, files: dict[str, bytes], *, version: str = "10",
             etag: str = "5", name: str = "ubuntu") -> Path:
    root = tmp_path / "pub"
    (root / "ubuntu").mkdir(parents=True, exist_ok=True)
    entries = []
    for file_name, body in files.items():
        (root / "ubuntu" / file_name).write_bytes(body)
        entries.append({"name": file_name, "size": len(body), "etag": etag,
                        "generationNum": int(etag) if etag.isdigit() else 0,
                        "hrefs": [f"ubuntu/{file_name}"]})
    item = {"id": "urn:uuid:1", "name": name, "version": etag, "contentVersion": etag,
            "selfHref": "ubuntu/item.json", "type": "vcsp.other", "files": entries}
    (root / "ubuntu" / "item.json").write_text(json.dumps(item))
    (root / "items.json").write_text(json.dumps({"items": [item]}))
    (root / "lib.json").write_text(json.dumps({"id": "urn:uuid:0", "version": version,
                                               "contentVersion": version,
                                               "itemsHref": "items.json"}))
    return root


def test_a_hex_etag_fails_the_items_sync(tmp_path):
    root = _library(tmp_path, {"disk.vmdk": b"x"}, etag="9d38a6")
    result = model.Subscriber().sync(model.dir_fetch(root))
    assert result.downloads == [] and "For input string" in " ".join(result.errors)


def test_downloads_follow_etags_and_versions_gate(tmp_path):
    vc = model.Subscriber()
    root = _library(tmp_path, {"a": b"1", "b": b"2"})
    assert sorted(vc.sync(model.dir_fetch(root)).downloads) == [("ubuntu", "a"), ("ubuntu", "b")]
    assert vc.sync(model.dir_fetch(root)).looked is False  # the version did not move
    # a file changed, its etag and all versions grew: only that file
    root = _library(tmp_path, {"a": b"1", "b": b"3"}, version="11", etag="6")
    items = json.loads((root / "items.json").read_text())
    items["items"][0]["files"][0]["etag"] = "5"  # "a" kept its etag
    items["items"][0]["files"][0]["generationNum"] = 5
    (root / "items.json").write_text(json.dumps(items))
    (root / "ubuntu" / "item.json").write_text(json.dumps(items["items"][0]))
    result = vc.sync(model.dir_fetch(root))
    assert result.downloads == [("ubuntu", "b")] and result.violations == []


def test_what_a_publisher_must_never_do_is_flagged(tmp_path):
    vc = model.Subscriber()
    vc.sync(model.dir_fetch(_library(tmp_path, {"a": b"1"}, version="10", etag="5")))
    # content changed but lib.json's version did not move: vCenter would never see it
    seen = copy.deepcopy(vc)
    unmoved = seen.sync(model.dir_fetch(_library(tmp_path, {"a": b"2"}, version="10", etag="6")))
    assert any("version did not move" in v for v in unmoved.violations)
    # versions and etags that went back
    back = copy.deepcopy(vc).sync(model.dir_fetch(
        _library(tmp_path, {"a": b"2"}, version="9", etag="4")))
    assert any("version went back" in v for v in back.violations)
    assert any("etag went back" in v for v in back.violations)


def test_names_duplicates_and_hrefs_are_checked(tmp_path):
    root = _library(tmp_path, {"a": b"1"}, name="n" * 81)
    assert "over 80" in " ".join(model.Subscriber().sync(model.dir_fetch(root)).errors)
    root = _library(tmp_path, {"a": b"1"})
    items = json.loads((root / "items.json").read_text())
    twin = dict(items["items"][0], id="urn:uuid:2")
    (root / "items.json").write_text(json.dumps({"items": [items["items"][0], twin]}))
    assert "duplicate name" in " ".join(model.Subscriber().sync(model.dir_fetch(root)).errors)
    for bad in ("../etc/passwd", "/abs", "http://elsewhere/x"):
        item = dict(items["items"][0])
        item["files"] = [dict(item["files"][0], hrefs=[bad])]
        (root / "items.json").write_text(json.dumps({"items": [item]}))
        (root / "ubuntu" / "item.json").write_text(json.dumps(item))
        assert "leaves the library" in " ".join(
            model.Subscriber().sync(model.dir_fetch(root)).errors), bad
