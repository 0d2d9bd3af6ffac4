"""The origin signs each revision (server/trace.py + server/signing.py): at its declaration, again
before the statement expires without moving the serial, with the new key after a rotation; an
unusable key declares nothing; no key keeps revisions unsigned."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.base import statement
from library_syncer.base.errors import SyncerError
from library_syncer.server import signing, trace

SETTLE = 120.0
DAY = 86400.0


def _config(tmp_path: Path, key: Path | None, validity: str = "7d"):
    path = tmp_path / "settings.toml"
    signing_key = f'signing_key = "{key}"\n' if key else ""
    path.write_text(f'[server]\nlibrary = "{tmp_path / "library"}"\n'
                    f'state_dir = "{tmp_path / "state"}"\nsettle = "{SETTLE:.0f}s"\n'
                    f'name = "hq"\nstatement_validity = "{validity}"\n{signing_key}')
    return config_module.load(path)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    disk = tmp_path / "library" / "ubuntu" / "disk1.vmdk"
    disk.parent.mkdir(parents=True)
    disk.write_bytes(os.urandom(4096))
    signing.keygen(tmp_path / "keys" / "revision", "hq")
    return tmp_path


def _pinned(tmp_path: Path, *keys: Path) -> Path:
    path = tmp_path / "origin_keys"
    path.write_text("".join(signing.allowed_signers_line("hq", signing.public_key(k)) + "\n"
                            for k in keys))
    return path


def _files(library: Path) -> tuple[bytes, bytes]:
    folder = library / trace.TRACE_DIR
    return (folder / statement.FILE_NAME).read_bytes(), (folder / trace.TRACE_FILE).read_bytes()


def test_a_declared_revision_is_signed_and_verifies(origin):
    key = origin / "keys" / "revision"
    now = time.time() + SETTLE + 1
    outcome = trace.tick(_config(origin, key), now=now)
    assert outcome.state == "declared"
    signed, document = _files(origin / "library")
    line, _ = statement.split(signed)
    until = statement.Statement.parse(line).valid_until
    assert outcome.line().endswith(f"; signed, valid until {until}")
    found = statement.verify_file(signed, _pinned(origin, key), "hq", now=now)
    assert (found.serial, found.expires) == (1, pytest.approx(now + 7 * DAY, abs=1))
    assert statement.check_document(found, document).serial == 1


def test_it_is_signed_again_before_it_expires_and_the_serial_stays(origin):
    key = origin / "keys" / "revision"
    config = _config(origin, key)
    now = time.time() + SETTLE + 1
    trace.tick(config, now=now)
    first, document = _files(origin / "library")
    assert trace.tick(config, now=now + 60).state == "unchanged"
    assert _files(origin / "library")[0] == first  # young: kept as it is
    later = now + DAY + 60  # a seventh of seven days has passed
    assert trace.tick(config, now=later).state == "unchanged"
    again, same_document = _files(origin / "library")
    assert again != first and same_document == document  # the document and serial stay
    found = statement.verify_file(again, _pinned(origin, key), "hq", now=now + 7 * DAY + 60)
    assert found.serial == 1 and found.expires == pytest.approx(later + 7 * DAY, abs=1)
    # the first one has run out by then: a frozen upstream serving it is found out
    with pytest.raises(statement.StatementRefused, match="expired"):
        statement.verify_file(first, _pinned(origin, key), "hq", now=now + 7 * DAY + 60)


def test_a_new_key_signs_at_the_next_tick(origin):
    old, new = origin / "keys" / "revision", origin / "keys" / "revision-2"
    signing.keygen(new, "hq")
    now = time.time() + SETTLE + 1
    trace.tick(_config(origin, old), now=now)
    trace.tick(_config(origin, new), now=now + 60)
    signed, _ = _files(origin / "library")
    found = statement.verify_file(signed, _pinned(origin, new), "hq", now=now + 60)
    assert found.key == signing.public_key(new).fingerprint
    with pytest.raises(statement.StatementRefused, match="signature"):
        statement.verify_file(signed, _pinned(origin, old), "hq", now=now + 60)


def test_a_key_that_cannot_sign_declares_nothing(origin):
    broken = origin / "keys" / "broken"
    broken.write_text("not a key\n")
    with pytest.raises(SyncerError, match="signing_key"):
        trace.tick(_config(origin, broken), now=time.time() + SETTLE + 1)
    assert trace.read(origin / "library") is None
    assert not (origin / "state" / trace.STATE_FILE).exists()


def test_without_a_key_revisions_stay_unsigned(origin):
    assert trace.tick(_config(origin, None), now=time.time() + SETTLE + 1).state == "declared"
    assert trace.read(origin / "library").serial == 1
    assert not (origin / "library" / trace.TRACE_DIR / statement.FILE_NAME).exists()


def test_check_warns_on_unsigned_revisions_and_shows_the_signed_one(origin):
    from library_syncer.host import check

    unsigned = _config(origin, None)
    trace.tick(unsigned, now=time.time() + SETTLE + 1)
    (warned,) = check.check_signing(unsigned)
    assert warned.status == check.WARN and "server keygen" in warned.fix
    signed = _config(origin, origin / "keys" / "revision")
    trace.tick(signed, now=time.time())
    (ok,) = check.check_signing(signed)
    assert ok.status == check.OK and "revision 1 signed by SHA256:" in ok.message
    statement_file = origin / "library" / trace.TRACE_DIR / statement.FILE_NAME
    statement_file.write_bytes(statement_file.read_bytes().replace(b'"serial":1', b'"serial":2'))
    (failed,) = check.check_signing(signed)
    assert failed.status == check.FAIL


def test_server_keygen_prints_the_setting_and_the_line_sites_pin(tmp_path, capsys):
    """The command an operator runs: a key the trace can sign with, the line sites pin."""
    import argparse

    from library_syncer.cli import server as server_cli

    settings = tmp_path / "settings.toml"
    settings.write_text(f'[server]\nname = "hq"\nconfig_dir = "{tmp_path / "server"}"\n')
    assert server_cli.keygen(argparse.Namespace(config=settings, output=None)) == 0
    key = tmp_path / "server" / server_cli.KEYGEN_NAME
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f'sign with it: in {settings}, [server] signing_key = "{key}"'
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    pinned = tmp_path / "origin_keys"
    pinned.write_text(out[-1] + "\n")
    assert out[-1].startswith(f'hq namespaces="{statement.NAMESPACE}",valid-after="')
    line = b'{"probe":1}\n'
    statement.check_signature(line, signing.sign(line, key), pinned, "hq",
                              now=time.time() + DAY)
    with pytest.raises(SyncerError, match="already there"):
        server_cli.keygen(argparse.Namespace(config=settings, output=None))
