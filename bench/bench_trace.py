#!/usr/bin/env python3
"""The origin trace's scan (server/trace.py): what a stat-only look at the library costs.

The server's trace timer scans the whole library every minute, so the scan must stay cheap. In
the same run, for libraries of 1,000, 10,000 and (with --max-files) more files, spread over
folders as templates are (10 files per item folder): the trace tick with nothing changed (the
timer's usual case), against `find -printf` listing the same tree with sizes, mtimes and ctimes
(a C program walking the same tree: the bar). Page cache warm (a minute-old scan leaves it so).

    .venv/bin/python bench/bench_trace.py [--max-files 10000] [--repeats 5]
Writes bench/results/bench_trace.scan.json (see bench/results.py).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results

from library_syncer.base import config as config_module
from library_syncer.server import trace

# What the figures depend on (the origin's trace scan), as files under library_syncer/:
# bench/report.py marks them in docs/benchmarks.md when one of these changed after they were
# measured.
MEASURES = [
    "server/trace.py",
]

FILES_PER_ITEM = 10


def make_library(root: Path, files: int) -> None:
    for index in range(files):
        folder = root / f"item-{index // FILES_PER_ITEM:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"disk-{index % FILES_PER_ITEM}.vmdk").write_bytes(b"x" * (index % 97))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(action) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), _cpu()
    action()
    return time.perf_counter() - wall, _cpu() - cpu


def measure(root: Path, files: int, repeats: int) -> dict[str, Any]:
    library = root / f"library-{files}"
    make_library(library, files)
    settings = root / f"settings-{files}.toml"
    settings.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{root / "state"}"\n'
                        f'settle = "1s"\nname = "bench"\n')
    config = config_module.load(settings)
    first = trace.tick(config, now=time.time() + 10)
    assert first.state == "declared", first
    ticks, finds = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine
        ticks.append(_timed(lambda: trace.tick(config, now=time.time() + 10)))
        finds.append(_timed(lambda: subprocess.run(
            ["find", str(library), "-printf", "%P %s %T@ %C@\n"], check=True,
            stdout=subprocess.DEVNULL)))
    tick_wall = statistics.median(t[0] for t in ticks)
    find_wall = statistics.median(f[0] for f in finds)
    size = (library / ".library-syncer" / "trace.json").stat().st_size
    return {"files": files, "tick_wall": tick_wall,
            "tick_cpu": statistics.median(t[1] for t in ticks), "find_wall": find_wall,
            "ratio": tick_wall / find_wall, "trace_bytes": size, "repeats": repeats}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-files", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sizes = sorted({1_000, min(10_000, args.max_files), args.max_files})
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-trace-", dir="/var/tmp") as tmp:
        for files in sizes:
            row = measure(Path(tmp), files, args.repeats)
            print(f"{files:>7} files: tick {row['tick_wall'] * 1000:.0f} ms "
                  f"(cpu {row['tick_cpu'] * 1000:.0f} ms), find {row['find_wall'] * 1000:.0f} ms, "
                  f"{row['ratio']:.2f}x; trace {row['trace_bytes']:,} bytes")
            rows.append(row)
    results.record("bench_trace", "scan", {"rows": rows, "files_per_item": FILES_PER_ITEM})
    return 0


if __name__ == "__main__":
    sys.exit(main())
