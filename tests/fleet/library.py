"""A synthetic template library for the fleet, its next version, and digests to compare trees.

Each item is a real OVF template folder shaped like the ttylinux fixture (tests/harness/fixtures.py,
ovftool's layout): `<name>.ovf` referencing `<name>-disk1.vmdk`, and a `<name>.mf` with the SHA256
digests of both. Disks are random bytes (incompressible, so rsync's compression cannot hide
what crossed the wire), generated from a seed so runs are reproducible.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

FIXTURE_NAME = "ttylinux-pc_i486-16.1"
CHUNK = 1 << 20


def _descriptor_template(fixtures_dir: Path) -> str:
    return (fixtures_dir / "ovf" / "ttylinux-template" / f"{FIXTURE_NAME}.ovf").read_text()


def _random_file(path: Path, size: int, rng: random.Random) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(CHUNK, left)
            out.write(rng.randbytes(n))
            left -= n


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def write_item(library: Path, name: str, disk_size: int, rng: random.Random,
               fixtures_dir: Path) -> int:
    """One template folder; returns its size in bytes."""
    folder = library / name
    folder.mkdir(mode=0o755)
    disk = folder / f"{name}-disk1.vmdk"
    _random_file(disk, disk_size, rng)
    _write_descriptor(folder, name, disk_size, fixtures_dir)
    write_mf(folder)
    return sum(p.stat().st_size for p in folder.iterdir())


def _write_descriptor(folder: Path, name: str, disk_size: int, fixtures_dir: Path) -> None:
    descriptor = _descriptor_template(fixtures_dir).replace(FIXTURE_NAME, name)
    descriptor = re.sub(r'ovf:size="\d+"', f'ovf:size="{disk_size}"', descriptor, count=1)
    (folder / f"{name}.ovf").write_text(descriptor)


def write_mf(folder: Path) -> None:
    """The `.mf` as ovftool writes it (SHA256 form), over the descriptor and the disks."""
    name = folder.name
    lines = [f"SHA256({p.name})= {sha256_file(p)}\n"
             for p in sorted(folder.iterdir()) if p.suffix in (".ovf", ".vmdk")]
    (folder / f"{name}.mf").write_text("".join(lines))


def make_library(library: Path, *, items: int, disk_size: int, fixtures_dir: Path,
                 seed: int = 1) -> int:
    """`items` templates of `disk_size` bytes each; returns the library size in bytes."""
    library.mkdir(mode=0o755, parents=True, exist_ok=True)
    rng = random.Random(seed)
    return sum(write_item(library, f"tmpl-{k:02d}", disk_size, rng, fixtures_dir)
               for k in range(items))


@dataclass(frozen=True)
class Change:
    changed_item: str
    changed_bytes: int  # bytes rewritten inside the existing disk
    added_item: str
    added_bytes: int
    deleted_item: str

    @property
    def new_bytes(self) -> int:
        """What an ideal delta transfer must carry: the rewritten blocks plus the new item."""
        return self.changed_bytes + self.added_bytes


def new_version(library: Path, *, fraction: float, fixtures_dir: Path, seed: int = 2,
                added_size: int = 0) -> Change:
    """The next template version: `fraction` of the first item's disk rewritten at scattered
    offsets (64 KiB blocks), a new item added (`added_size`, default the same disk size), the
    last item deleted."""
    rng = random.Random(seed)
    items = sorted(p for p in library.iterdir() if p.is_dir() and not p.name.startswith("."))
    first, last = items[0], items[-1]
    disk = first / f"{first.name}-disk1.vmdk"
    size = disk.stat().st_size
    changed = patch(disk, fraction, rng)
    write_mf(first)
    added = f"tmpl-{seed:02d}-{len(items):02d}"  # unique per (seed, version)
    added_bytes = write_item(library, added, added_size or size, rng, fixtures_dir)
    shutil.rmtree(last)
    return Change(first.name, changed, added, added_bytes, last.name)


def patch(disk: Path, fraction: float, rng: random.Random) -> int:
    """Rewrite `fraction` of `disk` at scattered offsets in 64 KiB blocks (at least one);
    returns the bytes rewritten."""
    block = 64 * 1024
    blocks = max(1, int(disk.stat().st_size * fraction) // block)
    offsets = sorted(rng.sample(range(disk.stat().st_size // block), blocks))
    with open(disk, "r+b") as out:
        for index in offsets:
            out.seek(index * block)
            out.write(rng.randbytes(block))
    return blocks * block


def change_item(library: Path, item: str, *, fraction: float, seed: int) -> int:
    """A small change inside an existing item: `fraction` of its disk rewritten, its `.mf`
    updated; returns the bytes rewritten."""
    folder = library / item
    changed = patch(folder / f"{item}-disk1.vmdk", fraction, random.Random(seed))
    write_mf(folder)
    return changed


def new_version_as_new_item(library: Path, old: str, new: str, *, fraction: float,
                            fixtures_dir: Path, seed: int = 5) -> int:
    """The monthly template: `old` copied as the new item `new`, its files renamed after it
    (as an export names them), `fraction` of its disk rewritten; `old` stays. Returns the bytes
    rewritten."""
    folder = library / new
    folder.mkdir(mode=0o755)
    disk = folder / f"{new}-disk1.vmdk"
    shutil.copyfile(library / old / f"{old}-disk1.vmdk", disk)
    os.chmod(disk, 0o644)
    changed = patch(disk, fraction, random.Random(seed))
    _write_descriptor(folder, new, disk.stat().st_size, fixtures_dir)
    write_mf(folder)
    return changed


def add_item(library: Path, name: str, *, disk_size: int, fixtures_dir: Path,
             seed: int = 3) -> int:
    """One more template at the server; returns its size in bytes."""
    return write_item(library, name, disk_size, random.Random(seed), fixtures_dir)


def item_files(library: Path, item: str) -> list[str]:
    """Paths (relative to the library) of an item's files, as a subscriber would fetch them."""
    return sorted(str(p.relative_to(library)) for p in (library / item).iterdir() if p.is_file())


def tree_digests(root: Path, *, skip_json: bool = True) -> dict[str, str]:
    """relative path → SHA256 of every regular file below root (following a top symlink)."""
    root = Path(os.path.realpath(root))
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or (skip_json and name.endswith(".json")):
                continue
            path = Path(dirpath) / name
            result[str(path.relative_to(root))] = sha256_file(path)
    return result


def library_size(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def bench_library(work: Path, *, size_mb: int, items: int) -> tuple[Path, Path]:
    """The benchmarks' library: `items` items sharing `size_mb` MiB of disks, shaped on fixtures
    built in `work` (the same generator as the tests). Returns (library, fixtures folder)."""
    from tests.harness import fixtures

    built = fixtures.build(work / "fixtures")
    lib = work / "library"
    make_library(lib, items=items, disk_size=size_mb * CHUNK // items, fixtures_dir=built)
    return lib, built
