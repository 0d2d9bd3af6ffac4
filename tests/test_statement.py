"""The signed statement (base/statement.py) on real `ssh-keygen -Y` signatures: what a site will
accept and every way a statement is refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from library_syncer.base import statement
from library_syncer.base.revision import MAX_SERIAL, Revision, next_content
from library_syncer.base.statement import Statement, StatementRefused
from library_syncer.server import signing

NOW = 1_796_000_000.0  # 2026-11-29
DAY = 86400.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("hq", "other"):
        signing.keygen(folder / name, name)
    return {name: folder / name for name in ("hq", "other")}


def _revision(origin: str = "hq", serial: int = 42) -> tuple[bytes, Revision]:
    found = Revision(origin, serial, "2026-11-29T00:00:00+00:00",
                     {"a/disk.vmdk": (3, 1_000_000_000)})
    return found.to_json().encode(), found


def _signed(key: Path, origin: str = "hq", serial: int = 42, now: float = NOW,
            validity: float = 7 * DAY, namespace: str = statement.NAMESPACE
            ) -> tuple[bytes, bytes, bytes]:
    """(statement line, signature, document) of a revision signed by `key`."""
    document, found = _revision(origin, serial)
    line = Statement.for_document(document, found, signing.public_key(key).fingerprint, now,
                                  validity).to_bytes()
    return line, signing.sign(line, key, namespace), document


def _pinned(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "origin_keys"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _line(keys: dict[str, Path], name: str, origin: str = "hq", **options) -> str:
    return signing.allowed_signers_line(origin, signing.public_key(keys[name]), **options)


def test_a_statement_signed_by_the_pinned_key_verifies(keys, tmp_path):
    line, signature, document = _signed(keys["hq"])
    pinned = _pinned(tmp_path, _line(keys, "hq"))
    found = statement.verify_file(statement.join(line, signature), pinned, "hq", now=NOW + DAY)
    assert (found.origin, found.serial) == ("hq", 42)
    assert found.expires == NOW + 7 * DAY
    assert statement.check_document(found, document).serial == 42


def test_the_canonical_bytes_are_the_only_reading(keys):
    line, _, _ = _signed(keys["hq"])
    assert Statement.parse(line).to_bytes() == line
    with pytest.raises(StatementRefused, match="canonical"):
        Statement.parse(line.replace(b",", b", ", 1))


@pytest.mark.parametrize("case", ["wrong key", "wrong namespace", "another origin",
                                  "another origin's key", "tampered byte"])
def test_a_statement_not_signed_by_the_origin_is_refused(keys, tmp_path, case):
    pinned = _pinned(tmp_path, _line(keys, "hq"), _line(keys, "other", origin="other"))
    if case == "wrong key":
        line, signature, _ = _signed(keys["other"])
    elif case == "wrong namespace":
        line, signature, _ = _signed(keys["hq"], namespace="file")
    elif case == "another origin":  # a statement of another origin, by that origin's key
        line, signature, _ = _signed(keys["other"], origin="other")
    elif case == "another origin's key":  # claims hq, signed by a key pinned for `other`
        line, signature, _ = _signed(keys["other"], origin="hq")
    else:
        line, signature, _ = _signed(keys["hq"], serial=42)
        line = line.replace(b'"serial":42', b'"serial":43')
    with pytest.raises(StatementRefused) as refused:
        statement.verify(line, signature, pinned, "hq", now=NOW + DAY)
    assert "\n" not in str(refused.value)


def test_an_expired_statement_is_refused(keys, tmp_path):
    line, signature, _ = _signed(keys["hq"], validity=DAY)
    pinned = _pinned(tmp_path, _line(keys, "hq"))
    statement.verify(line, signature, pinned, "hq", now=NOW + DAY - 1)
    with pytest.raises(StatementRefused, match="expired"):
        statement.verify(line, signature, pinned, "hq", now=NOW + DAY)


def test_an_inflated_serial_is_refused_though_signed(keys, tmp_path):
    document, found = _revision()
    pinned = _pinned(tmp_path, _line(keys, "hq"))
    real = Statement.for_document(document, found, signing.public_key(keys["hq"]).fingerprint,
                                  NOW, DAY)
    inflated = real.to_bytes().replace(b'"serial":42', f'"serial":{MAX_SERIAL}'.encode())
    with pytest.raises(StatementRefused, match="serial out of range"):
        statement.verify(inflated, signing.sign(inflated, keys["hq"]), pinned, "hq", now=NOW)


def test_a_retired_or_future_key_is_refused(keys, tmp_path):
    """Rotation: the allowed-signers file's valid-before/valid-after, evaluated at `now`."""
    line, signature, _ = _signed(keys["hq"])
    key = signing.public_key(keys["hq"])
    retired = _pinned(tmp_path, f'hq namespaces="{statement.NAMESPACE}",valid-before='
                      f'"20261128" {key.type} {key.blob}')
    with pytest.raises(StatementRefused, match="signature"):
        statement.verify(line, signature, retired, "hq", now=NOW)
    future = _pinned(tmp_path, _line(keys, "hq", valid_after=NOW + 2 * DAY))
    with pytest.raises(StatementRefused, match="signature"):
        statement.verify(line, signature, future, "hq", now=NOW)
    assert statement.verify(line, signature, future, "hq", now=NOW + 3 * DAY).serial == 42


def test_a_document_other_than_the_signed_one_is_refused(keys):
    line, _, document = _signed(keys["hq"])
    found = Statement.parse(line)
    other = Revision("hq", 42, "2026-11-29T00:00:00+00:00",
                     {"a/disk.vmdk": (4, 1_000_000_000)}).to_json().encode()
    with pytest.raises(StatementRefused, match="size or SHA-256"):
        statement.check_document(found, other)
    with pytest.raises(StatementRefused, match="size or SHA-256"):
        statement.check_document(found, document[:-2] + b"]\n")


def test_a_statement_file_without_its_signature_is_refused(keys, tmp_path):
    line, _, _ = _signed(keys["hq"])
    with pytest.raises(StatementRefused, match="no signature"):
        statement.verify_file(line, _pinned(tmp_path, _line(keys, "hq")), "hq", now=NOW)
    with pytest.raises(StatementRefused, match="too large"):
        statement.split(line + b"x" * statement.MAX_STATEMENT_BYTES)


def test_signing_and_verifying_cost_little(keys, tmp_path):
    """Per revision: one ssh-keygen to sign, one to verify, one SHA-256 of the document (here
    the document of 10,000 files); printed for docs/trust.md."""
    files = {f"item{i // 10:04d}/disk{i % 10}.vmdk": (i, 1_000_000_000 + i)
             for i in range(10_000)}
    digests = {path: f"{size:064x}" for path, (size, _) in files.items()}
    found = Revision("hq", 42, "2026-11-29T00:00:00+00:00", files,
                     next_content(files, digests, 42, None))
    document = found.to_json().encode()
    pinned = _pinned(tmp_path, _line(keys, "hq"))
    start = time.perf_counter()
    line = Statement.for_document(document, found, signing.public_key(keys["hq"]).fingerprint,
                                  NOW, DAY).to_bytes()
    signature = signing.sign(line, keys["hq"])
    signed = time.perf_counter()
    statement.check_document(statement.verify(line, signature, pinned, "hq", now=NOW),
                             document)
    verified = time.perf_counter()
    print(f"10,000 files, document {len(document):,} bytes: sign {signed - start:.3f} s, "
          f"verify {verified - signed:.3f} s")
    assert verified - start < 5
