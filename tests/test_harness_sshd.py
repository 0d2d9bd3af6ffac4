"""The sshd harness itself: a forced rrsync -ro key can list the library, and only that."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _ssh(sshd, key: Path, known_hosts: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-p", str(sshd.port), "-i", str(key), "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "IdentitiesOnly=yes", f"{sshd.user}@127.0.0.1", *args],
        capture_output=True, text=True, timeout=30)


def test_rrsync_listing_works_and_shell_is_refused(sshd, client_key, server_library, work_dir):
    (server_library / "item-a").mkdir()
    (server_library / "item-a" / "disk.vmdk").write_bytes(b"x" * 1000)
    known = work_dir / "known_hosts"
    known.write_text(sshd.known_hosts_line + "\n")
    listing = subprocess.run(
        ["rsync", "-r", "--list-only", "-e",
         f"ssh -p {sshd.port} -i {client_key[0]} -o BatchMode=yes -o IdentitiesOnly=yes "
         f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes",
         f"{sshd.user}@127.0.0.1:/"],
        capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert "item-a/disk.vmdk" in listing.stdout
    shell = _ssh(sshd, client_key[0], known, "id")
    assert shell.returncode != 0
    assert "uid=" not in shell.stdout
