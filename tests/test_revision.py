"""The revision document (base/revision.py): what the origin declares per revision, read by old
and new sites alike, hashed incrementally, canonical bytes; and the token and id rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.base import revision
from library_syncer.server import trace


def _released_format1_reader(text: str) -> tuple[str, int, str, dict]:
    """`Trace.from_json` as released before the content part (verbatim logic): the sites in the
    field run this; they must keep reading every document the origin writes."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != 1:
        raise ValueError("not a format-1 trace")
    origin, serial, when, rows = (data.get(k) for k in ("origin", "serial", "time", "files"))
    if not isinstance(origin, str) or not origin or not isinstance(when, str) or \
            type(serial) is not int or serial < 0 or not isinstance(rows, list):
        raise ValueError("malformed trace header")
    files = {}
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                and all(type(v) is int and v >= 0 for v in row[1:])):
            raise ValueError("malformed trace entry")
        files[row[0]] = (row[1], row[2])
    return origin, serial, when, files


def _config(tmp_path: Path, library: Path):
    path = tmp_path / "settings.toml"
    path.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{tmp_path / "state"}"\n'
                    'settle = "60s"\nname = "hq"\n')
    return config_module.load(path)


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _declare(config) -> trace.Outcome:
    return trace.tick(config, now=time.time() + 61)


def test_the_origin_declares_digests_and_change_serials_that_old_sites_still_read(tmp_path):
    library = tmp_path / "library"
    _put(library / "ubuntu" / "disk.vmdk", b"one")
    _put(library / "ubuntu" / "ubuntu.ovf", b"<ovf/>")
    config = _config(tmp_path, library)
    assert _declare(config).serial == 1
    text = (library / ".library-syncer" / "trace.json").read_text()
    origin, serial, _, files = _released_format1_reader(text)
    assert (origin, serial) == ("hq", 1) and set(files) == {"ubuntu/disk.vmdk",
                                                           "ubuntu/ubuntu.ovf"}
    doc = revision.Revision.from_json(text)
    assert doc.to_json() == text  # canonical: parsing and writing again gives the same bytes
    assert doc.content is not None
    assert doc.content.files["ubuntu/disk.vmdk"].changed == 1
    assert doc.content.items == {"ubuntu": revision.ItemFact(1, 0)}

    _put(library / "ubuntu" / "disk.vmdk", b"two")  # content changes
    _put(library / "photon" / "photon.iso", b"iso")  # an item appears
    os.utime(library / "ubuntu" / "ubuntu.ovf")  # same bytes, new mtime
    assert _declare(config).serial == 2
    doc = trace.read(library)
    assert doc is not None and doc.content is not None
    facts = doc.content.files
    assert (facts["ubuntu/disk.vmdk"].changed, facts["ubuntu/ubuntu.ovf"].changed,
            facts["photon/photon.iso"].changed) == (2, 1, 2)
    assert doc.content.items == {"ubuntu": revision.ItemFact(1, 0),
                                 "photon": revision.ItemFact(2, 0)}
    (library / "ubuntu" / "ubuntu.ovf").unlink()  # a file removed: the item's removal serial
    assert _declare(config).serial == 3
    doc = trace.read(library)
    assert doc.content.items["ubuntu"] == revision.ItemFact(1, 3)
    assert doc.content.files["ubuntu/disk.vmdk"].changed == 2
    _released_format1_reader((library / ".library-syncer" / "trace.json").read_text())


def test_only_new_files_are_read_and_a_file_moving_while_read_is_not_declared(tmp_path):
    library = tmp_path / "library"
    _put(library / "a" / "big.vmdk", b"x" * 1000)
    config = _config(tmp_path, library)
    _declare(config)
    # the known file is not read again: a digest planted in the document is carried over
    path = library / ".library-syncer" / "trace.json"
    doc = revision.Revision.from_json(path.read_text())
    planted = revision.Content({"a/big.vmdk": revision.FileFact("f" * 64, 1)}, doc.content.items)
    path.write_text(revision.Revision(doc.origin, doc.serial, doc.time, doc.files,
                                      planted).to_json())
    _put(library / "b" / "new.iso", b"new")
    assert _declare(config).state == "declared"
    assert trace.read(library).content.files["a/big.vmdk"].sha256 == "f" * 64

    original = revision.sha256_file

    def growing(name):  # the file is written to while the origin reads it
        digest = original(name)
        with open(name, "ab") as handle:
            handle.write(b"more")
        return digest

    _put(library / "c" / "copying.vmdk", b"half")
    revision.sha256_file = growing
    try:
        outcome = _declare(config)
    finally:
        revision.sha256_file = original
    assert outcome.state == "settling" and trace.read(library).serial == 2


def test_an_old_trace_without_content_is_declared_again_with_it(tmp_path):
    library = tmp_path / "library"
    _put(library / "a" / "disk.vmdk", b"x")
    config = _config(tmp_path, library)
    _declare(config)
    path = library / ".library-syncer" / "trace.json"
    old = json.loads(path.read_text())
    del old["content"]
    path.write_text(json.dumps(old))  # what a previous release declared
    assert revision.Revision.from_json(path.read_text()).content is None
    outcome = _declare(config)
    assert (outcome.state, outcome.serial) == ("declared", 2)
    assert trace.read(library).content is not None


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(serial=10**15),
    lambda d: d["content"]["files"][0].__setitem__(2, 99),  # changed after the revision
    lambda d: d["content"]["files"][0].__setitem__(1, "XYZ"),
    lambda d: d["content"]["files"].pop(),  # does not list the trace's files
    lambda d: d["content"]["items"][0].__setitem__(1, -1),
])
def test_malformed_documents_are_refused(mutate):
    doc = revision.Revision("hq", 5, "t", {"a/b": (1, 2)}, revision.Content(
        {"a/b": revision.FileFact("0" * 64, 3)}, {"a": revision.ItemFact(1, 3)}))
    data = json.loads(doc.to_json())
    mutate(data)
    with pytest.raises(ValueError):
        revision.Revision.from_json(json.dumps(data))


def test_a_later_content_format_is_ignored_not_refused():
    data = {"format": 1, "origin": "hq", "serial": 1, "time": "t", "files": [],
            "content": {"format": 2, "whatever": True}}
    assert revision.Revision.from_json(json.dumps(data)).content is None


def test_token_and_id_rules():
    assert revision.traced_token(0) > revision.time_token(time.time_ns())
    assert revision.traced_token(10**15 - 1) <= revision.LONG_MAX
    assert revision.time_token(0) == 1 and revision.time_token(10**40) == revision.BASE - 1
    assert revision.grown(5, 3) == 6 and revision.grown(5, 9) == 9
    assert revision.grown(revision.LONG_MAX, 0) == revision.LONG_MAX
    for good in ("0", "1", str(revision.LONG_MAX)):
        assert revision.is_token(good)
    for bad in ("", "01", "+1", "-1", "1.0", "٣", str(revision.LONG_MAX + 1), "9d38a6", 1):
        assert not revision.is_token(bad)
    lib = revision.library_id("Templates")
    assert lib == revision.library_id("Templates") != revision.library_id("Other")
    assert revision.item_id(lib, "ubuntu") == revision.item_id(lib, "ubuntu")
    assert revision.item_id(lib, "ubuntu") != revision.item_id(lib, "ubuntu-2")
    assert lib.startswith("urn:uuid:")


def test_manifest_build_on_a_traced_tree_derives_tokens_from_its_revision(tmp_path):
    library = tmp_path / "library"
    _put(library / "ubuntu" / "disk.vmdk", b"one")
    _declare(_config(tmp_path, library))
    result = subprocess.run([sys.executable, "-m", "library_syncer", "manifest", "build",
                             str(library), "--name", "T", "--state", str(tmp_path / "st")],
                            capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    item = json.loads((library / "items.json").read_text())["items"][0]
    assert item["files"][0]["etag"] == str(revision.BASE + 1) == item["version"]
    assert item["id"] == revision.item_id(revision.library_id("T"), "ubuntu")
