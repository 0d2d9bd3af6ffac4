"""Data the benchmarks write: incompressible disks from a seed (what rsync's compression cannot
hide), so runs are reproducible."""

from __future__ import annotations

import random
from pathlib import Path

MIB = 1 << 20


def write_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as out:
        left = size
        while left:
            block = min(left, 64 * MIB)
            out.write(rng.randbytes(block))
            left -= block
