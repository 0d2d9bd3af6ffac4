"""OVF material: descriptors (References, vApp or VM), `.mf` manifests, safe OVA unpacking.

Pure parsing; the manifest engine decides what a failure means for an item. Descriptors are parsed
with xml.etree (expat: no external entities, no network), namespaced or not, by local names, so
`<ovf:VirtualSystemCollection>` and `<VirtualSystemCollection>` are the same thing.
"""

from __future__ import annotations

import contextlib
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..base.errors import VerifyError

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


def _check_member(ova: Path, member: tarfile.TarInfo, seen: set[str]) -> str:
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
    if name in seen:
        raise OvaError(f"{where} appears twice")
    seen.add(name)
    return name


def unpack_ova(ova: Path, dest: Path) -> list[Path]:
    """Unpack the OVA (a tar of plain files) into the existing folder `dest`; return the files.

    Every member is checked before anything is written: links, devices, sub-folders, absolute or
    `..` paths, hidden and duplicate names are refused (OvaError). Files are written to a temp
    name and renamed, so a crash leaves no half file under a real name; on failure the files
    already written are removed.
    """
    try:
        archive = tarfile.open(ova, mode="r:")  # noqa: SIM115 (closed by `with` below)
    except (OSError, tarfile.TarError) as error:
        raise OvaError(f"{ova}: not a readable OVA (tar) archive: {error}") from None
    written: list[Path] = []
    with archive:
        try:
            members = archive.getmembers()
        except tarfile.TarError as error:
            raise OvaError(f"{ova}: corrupt archive: {error}") from None
        seen: set[str] = set()
        names = [_check_member(ova, m, seen) for m in members]
        if not names:
            raise OvaError(f"{ova}: the archive is empty")
        try:
            for member, name in zip(members, names, strict=True):
                written.append(_extract(archive, member, dest / name, ova))
        except BaseException:
            # No half item: the members already written would otherwise stay in the folder.
            for path in written:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            raise
    return written


def _extract(archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path, ova: Path) -> Path:
    tmp = target.with_name(f".{target.name}.unpack.tmp")
    source = archive.extractfile(member)
    assert source is not None  # a regular member always has data
    try:
        with source, open(tmp, "wb") as out:
            while chunk := source.read(4 * 1024 * 1024):
                out.write(chunk)
        os.utime(tmp, ns=(member.mtime * 10**9, member.mtime * 10**9))
        os.replace(tmp, target)
    # OverflowError: a member time beyond time_t (GNU tar encodes huge values in base-256).
    except (OSError, tarfile.TarError, OverflowError) as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise OvaError(f"{ova}: member {member.name!r}: {error}") from None
    return target
