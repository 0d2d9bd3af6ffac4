"""OVF descriptors, .mf manifests and OVA unpacking: the VMware fixtures and crafted tars."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from library_syncer.base.errors import ExitStatus, SyncerError
from library_syncer.manifest import ovf
from tests.harness import fixtures


@pytest.fixture
def descriptors(fixtures_dir: Path) -> Path:
    return fixtures_dir / "ovf" / "descriptors"


@pytest.mark.parametrize(("name", "vapp", "refs"), [
    ("ttylinux.ovf", False, 1),
    ("3VMvApp.ovf", True, 3),  # default namespace
    ("vApp_with_2vms.ovf", True, 2),  # ovf: prefixed elements
    ("sunVHW-DiskTypes_invalidUTF.ovf", True, 4),  # starts with a UTF-8 BOM
    ("centos.ovf", False, 1),
    ("deployment-configs.ovf", False, 4),  # 6 disks, 2 of them blank: no File
    ("nostalgia-two-disks.ovf", False, 2),
])
def test_fixture_descriptors(descriptors: Path, name: str, vapp: bool, refs: int) -> None:
    desc = ovf.parse_descriptor((descriptors / name).read_bytes())
    assert desc.is_vapp is vapp
    assert len(desc.references) == refs


def test_references_keep_sizes_and_missing_sizes(descriptors: Path) -> None:
    tty = ovf.parse_descriptor((descriptors / "ttylinux.ovf").read_bytes())
    assert tty.references == (ovf.Reference("ttylinux-pc_i486-16.1-disk1.vmdk", 10595840),)
    centos = ovf.parse_descriptor((descriptors / "centos.ovf").read_bytes())
    assert centos.references[0].size is None


@pytest.mark.parametrize(("name", "fragment"), [
    ("empty.ovf", "found 0"),
    ("invalid.ovf", "no ovf:id"),
    ("latin1-in-utf8.ovf", "invalid XML"),  # a Latin-1 byte where UTF-8 is declared
])
def test_invalid_fixture_descriptors(descriptors: Path, name: str, fragment: str) -> None:
    with pytest.raises(ovf.OvfError, match=fragment):
        ovf.parse_descriptor((descriptors / name).read_bytes())


def test_unnamespaced_descriptor_and_vapp_in_text_only() -> None:
    # The word VirtualSystemCollection in a comment or text must not make a vApp (no grepping).
    data = b"""<Envelope><!-- <VirtualSystemCollection> --><References>
      <File href="disk%201.vmdk" size="12"/><File href="https://example.invalid/x.iso"/>
      </References><VirtualSystem id="vm"><Info>VirtualSystemCollection</Info></VirtualSystem>
      </Envelope>"""
    desc = ovf.parse_descriptor(data)
    assert desc.is_vapp is False
    assert desc.references[0] == ovf.Reference("disk 1.vmdk", 12)
    assert desc.references[1].external


@pytest.mark.parametrize(("data", "fragment"), [
    (b"<Envelope><VirtualSystem id='a'><Name>caf\xe9</Name></VirtualSystem></Envelope>",
     "invalid XML"),  # Latin-1 byte in a UTF-8 document
    (b"<Envelope><VirtualSystem id='a'>", "invalid XML"),
    (b"<Root/>", "expected an OVF <Envelope>"),
    (b"<Envelope><References><File href='../etc/passwd'/></References>"
     b"<VirtualSystem id='a'/></Envelope>", "outside the template folder"),
    (b"<Envelope><References><File href='a.vmdk' size='big'/></References>"
     b"<VirtualSystem id='a'/></Envelope>", "non-integer size"),
    (b"<Envelope><References><File href='a'/><File href='a'/></References>"
     b"<VirtualSystem id='a'/></Envelope>", "referenced twice"),
])
def test_bad_descriptors(data: bytes, fragment: str) -> None:
    with pytest.raises(ovf.OvfError, match=fragment):
        ovf.parse_descriptor(data)


def test_parse_mf_fixture(fixtures_dir: Path) -> None:
    folder = fixtures_dir / "ovf" / "ttylinux-template"
    entries = ovf.parse_mf((folder / "ttylinux-pc_i486-16.1.mf").read_bytes())
    assert set(entries) == {"ttylinux-pc_i486-16.1.ovf", "ttylinux-pc_i486-16.1-disk1.vmdk"}
    for name, entry in entries.items():  # the fixture's digests are right
        assert entry.algorithm == "sha1"
        assert hashlib.sha1((folder / name).read_bytes()).hexdigest() == entry.digest


def test_parse_mf_variants() -> None:
    text = (f"SHA256(a b.vmdk)= {'A' * 64}\n\nSHA512 (c.ovf) = {'0' * 128}\r\n"
            f"SHA1(d)={'f' * 40}\n")
    entries = ovf.parse_mf(text.encode())
    assert entries["a b.vmdk"] == ovf.MfEntry("sha256", "a" * 64)
    assert entries["c.ovf"].algorithm == "sha512"
    assert entries["d"].algorithm == "sha1"


@pytest.mark.parametrize(("data", "fragment"), [
    (b"MD5(a)= 00\n", "line 1"),
    (b"SHA256(a)= abc\n", "64 hex digits"),
    (b"SHA1(../a)= " + b"0" * 40, "outside"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_parse_mf_errors(data: bytes, fragment: str) -> None:
    with pytest.raises(ovf.OvfError, match=fragment):
        ovf.parse_mf(data)


def test_unpack_fixture_ova(fixtures_dir: Path, tmp_path: Path) -> None:
    files = ovf.unpack_ova(fixtures_dir / "ovf" / "ttylinux-pc_i486-16.1.ova", tmp_path)
    assert [f.name for f in files] == ["ttylinux-pc_i486-16.1.ovf", "ttylinux-pc_i486-16.1.mf",
                                       "ttylinux-pc_i486-16.1-disk1.vmdk"]
    entries = ovf.parse_mf(files[1].read_bytes())
    for path in files:
        if path.name in entries:
            assert hashlib.sha1(path.read_bytes()).hexdigest() == entries[path.name].digest
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files)
    # every member keeps the archive's time, small ones too (their etag derives from it when
    # the upstream has no trace: every site must agree)
    with tarfile.open(fixtures_dir / "ovf" / "ttylinux-pc_i486-16.1.ova") as archive:
        times = {m.name: int(m.mtime) * 10**9 for m in archive.getmembers()}
    assert {f.name: f.stat().st_mtime_ns for f in files} == times


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(("member", "fragment"), [
    (_info("x.vmdk", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    (_info("x.vmdk", tarfile.LNKTYPE, "a.ovf"), "is a link"),
    (_info("sub", tarfile.DIRTYPE), "sub-folder"),
    (_info("null", tarfile.CHRTYPE), "device"),
    (_info("fifo", tarfile.FIFOTYPE), "device"),
])
def test_unpack_refuses_non_files(tmp_path: Path, member: tarfile.TarInfo, fragment: str) -> None:
    ova = _tar(tmp_path / "bad.ova", [(_info("a.ovf"), b"<Envelope/>"), (member, None)])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ovf.OvaError, match=fragment) as caught:
        ovf.unpack_ova(ova, dest)
    assert caught.value.exit_status == ExitStatus.VERIFY
    assert "bad.ova" in str(caught.value)
    assert list(dest.iterdir()) == []  # checked before anything is written


@pytest.mark.parametrize("name", ["../evil.ovf", "/tmp/evil.ovf", "sub/evil.ovf", ".hidden",
                                  "..", "a/../../evil"])
def test_unpack_refuses_paths(tmp_path: Path, name: str) -> None:
    ova = _tar(tmp_path / "bad.ova", [(_info(name), b"x")])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ovf.OvaError, match="not allowed"):
        ovf.unpack_ova(ova, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.ovf").exists()


def test_unpack_refuses_duplicates_garbage_and_empty(tmp_path: Path) -> None:
    dup = _tar(tmp_path / "dup.ova", [(_info("a.ovf"), b"1"), (_info("./a.ovf"), b"2")])
    with pytest.raises(ovf.OvaError, match="twice"):
        ovf.unpack_ova(dup, tmp_path)
    garbage = tmp_path / "garbage.ova"
    garbage.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ovf.OvaError, match="not a readable OVA"):
        ovf.unpack_ova(garbage, tmp_path)
    nested = _tar(tmp_path / "nested.ova", [(_info("nested.ova"), b"x")])
    with pytest.raises(ovf.OvaError, match="inside an OVA"):
        ovf.unpack_ova(nested, tmp_path)
    assert nested.read_bytes()[:10] != b"x"  # the archive was not overwritten by its member
    empty = _tar(tmp_path / "empty.ova", [])
    with pytest.raises(ovf.OvaError, match="empty"):
        ovf.unpack_ova(empty, tmp_path)


def test_unpack_truncated_archive_leaves_no_half_file(fixtures_dir: Path, tmp_path: Path) -> None:
    data = (fixtures_dir / "ovf" / "ttylinux-pc_i486-16.1.ova").read_bytes()
    cut = tmp_path / "cut.ova"
    cut.write_bytes(data[: len(data) // 2])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ovf.OvaError):
        ovf.unpack_ova(cut, dest)
    assert not any(p.name.endswith(".tmp") for p in dest.iterdir())
    assert not (dest / "ttylinux-pc_i486-16.1-disk1.vmdk").exists()



def test_unpack_failure_removes_the_files_already_unpacked(tmp_path: Path) -> None:
    # A member that cannot be written (here a folder of that name is in the way) must not
    # leave the members before it behind as a half item.
    ova = _tar(tmp_path / "t.ova", [(_info("a.ovf"), b"<Envelope/>"), (_info("a.mf"), b""),
                                    (_info("a-disk1.vmdk"), b"disk")])
    dest = tmp_path / "dest"
    (dest / "a-disk1.vmdk").mkdir(parents=True)
    with pytest.raises(ovf.OvaError, match=r"a-disk1\.vmdk"):
        ovf.unpack_ova(ova, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["a-disk1.vmdk"]


def test_unpack_out_of_range_mtime_is_a_bad_archive(tmp_path: Path) -> None:
    # GNU tar encodes huge times in base-256; os.utime raises OverflowError, not OSError.
    info = _info("a.ovf")
    info.mtime = 2**70
    ova = tmp_path / "t.ova"
    with tarfile.open(ova, "w", format=tarfile.GNU_FORMAT) as archive:
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ovf.OvaError, match=r"a\.ovf"):
        ovf.unpack_ova(ova, dest)
    assert list(dest.iterdir()) == []


def test_unpack_refuses_a_sparse_member(tmp_path: Path) -> None:
    """A tiny archive must not unpack into gigabytes of zeros (a full disk on every run)."""
    work = tmp_path / "src"
    work.mkdir()
    (work / "a.ovf").write_text("<Envelope/>")
    with open(work / "a-disk1.vmdk", "wb") as disk:
        disk.truncate(1 << 30)  # 1 GiB, all hole
    ova = tmp_path / "t.ova"
    subprocess.run(["tar", "--sparse", "-cf", str(ova), "-C", str(work), "a.ovf",
                    "a-disk1.vmdk"], check=True)
    assert ova.stat().st_size < 1 << 20
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ovf.OvaError, match=r"a-disk1\.vmdk.* is a sparse file"):
        ovf.unpack_ova(ova, dest)
    assert list(dest.iterdir()) == []



# --- hostile or broken archives: one item lost, never the run --------------------------------


@pytest.mark.parametrize("first", [True, False], ids=["in-open", "in-getmembers"])
@pytest.mark.parametrize("kind", sorted(fixtures.HOSTILE_PAX))
def test_unpack_malformed_headers_are_a_bad_archive(tmp_path: Path, kind: str,
                                                    first: bool) -> None:
    """tarfile raises ValueError/TypeError on these, not TarError: still one item's problem."""
    ova = fixtures.hostile_ova(tmp_path / "evil.ova", kind, first=first)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SyncerError) as caught:
        ovf.unpack_ova(ova, dest)
    assert caught.value.exit_status == ExitStatus.VERIFY
    assert "evil.ova" in str(caught.value) and "\n" not in str(caught.value)
    assert list(dest.iterdir()) == []  # no .unpack.tmp, no half item


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (unmounted afterwards): a real ENOSPC."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_unpack_disk_full_stays_an_oserror_with_its_errno(tmp_path: Path, tiny_fs: Path) -> None:
    """Callers tell a full disk (stop the run) from a bad archive (lose the item) by errno."""
    ova = _tar(tmp_path / "big.ova", [(_info("big.ovf"), b"<Envelope/>"),
                                      (_info("big-disk1.vmdk"), os.urandom(3 << 20))])
    with pytest.raises(OSError) as caught:
        ovf.unpack_ova(ova, tiny_fs)
    assert not isinstance(caught.value, SyncerError)
    assert caught.value.errno == errno.ENOSPC
    assert list(tiny_fs.iterdir()) == []  # neither the temp file nor the .ovf before it


def test_unpack_never_writes_through_planted_links(tmp_path: Path) -> None:
    """rsync runs without -l today, but the unpacker must not depend on it."""
    ova = _tar(tmp_path / "t.ova", [(_info("a.ovf"), b"<Envelope/>"), (_info("a.mf"), b"")])
    victim = tmp_path / "victim"
    victim.write_text("precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / ".a.ovf.unpack.tmp").symlink_to(victim)  # at the temp name
    (dest / "a.mf").symlink_to(victim)  # at the final name
    files = ovf.unpack_ova(ova, dest)
    assert victim.read_text() == "precious"
    assert [f.name for f in files] == ["a.ovf", "a.mf"]
    assert not (dest / "a.mf").is_symlink() and (dest / "a.ovf").read_bytes() == b"<Envelope/>"
    assert sorted(p.name for p in dest.iterdir()) == ["a.mf", "a.ovf"]


def test_unpack_refuses_a_symlinked_folder(tmp_path: Path) -> None:
    ova = _tar(tmp_path / "t.ova", [(_info("a.ovf"), b"<Envelope/>")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "item").symlink_to(elsewhere)
    with pytest.raises(ovf.OvaError, match="symbolic link"):
        ovf.unpack_ova(ova, tmp_path / "item")
    assert list(elsewhere.iterdir()) == []


def test_unpack_messages_escape_control_characters(tmp_path: Path) -> None:
    folder = tmp_path / "evil\x1b[2J\rfake line"
    folder.mkdir()
    garbage = folder / "t.ova"
    garbage.write_bytes(b"not a tar" * 100)
    named = _tar(tmp_path / "n.ova", [(_info("a\x1b]0;owned\x07.vmdk", tarfile.SYMTYPE), None)])
    messages = []
    for ova in (garbage, named):
        with pytest.raises(ovf.OvaError) as caught:
            ovf.unpack_ova(ova, tmp_path)
        messages.append(str(caught.value))
        assert not any(c in messages[-1] for c in "\x1b\r\x07"), messages[-1]
    assert "evil\\x1b[2J\\x0dfake line/t.ova" in messages[0]


@pytest.mark.parametrize("form", ["pax", "gnu-longname"])
def test_unpack_refuses_a_huge_extended_header_before_reading_it(tmp_path: Path,
                                                                  form: str) -> None:
    """tarfile reads a PAX or GNU long-name header into memory whole: one past
    ovf.MAX_META_HEADER is refused unread (a damaged archive could declare gigabytes)."""
    ova = tmp_path / "evil.ova"
    huge = "x" * (ovf.MAX_META_HEADER + 1024)
    with tarfile.open(ova, "w", format=tarfile.PAX_FORMAT if form == "pax" else
                      tarfile.GNU_FORMAT) as archive:
        sound = _info("evil.ovf")
        sound.size = 11
        archive.addfile(sound, io.BytesIO(b"<Envelope/>"))
        info = _info(huge + ".vmdk" if form == "gnu-longname" else "evil-disk1.vmdk")
        info.size = 4
        if form == "pax":
            info.pax_headers = {"comment": huge}
        archive.addfile(info, io.BytesIO(b"disk"))
    reads: list[int] = []

    class Counted(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            reads.append(size)
            return super().read(size)

    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SyncerError) as caught:
        ovf.unpack_ova(ova, dest)
    assert "evil.ova" in str(caught.value) and "extended header of" in str(caught.value)
    assert caught.value.exit_status == ExitStatus.VERIFY
    assert list(dest.iterdir()) == []
    with Counted(ova) as raw, pytest.raises(tarfile.TarError), \
            tarfile.open(fileobj=raw, mode="r:", tarinfo=ovf._BoundedInfo) as archive:
        archive.getmembers()
    assert max(reads) <= ovf.MAX_META_HEADER  # never asked for the huge header's bytes
