"""trust-host against a real sshd when its key is already recorded: a --fingerprint that is not
the server's key is an error, never "already trusted"."""

from __future__ import annotations

import subprocess
from pathlib import Path

from library_syncer.base.errors import ExitStatus
from tests.test_sync_helpers import cli, write_config


def _fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


def test_a_mismatching_fingerprint_on_an_already_trusted_host_is_refused(work_dir, sshd,
                                                                        client_key):
    config = write_config(work_dir, sshd, client_key[0])  # the server's key already recorded
    known = work_dir / "client-ssh" / "known_hosts"
    before = known.read_text()
    right = _fingerprint(sshd.dir / "ssh_host_ed25519_key.pub")
    wrong = "SHA256:" + "A" * 43

    refused = cli("trust-host", "--config", str(config), "--fingerprint", wrong)
    assert refused.returncode == ExitStatus.HOST_KEY, refused.stdout + refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("library-syncer:")]
    assert len(errors) == 1 and right in errors[0] and wrong in errors[0], refused.stderr
    assert "already trusted" not in refused.stdout and "Traceback" not in refused.stderr
    assert known.read_text() == before

    for given in (right, right.removeprefix("SHA256:")):  # the matching one, either spelling
        again = cli("trust-host", "--config", str(config), "--fingerprint", given)
        assert again.returncode == 0 and "already trusted" in again.stdout, again.stderr
    assert known.read_text() == before
