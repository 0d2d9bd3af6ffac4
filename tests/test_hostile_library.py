"""A library from a server that does not play by the rules: the build writes its manifests, loses
at most the item at fault, never writes or deletes through a link, and prints no raw control
characters. Every tree here is built on disk by the test (the server's rsync would carry it)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from library_syncer.base.errors import ExitStatus
from library_syncer.manifest import scan
from library_syncer.manifest import vcsp as manifest
from tests.harness import fixtures
from tests.test_sync_helpers import add_ovf_item, items, published, sync, write_config

ROOT = Path(__file__).resolve().parent.parent
CONTROL = "\x1b\r\n\x07\x9b\u202e"


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _items(root: Path) -> dict[str, dict]:
    return {i["name"]: i for i in json.loads((root / "items.json").read_bytes())["items"]}


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "library"
    _write(root / "tools" / "readme.txt", "hello\n")
    _write(root / "isos" / "a.iso", os.urandom(4096))
    _write(root / "isos" / "b.iso", os.urandom(4096))
    return root


def test_folders_named_like_our_manifests_are_removed_with_one_warning(library: Path) -> None:
    _write(library / "lib.json" / "inside", "x")
    (library / "items.json").mkdir()
    _write(library / "tools" / "item.json" / "deep" / "file", "x")
    report = manifest.build(library, name="L")
    assert json.loads((library / "lib.json").read_bytes())["name"] == "L"
    assert set(_items(library)) == {"tools", "a", "b"}
    assert json.loads((library / "tools" / "item.json").read_bytes())["name"] == "tools"
    for rel in ("lib.json", "items.json", "tools/item.json"):
        assert sum(w.startswith(f"{rel}: a folder") for w in report.warnings) == 1, rel
    assert report.problems == ()
    again = manifest.build(library, name="L")
    assert not [w for w in again.warnings if "a folder" in w]


def test_a_folder_named_item_json_in_a_left_out_item_is_no_crash(library: Path) -> None:
    _write(library / "vm" / "vm.ovf", "<Envelope><VirtualSystem id='a'/></Envelope>")
    _write(library / "vm" / "vm.mf", "SHA256(vm.ovf)= " + "0" * 64 + "\n")  # wrong digest
    (library / "vm" / "item.json").mkdir()
    report = manifest.build(library, name="L")
    assert [p.item for p in report.problems] == ["vm"]
    assert set(_items(library)) == {"tools", "a", "b"}


def test_manifests_are_never_written_or_removed_through_links(library: Path,
                                                             tmp_path: Path) -> None:
    """rsync runs without -l today; the build must not depend on that."""
    victim = _write(tmp_path / "victim.txt", "precious")
    outside = tmp_path / "outside"
    _write(outside / "item.json", "theirs")
    _write(library / "gone" / "data.bin", "d")
    manifest.build(library, name="L")
    # The server now plants links where the build writes or removes its files.
    (library / "lib.json").unlink()
    (library / "lib.json").symlink_to(victim)
    (library / "tools" / "item.json").unlink()
    (library / "tools" / "item.json").symlink_to(victim)
    for stem in ("a", "b"):  # the sub-folders of a folder of ISOs
        for path in (library / "isos" / stem).iterdir():
            path.unlink()
        (library / "isos" / stem).rmdir()
    (library / "isos" / "a").symlink_to(outside)
    for path in (library / "gone").iterdir():
        path.unlink()
    (library / "gone").rmdir()
    (library / "gone").symlink_to(outside)  # a published item replaced by a link
    report = manifest.build(library, name="L")
    assert victim.read_text() == "precious"
    assert (outside / "item.json").read_text() == "theirs"
    assert sorted(p.name for p in outside.iterdir()) == ["item.json"]
    assert not (library / "lib.json").is_symlink() and not (library / "isos" / "a").is_symlink()
    assert json.loads((library / "isos" / "a" / "item.json").read_bytes())["name"] == "a"
    assert set(_items(library)) == {"tools", "a", "b"}
    assert any(w.startswith("lib.json: a symbolic link") for w in report.warnings)


def test_the_description_is_read_only_as_far_as_needed(library: Path) -> None:
    """A huge item-description.txt must not be read whole: 2 GiB under a 400 MiB memory cap."""
    sidecar = library / "tools" / scan.DESCRIPTION_FILE
    with open(sidecar, "wb") as handle:
        handle.write("é".encode() * 3000)  # 2 bytes a character: the cut falls inside one
        handle.truncate(2 << 30)  # then a hole of NULs: costs no disk
    code = ("import sys; from pathlib import Path; from library_syncer.manifest import vcsp; "
            "r = vcsp.build(Path(sys.argv[1]), name='L'); print('\\n'.join(r.warnings))")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))

    done = subprocess.run([sys.executable, "-c", code, str(library)], cwd=ROOT, preexec_fn=cap,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "description cut to 4000 characters" in done.stdout
    description = _items(library)["tools"]["description"]
    assert description.startswith("é" * 3000) and len(description) == 4000


def test_names_from_the_server_are_printed_escaped(library: Path) -> None:
    evil = "evil" + CONTROL
    _write(library / evil / "data.bin", "d")  # listed: fine, but never printed raw
    (library / "tools" / f"link{CONTROL}").symlink_to("/etc/passwd")
    _write(library / f"stray{CONTROL}.txt", "x")
    _write(library / f"vm{CONTROL}" / "vm.ovf", "<Envelope><VirtualSystem id='a'/></Envelope>")
    _write(library / f"vm{CONTROL}" / f"vm{CONTROL}.mf", "SHA256(x)= " + "0" * 64 + "\n")
    _write(library / f"vm{CONTROL}" / f"{CONTROL}.mf", "SHA256(x)= " + "0" * 64 + "\n")
    _write(library / f"empty{CONTROL}" / ".hidden", "x")
    report = manifest.build(library, name="L")
    lines = [*report.warnings, *(str(p) for p in report.problems)]
    assert len(report.warnings) >= 3 and report.problems
    for line in lines:
        assert not any(c in line for c in CONTROL), repr(line)
    assert any("link\\x1b\\x0d\\x0a\\x07\\x9b\\u202e" in w for w in report.warnings)
    assert evil in _items(library)  # the name itself is kept: JSON escapes it


@pytest.mark.parametrize("kind", ["mtime-nan", "sparse-map"])
def test_a_malformed_ova_on_the_server_costs_its_item_not_the_run(work_dir, sshd, client_key,
                                                                  server_library, fixtures_dir,
                                                                  kind):
    """End to end over a real sshd: the other items are published, the run says which item was
    left out and why (exit VERIFY, no traceback), and no temp file is left anywhere."""
    add_ovf_item(server_library, fixtures_dir, "good")
    (server_library / "evil").mkdir(mode=0o755)
    fixtures.hostile_ova(server_library / "evil" / "evil.ova", kind, first=False).chmod(0o644)
    config = write_config(work_dir, sshd, client_key[0])
    done = sync(config)
    assert done.returncode == ExitStatus.VERIFY, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert "item 'evil' left out" in done.stderr and "evil.ova" in done.stderr
    snapshot = published(work_dir / "state")
    assert set(items(snapshot)) == {"good"}
    assert not [p for p in (work_dir / "state").rglob("*.unpack.tmp")]
