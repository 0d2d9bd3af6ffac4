"""The built fixtures are what the tests say they are; the repository needs nothing beside it."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from library_syncer.manifest import ovf
from library_syncer.manifest import vcsp as manifest
from tests.harness import fixtures

REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_two_builds_give_the_same_bytes(fixtures_dir: Path, tmp_path: Path) -> None:
    # Digests and sizes asserted elsewhere hold on every run; only the .cert has a fresh key.
    again = _files(fixtures.build(tmp_path / "again"))
    first = _files(fixtures_dir)
    assert again.keys() == first.keys()
    differ = [name for name in first if first[name] != again[name]]
    assert differ == ["ovf/signed-template/signed.cert"]


def test_the_ova_holds_the_template_with_the_descriptor_first(fixtures_dir: Path) -> None:
    template = fixtures_dir / "ovf" / "ttylinux-template"
    with tarfile.open(fixtures_dir / "ovf" / f"{fixtures.TTY}.ova") as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == [f"{fixtures.TTY}.ovf", f"{fixtures.TTY}.mf",
                                             fixtures.TTY_DISK]
        for member in members:
            assert member.isreg() and member.mtime == fixtures.OVA_MTIME
            data = archive.extractfile(member)
            assert data is not None and data.read() == (template / member.name).read_bytes()


def test_the_disk_is_a_stream_optimized_vmdk_the_descriptor_oversells(fixtures_dir: Path) -> None:
    template = fixtures_dir / "ovf" / "ttylinux-template"
    disk = (template / fixtures.TTY_DISK).read_bytes()
    assert disk[:4] == b"KDMV" and len(disk) == fixtures.TTY_DISK_SIZE == 1 << 20
    assert b'createType="streamOptimized"' in disk[512:1024]
    refs = ovf.parse_descriptor((template / f"{fixtures.TTY}.ovf").read_bytes()).references
    assert refs == (ovf.Reference(fixtures.TTY_DISK, fixtures.TTY_ANNOUNCED),)
    assert len(disk) != fixtures.TTY_ANNOUNCED  # the real-world mismatch the manifest warns about


def test_the_signed_template_cert_signs_its_mf(fixtures_dir: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    folder = fixtures_dir / "ovf" / "signed-template"
    first, pem = (folder / "signed.cert").read_bytes().split(b"\n", 1)
    assert first.startswith(b"SHA256(signed.mf)= ")
    key = x509.load_pem_x509_certificate(pem).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(bytes.fromhex(first.split(b"= ")[1].decode()), (folder / "signed.mf").read_bytes(),
               padding.PKCS1v15(), hashes.SHA256())  # raises InvalidSignature otherwise
    entries = ovf.parse_mf((folder / "signed.mf").read_bytes())
    assert sorted(entries) == ["signed-disk1.vmdk", "signed-disk2.vmdk", "signed.ovf"]
    for name, entry in entries.items():
        assert entry.algorithm == "sha256"
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry.digest


def test_a_library_of_the_built_items_publishes_without_problems(fixtures_dir: Path,
                                                                 tmp_path: Path) -> None:
    library = tmp_path / "library"
    shutil.copytree(fixtures_dir / "ovf" / "ttylinux-template", library / "ttylinux")
    shutil.copytree(fixtures_dir / "ovf" / "signed-template", library / "signed")
    shutil.copytree(fixtures_dir / "iso", library / "tools")
    report = manifest.build(library, name="Built",
                            state=manifest.StatePlace.folder(tmp_path / "state"))
    assert report.problems == ()
    items = {i["name"]: i for i in json.loads((library / "items.json").read_text())["items"]}
    assert {n: i["type"] for n, i in items.items()} == {
        "ttylinux": "vcsp.ovf", "signed": "vcsp.ovf", "tools": "vcsp.iso"}
    assert "signed.cert" in {f["name"] for f in items["signed"]["files"]}
    iso = (library / "tools" / "tools.iso").read_bytes()
    assert iso[16 * 2048:16 * 2048 + 6] == b"\x01CD001"  # the primary volume descriptor


@pytest.mark.parametrize(("name", "vapp", "vms", "blank_disks"), [
    ("3VMvApp.ovf", True, 3, 0),
    ("vApp_with_2vms.ovf", True, 2, 0),
    ("deployment-configs.ovf", False, 1, 2),
    ("nostalgia-two-disks.ovf", False, 1, 0),
])
def test_descriptor_shapes(fixtures_dir: Path, name: str, vapp: bool, vms: int,
                           blank_disks: int) -> None:
    import xml.etree.ElementTree as ET

    data = (fixtures_dir / "ovf" / "descriptors" / name).read_bytes()
    root = ET.fromstring(data)
    ns = {"ovf": fixtures.NS["ovf"]}
    assert root.tag == f"{{{fixtures.NS['ovf']}}}Envelope"
    assert len(root.findall(".//ovf:VirtualSystem", ns)) == vms
    assert (root.find("ovf:VirtualSystemCollection", ns) is not None) is vapp
    disks = root.findall("ovf:DiskSection/ovf:Disk", ns)
    assert sum(1 for d in disks if f"{{{ns['ovf']}}}fileRef" not in d.attrib) == blank_disks
    files = root.findall("ovf:References/ovf:File", ns)
    assert len(files) == len(ovf.parse_descriptor(data).references) == len(disks) - blank_disks


# --- the repository stands alone ------------------------------------------------------------


def _strings_naming_shared(path: Path) -> list[str]:
    """String values (not docstrings) that name a `shared` folder, as a path built to it does."""
    tree = ast.parse(path.read_bytes())
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    return [f"{path.relative_to(REPO)}:{n.lineno}: {n.value!r}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings and ("shared/" in n.value or n.value == "shared")]


def _shell_lines_naming_shared(path: Path) -> list[str]:
    text = path.read_text(errors="replace")
    return [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
            for n, line in enumerate(text.splitlines(), 1)
            if "shared/" in line and not line.lstrip().startswith("#")]


def test_nothing_reads_beside_the_repository() -> None:
    # The suite must run from a plain clone: a path to a sibling folder of the clone is a bug.
    found: list[str] = []
    for folder in ("tests", "bench", "packaging", ".ci"):
        for path in sorted((REPO / folder).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path == Path(__file__):
                continue  # this file holds the patterns as test data
            if path.suffix == ".py":
                found += _strings_naming_shared(path)
            elif path.suffix in ("", ".sh") and path.read_bytes()[:2] == b"#!":
                found += _shell_lines_naming_shared(path)
    assert found == [], "\n".join(found)


def test_the_check_finds_a_path_to_shared(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    bad = tmp_path / "x.py"
    sibling = ".." + "/shared"  # spelled in two parts: the repository names no sibling itself
    bad.write_text(f'"""A docstring may cite {sibling}/x.md."""\n'
                   'F = Path(ROOT).parent / "shared" / "fixtures"\n# shared/ in a comment\n')
    assert _strings_naming_shared(bad) == ["x.py:2: 'shared'"]
    script = tmp_path / "run"
    script.write_text(f"#!/bin/sh\n# see {sibling}/x.md\ncp {sibling}/fixtures/a b\n")
    assert _shell_lines_naming_shared(script) == [f"run:3: cp {sibling}/fixtures/a b"]


def test_git_tracks_no_file_outside_the_repository() -> None:
    # A symlink committed into the tree could point outside the clone just as well.
    result = subprocess.run(["git", "-C", str(REPO), "ls-files", "-s"], capture_output=True,
                            text=True)
    assert result.returncode == 0, f"git ls-files failed: {result.stderr}"
    listed = result.stdout
    links = [line.split("\t", 1)[1] for line in listed.splitlines() if line.startswith("120000")]
    outside = [link for link in links
               if not (REPO / link).resolve().is_relative_to(REPO.resolve())]
    assert outside == []

