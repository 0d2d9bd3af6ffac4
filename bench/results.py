"""Where every benchmark's figures go: one JSON file per run configuration in bench/results/.

Each file records the figures and how they were obtained: the exact command line, the git
commit (and whether the tree held uncommitted changes), the machine (CPU, cores, memory,
kernel, Debian, tool versions) and the date. `bench/report.py` renders docs/benchmarks.md's
tables from these files; no figure in that document is typed by hand.

    from results import record
    record("bench_sync", "disk1024", figures)      # → bench/results/bench_sync.disk1024.json
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCHEMA = 1


def _output(argv: list[str]) -> str:
    """First line a tool prints about itself ('' when it is missing)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else ""


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return 0.0


def _os_release() -> str:
    try:
        fields = dict(line.split("=", 1) for line in
                      Path("/etc/os-release").read_text().splitlines() if "=" in line)
    except OSError:
        return ""
    return fields.get("PRETTY_NAME", "").strip('"')


def _debian_version() -> str:
    try:
        return Path("/etc/debian_version").read_text().strip()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """Facts that make figures comparable (or not) between two runs."""
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "os": _os_release(),
        "debian_version": _debian_version(),
        "python": platform.python_version(),
        "rsync": _output(["rsync", "--version"]),
        "openssh": _output(["ssh", "-V"]),
        "openssl": _output(["openssl", "version"]),
        "caddy": _output(["caddy", "version"]),
    }


def _git(*args: str) -> str:
    return subprocess.run(["git", "-c", f"safe.directory={ROOT}", "-C", str(ROOT), *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def source_state() -> dict[str, Any]:
    """The commit measured, and whether tracked files differed from it (results excluded)."""
    try:
        commit = _git("rev-parse", "HEAD")
        changes = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                       ":(exclude)bench/results", ":(exclude)docs/benchmarks.md")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": bool(changes)}


def command_line(root: bool = False) -> str:
    """The command as typed from the repository's top (`sudo` first for root-only scripts)."""
    python = Path(sys.executable)
    try:
        python_shown = str(python.relative_to(ROOT))
    except ValueError:
        python_shown = "python3"
    script = Path(sys.argv[0]).resolve()
    try:
        script_shown = str(script.relative_to(ROOT))
    except ValueError:
        script_shown = sys.argv[0]
    return ("sudo " if root else "") + shlex.join([python_shown, script_shown, *sys.argv[1:]])


def path_for(benchmark: str, config: str) -> Path:
    return RESULTS / f"{benchmark}.{config}.json"


def record(benchmark: str, config: str, figures: dict[str, Any], *, root: bool = False,
           started: datetime | None = None, directory: Path | None = None) -> Path:
    """Write one run's figures with their provenance; returns the file written."""
    document = {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "config": config,
        "command": command_line(root),
        **source_state(),
        "date": (started or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "machine": machine(),
        "figures": figures,
    }
    folder = directory or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{benchmark}.{config}.json"
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    os.replace(temp, path)
    print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
