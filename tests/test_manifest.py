"""The VCSP manifest engine on real folders: the fixture template, synthetic disks, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest

from library_syncer.base import revision
from library_syncer.base.errors import ExitStatus
from library_syncer.manifest import vcsp as manifest
from tests.harness import readable
from tests.harness.wait import wait_for

in_folder = manifest.StatePlace.folder  # the state read and written in one folder

TTY = "ttylinux-template"
DISK = "ttylinux-pc_i486-16.1-disk1.vmdk"
MF = "ttylinux-pc_i486-16.1.mf"


def _copy_template(fixtures_dir: Path, dest: Path) -> Path:
    shutil.copytree(fixtures_dir / "ovf" / TTY, dest)
    for path in [dest, *dest.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _json(path: Path) -> dict:
    return json.loads(path.read_bytes())


def _items(root: Path) -> dict[str, dict]:
    return {item["name"]: item for item in _json(root / "items.json")["items"]}


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every JSON file we publish, with its bytes and mtime."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in root.rglob("*.json") if ".library-syncer" not in p.parts}


def _build(root: Path, **kwargs) -> manifest.BuildReport:
    kwargs.setdefault("name", "Test library")
    return manifest.build(root, **kwargs)


@pytest.fixture
def library(tmp_path: Path, fixtures_dir: Path) -> Path:
    root = tmp_path / "library"
    root.mkdir()
    _copy_template(fixtures_dir, root / TTY)
    _write(root / "tools" / "readme.txt", "hello\n")
    _write(root / "tools" / "bin.tar.gz", os.urandom(3000))
    _write(root / "ubuntu" / "ubuntu-22.04.iso", os.urandom(5000))
    return root


def _versions(root: Path) -> dict[str, tuple[int, int]]:
    return {n: (int(i["version"]), int(i["contentVersion"])) for n, i in _items(root).items()}


def _lib_version(root: Path) -> int:
    return int(_json(root / "lib.json")["version"])


def test_first_build_lists_everything(library: Path) -> None:
    started = time.time_ns() // 1000
    report = _build(library)
    assert report.problems == ()
    assert report.items == 3 and started <= report.library_version <= time.time_ns() // 1000
    lib = _json(library / "lib.json")
    assert lib["vcspVersion"] == "2" and lib["itemsHref"] == "items.json"
    assert lib["version"] == lib["contentVersion"] == str(report.library_version)
    assert lib["id"] == revision.library_id("Test library") and lib["name"] == "Test library"
    assert lib["id"].startswith("urn:uuid:")
    assert lib["capabilities"] == {"transferIn": ["httpGet"], "transferOut": ["httpGet"]}
    items = _items(library)
    assert {n: i["type"] for n, i in items.items()} == {
        TTY: "vcsp.ovf", "tools": "vcsp.other", "ubuntu": "vcsp.iso"}
    tty = items[TTY]
    assert tty["selfHref"] == f"{TTY}/item.json"
    assert _json(library / TTY / "item.json") == tty
    meta = json.loads(tty["metadata"][0]["value"])  # type-metadata is valid JSON
    assert tty["metadata"][0]["key"] == "type-metadata"
    assert meta["id"] == tty["id"] and meta["libraryIdParent"] == lib["id"]
    assert meta["isVappTemplate"] == "false"
    for folder, item in items.items():  # no trace: each file's mtime in microseconds
        assert item["id"] == revision.item_id(lib["id"], folder)
        tokens = []
        for entry in item["files"]:
            path = library / unquote(entry["hrefs"][0])
            assert isinstance(entry["size"], int) and entry["size"] == path.stat().st_size
            assert entry["etag"] == str(path.stat().st_mtime_ns // 1000)
            assert entry["generationNum"] == int(entry["etag"])
            tokens.append(int(entry["etag"]))
        assert item["version"] == item["contentVersion"] == str(max(tokens))
    assert "metadata" not in items["tools"]
    assert report.files_hashed == 6
    assert report.content_bytes == sum(e["size"] for i in items.values() for e in i["files"])
    assert any("10595840" in w for w in report.warnings)  # descriptor size differs: a warning


def test_no_change_rebuild_is_byte_identical_and_reads_nothing(library: Path) -> None:
    _build(library)
    before = _snapshot(library)
    report = _build(library)
    assert report.files_hashed == 0 and report.bytes_hashed == 0
    assert report.items_changed == ()
    assert _snapshot(library) == before  # bytes and mtimes


def test_no_change_rebuild_opens_no_content_file(library: Path) -> None:
    # An audit hook sees every open() and os.open(): only our JSON and state may be opened.
    _build(library)
    code = ("import sys; from pathlib import Path; opened = []\n"
            "sys.addaudithook(lambda e, a: opened.append(str(a[0])) if e == 'open' else None)\n"
            "from library_syncer.manifest import vcsp as manifest\n"
            "r = manifest.build(Path(sys.argv[1]), name='Test library')\n"
            "print('\\n'.join(p for p in opened if p.startswith(sys.argv[1])))")
    result = subprocess.run([sys.executable, "-c", code, str(library)], capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    opened = {Path(line).name for line in result.stdout.split()}
    assert opened, "the hook saw nothing: the test would prove nothing"
    assert opened <= {"lib.json", "items.json", "item.json", manifest.STATE_FILE,
                      manifest.CACHE_FILE}, opened


def test_versions_move_only_with_content(library: Path) -> None:
    _build(library)
    first = _items(library)
    _write(library / "tools" / "readme.txt", "hello, changed\n")
    before, lib_before = _versions(library), _lib_version(library)
    report = _build(library)
    items = _items(library)
    assert report.items_changed == ("tools",)
    assert report.library_version == _lib_version(library) > lib_before
    assert _versions(library)["tools"] > before["tools"]
    assert _versions(library)["tools"][1] > before["tools"][1]
    assert items[TTY] == first[TTY]
    assert items["tools"]["id"] == first["tools"]["id"]
    assert items["tools"]["created"] == first["tools"]["created"]
    # A description alone bumps `version`, not `contentVersion`.
    before = _versions(library)["tools"]
    _write(library / "tools" / manifest.DESCRIPTION_FILE, "  Handy tools\n")
    report = _build(library)
    tools = _items(library)["tools"]
    assert tools["description"] == "Handy tools"
    assert _versions(library)["tools"][0] > before[0]
    assert _versions(library)["tools"][1] == before[1]
    assert all(f["name"] != manifest.DESCRIPTION_FILE for f in tools["files"])
    _write(library / "tools" / manifest.DESCRIPTION_FILE, b"caf\xe9 tools")  # Latin-1, not UTF-8
    report = _build(library)
    assert _items(library)["tools"]["description"] == "caf\ufffd tools"
    assert any("not UTF-8; invalid bytes replaced" in w for w in report.warnings)
    lib_before = _lib_version(library)
    _write(library / "tools" / manifest.DESCRIPTION_FILE, "Handy tools")
    report = _build(library)
    assert report.library_version > lib_before
    # Deleting an item removes it and bumps the library.
    lib_before = _lib_version(library)
    shutil.rmtree(library / "ubuntu")
    report = _build(library)
    assert "ubuntu" not in _items(library) and report.items_changed == ("ubuntu",)
    assert _lib_version(library) > lib_before


def test_ids_and_versions_survive_loss_of_state(library: Path) -> None:
    _build(library)
    _write(library / "tools" / "readme.txt", "v2\n")
    _build(library)
    before = _snapshot(library)
    shutil.rmtree(library / manifest.STATE_DIR_NAME)
    report = _build(library)
    assert report.items_changed == ()
    assert _snapshot(library) == before


def test_corrupt_previous_lib_json_is_reported_and_rebuilt(library: Path) -> None:
    _build(library)
    lib_id = _json(library / "lib.json")["id"]
    shutil.rmtree(library / manifest.STATE_DIR_NAME)
    (library / "lib.json").write_text("{ not json")
    report = _build(library)
    assert any("lib.json" in w and "not valid JSON" in w for w in report.warnings)
    lib = _json(library / "lib.json")
    assert lib["id"] == lib_id  # recovered from the items' libraryIdParent
    assert int(lib["version"]) >= 2


def test_hand_edited_items_json_is_reported_and_rebuilt(library: Path) -> None:
    _build(library)
    ids = {n: i["id"] for n, i in _items(library).items()}
    shutil.rmtree(library / manifest.STATE_DIR_NAME)
    data = _json(library / "items.json")
    data["items"][0]["version"] = "banana"
    (library / "items.json").write_text(json.dumps(data))
    report = _build(library)
    assert any("malformed" in w for w in report.warnings)
    items = _items(library)
    assert {n: i["id"] for n, i in items.items()} == ids  # ids never come from the state


def test_hostile_previous_manifest_cannot_reach_outside(library: Path, tmp_path: Path) -> None:
    victim = _write(tmp_path / "victim" / "item.json", b"keep me")
    _build(library)
    shutil.rmtree(library / manifest.STATE_DIR_NAME)
    data = _json(library / "items.json")
    data["items"][0]["selfHref"] = "../victim/item.json"
    (library / "items.json").write_text(json.dumps(data))
    report = _build(library)
    assert victim.read_bytes() == b"keep me"
    assert any("not an item folder of this library" in w for w in report.warnings)


def test_state_dir_inside_the_library_is_never_listed(library: Path) -> None:
    report = _build(library, state=in_folder(library / "cache"))
    assert report.items == 3 and "cache" not in _items(library)
    assert (library / "cache" / manifest.STATE_FILE).is_file()
    assert not (library / "cache" / "item.json").exists()


def test_mf_mismatch_leaves_item_out_and_rest_updates(library: Path) -> None:
    _build(library)
    first = _items(library)[TTY]
    disk = library / TTY / DISK
    data = bytearray(disk.read_bytes())
    data[1000] ^= 0xFF
    disk.write_bytes(bytes(data))
    _write(library / "tools" / "new.txt", "new")
    report = _build(library)
    assert [(p.item, p.file) for p in report.problems] == [(TTY, DISK)]
    line = str(report.problems[0])
    assert TTY in line and DISK in line and "SHA1" in line and "\n" not in line
    items = _items(library)
    assert TTY not in items and "new.txt" in {f["name"] for f in items["tools"]["files"]}
    assert not (library / TTY / "item.json").exists()  # no stale item.json for readers
    assert set(report.items_changed) == {TTY, "tools"}
    # Fixed: comes back under its old id; the library moves on.
    data[1000] ^= 0xFF
    disk.write_bytes(bytes(data))
    report = _build(library)
    assert report.problems == () and report.items_changed == (TTY,)
    back = _items(library)[TTY]
    assert back["id"] == first["id"] and back["created"] == first["created"]
    assert int(back["version"]) > int(first["version"])


def test_mf_missing_file_and_sha256_manifest(library: Path) -> None:
    folder = library / TTY
    disk = (folder / DISK).read_bytes()
    ovf_name = "ttylinux-pc_i486-16.1.ovf"
    lines = [f"SHA256({ovf_name})= {hashlib.sha256((folder / ovf_name).read_bytes()).hexdigest()}",
             f"SHA512({DISK})= {hashlib.sha512(disk).hexdigest()}"]
    (folder / MF).write_text("\n".join(lines) + "\n")
    assert _build(library).problems == ()
    (folder / MF).write_text("\n".join([*lines, f"SHA1(gone.vmdk)= {'0' * 40}"]) + "\n")
    report = _build(library)
    assert [(p.item, p.file) for p in report.problems] == [(TTY, "gone.vmdk")]
    (folder / MF).write_text("garbage\n")
    report = _build(library)
    assert report.problems[0].file == MF and "invalid manifest" in str(report.problems[0])


def test_problem_lines() -> None:
    assert str(manifest.ItemProblem("tty", "d.vmdk", "bad")) == \
        "item 'tty' left out: tty/d.vmdk: bad"
    assert str(manifest.ItemProblem("isos/a", "a.iso", "x")) == \
        "item 'isos/a' left out: isos/a.iso: x"
    assert str(manifest.ItemProblem("tty", None, "x")) == "item 'tty' left out: tty: x"


def test_referenced_file_missing(library: Path) -> None:
    (library / TTY / MF).unlink()
    (library / TTY / DISK).unlink()
    report = _build(library)
    assert [(p.item, p.file) for p in report.problems] == [(TTY, DISK)]
    assert "missing" in report.problems[0].message
    assert set(_items(library)) == {"tools", "ubuntu"}


@pytest.mark.parametrize("descriptor", ["invalid.ovf", "empty.ovf", "bad-utf8"])
def test_invalid_descriptors_are_problems(library: Path, fixtures_dir: Path,
                                          descriptor: str) -> None:
    folder = library / "broken"
    if descriptor == "bad-utf8":
        _write(folder / "t.ovf", b"<Envelope><VirtualSystem id='a'><Name>\xff</Name>"
                                 b"</VirtualSystem></Envelope>")
    else:
        shutil.copy(fixtures_dir / "ovf" / "descriptors" / descriptor, _write(folder / "x", ""))
        (folder / "x").rename(folder / "t.ovf")
    report = _build(library)
    assert [(p.item, p.file) for p in report.problems] == [("broken", "t.ovf")]
    assert "invalid OVF descriptor" in str(report.problems[0])
    assert set(_items(library)) == {TTY, "tools", "ubuntu"}


@pytest.mark.parametrize(("descriptor", "vapp"), [("3VMvApp.ovf", "true"),
                                                   ("vApp_with_2vms.ovf", "true"),
                                                   ("nostalgia-two-disks.ovf", "false")])
def test_vapp_detection_with_synthetic_disks(tmp_path: Path, fixtures_dir: Path,
                                             descriptor: str, vapp: str) -> None:
    from library_syncer.manifest import ovf
    source = fixtures_dir / "ovf" / "descriptors" / descriptor
    folder = tmp_path / "lib" / "template"
    _write(folder / descriptor, source.read_bytes())
    for ref in ovf.parse_descriptor(source.read_bytes()).references:
        _write(folder / ref.href, os.urandom(512))
    report = _build(tmp_path / "lib")
    assert report.problems == ()
    item = _items(tmp_path / "lib")["template"]
    assert item["type"] == "vcsp.ovf"
    assert json.loads(item["metadata"][0]["value"])["isVappTemplate"] == vapp


def test_item_types(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    _write(root / "isos" / "a.iso", b"a")
    _write(root / "isos" / "b.ISO", b"b")
    _write(root / "one" / "x.iso", b"x")
    _write(root / "mixed" / "x.iso", b"x")
    _write(root / "mixed" / "notes.txt", b"n")
    _write(root / "ovfname" / "not.ovf.txt", b"n")  # .ovf by extension only
    _write(root / "upper" / "T.OVF", b"<Envelope><VirtualSystem id='v'/></Envelope>")
    report = _build(root)
    assert report.problems == ()
    items = _items(root)
    assert {n: i["type"] for n, i in items.items()} == {
        "a": "vcsp.iso", "b": "vcsp.iso", "one": "vcsp.iso", "mixed": "vcsp.other",
        "ovfname": "vcsp.other", "upper": "vcsp.ovf"}
    assert items["a"]["selfHref"] == "isos/a/item.json"
    assert _json(root / "isos" / "a" / "item.json") == items["a"]
    before = _snapshot(root)
    assert _build(root).warnings == ()  # our ISO sub-folders are not "sub-folders in an item"
    assert _snapshot(root) == before
    (root / "isos" / "b.ISO").unlink()
    _write(root / "isos" / "c.iso", b"c")
    _build(root)
    assert not (root / "isos" / "b").exists()  # the removed ISO's item.json folder is gone


def test_names_shortened_unique_and_hrefs_encoded(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    long_a = "a" * 90 + ".iso"
    for folder in ["x" * 100, "x" * 100 + "y", "sp ace#1 %25?é", "dossier été"]:
        _write(root / folder / "f i#le?%.bin", folder.encode())
    _write(root / "iso-folder" / long_a, b"1")
    _write(root / "iso-folder" / ("a" * 90 + "b.iso"), b"2")
    report = _build(root)
    assert report.problems == ()
    items = _json(root / "items.json")["items"]
    names = [i["name"] for i in items]
    assert len(set(names)) == len(names) and all(len(n) <= 80 for n in names)
    assert "x" * 80 in names and "sp ace#1 %25?é" in names
    for item in items:
        for entry in item["files"]:
            href = entry["hrefs"][0]
            assert " " not in href and "#" not in href and "?" not in href
            assert (root / unquote(href)).stat().st_size == entry["size"]
        assert (root / unquote(item["selfHref"])).is_file()
    assert manifest.shorten("b" * 100 + ".ovf") == "b" * 76 + ".ovf"
    assert manifest.shorten("c" * 100) == "c" * 80
    assert manifest.href("a b/c#d", "é?.iso") == "a%20b/c%23d/%C3%A9%3F.iso"


def test_never_listed(library: Path, tmp_path: Path) -> None:
    tools = library / "tools"
    for name in [".hidden", ".vSphere-HA", "big.iso.part", "x.tmp", "notes.txt~",
                 ".readme.txt.Ab12Cd", "item.json"]:
        _write(tools / name, b"junk")
    outside = _write(tmp_path / "secret.txt", b"secret")
    (tools / "link").symlink_to(outside)
    (library / "rootlink").symlink_to(tmp_path)
    _write(tools / "sub" / "deep.txt", b"deep")
    _write(library / "stray.txt", b"at the root")
    report = _build(library)
    names = {f["name"] for f in _items(library)["tools"]["files"]}
    assert names == {"readme.txt", "bin.tar.gz"}
    assert set(_items(library)) == {TTY, "tools", "ubuntu"}
    text = "\n".join(report.warnings)
    for fragment in ["tools/link: a symbolic link", "tools/sub: a sub-folder", "rootlink",
                     "stray.txt"]:
        assert fragment in text
    assert all("\n" not in w for w in report.warnings)


def test_names_that_are_not_utf8_are_warned_about(library: Path) -> None:
    raw = os.fsencode(library)
    os.mkdir(raw + b"/bad\xff")
    Path(os.fsdecode(raw + b"/bad\xff/c.bin")).write_bytes(b"c")
    Path(os.fsdecode(raw + b"/tools/b\xfe.bin")).write_bytes(b"b")
    report = _build(library)
    assert report.problems == () and set(_items(library)) == {TTY, "tools", "ubuntu"}
    assert "b\\xfe.bin" not in (library / "items.json").read_text()
    text = "\n".join(report.warnings)
    assert "bad\\xff: the name is not valid UTF-8" in text
    assert "tools/b\\xfe.bin: the name is not valid UTF-8" in text


def test_certs_listed_unless_excluded(library: Path) -> None:
    _write(library / TTY / "ttylinux-pc_i486-16.1.cert", b"-----BEGIN CERTIFICATE-----\n")
    _build(library)
    assert "ttylinux-pc_i486-16.1.cert" in {f["name"] for f in _items(library)[TTY]["files"]}
    _build(library, include_certs=False)
    assert "ttylinux-pc_i486-16.1.cert" not in {f["name"] for f in _items(library)[TTY]["files"]}


def test_ova_beside_its_unpacked_ovf_is_not_listed(library: Path, fixtures_dir: Path) -> None:
    from library_syncer.manifest import ovf
    ova = fixtures_dir / "ovf" / "ttylinux-pc_i486-16.1.ova"
    folder = library / "from-ova"
    folder.mkdir()
    shutil.copy(ova, folder / ova.name)
    ovf.unpack_ova(folder / ova.name, folder)
    report = _build(library)
    assert report.problems == ()
    item = _items(library)["from-ova"]
    assert item["type"] == "vcsp.ovf"
    assert ova.name not in {f["name"] for f in item["files"]} and len(item["files"]) == 3
    assert any("from-ova/ttylinux-pc_i486-16.1.ova" in w for w in report.warnings)
    # The OVA alone is not a template vCenter reads: other, with a hint.
    alone = library / "only-ova"
    alone.mkdir()
    shutil.copy(ova, alone / ova.name)
    report = _build(library)
    assert _items(library)["only-ova"]["type"] == "vcsp.other"
    assert any("only-ova: holds an .ova" in w for w in report.warnings)


def test_empty_library_and_bad_paths(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    report = _build(root)
    assert report.items == 0 and _json(root / "items.json") == {"items": []}
    with pytest.raises(manifest.LibraryPathError, match="does not exist"):
        _build(tmp_path / "missing")
    with pytest.raises(manifest.LibraryPathError, match="not a folder"):
        _build(_write(tmp_path / "file", b""))


def test_unreadable_file_is_a_problem(work_dir: Path) -> None:
    # Root reads everything, so run the build as `nobody` on a library it cannot fully read.
    tmp_path = work_dir
    root = tmp_path / "lib"
    _write(root / "ok" / "a.txt", b"a")
    secret = _write(root / "locked" / "disk.bin", b"secret")
    tmp_path.chmod(0o755)
    for path in [root, root / "ok", root / "locked"]:
        path.chmod(0o777)
    (root / "ok" / "a.txt").chmod(0o644)
    secret.chmod(0o000)
    code = ("import sys, os; os.setgid(65534); os.setuid(65534); "
            "from pathlib import Path; from library_syncer.manifest import vcsp as manifest; "
            "r = manifest.build(Path(sys.argv[1]), name='x', "
            "state=manifest.StatePlace.folder(Path(sys.argv[2]))); "
            "print('\\n'.join(str(p) for p in r.problems))")
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    # The copy another account can read: the checkout may sit in /root (0700).
    result = subprocess.run([readable.python(), "-s", "-c", code, str(root), str(state)],
                            capture_output=True, text=True, timeout=60, cwd=readable.NEUTRAL_CWD,
                            env={**os.environ, "PYTHONPATH": str(readable.package_dir())})
    assert result.returncode == 0, result.stderr
    assert "locked/disk.bin: cannot read (Permission denied)" in result.stdout
    assert [i["name"] for i in _json(root / "items.json")["items"]] == ["ok"]


def test_manifest_files_replaced_never_written_in_place(library: Path) -> None:
    _build(library)
    published = library.parent / "published-items.json"
    os.link(library / "items.json", published)  # as a hard link shared with a snapshot
    original = published.read_bytes()
    _write(library / "tools" / "more.txt", b"more")
    _build(library)
    assert published.read_bytes() == original
    assert (library / "items.json").read_bytes() != original


def test_lib_json_written_last(library: Path) -> None:
    _build(library)
    lib = (library / "lib.json").stat().st_mtime_ns
    assert lib >= (library / "items.json").stat().st_mtime_ns
    assert (library / "items.json").stat().st_mtime_ns >= \
        (library / TTY / "item.json").stat().st_mtime_ns


# ------------------------------------------------------- the sync flow: hard-link snapshots


def _link_tree(source: Path, dest: Path) -> None:
    """What rsync --link-dest does for unchanged files: same inodes, no JSON."""
    for path in source.rglob("*"):
        rel = path.relative_to(source)
        if rel.parts[0].startswith(".") or path.suffix == ".json":
            continue
        if path.is_dir():
            (dest / rel).mkdir(parents=True, exist_ok=True)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dest / rel)


def _after_fs_clock(folder: Path, ctime_ns: int) -> None:
    """Return once the file system's clock (a coarse one: a few ms per tick) is past `ctime_ns`,
    as a probe file's ctime shows."""
    probe = folder / ".clock-probe"
    probe.touch()

    def moved() -> bool:
        os.utime(probe)
        return probe.stat().st_ctime_ns > ctime_ns

    wait_for(moved, 5, "the file system clock to move on", interval=0.001)


def test_sync_flow_snapshots_reuse_cache_and_keep_bytes(library: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = _build(library, state=in_folder(state))
    assert first.files_hashed == 6
    published = library
    for generation in range(3):  # three no-change syncs, each a new staging tree
        staging = tmp_path / f"snap{generation}"
        staging.mkdir()
        before = (published / "tools" / "readme.txt").stat()
        _after_fs_clock(tmp_path, before.st_ctime_ns)  # else link and file may share a tick
        _link_tree(published, staging)
        st = (staging / "tools" / "readme.txt").stat()
        assert (st.st_dev, st.st_ino) == (before.st_dev, before.st_ino)  # the same inode
        assert st.st_ctime_ns > before.st_ctime_ns  # linking touched its ctime: the cache's
        # exception for hard-linked files is what this loop exercises
        report = _build(staging, state=in_folder(state), previous=published)
        assert report.files_hashed == 0, "hard-linked files must come from the cache"
        assert report.items_changed == ()
        snap = {k: v[0] for k, v in _snapshot(staging).items()}
        assert snap == {k: v[0] for k, v in _snapshot(published).items()}
        assert not (staging / manifest.STATE_DIR_NAME).exists()
        published = staging
    # A changed file arrives as a new inode (rsync writes a temp file and renames it).
    staging = tmp_path / "changed"
    staging.mkdir()
    _link_tree(published, staging)
    (staging / "tools" / "readme.txt").unlink()
    _write(staging / "tools" / "readme.txt", "changed\n")
    report = _build(staging, state=in_folder(state), previous=published)
    assert report.files_hashed == 1 and report.items_changed == ("tools",)
    assert _lib_version(staging) > _lib_version(published)


def test_sync_flow_recovers_ids_from_previous_when_state_lost(library: Path,
                                                              tmp_path: Path) -> None:
    _build(library, state=in_folder(tmp_path / "state"))
    staging = tmp_path / "staging"
    staging.mkdir()
    _link_tree(library, staging)
    report = _build(staging, state=in_folder(tmp_path / "new-state"), previous=library)
    assert report.items_changed == () and report.files_hashed == 6
    assert {k: v[0] for k, v in _snapshot(staging).items()} == \
        {k: v[0] for k, v in _snapshot(library).items()}


def test_first_sync_without_a_published_snapshot(library: Path, tmp_path: Path) -> None:
    report = _build(library, state=in_folder(tmp_path / "state"),
                    previous=tmp_path / "no-snapshot-yet")
    assert report.problems == () and report.items == 3 and report.library_version > 1


def test_in_place_rewrite_with_restored_mtime_is_detected(library: Path) -> None:
    _build(library)
    path = library / "tools" / "readme.txt"
    st = path.stat()
    with open(path, "r+b") as handle:  # same inode, same size, mtime put back: only ctime moves
        handle.write(b"J")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = _build(library)
    assert report.files_hashed == 1 and report.items_changed == ("tools",)


# ---------------------------------------------------------------- the command


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "library_syncer", *args], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])


def test_cli_build(library: Path, tmp_path: Path) -> None:
    result = _cli("manifest", "build", str(library), "--name", "Site", "--workers", "2",
                  "--state", str(tmp_path / "st"))
    assert result.returncode == 0, result.stderr
    assert _json(library / "lib.json")["name"] == "Site"
    assert (tmp_path / "st" / manifest.STATE_FILE).is_file()
    (library / "ubuntu" / "ubuntu-22.04.iso").write_bytes(b"x")
    _write(library / TTY / DISK, b"corrupt")
    result = _cli("manifest", "build", str(library), "--state", str(tmp_path / "st"))
    assert result.returncode == ExitStatus.VERIFY
    assert f"item '{TTY}' left out: {TTY}/{DISK}: SHA1 digest does not match" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli("manifest", "build", str(tmp_path / "nowhere"))
    assert result.returncode == ExitStatus.CONFIG
    assert "nowhere: the library folder does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_upgrade_from_sha256_etags_and_random_ids_moves_every_version_up(library: Path) -> None:
    """What a site of an earlier release holds: state format 1 (etag = SHA-256), random ids,
    small versions. The first build serves derived ids and decimal tokens; nothing goes back."""
    _build(library)
    state_file = library / manifest.STATE_DIR_NAME / manifest.STATE_FILE
    state = _json(state_file)
    old_versions = {}
    for number, (key, item) in enumerate(sorted(state["items"].items())):
        item["id"] = f"urn:uuid:00000000-0000-4000-8000-00000000000{number}"
        item["version"], item["contentVersion"] = 7, 5
        item["files"] = [[name, size, sha] for name, size, sha, _ in item["files"]]
        old_versions[key] = 7
    state["format"], state["library"]["version"], state["library"]["contentVersion"] = 1, 12, 9
    state["library"]["id"] = "urn:uuid:00000000-0000-4000-8000-0000000000ff"
    state_file.write_text(json.dumps(state))
    report = _build(library)
    lib = _json(library / "lib.json")
    assert lib["id"] == revision.library_id("Test library") and int(lib["version"]) > 12
    assert set(report.items_changed) == {TTY, "tools", "ubuntu"}
    for folder, item in _items(library).items():
        assert item["id"] == revision.item_id(lib["id"], folder)
        assert int(item["version"]) > 7 and int(item["contentVersion"]) > 5
        assert all(revision.is_token(f["etag"]) for f in item["files"])
    before = _snapshot(library)
    assert _build(library).items_changed == () and _snapshot(library) == before
