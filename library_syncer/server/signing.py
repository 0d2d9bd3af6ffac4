"""The origin's revision-signing key: create it, sign a statement with it, say what sites pin.

OpenSSH's own signatures (`ssh-keygen -Y sign`, docs/trust.md says why): the key is an ordinary
ed25519 key without a passphrase (the trace timer signs unattended), root's, mode 0600, named by
server.signing_key. Sites pin its public half in an allowed-signers file (sync.origin_keys), one
line per key with the origin's name as principal and our namespace, so a key that signs
anything else (a commit, a file) can never pass for a revision statement.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from ..base import execute, fsutil, sshkeys, statement
from ..base.errors import SyncerError
from ..base.statement import NAMESPACE

SIGN_TIMEOUT = 30.0


def public_key(key: Path) -> sshkeys.PublicKey:
    """The public half of the private key `key` (ssh-keygen -y: no .pub file needed)."""
    try:
        done = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True,
                              timeout=SIGN_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SyncerError(f"server.signing_key: ssh-keygen did not run: {error}") from None
    if done.returncode != 0:
        raise SyncerError(f"server.signing_key: {key}: not a readable private key without a "
                          "passphrase", hint="library-syncer server keygen creates one")
    return sshkeys.parse_public_key(done.stdout.decode("ascii", "replace"), str(key))


def sign(line: bytes, key: Path, namespace: str = NAMESPACE) -> bytes:
    """The armored signature of `line` by `key` in `namespace` (ssh-keygen -Y sign, stdin)."""
    try:
        done = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n",
                               namespace], input=line, capture_output=True,
                              timeout=SIGN_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SyncerError(f"server.signing_key: ssh-keygen did not run: {error}") from None
    said = done.stderr.decode("utf-8", "replace").strip().splitlines()
    if done.returncode != 0 or not done.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        raise SyncerError(f"server.signing_key: {key}: cannot sign: "
                          f"{said[-1] if said else done.returncode}",
                          hint="the key must be readable by root and have no passphrase")
    return done.stdout


def keygen(path: Path, origin: str) -> sshkeys.PublicKey:
    """Create an ed25519 signing key at `path` (never replaces one); its public key."""
    if path.exists():
        raise SyncerError(f"{path}: a key is already there",
                          hint="rotate with a new file name (docs/trust.md, \"Rotation\")")
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    for leftover in (tmp, Path(f"{tmp}.pub")):
        leftover.unlink(missing_ok=True)
    execute.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                 f"library-syncer revision signing key of {origin}", "-f", str(tmp)])
    os.chmod(tmp, 0o600)
    os.replace(f"{tmp}.pub", f"{path}.pub")
    os.replace(tmp, path)  # the private key last: an interrupted run leaves no half key
    fsutil.fsync_dir(path.parent)
    return public_key(path)


def allowed_signers_line(origin: str, key: sshkeys.PublicKey,
                         valid_after: float | None = None) -> str:
    """The line a site adds to its sync.origin_keys file to trust `key` for `origin`."""
    options = f'namespaces="{NAMESPACE}"'
    if valid_after is not None:
        day = datetime.fromtimestamp(valid_after, timezone.utc).strftime("%Y%m%d")
        options += f',valid-after="{day}"'
    return f"{origin} {options} {key.type} {key.blob}"


def own_statement(library: Path, key: Path, origin: str, now: float | None = None
                  ) -> statement.Statement:
    """The statement in `library`, verified against `key` alone as a site pinning it would
    (signature, origin, expiry, the document it names); StatementRefused otherwise."""
    from . import trace

    name = statement.FILE_NAME
    found = trace.read_files(library, name, trace.TRACE_FILE, limit=statement.MAX_DOCUMENT_BYTES)
    if name not in found:
        raise statement.StatementRefused("no signed statement in the library yet")
    with tempfile.TemporaryDirectory(prefix="library-syncer-signers.") as tmp:
        pinned = Path(tmp) / "origin_keys"
        pinned.write_text(allowed_signers_line(origin, public_key(key)) + "\n")
        verified = statement.verify_file(found[name], pinned, origin, now=now)
    statement.check_document(verified, found.get(trace.TRACE_FILE, b""))
    return verified
