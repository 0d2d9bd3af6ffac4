#!/usr/bin/env python3
"""Manifest engine benchmark: cold build vs `openssl dgst -sha256`, and no-change rebuilds.

Generates a library (default 20 OVF items, 4 GiB in all, each with a SHA256 .mf as ovftool
writes), then in the same run:
  1. `openssl dgst -sha256` over the same files (one process, one core, SHA instructions): the bar;
  2. a cold build (empty cache) with one hashing thread, then with one per CPU; ratios to 1;
  3. a no-change rebuild of that library: time and bytes of content read;
  4. a 1000-file library: cold build, no-change rebuild in place, and as the sync does it (a new
     hard-linked staging tree, the previous snapshot as `previous`): time and bytes read.
The page cache is warm for every reader (the files were just written; RAM is larger than the
library), so this measures hashing and bookkeeping, not the disk.

    .venv/bin/python bench/bench_manifest.py [--size-gib 4] [--items 20] [--repeats 2]
Writes bench/results/bench_manifest.<size>gib.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results

from library_syncer.base import execute
from library_syncer.manifest import vcsp as manifest

# What the figures depend on (the manifest engine), as files under library_syncer/:
# bench/report.py marks them in docs/benchmarks.md when one of these changed after they were
# measured.
MEASURES = [
    "manifest/vcsp.py", "manifest/hashing.py", "manifest/scan.py", "manifest/state.py",
]

OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="{disk}" ovf:id="file1" ovf:size="{size}"/></References>
  <VirtualSystem ovf:id="vm"><Info>A virtual machine</Info></VirtualSystem>
</Envelope>
"""


def _rchar() -> int:
    """Bytes this process has read through read() so far (all files, JSON included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def generate(root: Path, items: int, total: int) -> list[Path]:
    """`items` OVF templates: descriptor, disk, and a SHA256 .mf that matches both."""
    block = os.urandom(8 * 1024 * 1024)
    disks = []
    per_item = total // items
    for number in range(items):
        folder = root / f"template-{number:02d}"
        folder.mkdir(parents=True)
        disk = folder / f"template-{number:02d}-disk1.vmdk"
        digest = hashlib.sha256()
        with open(disk, "wb") as out:
            written = 0
            while written < per_item:
                chunk = memoryview(block)[: min(len(block), per_item - written)]
                head = number.to_bytes(4, "little") + written.to_bytes(8, "little")
                data = head + bytes(chunk[len(head):])  # every block differs
                out.write(data)
                digest.update(data)
                written += len(data)
        descriptor = OVF.format(disk=disk.name, size=per_item).encode()
        (folder / f"template-{number:02d}.ovf").write_bytes(descriptor)
        (folder / f"template-{number:02d}.mf").write_text(
            f"SHA256(template-{number:02d}.ovf)= {hashlib.sha256(descriptor).hexdigest()}\n"
            f"SHA256({disk.name})= {digest.hexdigest()}\n")
        disks.append(disk)
    return sorted(p for p in root.rglob("*") if p.is_file())


def generate_small(root: Path, files: int) -> None:
    for number in range(files):
        path = root / f"item-{number // 20:03d}" / f"file-{number % 20:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(4096))


def timed_build(root: Path, state: Path, **kwargs) -> tuple[float, int, manifest.BuildReport]:
    before = _rchar()
    started = time.perf_counter()
    report = manifest.build(root, name="Bench", state=manifest.StatePlace.folder(state), **kwargs)
    elapsed = time.perf_counter() - started
    assert report.problems == (), report.problems
    return elapsed, _rchar() - before, report


def openssl(files: list[Path]) -> float:
    started = time.perf_counter()
    execute.run(["openssl", "dgst", "-sha256", *map(str, files)], capture=True)
    return time.perf_counter() - started


def link_tree(source: Path, dest: Path) -> None:
    """rsync --link-dest for an unchanged tree: hard links, no JSON."""
    for path in source.rglob("*"):
        rel = path.relative_to(source)
        if rel.parts[0].startswith(".") or path.name.endswith(".json"):
            continue
        if path.is_dir():
            (dest / rel).mkdir(parents=True, exist_ok=True)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, dest / rel)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the best counts")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    started = datetime.now(timezone.utc)
    base = Path(tempfile.mkdtemp(prefix="bench-manifest-", dir=args.workdir))
    try:
        figures = run(base, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results.record("bench_manifest", f"{args.size_gib:g}gib", figures, started=started)
    return 0


def run(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    total = int(args.size_gib * 1024**3)
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"{execute.run(['openssl', 'version'], capture=True).output.strip()}")
    library = base / "library"
    files = generate(library, args.items, total)
    size = sum(p.stat().st_size for p in files)
    mb = size / 1e6
    print(f"library: {args.items} OVF items, {len(files)} files, {size / 1024**3:.2f} GiB "
          "(SHA256 .mf verified in the same read)")

    # Each contender runs `repeats` times, interleaved; the best time counts (noisy VMs).
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        best["openssl"] = min(best.get("openssl", 1e9), openssl(files))
        for workers in (1, 0):
            state = base / f"state-{workers}"
            shutil.rmtree(state, ignore_errors=True)
            elapsed, _, report = timed_build(library, state, workers=workers)
            assert report.bytes_hashed == size
            best[str(workers)] = min(best.get(str(workers), 1e9), elapsed)
    t_ssl = best["openssl"]
    print(f"openssl dgst -sha256 (1 core):     {t_ssl:7.2f} s  {mb / t_ssl:7.0f} MB/s")
    for workers, label in ((1, "1 thread"), (0, f"{os.cpu_count()} threads")):
        elapsed = best[str(workers)]
        print(f"cold build, {label:10s}          {elapsed:7.2f} s  {mb / elapsed:7.0f} MB/s  "
              f"{t_ssl / elapsed:4.2f}x openssl")
    figures: dict[str, Any] = {
        "items": args.items, "files": len(files), "library_bytes": size, "cpus": os.cpu_count(),
        "repeats": args.repeats, "openssl_seconds": t_ssl,
        "cold_1_thread_seconds": best["1"], "cold_all_threads_seconds": best["0"]}
    elapsed, read, report = timed_build(library, base / "state-0")
    figures.update(rebuild_seconds=elapsed, rebuild_content_bytes=report.bytes_hashed,
                   rebuild_all_read_bytes=read)
    print(f"no-change rebuild:                 {elapsed * 1000:7.1f} ms, content read "
          f"{report.bytes_hashed} bytes, all reads {read / 1e3:.0f} kB (JSON, cache)")

    small = base / "small"
    generate_small(small, args.small_files)
    state = base / "state-small"
    cold, _, report = timed_build(small, state)
    figures.update(small_files=args.small_files, small_cold_seconds=cold)
    print(f"{args.small_files}-file library, cold build:      {cold * 1000:7.1f} ms "
          f"({report.files_hashed} files hashed)")
    elapsed, read, report = timed_build(small, state)
    assert report.files_hashed == 0
    figures.update(small_rebuild_seconds=elapsed, small_rebuild_content_bytes=report.bytes_hashed,
                   small_rebuild_all_read_bytes=read)
    print(f"{args.small_files}-file no-change rebuild:        {elapsed * 1000:7.1f} ms, content "
          f"read {report.bytes_hashed} bytes, all reads {read / 1e3:.0f} kB")
    staging = base / "staging"
    link_tree(small, staging)
    elapsed, read, report = timed_build(staging, state, previous=small)
    assert report.files_hashed == 0 and report.items_changed == ()
    figures.update(small_sync_seconds=elapsed, small_sync_content_bytes=report.bytes_hashed)
    print(f"{args.small_files}-file no-change sync build:     {elapsed * 1000:7.1f} ms, content "
          f"read {report.bytes_hashed} bytes (hard-linked staging, previous snapshot)")
    return figures


if __name__ == "__main__":
    sys.exit(main())
