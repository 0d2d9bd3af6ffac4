"""OVF material: descriptors (References, vApp or VM), `.mf` manifests, safe OVA unpacking.

Pure parsing; the manifest engine decides what a failure means for an item. Descriptors are parsed
with xml.etree (expat: no external entities, no network), namespaced or not, by local names, so
`<ovf:VirtualSystemCollection>` and `<VirtualSystemCollection>` are the same thing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..base.errors import VerifyError
from ..base.text import printable

# Real descriptors are KiB: refuse to parse a disk by mistake.
MAX_DESCRIPTOR_BYTES = 64 * 1024 * 1024
MF_ALGORITHMS = {"SHA1": ("sha1", 40), "SHA256": ("sha256", 64), "SHA512": ("sha512", 128)}
_MF_LINE = re.compile(r"^\s*(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9A-Fa-f]+)\s*$")


class OvfError(ValueError):
    """A descriptor or `.mf` that cannot be used; `str()` says what is wrong (no file name)."""


class OvaError(VerifyError):
    """An OVA archive that cannot be unpacked safely; names the archive and the member."""


@dataclass(frozen=True)
class Reference:
    """One `<References><File>`: where the descriptor expects a file, and its announced size."""

    href: str
    size: int | None
    external: bool = False  # an http(s) URL: not part of the item folder


@dataclass(frozen=True)
class Descriptor:
    is_vapp: bool
    references: tuple[Reference, ...]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(element: ET.Element, name: str) -> str | None:
    """An attribute by local name, with or without a namespace (ovf:href, href)."""
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def _reference(element: ET.Element) -> Reference:
    href = _attr(element, "href")
    if not href:
        raise OvfError("a <References><File> has no href")
    size_text = _attr(element, "size")
    size = None
    if size_text is not None:
        try:
            size = int(size_text)
        except ValueError:
            raise OvfError(f"File {href!r} has a non-integer size {size_text!r}") from None
    parts = urlsplit(href)
    if parts.scheme in ("http", "https"):
        return Reference(href, size, external=True)
    name = unquote(href)
    if parts.scheme or "/" in name or "\\" in name or name in ("", ".", ".."):
        raise OvfError(f"File href {href!r} points outside the template folder")
    return Reference(name, size)


def parse_descriptor(data: bytes) -> Descriptor:
    """Parse an OVF envelope; OvfError for invalid XML or a descriptor vCenter would refuse."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as error:
        raise OvfError(f"invalid XML: {error}") from None
    if _local(root.tag) != "Envelope":
        raise OvfError(f"root element is <{_local(root.tag)}>, expected an OVF <Envelope>")
    content = [c for c in root if _local(c.tag) in ("VirtualSystem", "VirtualSystemCollection")]
    if len(content) != 1:
        raise OvfError("expected one VirtualSystem or VirtualSystemCollection, "
                       f"found {len(content)}")
    if not _attr(content[0], "id"):
        raise OvfError(f"<{_local(content[0].tag)}> has no ovf:id (mandatory)")
    references: list[Reference] = []
    for section in (c for c in root if _local(c.tag) == "References"):
        references.extend(_reference(f) for f in section if _local(f.tag) == "File")
    names = [r.href for r in references]
    if len(set(names)) != len(names):
        raise OvfError("the same file is referenced twice in <References>")
    return Descriptor(is_vapp=_local(content[0].tag) == "VirtualSystemCollection",
                      references=tuple(references))


@dataclass(frozen=True)
class MfEntry:
    algorithm: str  # hashlib name: sha1, sha256, sha512
    digest: str  # lower-case hex


def parse_mf(data: bytes) -> dict[str, MfEntry]:
    """Parse an OVF manifest (`SHA256(file)= hex`, spaces optional); raise OvfError on bad lines."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise OvfError(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    entries: dict[str, MfEntry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _MF_LINE.match(line)
        if not match:
            raise OvfError(f"line {number} is not `SHA1|SHA256|SHA512(file)= digest`")
        label, name, digest = match.groups()
        algorithm, length = MF_ALGORITHMS[label]
        if len(digest) != length:
            raise OvfError(f"line {number}: a {label} digest has {length} hex digits")
        name = name.strip()
        if "/" in name or name in (".", ".."):
            raise OvfError(f"line {number}: {name!r} points outside the template folder")
        entries[name] = MfEntry(algorithm, digest.lower())
    return entries


_CHUNK = 4 * 1024 * 1024
# A new file, never through a symbolic link planted at its name, never an existing file.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The disk, not the archive: callers tell a full disk by errno, so these stay OSError.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _why(error: BaseException) -> str:
    """An exception from tarfile as a short phrase (its text, else its type)."""
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return printable(text) or type(error).__name__


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's time in ns; ValueError for nan, infinities and times beyond time_t."""
    try:
        ns = int(member.mtime) * 10**9  # int(nan) is a ValueError, int(inf) an OverflowError
    except (TypeError, OverflowError):
        raise ValueError from None
    if not -(2**63) <= ns < 2**63:
        raise ValueError
    return ns


# A PAX or GNU long-name header is read into memory whole by tarfile: a few bytes of archive may
# declare gigabytes. ovftool writes none longer than a path; 1 MiB is far beyond any real one.
MAX_META_HEADER = 1 << 20


class _BoundedInfo(tarfile.TarInfo):
    """TarInfo that refuses an extended header (PAX, GNU long name/link) above MAX_META_HEADER
    before tarfile reads it."""

    def _bounded(self) -> None:
        if self.size > MAX_META_HEADER:
            raise tarfile.HeaderError(f"an extended header of {self.size} bytes (at most "
                                      f"{MAX_META_HEADER} are read)")

    # tarfile's private hooks (stable since Python 3.2); checked by tests/test_ovf.py.
    def _proc_pax(self, archive):
        self._bounded()
        return super()._proc_pax(archive)

    def _proc_gnulong(self, archive):
        self._bounded()
        return super()._proc_gnulong(archive)


def _check_member(ova: str, member: tarfile.TarInfo, seen: set[str]) -> str:
    name = member.name[2:] if member.name.startswith("./") else member.name
    where = f"{ova}: member {member.name!r}"
    if not member.isreg():
        kind = ("a link" if member.issym() or member.islnk() else
                "a sub-folder" if member.isdir() else "a device or special file")
        raise OvaError(f"{where} is {kind}; an OVA holds plain files only",
                       hint="re-export the template with ovftool")
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise OvaError(f"{where}: a path or hidden name is not allowed in an OVA")
    if name.lower().endswith(".ova"):
        raise OvaError(f"{where}: an OVA inside an OVA is not a template")
    if member.issparse():
        # A few bytes of archive can declare terabytes of zeros; ovftool never writes these.
        raise OvaError(f"{where} is a sparse file; an OVA from VMware tools has none",
                       hint="re-export the template with ovftool")
    try:
        _mtime_ns(member)
    except ValueError:
        raise OvaError(f"{where} has an invalid time ({member.mtime!r}); a corrupt or "
                       "hand-made archive", hint="re-export the template with ovftool") from None
    if name in seen:
        raise OvaError(f"{where} appears twice")
    seen.add(name)
    return name


def unpack_ova(ova: Path, dest: Path) -> list[Path]:
    """Unpack the OVA (a tar of plain files) into the existing folder `dest`; return the files.

    Every member is checked before anything is written: links, devices, sub-folders, absolute or
    `..` paths, hidden and duplicate names, impossible times are refused (OvaError). So is any
    archive tarfile cannot parse, whatever it raises: the bytes come from the server. Files are
    written to a temp name (created new, never through a symbolic link) and renamed, inside
    `dest` opened once without following links, so a crash leaves no half file under a real
    name; on any failure the temp file and the files already written are removed. A full disk
    stays an OSError with its errno (ENOSPC, EDQUOT): that is the disk's fault, not the item's.
    """
    shown = printable(str(ova))
    try:
        # closed by the `with` below
        archive = tarfile.open(ova, mode="r:", tarinfo=_BoundedInfo)  # noqa: SIM115
    # Not only TarError: malformed PAX/GNU headers raise ValueError, TypeError and more.
    except Exception as error:
        raise OvaError(f"{shown}: not a readable OVA (tar) archive: {_why(error)}",
                       hint="the server holds a damaged or hand-made .ova; re-export it with "
                            "ovftool") from None
    with archive:
        try:
            members = archive.getmembers()
        except Exception as error:
            raise OvaError(f"{shown}: corrupt archive: {_why(error)}",
                           hint="the server holds a damaged or hand-made .ova; re-export it "
                                "with ovftool") from None
        seen: set[str] = set()
        names = [_check_member(shown, m, seen) for m in members]
        if not names:
            raise OvaError(f"{shown}: the archive is empty")
        try:
            dir_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            raise OvaError(f"{printable(str(dest))}: cannot unpack {shown} here "
                           f"({error.strerror}; a symbolic link is never followed)") from None
        written: list[str] = []
        try:
            for member, name in zip(members, names, strict=True):
                _extract(archive, member, name, dir_fd, shown)
                written.append(name)
        except BaseException:
            # No half item: the members already written would otherwise stay in the folder.
            for name in written:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
            raise
        finally:
            os.close(dir_fd)
    return [dest / name for name in written]


def _create(tmp: str, dir_fd: int) -> int:
    try:
        return os.open(tmp, _CREATE, 0o644, dir_fd=dir_fd)
    except FileExistsError:
        # Left by a crash (or planted): remove the name itself, a link is not followed.
        os.unlink(tmp, dir_fd=dir_fd)
        return os.open(tmp, _CREATE, 0o644, dir_fd=dir_fd)


def _extract(archive: tarfile.TarFile, member: tarfile.TarInfo, name: str, dir_fd: int,
             shown: str) -> None:
    tmp = f".{name}.unpack.tmp"
    where = f"{shown}: member {member.name!r}"
    try:
        fd = _create(tmp, dir_fd)
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS:
            raise
        raise OvaError(f"{where}: cannot create {printable(tmp)} ({error.strerror})") from None
    try:
        with open(fd, "wb", closefd=True) as out:
            try:
                source = archive.extractfile(member)
                assert source is not None  # a regular member always has data
                with source:
                    while chunk := source.read(_CHUNK):
                        out.write(chunk)
            except OSError:
                raise  # our write (or the disk's read): sorted out below
            except Exception as error:  # tarfile on a malformed member
                raise OvaError(f"{where}: corrupt archive: {_why(error)}",
                               hint="re-export the template with ovftool") from None
            out.flush()  # a write still buffered would land after the utime, and move the mtime
            ns = _mtime_ns(member)
            os.utime(out.fileno(), ns=(ns, ns))
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        if isinstance(error, OSError) and error.errno not in DISK_FULL_ERRNOS:
            raise OvaError(f"{where}: {error.strerror or error}") from None
        raise
