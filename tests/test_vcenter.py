"""Issue 20 item 4, "tell vCenter now": after a run that changed the published library the site
asks its vCenter to synchronise the subscribed library (sync/vcenter.py), against a fake vCenter
that follows the published vSphere Automation API (tests/harness/vcenter.py) — through the real
sync over a real sshd where the run matters, in-process where only the exchange does."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pwd
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

from library_syncer.base import config as config_module
from library_syncer.base import config_toml
from library_syncer.base.errors import ConfigError
from library_syncer.host import check
from library_syncer.server import trace
from library_syncer.sync import vcenter
from library_syncer.web import caddy, certificate
from tests.harness.net import free_port
from tests.harness.vcenter import FakeVcenter, Library
from tests.test_sync_helpers import REPO, add_iso_item, cli, published, sync, write_config

USER, PASSWORD = "svc-library@vsphere.local", "s3cret-Pa55word!"
LIBRARY_ID = "6a1b2c3d-0000-4000-8000-000000000001"


@pytest.fixture
def fake():
    server = FakeVcenter(USER, PASSWORD, [
        Library(LIBRARY_ID, "Site Templates", "http://site.test/lib.json"),
        Library("6a1b2c3d-0000-4000-8000-000000000002", "Other", "http://elsewhere/lib.json")])
    yield server
    server.stop()


def _password_file(work_dir: Path, text: str = PASSWORD, mode: int = 0o600) -> Path:
    path = work_dir / "vcenter.password"
    path.write_text(text + "\n")
    path.chmod(mode)
    with contextlib.suppress(KeyError):  # on a host with the package: the sync's own file
        os.chown(path, pwd.getpwnam(check.SYNC_USER).pw_uid, -1)
    return path


def _vcenter_toml(fake: FakeVcenter, work_dir: Path, **overrides: object) -> str:
    values: dict[str, object] = {
        "address": "127.0.0.1", "port": fake.port, "user": USER, "library": "site templates",
        "thumbprint": fake.thumbprint, "timeout": "10s"}
    values.update(overrides)
    if "password_file" not in values:
        values["password_file"] = str(_password_file(work_dir))
    return "\n[vcenter]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()
                                     if v is not None)


def _site(work_dir, sshd, key, fake, **overrides) -> Path:
    path = write_config(work_dir, sshd, key)
    path.write_text(path.read_text() + '\n[web]\nhostname = "site.test"\n'
                    + _vcenter_toml(fake, work_dir, **overrides))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "library_syncer", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


# --- through the real sync ---------------------------------------------------------------


def test_a_change_asks_once_a_run_without_change_asks_nothing(
        work_dir, sshd, client_key, server_library, fake):
    add_iso_item(server_library, "tools", 20_000)
    settings = _site(work_dir, sshd, client_key[0], fake)

    first = cli("--debug", "sync", "--config", str(settings))

    assert first.returncode == 0, first.stderr
    assert fake.synced == [LIBRARY_ID]
    assert fake.paths() == [
        "POST /api/session", "POST /api/content/library?action=find",
        f"POST /api/content/subscribed-library/{LIBRARY_ID}?action=sync", "DELETE /api/session"]
    find = json.loads(fake.requests[1].body)
    assert find == {"name": "site templates", "type": "SUBSCRIBED"}
    assert all(r.headers.get("vmware-api-session-id") for r in fake.requests[1:])
    assert fake.sessions == set()  # logged out
    version = _library_version(work_dir)
    assert "vCenter 127.0.0.1: asked subscribed library 'site templates' to synchronise " \
           f"(library version {version})" in first.stderr
    state = json.loads((work_dir / "state" / "vcenter.json").read_text())
    assert state["pending"] is False and state["outcome"] == "requested"

    quiet = cli("--debug", "sync", "--config", str(settings))
    assert quiet.returncode == 0, quiet.stderr
    assert len(fake.requests) == 4 and fake.synced == [LIBRARY_ID]  # not even a login
    assert "vCenter" not in quiet.stderr

    add_iso_item(server_library, "drivers", 10_000, seed=2)
    assert sync(settings).returncode == 0
    assert fake.synced == [LIBRARY_ID] * 2

    # No secret anywhere: not in the debug logs, not in status, not in config show.
    session_ids = {r.headers.get("vmware-api-session-id") for r in fake.requests} - {None}
    status = _cli("status", "-c", str(settings))
    status_json = _cli("status", "--json", "-c", str(settings))
    shown = _cli("config", "show", "-c", str(settings))
    assert shown.returncode == 0 and status.returncode == 0, status.stderr + shown.stderr
    assert _library_version(work_dir) > version
    assert re.search(r"^vCenter sync:\s+requested \S+ from 127\.0\.0\.1 \(library version "
                     rf"{_library_version(work_dir)}\)$", status.stdout, re.M), status.stdout
    request = json.loads(status_json.stdout)["vcenter"]["sync_request"]
    assert request["pending"] is False and request["library"] == "site templates"
    for text in (first.stderr, quiet.stderr, status.stdout, status_json.stdout, shown.stdout):
        assert PASSWORD not in text
        assert not any(sid in text for sid in session_ids)
        assert "Authorization" not in text and "Basic " not in text


def _library_version(work_dir: Path) -> int:
    """lib.json's version as published (a time in microseconds: docs/manifest.md)."""
    return int(json.loads((published(work_dir / "state") / "lib.json").read_text())["version"])


def test_a_failed_request_fails_nothing_and_is_made_again_at_the_next_run(
        work_dir, sshd, client_key, server_library, fake):
    add_iso_item(server_library, "tools", 20_000)
    settings = _site(work_dir, sshd, client_key[0], fake)
    fake.fail_syncs = 1

    failed = sync(settings)

    assert failed.returncode == 0, failed.stderr  # the sync itself succeeded
    said = [line for line in failed.stderr.splitlines() if "vCenter" in line]
    assert said == [
        "vCenter 127.0.0.1: subscribed library 'site templates' not asked to synchronise: "
        f"asking for a sync of library {LIBRARY_ID}: HTTP 503 SERVICE_UNAVAILABLE: The content "
        "library service is not available; asked again at the next run"], \
        failed.stderr
    assert fake.synced == []
    assert json.loads((work_dir / "state" / "vcenter.json").read_text())["pending"] is True
    status = _cli("status", "-c", str(settings)).stdout
    assert re.search(r"^vCenter sync:\s+PENDING since \S+ \(library version "
                     rf"{_library_version(work_dir)}\); last try \S+ failed: asking for a sync",
                     status, re.M), status
    # check: a warning for the failed request (the site works), vCenter itself answers now
    results = check.check_vcenter(config_module.load(settings))
    assert [r.status for r in results] == [check.WARN, check.OK], results
    assert "the last sync request failed at" in results[0].message

    retried = sync(settings)  # nothing changed upstream: the pending request alone

    assert retried.returncode == 0, retried.stderr
    assert fake.synced == [LIBRARY_ID]
    assert json.loads((work_dir / "state" / "vcenter.json").read_text())["pending"] is False
    assert sync(settings).returncode == 0 and fake.synced == [LIBRARY_ID]  # done: no more


def test_a_change_check_that_finds_nothing_makes_a_pending_request(
        work_dir, sshd, client_key, server_library, fake):
    add_iso_item(server_library, "tools", 20_000)
    settings = _site(work_dir, sshd, client_key[0], fake)
    fake.fail_syncs = 1
    assert sync(settings).returncode == 0 and fake.synced == []

    checked = sync(settings, "--if-changed")

    assert checked.returncode == 0, checked.stderr
    assert "nothing to do" in checked.stderr
    assert fake.synced == [LIBRARY_ID]


def test_the_page_names_the_origin_revision_the_site_holds(
        work_dir, sshd, client_key, server_library):
    """Item 5: index.html says which revision of which origin it shows, as status does."""
    add_iso_item(server_library, "tools", 20_000)
    origin = work_dir / "origin.toml"
    origin.write_text(f'[server]\nlibrary = "{server_library}"\nstate_dir = '
                      f'"{work_dir / "srv-state"}"\nsettle = "60s"\nname = "hq"\n')
    outcome = trace.tick(config_module.load(origin), now=time.time() + 61)
    settings = write_config(work_dir, sshd, client_key[0])
    assert sync(settings).returncode == 0
    html = (published(work_dir / "state") / "index.html").read_text()
    match = re.search(r'<dd id="origin-revision" data-origin="hq" data-serial="(\d+)">'
                      r"(\d+) of hq <span", html)
    assert match and int(match.group(1)) == outcome.serial == int(match.group(2)), html
    status = _cli("status", "-c", str(settings)).stdout
    assert f"revision {outcome.serial} of hq" in status


# --- the exchange itself -----------------------------------------------------------------


def _config(work_dir: Path, fake: FakeVcenter, **overrides: object) -> config_module.Config:
    text = _vcenter_toml(fake, work_dir, **overrides)
    text += f'\n[paths]\nstate_dir = "{work_dir / "state"}"\nruntime_dir = "{work_dir / "run"}"\n'
    text += '\n[web]\nhostname = "site.test"\n'
    path = work_dir / "settings.toml"
    path.write_text(text)
    (work_dir / "state").mkdir(exist_ok=True)
    return config_module.load(path)


def _snapshots(work_dir: Path) -> tuple[Path, Path]:
    """Two published snapshots whose lib.json differ in version (a change)."""
    pair = []
    for version in (3, 4):
        folder = work_dir / f"snapshot-{version}"
        folder.mkdir()
        (folder / "lib.json").write_text(json.dumps({"id": "urn:uuid:1", "version": str(version)}))
        pair.append(folder)
    return pair[0], pair[1]


def _notify(config, work_dir, caplog) -> list[str]:
    before, after = _snapshots(work_dir)
    with caplog.at_level(logging.DEBUG, logger="library-syncer"):
        vcenter.after_publish(config, before, after)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _not_asked(why: str) -> list[str]:
    """The one journal line of a request that failed."""
    return [f"vCenter 127.0.0.1: subscribed library 'site templates' not asked to synchronise: "
            f"{why}; asked again at the next run"]


def test_a_refused_password_is_one_line(work_dir, fake, caplog):
    path = _password_file(work_dir, "wrong-password")
    config = _config(work_dir, fake, password_file=str(path))
    said = _notify(config, work_dir, caplog)
    assert said == _not_asked(f"vCenter at 127.0.0.1:{fake.port} refused the user '{USER}' or "
                              "its password (HTTP 401; vcenter.user, vcenter.password_file)")
    assert fake.paths() == ["POST /api/session"] and fake.synced == []
    assert "wrong-password" not in caplog.text
    assert vcenter.read_state(config)["pending"] is True


def test_a_wrong_thumbprint_is_refused_before_anything_is_sent(work_dir, fake, caplog):
    other = trustme.CA().issue_cert("vcenter.test")
    der = ssl.PEM_cert_to_DER_cert(other.cert_chain_pems[0].bytes().decode())
    config = _config(work_dir, fake, thumbprint=hashlib.sha256(der).hexdigest())
    said = _notify(config, work_dir, caplog)
    assert len(said) == 1 and f"has SHA-256 thumbprint {fake.thumbprint}, not " \
        "vcenter.thumbprint: nothing was sent" in said[0], said
    assert fake.requests == []  # no request at all: no password, no user name


def test_the_certificate_is_verified_by_ca_file_or_refused(work_dir, fake, caplog):
    ca = fake.write_ca(work_dir / "vmca.pem")
    # by CA: the address must be a name the certificate holds (127.0.0.1 is)
    assert _notify(_config(work_dir, fake, thumbprint=None, ca_file=str(ca)), work_dir,
                   caplog) == []
    assert fake.synced == [LIBRARY_ID]
    # neither pin nor CA: the system's CAs do not know this one, and nothing is sent
    caplog.clear()
    fake.requests.clear()
    for old in work_dir.glob("snapshot-*"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    said = _notify(_config(work_dir, fake, thumbprint=None), work_dir, caplog)
    assert len(said) == 1 and "cannot verify the certificate of 127.0.0.1:" in said[0] and \
        "set vcenter.thumbprint (its SHA-256) or vcenter.ca_file" in said[0], said
    assert fake.requests == []


def test_a_vcenter_that_stalls_costs_the_timeout_and_no_more(work_dir, fake, caplog):
    fake.stall = True
    config = _config(work_dir, fake, timeout="2s")
    started = time.monotonic()
    said = _notify(config, work_dir, caplog)
    elapsed = time.monotonic() - started
    assert said == _not_asked(f"vCenter at 127.0.0.1:{fake.port} did not answer within 2 s "
                              "(vcenter.timeout)")
    assert 1.9 < elapsed < 6, elapsed
    assert vcenter.read_state(config)["pending"] is True


def test_a_password_file_others_may_read_is_refused(work_dir, fake, caplog):
    path = _password_file(work_dir, mode=0o640)
    config = _config(work_dir, fake, password_file=str(path))
    said = _notify(config, work_dir, caplog)
    assert said == _not_asked(f"vcenter.password_file: {path} has mode 0640: others than its "
                              f"owner may read or change it; chmod 600 {path} (the password is "
                              "not used)")
    assert fake.requests == []
    results = check.check_vcenter(config)
    assert [(r.status, r.fix) for r in results] == [
        (check.FAIL, f"chown library-syncer: {path} && chmod 600 {path}")]
    assert str(results[0]).startswith(f"FAIL  vcenter: {path} has mode 0640")


def test_a_library_found_by_id_or_ambiguous_by_name(work_dir, fake, caplog):
    config = _config(work_dir, fake, library=None, library_id=LIBRARY_ID)
    assert _notify(config, work_dir, caplog) == []
    assert fake.paths()[1] == f"POST /api/content/subscribed-library/{LIBRARY_ID}?action=sync"
    fake.libraries.append(Library("6a1b2c3d-0000-4000-8000-000000000003", "SITE templates",
                                  "http://site.test/lib.json"))
    client = vcenter.Client(_config(work_dir, fake).vcenter, time.monotonic() + 10)
    client.login(PASSWORD)
    with pytest.raises(vcenter.VcenterError, match=re.escape(
            "has 2 subscribed libraries named 'site templates': set vcenter.library_id")):
        client.find_library()
    client.logout()


# --- check: what vCenter subscribes to, against what this site serves ---------------------


def _https_config(work_dir: Path, fake: FakeVcenter) -> config_module.Config:
    """This site serves HTTPS with a custom certificate (read from its file: no Caddy runs)."""
    site = trustme.CA().issue_cert("site.test")
    cert = work_dir / "site.pem"
    site.cert_chain_pems[0].write_to_path(str(cert))
    site.private_key_pem.write_to_path(str(work_dir / "site.key"))
    config = _config(work_dir, fake)
    text = config.file.read_text().replace(
        '[web]\nhostname = "site.test"\n',
        f'[web]\nhostname = "site.test"\ntls = "custom"\ncert_file = "{cert}"\n'
        f'key_file = "{work_dir / "site.key"}"\nlisten = "127.0.0.1"\n'
        f"https_port = {free_port()}\n")
    config.file.write_text(text)
    return config_module.load(config.file)


def test_check_compares_the_subscription_with_what_this_site_serves(work_dir, fake):
    config = _https_config(work_dir, fake)
    url, served = caddy.subscription_url(config), certificate.tls_thumbprint(config)
    assert url.startswith("https://site.test:") and served
    library = fake.libraries[0]
    library.url, library.thumbprint = url, served
    assert [str(r) for r in check.check_vcenter(config)] == [
        f"ok    vcenter: 127.0.0.1: {USER} logs in; library \"Site Templates\" ({LIBRARY_ID}) "
        f"subscribes to {url}, same certificate"]
    assert fake.synced == []  # check changes nothing in vCenter
    assert fake.paths()[-1] == "DELETE /api/session"

    library.url = url.replace("site.test", "SITE.test.")  # the same URL, written otherwise
    assert [r.status for r in check.check_vcenter(config)] == [check.OK]
    library.url = "https://old-site.test/lib.json"
    library.thumbprint = "00:" * 19 + "00"
    results = check.check_vcenter(config)
    assert [r.status for r in results] == [check.WARN, check.FAIL], results
    assert results[0].message == (f'vCenter\'s library "Site Templates" ({LIBRARY_ID}) '
                                  f"subscribes to https://old-site.test/lib.json, this site "
                                  f"serves {url}")
    assert f"this site serves {served}: its syncs fail" in results[1].message

    fake.password = "changed"  # vCenter unreachable or refusing: a warning, not a failure
    results = check.check_vcenter(config)
    assert [r.status for r in results] == [check.WARN] and "HTTP 401" in results[0].message


def test_check_says_nothing_without_vcenter_settings(work_dir):
    path = work_dir / "plain.toml"
    path.write_text(f'[paths]\nstate_dir = "{work_dir / "state"}"\n')
    assert check.check_vcenter(config_module.load(path)) == []


# --- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "line"), [
    ({"address": "vc.example.net"},
     'vcenter.user: found nothing, expected the vCenter user when vcenter.address is set'),
    ({"address": "vc.example.net", "user": "u", "password_file": "pw"},
     "vcenter.library: found nothing, expected the subscribed library's name, or its id in "
     "vcenter.library_id (one of the two)"),
    ({"address": "vc.example.net", "user": "u", "password_file": "pw", "library": "a",
      "library_id": "b"},
     "vcenter.library: found both, expected the subscribed library's name, or its id in "
     "vcenter.library_id (one of the two)"),
    ({"address": "vc.example.net", "user": "u", "password_file": "pw", "library": "a",
      "thumbprint": "ab" * 32, "ca_file": "ca.pem"},
     'vcenter.ca_file: found "/etc/ca.pem", expected nothing when vcenter.thumbprint is set '
     "(one of the two)"),
    ({"thumbprint": "AB:" * 19 + "AB"},
     'vcenter.thumbprint: found "' + "AB:" * 19 + 'AB", expected a SHA-256 thumbprint (64 hex '
     "digits): this one has 40, a SHA-1 one"),
    ({"thumbprint": "xyz"}, 'vcenter.thumbprint: found "xyz", expected "" or the SHA-256 '
     "thumbprint of vCenter's certificate (64 hex digits, ':' optional; openssl x509 -noout "
     "-fingerprint -sha256)"),
    ({"timeout": "0"}, 'vcenter.timeout: found "0", expected a duration from "1s" to "10min"'),
    ({"adress": "x"}, 'vcenter.adress: unknown key; did you mean "address"?'),
])
def test_settings_are_checked_one_line_each(table, line):
    with pytest.raises(ConfigError) as raised:
        config_module.parse({"vcenter": table}, Path("/etc/library-syncer.toml"))
    assert f"/etc/library-syncer.toml: {line}" in [str(p) for p in raised.value.problems]


def test_a_thumbprint_is_kept_in_one_form_and_the_reference_documents_every_key(capsys):
    config = config_module.parse({"vcenter": {"thumbprint": "ab" * 32}}, Path("/etc/x.toml"))
    assert config.vcenter.thumbprint == ":".join(["AB"] * 32)
    reference = config_toml.generated_text(full=True)
    section = reference[reference.index("[vcenter]"):]
    for key in ("address", "port", "user", "password_file", "library", "library_id",
                "thumbprint", "ca_file", "timeout"):
        assert re.search(rf"^{key} = ", section, re.M), key
    assert "[vcenter]" not in config_toml.generated_text()  # the conffile stays as it was
