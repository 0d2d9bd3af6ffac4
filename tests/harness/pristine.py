"""A pristine machine for the newcomer's path: a fresh clone of this repository run in a fresh
Debian root filesystem (systemd-nspawn, not booted), so nothing an earlier test created on the
host (a /run/sshd, a .venv, installed packages) can make a command pass.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.harness import nspawn

GUEST_CLONE = "/root/library-syncer"  # a home folder with the clone and nothing beside it
APT_ARCHIVES = nspawn.CACHE_ROOT / "apt-archives"  # downloaded .debs, reused between runs
RUN_TIMEOUT = 900


def fresh_clone(target: Path) -> Path:
    """`git clone` of this repository into `target`, plus the uncommitted changes to tracked files
    (so a developer tests what they are about to commit; in CI the tree is clean anyway)."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(nspawn.TOP), str(target)],
                   check=True, capture_output=True, timeout=120)
    diff = subprocess.run(["git", "-C", str(nspawn.TOP), "diff", "HEAD", "--binary"],
                          check=True, capture_output=True, timeout=60).stdout
    if diff:
        subprocess.run(["git", "-C", str(target), "apply", "--whitespace=nowarn", "-"],
                       input=diff, check=True, capture_output=True, timeout=60)
    return target


def run_in_fresh_root(clone: Path, script: str, log: Path,
                      suite: str | None = None) -> subprocess.CompletedProcess:
    """Run `script` with sh in `clone` inside a fresh root filesystem; the tree stays pristine
    (--volatile=overlay), only `clone` and the .deb cache are shared with the host."""
    nspawn.require_tools()
    root = nspawn.rootfs([], **({"suite": suite} if suite else {}))
    APT_ARCHIVES.mkdir(mode=0o755, parents=True, exist_ok=True)
    argv = ["timeout", str(RUN_TIMEOUT), "systemd-nspawn", "-q", "-D", str(root),
            "--register=no", "--keep-unit", "--volatile=overlay", "--as-pid2",
            f"--bind={clone}:{GUEST_CLONE}", f"--bind={APT_ARCHIVES}:/var/cache/apt/archives",
            f"--chdir={GUEST_CLONE}", "--setenv=LANG=C.UTF-8",
            f"--setenv=PATH={nspawn.PATH}", "--setenv=DEBIAN_FRONTEND=noninteractive",
            "/bin/sh", "-ec", script]
    with nspawn.containers_exclusive():
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=RUN_TIMEOUT + 60, env=nspawn.nspawn_env())
        nspawn.remove_leftover_cgroups()
    log.write_text(f"$ {' '.join(argv)}\n{result.stdout}\n{result.stderr}")
    return result
