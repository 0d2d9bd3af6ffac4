"""Helpers for the sync tests: settings files, server libraries, running the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE_TEMPLATE = "ttylinux-template"


def write_config(work_dir: Path, sshd, key: Path, *, state: Path | None = None,
                 known_hosts: bool = True, port: int | None = None, metrics: Path | None = None,
                 user: str | None = None, **sync: object) -> Path:
    """A settings file for a client of `sshd` (its host key trusted unless known_hosts=False)."""
    state = state or work_dir / "state"
    known = work_dir / "client-ssh" / "known_hosts"
    if known_hosts:
        known.write_text(sshd.known_hosts_line + "\n")
    values = {"peer": "127.0.0.1", "port": port or sshd.port, "user": user or sshd.user,
              "identity_file": str(key), "known_hosts": str(known), "connect_timeout": "5s",
              "io_timeout": "20s", "retry_budget": "0s", "retry_initial_delay": "1s",
              "retry_max_delay": "2s", "min_free_space": "1M", "compress": False}
    values.update(sync)
    lines = ["[library]", 'name = "Test library"', "", "[sync]"]
    lines += [f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
              for k, v in values.items()]
    lines += ["", "[paths]", f'state_dir = "{state}"', f'runtime_dir = "{work_dir / "run"}"']
    if metrics:
        lines += ["", "[metrics]", f'textfile = "{metrics}"']
    path = work_dir / "library-syncer.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str, timeout: float = 180, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    """Run the real `library-syncer` command line."""
    return subprocess.run([sys.executable, "-m", "library_syncer", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def sync(config: Path, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return cli("sync", "--config", str(config), *extra, timeout=timeout)


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def add_ovf_item(library: Path, fixtures: Path, name: str = "ttylinux") -> Path:
    folder = library / name
    shutil.copytree(fixtures / "ovf" / FIXTURE_TEMPLATE, folder)
    for path in [folder, *folder.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return folder


def add_iso_item(library: Path, name: str, size: int, seed: int = 1) -> Path:
    folder = library / name
    folder.mkdir(mode=0o755, exist_ok=True)
    path = folder / f"{name}.iso"
    path.write_bytes(random_bytes(size, seed))
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def published(state: Path) -> Path:
    return Path(os.path.realpath(state / "published"))


def last_run(state: Path) -> dict:
    return json.loads((state / "last-run.json").read_text())


def items(snapshot: Path) -> dict[str, dict]:
    data = json.loads((snapshot / "items.json").read_text())
    return {item["name"]: item for item in data["items"]}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """relative path → (inode, size) of every file below root (the published tree's identity)."""
    root = Path(os.path.realpath(root))
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size)
            for p in sorted(root.rglob("*")) if p.is_file()}
