"""The signed statement: the origin's word, with an expiry, that revision N is this document.

The revision document (`trace.json`, base/revision.py) says what revision N holds; the statement
binds it to the origin's key for a limited time. It is a small envelope, not a second copy of
the document, so a site checks it before it pulls (one small read) and the origin signs it again
before it expires without rewriting the document (docs/trust.md):

    {"document":{"sha256":"<hex of trace.json's bytes>","size":1234},"format":1,
     "key":"SHA256:…","origin":"hq","serial":42,"signed":"2026-12-03T06:00:00+00:00",
     "time":"<the revision's time>","valid_until":"2026-12-10T06:00:00+00:00"}

Canonical bytes as the document's (keys sorted, no spaces, ASCII, one final newline); a
statement that does not serialise back to exactly its bytes is refused, so one revision has one
reading. The file `<library>/.library-syncer/statement` is that line followed by the armored
signature `ssh-keygen -Y sign -n NAMESPACE` made over the line: one file, replaced atomically, so
a reader never sees one statement with another's signature.

`verify` is what a site calls; it runs `ssh-keygen -Y verify` against the allowed-signers file
the site pins (principal: the origin's name; the key lines' namespaces=, valid-after= and
valid-before= are ssh-keygen's own, evaluated at `now`).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .revision import MAX_SERIAL, Revision

FORMAT = 1
NAMESPACE = "library-syncer-revision@library-syncer"  # ssh-keygen -Y -n: ours alone
FILE_NAME = "statement"  # in <library>/.library-syncer/
MAX_STATEMENT_BYTES = 8192  # the line (~400 bytes) and an RSA-4096 signature fit many times
MAX_DOCUMENT_BYTES = 256 << 20  # ~1.2 million files at ~200 bytes a row: far above any library
SIGNATURE_BEGIN = b"-----BEGIN SSH SIGNATURE-----"
VERIFY_TIMEOUT = 30.0
_ORIGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # as server.name
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEYS = frozenset({"document", "format", "key", "origin", "serial", "signed", "time",
                   "valid_until"})


class StatementRefused(ValueError):
    """Not a valid statement of the pinned origin now; the message is one line for the log."""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def _epoch(text: object, key: str) -> float:
    if not isinstance(text, str) or len(text) > 40:
        raise StatementRefused(f"statement: {key} is not a time")
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            raise ValueError
        return moment.timestamp()
    except (ValueError, OverflowError):
        raise StatementRefused(f"statement: {key} is not a time with its UTC offset") from None


@dataclass(frozen=True)
class Statement:
    origin: str
    serial: int
    time: str  # the revision's own time (the document's)
    signed: str
    valid_until: str
    document_sha256: str
    document_size: int
    key: str  # fingerprint of the signing key (lets the origin see a rotation is due)

    def to_bytes(self) -> bytes:
        data = {"document": {"sha256": self.document_sha256, "size": self.document_size},
                "format": FORMAT, "key": self.key, "origin": self.origin, "serial": self.serial,
                "signed": self.signed, "time": self.time, "valid_until": self.valid_until}
        return (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode()

    @property
    def expires(self) -> float:
        return _epoch(self.valid_until, "valid_until")

    @property
    def signed_at(self) -> float:
        return _epoch(self.signed, "signed")

    @classmethod
    def for_document(cls, document: bytes, revision: Revision, key: str, now: float,
                     validity: float) -> Statement:
        """The statement of `revision`, whose canonical bytes are `document`."""
        return cls(revision.origin, revision.serial, revision.time, _iso(now),
                   _iso(now + validity), hashlib.sha256(document).hexdigest(), len(document),
                   key)

    @classmethod
    def parse(cls, line: bytes) -> Statement:
        """A statement from its canonical bytes; StatementRefused for anything else."""
        if len(line) > MAX_STATEMENT_BYTES:
            raise StatementRefused("statement: too large")
        try:
            data = json.loads(line.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise StatementRefused("statement: not ASCII JSON") from None
        if not isinstance(data, dict) or set(data) != _KEYS or data["format"] != FORMAT:
            raise StatementRefused(f"statement: not a format-{FORMAT} statement")
        document, serial = data["document"], data["serial"]
        if not isinstance(document, dict) or set(document) != {"sha256", "size"}:
            raise StatementRefused("statement: malformed document reference")
        size, digest = document["size"], document["sha256"]
        if type(serial) is not int or not 0 < serial < MAX_SERIAL:
            raise StatementRefused(f"statement: serial out of range (1 to {MAX_SERIAL - 1})")
        if type(size) is not int or not 0 < size <= MAX_DOCUMENT_BYTES or \
                not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise StatementRefused("statement: malformed document reference")
        if not isinstance(data["origin"], str) or not _ORIGIN.fullmatch(data["origin"]):
            raise StatementRefused("statement: malformed origin name")
        if not isinstance(data["key"], str) or not _FINGERPRINT.fullmatch(data["key"]):
            raise StatementRefused("statement: malformed key fingerprint")
        for key in ("time", "signed", "valid_until"):
            _epoch(data[key], key)
        found = cls(data["origin"], serial, data["time"], data["signed"], data["valid_until"],
                    digest, size, data["key"])
        if found.to_bytes() != line:
            raise StatementRefused("statement: not in canonical form")
        return found


# --- the file: the line, then its signature ------------------------------------------------


def join(line: bytes, signature: bytes) -> bytes:
    return line + signature


def split(content: bytes) -> tuple[bytes, bytes]:
    """(statement line, armored signature) of a statement file; StatementRefused otherwise."""
    if len(content) > MAX_STATEMENT_BYTES:
        raise StatementRefused("statement file: too large")
    line, newline, signature = content.partition(b"\n")
    if not newline or not signature.startswith(SIGNATURE_BEGIN):
        raise StatementRefused("statement file: no signature after the statement")
    return line + newline, signature


# --- verification (the site's side) ---------------------------------------------------------


def _verify_time(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%d%H%M%SZ")


def check_signature(line: bytes, signature: bytes, allowed_signers: Path, origin: str,
                    namespace: str = NAMESPACE, now: float | None = None) -> None:
    """`ssh-keygen -Y verify`: `signature` is a signature over `line` in `namespace` by a key
    that `allowed_signers` lists for principal `origin`, valid at `now`."""
    moment = time.time() if now is None else now
    with tempfile.NamedTemporaryFile(prefix="library-syncer-sig.") as sig:
        sig.write(signature)
        sig.flush()
        argv = ["ssh-keygen", "-Y", "verify", "-f", str(allowed_signers), "-I", origin,
                "-n", namespace, "-s", sig.name, f"-Overify-time={_verify_time(moment)}"]
        try:
            done = subprocess.run(argv, input=line, capture_output=True, timeout=VERIFY_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise StatementRefused(f"signature: ssh-keygen did not run: {error}") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = said[-1] if said else f"status {done.returncode}"
        from .text import printable

        raise StatementRefused(f"signature: not {origin}'s ({printable(detail[:200])})")


def verify(line: bytes, signature: bytes, allowed_signers: Path, origin: str,
           namespace: str = NAMESPACE, now: float | None = None) -> Statement:
    """The statement of `origin` that `line` is, signed by a key `allowed_signers` lists for it,
    not expired at `now`; StatementRefused (one line saying why) for anything else.

    It says nothing about the document yet: `check_document` compares the pulled `trace.json`
    with it; rollback (serial below the one published) is the caller's comparison.
    """
    moment = time.time() if now is None else now
    found = Statement.parse(line)  # malformed or out of range: refused before any signature
    if found.origin != origin:
        raise StatementRefused(f"statement: of origin {found.origin}, not {origin}")
    check_signature(line, signature, allowed_signers, origin, namespace, moment)
    if moment >= found.expires:
        raise StatementRefused(f"statement: expired at {found.valid_until} (revision "
                               f"{found.serial}; the origin signs again before it expires)")
    return found


def verify_file(content: bytes, allowed_signers: Path, origin: str,
                namespace: str = NAMESPACE, now: float | None = None) -> Statement:
    """`verify` of a whole statement file."""
    line, signature = split(content)
    return verify(line, signature, allowed_signers, origin, namespace, now)


def check_document(statement: Statement, document: bytes) -> Revision:
    """The revision `document` (trace.json's bytes) holds, when it is the one `statement`
    names (size and SHA-256, then origin, serial and time); StatementRefused otherwise."""
    if len(document) != statement.document_size or \
            hashlib.sha256(document).hexdigest() != statement.document_sha256:
        raise StatementRefused(f"trace.json: not the document revision {statement.serial} "
                               "of the statement (size or SHA-256 differ)")
    try:
        found = Revision.from_json(document.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise StatementRefused("trace.json: not a revision document") from None
    if (found.origin, found.serial, found.time) != \
            (statement.origin, statement.serial, statement.time):
        raise StatementRefused("trace.json: origin, serial or time differ from the statement")
    return found
