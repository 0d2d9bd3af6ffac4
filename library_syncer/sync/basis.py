"""A basis for every new file: what rsync delta-transfers a new path against.

rsync sends only changed blocks, but only against a file at the same path. A renamed item folder,
a file moved between items, or a new template version published as a new item (a copy of last
month's folder with a few percent of its disk rewritten and its files renamed) would otherwise
cross the WAN in full. Before the transfer, every new file above MIN_SIZE gets the most likely
older copy the site already has, hard-linked into staging at the new path: rsync then finds a
file there and sends only the blocks that differ from it.

Safe by construction: rsync never writes into an existing destination file (no --inplace or
--append: it writes a temporary file and renames it over the link), so the published snapshot's
inode is never modified. A wrong guess costs the block checksums of the basis (sent from the
site to the server) and the server's rolling checksum over the new file, never data.

Candidates: every regular file of the published snapshot and every archive of the OVA store.
Score (higher is better), among files of the same kind (extension) and comparable size whose
file or item-folder name is related (similarity at least RELATED):
file-name similarity, item-folder similarity, size ratio, the same position among the item's
files of that kind (disk 1 for disk 1), and a bonus for a file the server no longer has (a
rename or a move). A candidate identical in name and size to a vanished file wins outright.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MIN_SIZE = 1 << 20  # smaller files cost little either way
MIN_SIZE_RATIO = 0.25  # a basis a quarter the size (or 4x) still shares blocks
# Names (of the file or of its item folder) at least this similar, or no guess: a basis with no
# block in common costs few bytes but makes the server's rsync look for matches at every byte
# of the new file (bench_basis: several times the CPU of sending it whole).
RELATED = 0.65
_NOT_LETTERS = re.compile(r"[^a-z]+")
# Never candidates: our own manifests and page (rewritten every run), hidden state.
SKIP_NAMES = frozenset({"lib.json", "items.json", "item.json", "index.html"})


@dataclass(frozen=True)
class Listed:
    """One file of the server's library, as the dry run listed it."""

    path: str  # relative, POSIX
    size: int
    new: bool  # not in staging nor in any --link-dest: rsync would send it whole
    fetched: bool = False  # rsync would fetch it (new or changed: `>f`), not link or skip it


@dataclass(frozen=True)
class Candidate:
    """A file the site already has."""

    rel: str  # its path in the library (item/name)
    path: Path  # where it is on disk
    size: int
    gone: bool = False  # the server no longer has this path (renamed, moved or deleted)


def parse_listing(lines: Iterable[str]) -> list[Listed]:
    """Regular files from rsync's `--out-format='%i %l %n'` lines (with --info=name2, unchanged
    files are listed too). `>f+++++++++` is a file rsync would create from nothing."""
    files = []
    for line in lines:
        flags, rest = line[:11], line[12:]  # %i is always 11 characters (spaces inside)
        if len(flags) != 11 or line[11:12] != " " or flags[1] != "f" or flags[0] not in ">ch.":
            continue
        size, _, path = rest.lstrip().partition(" ")
        if not size.isdigit() or not path or "\\#" in path:
            continue  # rsync escapes unprintable bytes as \#ooo: not the name on disk
        files.append(Listed(path, int(size), new=flags[2:] == "+++++++++",
                            fetched=flags[0] == ">"))
    return files


def _kind(name: str) -> str:
    return PurePosixPath(name).suffix.lower()


def _item(rel: str) -> str:
    parts = PurePosixPath(rel).parts
    return parts[0] if len(parts) > 1 else ""


def _walk_files(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or name in SKIP_NAMES:
                continue
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if os.path.isfile(path) and not path.is_symlink():
                yield path.relative_to(root).as_posix(), path, st


def candidates(published: Path | None, ova_store: Path | None,
               server_paths: set[str]) -> list[Candidate]:
    """What the site has, large enough to be worth a guess. `server_paths`: every file the
    server lists now (what is not among them is gone)."""
    found: list[Candidate] = []
    for root in (r for r in (published, ova_store) if r is not None and r.is_dir()):
        for rel, path, st in _walk_files(root):
            if st.st_size >= MIN_SIZE:
                found.append(Candidate(rel, path, st.st_size, gone=rel not in server_paths))
    return found


def _positions(paths: Iterable[str]) -> dict[str, int]:
    """Each file's index among the files of its item and kind, by name (disk 1, disk 2…)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        groups.setdefault((_item(path), _kind(path)), []).append(path)
    return {path: index for group in groups.values()
            for index, path in enumerate(sorted(group))}


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()


def _related(a: str, b: str) -> float:
    """Similarity of the names' letters alone (no dates, versions, build numbers, separators):
    the same product in another month scores high, another product of the same month not."""
    return _similarity(_NOT_LETTERS.sub("", PurePosixPath(a).stem.lower()),
                       _NOT_LETTERS.sub("", PurePosixPath(b).stem.lower()))


def score(new: Listed, candidate: Candidate, same_position: bool) -> float | None:
    """How likely `candidate` shares blocks with `new`; None when it is not worth a guess."""
    if _kind(new.path) != _kind(candidate.rel):
        return None
    ratio = min(new.size, candidate.size) / max(new.size, candidate.size)
    if ratio < MIN_SIZE_RATIO:
        return None
    new_name, old_name = PurePosixPath(new.path).name, PurePosixPath(candidate.rel).name
    folders = _similarity(_item(new.path), _item(candidate.rel))
    if candidate.gone and new_name == old_name and new.size == candidate.size:
        return 100.0 + folders  # the same file under a new folder: a rename or a move
    names = _similarity(PurePosixPath(new_name).stem, PurePosixPath(old_name).stem)
    if max(_related(new_name, old_name), _related(_item(new.path), _item(candidate.rel))) \
            < RELATED:
        return None  # an unrelated template: a guess would cost the server a futile scan
    value = 3 * names + 2 * folders + 2 * ratio
    if same_position:
        value += 1
    if candidate.gone:
        value += 0.5
    return value


def choose(new_files: list[Listed], listing: list[Listed], pool: list[Candidate]
           ) -> dict[str, Candidate]:
    """The best candidate for every new file of at least MIN_SIZE (none when nothing fits).

    Best pairs first, each candidate given once while an untaken one fits (two renamed items
    whose disks share a name and size each get their own); a file whose fitting candidates are
    all taken shares one (still better than nothing). Ties go to the earlier path: the choice
    never depends on the order a folder was read in."""
    new_positions = _positions(f.path for f in listing)
    old_positions = _positions(c.rel for c in pool)
    pairs = []
    for new in new_files:
        if not new.new or new.size < MIN_SIZE:
            continue
        for candidate in pool:
            same = new_positions.get(new.path) == old_positions.get(candidate.rel)
            value = score(new, candidate, same)
            if value is not None and value > 0:
                pairs.append((-value, new.path, candidate.rel, candidate))
    pairs.sort(key=lambda pair: pair[:3])
    chosen: dict[str, Candidate] = {}
    taken: set[str] = set()
    for share in (False, True):
        for _, path, rel, candidate in pairs:
            if path not in chosen and (share or rel not in taken):
                chosen[path] = candidate
                taken.add(rel)
    return chosen


def seed(staging: Path, chosen: dict[str, Candidate]) -> list[str]:
    """Hard-link each basis into staging at the new path (folders 0755, as rsync makes them).
    Returns the paths seeded; a path that cannot be linked (another filesystem, a name in the
    way) is skipped: it is then fetched whole, as without a basis."""
    seeded = []
    for rel, candidate in sorted(chosen.items()):
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
            continue  # rsync never lists such names; never trust that here
        target = staging.joinpath(*parts)
        if target.exists() or target.is_symlink() or _symlink_on_the_way(staging, target):
            continue
        try:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.link(candidate.path, target)
        except OSError:
            continue
        seeded.append(rel)
    return seeded


def _symlink_on_the_way(root: Path, target: Path) -> bool:
    """A link among target's existing parents would put the basis outside staging."""
    for parent in target.relative_to(root).parents:
        if parent != Path(".") and (root / parent).is_symlink():
            return True
    return False
