"""A library folder as found on disk: its items, what is never listed, and the items' names.

`scan()` turns each sub-folder into candidates (an OVF template, an ISO, a folder of ISOs as one
item per ISO, or anything else as vcsp.other), with one-line warnings for what it leaves out;
`assign_names()` and `href()` give the names and links the manifests carry. Used by vcsp.py.
"""

from __future__ import annotations

import codecs
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..base.text import printable

LIB_FILE, ITEMS_FILE, ITEM_FILE = "lib.json", "items.json", "item.json"
DESCRIPTION_FILE = "item-description.txt"  # the sidecar: plain UTF-8 text, never listed
MAX_NAME = 80
MAX_DESCRIPTION = 4000
# Enough bytes for MAX_DESCRIPTION characters (4 bytes at most each) and some blank lines around.
_DESCRIPTION_READ = MAX_DESCRIPTION * 4 + 4096
TYPE_OVF, TYPE_ISO, TYPE_OTHER = "vcsp.ovf", "vcsp.iso", "vcsp.other"
_TEMP_SUFFIXES = (".part", ".tmp", ".partial", ".swp", ".crdownload", "~")


@dataclass(frozen=True)
class ItemProblem:
    """Why an item was left out of the library: names the item and, when known, the file."""

    item: str
    file: str | None
    message: str

    def __str__(self) -> str:
        folder = self.item.rsplit("/", 1)[0]  # an ISO of a folder of ISOs: its file is there
        where = f"{folder}/{self.file}" if self.file else self.item
        # Names come from the server: no raw control characters reach a terminal or the journal.
        return printable(f"item {self.item!r} left out: {where}: {self.message}")


# ----------------------------------------------------------------------------- scanning


@dataclass
class ScannedFile:
    name: str
    path: Path
    st: os.stat_result


@dataclass
class Candidate:
    """One item as found on disk, before hashing."""

    key: str  # folder (or folder/iso-stem for a folder of several ISOs): the item's identity
    folder: str
    type: str
    files: list[ScannedFile]
    descriptor: str | None = None  # the .ovf file name
    mf: str | None = None
    description: str = ""
    problems: list[ItemProblem] = field(default_factory=list)


def _utf8(name: str, where: str, warnings: list[str]) -> bool:
    """JSON (and vCenter) need UTF-8 names; os.scandir hands undecodable bytes as surrogates."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        warnings.append(f"{where}: the name is not valid UTF-8, not listed (rename it)")
        return False
    return True


def _ignored(name: str) -> bool:
    """Never listed: our own files, hidden ones (.vSphere-HA, rsync temps), editor/partial files."""
    return (name.startswith(".") or name in (ITEM_FILE, DESCRIPTION_FILE)
            or name.endswith(_TEMP_SUFFIXES))


def _read_description(path: Path, key: str, warnings: list[str]) -> str:
    """The sidecar's text, reading no more than the MAX_DESCRIPTION characters need."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise OSError(0, "not a regular file")
            data = handle.read(_DESCRIPTION_READ + 1)
    except OSError as error:
        warnings.append(f"{path}: cannot read the description ({error.strerror}); left empty")
        return ""
    longer = len(data) > _DESCRIPTION_READ
    data = data[:_DESCRIPTION_READ]
    # A cut may split the last character: an incremental decoder keeps it back, no error.
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(data, final=not longer)
    except UnicodeDecodeError:
        warnings.append(f"{path}: not UTF-8; invalid bytes replaced")
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=not longer)
    text = text.strip()
    if longer or len(text) > MAX_DESCRIPTION:
        warnings.append(f"{path}: description cut to {MAX_DESCRIPTION} characters")
        text = text[:MAX_DESCRIPTION]
    return text


def _iso_children_dirs(entries: list[os.DirEntry]) -> set[str]:
    """Sub-folders we create for a folder of several ISOs (they hold only our item.json)."""
    stems = {Path(e.name).stem for e in entries if e.name.lower().endswith(".iso")}
    own = set()
    for entry in entries:
        if entry.name in stems and entry.is_dir(follow_symlinks=False):
            try:
                if {e.name for e in os.scandir(entry.path)} <= {ITEM_FILE}:
                    own.add(entry.name)
            except OSError:
                pass
    return own


def _scan_item(root: Path, folder: str, include_certs: bool,
               warnings: list[str]) -> list[Candidate]:
    path = root / folder
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as error:
        return [Candidate(folder, folder, TYPE_OTHER, [], problems=[
            ItemProblem(folder, None, f"cannot read the folder ({error.strerror})")])]
    own_dirs = _iso_children_dirs(entries)
    files: list[ScannedFile] = []
    description = ""
    for entry in entries:
        name = entry.name
        if name == DESCRIPTION_FILE and entry.is_file(follow_symlinks=False):
            description = _read_description(Path(entry.path), folder, warnings)
        if _ignored(name) or name in own_dirs:
            continue
        if not _utf8(name, f"{folder}/{printable(name)}", warnings):
            continue
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            warnings.append(f"{folder}/{name}: a symbolic link, not listed (links are never "
                            "followed)")
        elif stat.S_ISDIR(st.st_mode):
            warnings.append(f"{folder}/{name}: a sub-folder inside an item, not listed (an item "
                            "is one folder of files)")
        elif not stat.S_ISREG(st.st_mode):
            warnings.append(f"{folder}/{name}: not a regular file, not listed")
        else:
            files.append(ScannedFile(name, Path(entry.path), st))
    return _classify(folder, files, description, include_certs, warnings)


def _classify(folder: str, files: list[ScannedFile], description: str, include_certs: bool,
              warnings: list[str]) -> list[Candidate]:
    if not files:
        warnings.append(f"{folder}: an empty folder, not an item")
        return []
    lower = [f.name.lower() for f in files]
    ovfs = [f for f, low in zip(files, lower, strict=True) if low.endswith(".ovf")]
    if len(ovfs) == 1:
        mfs = [f for f, low in zip(files, lower, strict=True) if low.endswith(".mf")]
        listed = [f for f in files if include_certs or not f.name.lower().endswith(".cert")]
        for ova in [f for f in listed if f.name.lower().endswith(".ova")]:
            # The unpacked .ovf is the template; the archive would be a second, useless download.
            warnings.append(f"{folder}/{ova.name}: an OVA beside an unpacked .ovf, not listed")
            listed.remove(ova)
        cand = Candidate(folder, folder, TYPE_OVF, listed, descriptor=ovfs[0].name,
                         description=description)
        if len(mfs) > 1:
            cand.problems.append(ItemProblem(folder, None, "several .mf manifests; keep one"))
        elif mfs:
            cand.mf = mfs[0].name
        return [cand]
    if len(ovfs) > 1:
        warnings.append(f"{folder}: {len(ovfs)} .ovf descriptors in one folder; published as "
                        "vcsp.other (put each template in its own folder)")
    if any(low.endswith(".ova") for low in lower):
        warnings.append(f"{folder}: holds an .ova; vCenter reads OVF templates (unpack it: "
                        "`tar xf`), published as vcsp.other")
    if files and all(low.endswith(".iso") for low in lower):
        if len(files) == 1:
            return [Candidate(folder, folder, TYPE_ISO, files, description=description)]
        # VMware's own publisher: a folder of ISOs is one item per ISO.
        return [Candidate(f"{folder}/{Path(f.name).stem}", folder, TYPE_ISO, [f],
                          description=description) for f in files]
    return [Candidate(folder, folder, TYPE_OTHER, files, description=description)]


def scan(root: Path, include_certs: bool, warnings: list[str],
         exclude: Path | None = None) -> list[Candidate]:
    candidates: list[Candidate] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name in (LIB_FILE, ITEMS_FILE):
            continue
        if exclude is not None and Path(entry.path).resolve() == exclude:
            continue  # the state directory, when someone put it inside the library
        if not _utf8(entry.name, printable(entry.name), warnings):
            continue
        if entry.is_symlink():
            warnings.append(f"{entry.name}: a symbolic link at the library root, not followed")
        elif entry.is_dir(follow_symlinks=False):
            candidates.extend(_scan_item(root, entry.name, include_certs, warnings))
        elif not _ignored(entry.name):
            warnings.append(f"{entry.name}: a file at the library root is not an item (put it "
                            "in a folder of its own)")
    return candidates


# ----------------------------------------------------------------------------- naming


def shorten(name: str, limit: int = MAX_NAME) -> str:
    """Cut to `limit` characters keeping a short extension (`.ovf`, `.iso`) when there is one."""
    if len(name) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) <= 10:
        return stem[: limit - len(ext) - 1] + "." + ext
    return name[:limit]


def _variant(name: str, number: int) -> str:
    suffix = f"~{number}"
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) <= 10:
        return shorten(stem, MAX_NAME - len(ext) - 1 - len(suffix)) + suffix + "." + ext
    return shorten(name, MAX_NAME - len(suffix)) + suffix


def assign_names(keys: list[str], previous: dict[str, str]) -> dict[str, str]:
    """Unique names of at most 80 characters; an item keeps the name it had if still free."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for key in keys:  # first the names already published, so a newcomer never steals one
        old = previous.get(key)
        if old and len(old) <= MAX_NAME and old not in taken:
            names[key] = old
            taken.add(old)
    for key in keys:
        if key in names:
            continue
        base = shorten(key.rsplit("/", 1)[-1] if "/" in key else key)
        name, number = base, 1
        while name in taken:
            number += 1
            name = _variant(base, number)
        names[key] = name
        taken.add(name)
    return names


def href(*segments: str) -> str:
    """A root-relative href, each segment percent-encoded (spaces, #, %, ?, unicode)."""
    return "/".join(quote(part, safe="") for segment in segments for part in segment.split("/"))

