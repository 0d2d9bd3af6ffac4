"""SSH public keys, for both roles: the one list of key types we accept, reading a key from a
.pub file, an authorized_keys line or a known_hosts line, and the SHA256 fingerprint exactly as
`ssh-keygen -l` prints it (what operators compare between server and site)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from .errors import ExitStatus, SyncerError

KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
)


class KeyRefused(SyncerError):
    """A public key given by an operator is not acceptable (bad input: usage status)."""

    exit_status = ExitStatus.USAGE


def fingerprint(blob: str) -> str:
    """`SHA256:…` of a key's base64 blob, as ssh-keygen -l shows it."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raw = blob.encode()
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class PublicKey:
    type: str  # one of KEY_TYPES
    blob: str  # base64

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    def line(self, pattern: str) -> str:
        """The known_hosts line for hosts matching `pattern`."""
        return f"{pattern} {self.type} {self.blob}"


def split_words(line: str) -> list[str]:
    """Split on spaces outside double quotes (authorized_keys options may quote spaces)."""
    return re.findall(r'(?:[^\s"]|"(?:\\.|[^"\\])*")+', line)


def parse_line(line: str) -> PublicKey | None:
    """`[host]:port type base64 [comment]` (known_hosts, ssh-keyscan), or `type base64` (a .pub
    file) → PublicKey; None for anything else. The blob is not checked (see parse_public_key)."""
    fields = line.split()
    for i, word in enumerate(fields[:2]):
        if word in KEY_TYPES and len(fields) > i + 1:
            return PublicKey(word, fields[i + 1])
    return None


def parse_public_key(text: str, source: str = "key") -> PublicKey:
    """The one public key of a .pub file or an authorized_keys line (options are dropped);
    KeyRefused, naming `source`, for a private key, several lines, or a damaged key."""
    text = text.strip()
    if "PRIVATE KEY" in text:
        raise KeyRefused(f"{source}: this is a PRIVATE key; give the public one "
                         "(the .pub file next to it, e.g. id_syncer.pub) and keep the private "
                         "key on the site")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        found = "no key" if not lines else f"{len(lines)} lines"
        raise KeyRefused(f"{source}: found {found}, expected exactly one public key line "
                         "(authorize one site at a time)")
    words = split_words(lines[0])
    for index, word in enumerate(words[:-1]):
        if word in KEY_TYPES:
            key = PublicKey(word, words[index + 1])
            _check_blob(key, source)
            return key
    raise KeyRefused(f"{source}: not an OpenSSH public key (expected a line such as "
                     "'ssh-ed25519 AAAA… comment', as written by ssh-keygen to the .pub file)")


def _check_blob(key: PublicKey, source: str) -> None:
    """The blob must be base64 of a key whose embedded type matches the declared one."""
    try:
        raw = base64.b64decode(key.blob, validate=True)
        length = int.from_bytes(raw[:4], "big")
        embedded = raw[4:4 + length].decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        embedded = ""
    if embedded != key.type:
        raise KeyRefused(f"{source}: not a valid {key.type} public key (damaged or truncated "
                         "base64); copy the .pub file again")
