"""Site reports through the real server role: the real sshd from the rendered template, the
dispatcher as every key's forced command, the account as systemd-sysusers creates it, real
rsync and a real sync run. Hostile payloads are sent exactly as a site would send a report.

Every refusal is asserted by what the client sees (one line, a non-zero status) and by what did
not happen (no file, the stored report unchanged, no marker a command would have created).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from library_syncer.base import config as config_module
from library_syncer.host import check
from library_syncer.server import dispatch, reports, sessions, trace
from library_syncer.server import sshd as sshd_role
from library_syncer.sync import last_run, poll
from library_syncer.sync import report as site_report
from library_syncer.sync import run as sync_run
from tests.harness import sshd as harness
from tests.harness.wait import wait_for
from tests.test_sync_helpers import add_ovf_item, write_config

REPORT = "library-syncer-report 1"


def _payload(**changes: object) -> dict:
    body = {"format": 1, "outcome": "ok", "exit_status": 0,
            "finished": "2026-11-27T21:00:42+00:00", "last_success": "2026-11-27T21:00:42+00:00",
            "duration": 42.5, "bytes_received": 1234, "library_version": 7, "origin": "hq",
            "serial": 1, "version": "0.2.0", "schedule": "Fri *-*-* 21:00:00",
            "interval": 604800, "random_delay": 21600, "via": "hq.example.net:2222"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def _forwarded(*path: str) -> dict:
    row = {k: v for k, v in _payload().items() if k != "format"}
    return {**row, "path": list(path), "received": "2026-11-27T21:00:00+00:00"}


@dataclass
class Rig:
    server: harness.Sshd
    root: Path
    library: Path
    keys: dict[str, Path]

    @property
    def state(self) -> Path:
        return self.server.server_config.state_dir  # type: ignore[attr-defined]

    @property
    def stored(self) -> Path:
        return reports.reports_dir(self.state)

    def argv(self, site: str, command: str | None = REPORT) -> list[str]:
        argv = ["ssh", "-p", str(self.server.port), "-i", str(self.keys[site]), "-T",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.root / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=yes", f"{self.server.user}@127.0.0.1"]
        return argv if command is None else [*argv, command]

    def ssh(self, site: str, command: str | None = REPORT, data: bytes = b"",
            timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(site, command), input=data, capture_output=True,
                              timeout=timeout)

    def send(self, site: str, body: dict | bytes, command: str = REPORT
             ) -> subprocess.CompletedProcess:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.ssh(site, command, data)

    def files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.stored.iterdir())}

    def settings(self) -> Path:
        server = self.server.server_config
        path = self.root / "server.toml"
        path.write_text(
            f'[server]\nlibrary = "{server.library}"\nstate_dir = "{server.state_dir}"\n'
            f'config_dir = "{server.config_dir}"\nmetrics_textfile = '
            f'"{server.metrics_textfile}"\nuser = "{server.user}"\n')
        return path


def _session_processes(port: int) -> list[int]:
    """Processes started by an SSH session to the sshd on `port`, a detached one included: each
    inherits SSH_CONNECTION ("client-ip client-port server-ip server-port") from the session."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0") if entry.name.isdigit() \
                else []
        except OSError:  # gone meanwhile
            continue
        if any(v.startswith(b"SSH_CONNECTION=") and v.endswith(b" %d" % port) for v in environ):
            found.append(int(entry.name))
    return found


def _declare(root: Path, library: Path, name: str = "hq") -> int:
    settings = root / "origin.toml"
    settings.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{root / "trace-state"}"'
                        f'\nsettle = "60s"\nname = "{name}"\n')
    return trace.tick(config_module.load(settings), now=time.time() + 61).serial


def _start(root: Path, library: Path, names: tuple[str, ...]) -> Rig:
    keydir = root / "client-ssh"
    keydir.mkdir(mode=0o700, parents=True)
    keys, pubs = {}, {}
    for name in names:
        keys[name], pubs[name] = harness.keygen(keydir / f"id_{name}", comment=name)
    server = harness.start_server_role(root / "sshd", library, sites=pubs,
                                       metrics_textfile=root / "metrics" / "sites.prom")
    (root / "known_hosts").write_text(server.known_hosts_line + "\n")
    return Rig(server, root, library, keys)


@pytest.fixture(scope="module")
def rig(fixtures_dir) -> Iterator[Rig]:
    root = harness.make_work_dir("reports")
    library = root / "library"
    library.mkdir(mode=0o755)
    add_ovf_item(library, fixtures_dir)
    _declare(root, library)
    rig = _start(root, library, ("paris", "rome"))
    yield rig
    rig.server.stop()
    shutil.rmtree(root, ignore_errors=True)


# --- a report is stored under the key's site, and only there ---------------------------------


def test_a_report_is_stored_under_the_site_of_the_key_and_shown_in_the_fleet_view(rig, capsys):
    sent = rig.send("paris", _payload())
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout == b"report stored for site paris\n"
    path = rig.stored / "paris.json"
    info = path.stat()
    account = harness.ensure_sysusers_user()
    assert info.st_uid == account.pw_uid and stat.S_IMODE(info.st_mode) == 0o644
    folder = rig.stored.stat()
    assert folder.st_uid == account.pw_uid and stat.S_IMODE(folder.st_mode) == 0o755
    record = json.loads(path.read_text())
    assert record["site"] == "paris" and record["report"]["serial"] == 1
    # The key that logged in is the site's identity in the fleet view (not only its name).
    from library_syncer.server import sshd as server_role
    (key,) = [k.fingerprint for k in server_role.list_keys(rig.server.server_config)
              if k.site == "paris"]
    assert record["key"] == key
    # The state directory above stays root's: the account can write only its reports folder.
    assert rig.state.stat().st_uid == 0 and stat.S_IMODE(rig.state.stat().st_mode) == 0o755

    from library_syncer.cli.main import main
    capsys.readouterr()
    assert main(["server", "sites", "-c", str(rig.settings()), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["origin"] == "hq" and view["serial"] == 1
    paris = next(s for s in view["sites"] if s["site"] == "paris")
    assert paris["path"] == ["hq", "paris"] and paris["outcome"] == "ok"
    assert paris["serial"] == 1 and paris["lag"] == 0 and paris["overdue"] is False
    assert main(["server", "sites", "-c", str(rig.settings())]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("origin hq, revision 1;")
    assert any(line.startswith("hq → paris  ") and "  ok  " in line for line in out.splitlines())


def test_the_metrics_textfile_parses_with_prometheus_and_shows_the_lag(rig):
    behind = rig.send("rome", _payload(serial=1, outcome="network"))
    assert behind.returncode == 0, behind.stderr
    current = _declare(rig.root, rig.library)  # unchanged library: still revision 1
    assert current == 1
    text = rig.server.server_config.metrics_textfile.read_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(f.name, s.labels.get("site"), s.labels.get("outcome")): s.value
               for f in families.values() for s in f.samples}
    assert samples[("library_syncer_site_serial_lag", "rome", None)] == 0
    assert samples[("library_syncer_site_last_outcome", "rome", "network")] == 1
    assert samples[("library_syncer_site_last_run_ok", "rome", None)] == 0
    assert samples[("library_syncer_site_overdue", "rome", None)] == 0
    assert ("library_syncer_origin_serial", None, None) in samples
    assert families["library_syncer_site_seconds_since_success"].type == "gauge"


def test_a_key_reports_only_for_its_own_site_whatever_the_payload_says(rig):
    rig.send("rome", _payload(outcome="ok", serial=1))
    rome_before = (rig.stored / "rome.json").read_bytes()
    # A site name in the payload is an unknown key: refused, nothing written.
    claimed = rig.send("paris", {**_payload(), "site": "rome"})
    assert claimed.returncode != 0
    assert claimed.stderr.decode().strip() == \
        'library-syncer: report refused: report: unknown key "site"'
    # A key not authorized as a relay's: its own report is stored, forwarded rows are not.
    forwarded = rig.send("paris", _payload(downstream=[_forwarded("rome")]))
    assert forwarded.returncode == 0, forwarded.stderr
    assert "1 downstream report(s) ignored" in forwarded.stdout.decode()
    rows = reports.rows(rig.state, ("hq", 1), 3600)
    assert [r.path for r in rows] == [("paris",), ("rome",)]
    # A relay's forwarded reports naming another site land below it, never as that site.
    sshd_role.mark_relay(rig.server.server_config, "paris")
    forwarded = rig.send("paris", _payload(downstream=[_forwarded("rome")]))
    assert forwarded.returncode == 0 and b"ignored" not in forwarded.stdout
    assert (rig.stored / "rome.json").read_bytes() == rome_before
    rows = reports.rows(rig.state, ("hq", 1), 3600)
    assert [r.path for r in rows] == [("paris",), ("paris", "rome"), ("rome",)]
    # The report command does not take a site name either.
    named = rig.send("paris", _payload(), command="library-syncer-report 1 rome")
    assert named.returncode != 0 and b"report refused" in named.stderr
    assert (rig.stored / "rome.json").read_bytes() == rome_before


HOSTILE = {
    "too large": (b'{"format": 1, "pad": "' + b"x" * reports.MAX_BYTES + b'"}',
                  "larger than 65536 bytes"),
    "deep nesting": (b'{"format": 1, "downstream": ' + b"[" * 20000 + b"]" * 20000 + b"}",
                     "nested too deeply"),
    "a huge string": (json.dumps(_payload(schedule="x" * 5000)).encode(),
                      "schedule: longer than 200 characters"),
    "a terminal escape": (json.dumps(_payload(via="\x1b[31mred")).encode(),
                          "via: control or non-printable characters"),
    "a newline": (json.dumps(_payload(schedule="daily\nINJECTED")).encode(),
                  "schedule: control or non-printable characters"),
    "a bidi override": (json.dumps(_payload(via="hq\u202eevil")).encode(),
                        "via: control or non-printable characters"),
    "not UTF-8": (b'{"format": 1, "outcome": "\xff\xfe"}', "not UTF-8"),
    "not JSON": (b"rm -rf /", "not JSON"),
    "NaN": (b'{"format": 1, "outcome": "ok", "finished": "2026-11-27T21:00:42+00:00", '
            b'"duration": NaN}', "NaN is not a number"),
    "a 5000-digit integer": (b'{"format": 1, "bytes_received": ' + b"9" * 5000 + b"}",
                             "not JSON"),
    "a duplicate key": (b'{"format": 1, "format": 1}', "a key appears twice"),
    "a list": (b"[1, 2, 3]", "expected a JSON object"),
    "another format": (json.dumps(_payload(format=2)).encode(), "expected format 1"),
    "a negative byte count": (json.dumps(_payload(bytes_received=-1)).encode(),
                              "bytes_received: expected an integer"),
    "a time without offset": (json.dumps(_payload(finished="2026-11-27T21:00:42")).encode(),
                              "finished: expected a time with its UTC offset"),
    "a path into the file system": (json.dumps(_payload(downstream=[
        _forwarded("../../etc")])).encode(), "downstream[1].path: not in the expected form"),
    "too many forwarded": (json.dumps(_payload(downstream=[
        {"path": [f"s{i}"], "outcome": "ok", "finished": "2026-11-27T21:00:00+00:00",
         "received": "2026-11-27T21:00:00+00:00"} for i in range(reports.MAX_DOWNSTREAM + 1)]
    )).encode(), "downstream: more than 100 reports"),
    "empty": (b"", "not JSON"),
    # issue 23: these crashed the dispatcher (OverflowError) instead of being refused
    "a time out of range": (json.dumps(_payload(finished="0001-01-01T00:00:00+01:00")).encode(),
                            "finished: out of range"),
    "a 400-digit duration": (json.dumps(_payload(duration=10**400)).encode(),
                             "duration: expected a number"),
    "a 400-digit interval": (json.dumps(_payload(interval=10**400)).encode(),
                             "interval: expected a number"),
    "a serial past the bound": (json.dumps(_payload(serial=2**63 - 1)).encode(),
                                "serial: expected an integer 0-999999999999999"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_payloads_are_refused_in_one_line_and_store_nothing(rig, case):
    rig.send("paris", _payload())
    before = rig.files()
    payload, reason = HOSTILE[case]
    sent = rig.send("paris", payload)
    err = sent.stderr.decode()
    assert sent.returncode == 1, err
    assert err.startswith("library-syncer: report refused: ") and reason in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert rig.files() == before  # the stored report untouched, no stray file


def test_nothing_in_a_report_is_executed_or_used_as_a_path(rig):
    marker = rig.root / "was-run"
    shell = f"$(touch {marker}); `touch {marker}`; touch {marker}"
    sent = rig.send("paris", _payload(via=shell[:200], schedule="; touch " + str(marker)))
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: not _session_processes(rig.server.port), 10,
             "every process of the report's session to end")
    assert not marker.exists()
    assert json.loads((rig.stored / "paris.json").read_text())["report"]["via"] == shell[:200]
    assert sorted(rig.files()) == ["paris.json", "rome.json"]


def test_a_flood_of_reports_keeps_one_file_per_site(rig):
    def one(number: int) -> int:
        return rig.send("paris", _payload(bytes_received=number)).returncode

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(24)))
    assert statuses.count(0) >= 20  # a few may meet MaxStartups; none may leave a trace
    assert sorted(rig.files()) == ["paris.json", "rome.json"]  # no temporary file left over
    stored = json.loads((rig.stored / "paris.json").read_text())["report"]["bytes_received"]
    assert stored in range(24)


def test_a_report_that_never_finishes_is_cut_after_the_read_timeout(rig):
    """A slow or stalled sender (half a report, then nothing) holds a session for at most
    dispatch.READ_TIMEOUT: refused in one line, nothing stored, the site's old report kept."""
    before = rig.files()
    argv = rig.argv("rome")
    err_file = rig.root / "stalled.err"
    started = time.monotonic()
    with err_file.open("wb") as err_out, subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err_out) as held:
        assert held.stdin is not None
        held.stdin.write(json.dumps(_payload())[:40].encode())
        held.stdin.flush()  # and the pipe stays open (no communicate(): it would close it)
        try:
            held.wait(timeout=dispatch.READ_TIMEOUT + 20)
        except subprocess.TimeoutExpired:
            held.kill()
            raise AssertionError("the dispatcher kept a stalled report session open") from None
        finally:
            held.stdin.close()
    err = err_file.read_bytes()
    took = time.monotonic() - started
    assert held.returncode == 1, err
    assert b"report refused: the report did not arrive within 20 s" in err, err
    assert dispatch.READ_TIMEOUT - 1 <= took <= dispatch.READ_TIMEOUT + 15, took
    assert rig.files() == before


def test_other_requests_still_reach_rrsync_unchanged(rig):
    """The dispatcher's other branch: rrsync's own words, as in test_server_sshd.py."""
    shell = rig.ssh("paris", None)
    assert b"rrsync error: Not invoked via sshd" in shell.stderr
    other = rig.ssh("paris", "library-syncer-reports 1; id")
    assert b"SSH_ORIGINAL_COMMAND does not run rsync" in other.stderr
    assert b"uid=" not in other.stdout


# --- the site side: a real sync, then its report ---------------------------------------------


def _site_config(work_dir: Path, server: harness.Sshd, key: Path, **sync: object
                 ) -> config_module.Config:
    (work_dir / "client-ssh").mkdir(parents=True, exist_ok=True)
    path = write_config(work_dir, server, key, random_delay="0", schedule="daily", **sync)
    with path.open("a") as handle:
        handle.write(f'\n[server]\nstate_dir = "{work_dir / "site-server-state"}"\n')
    return config_module.load(path)


def test_a_site_reports_its_real_run(work_dir, fixtures_dir, caplog):
    library = work_dir / "library"
    library.mkdir(mode=0o755)
    add_ovf_item(library, fixtures_dir)
    serial = _declare(work_dir, library)
    rig = _start(work_dir / "origin", library, ("paris",))
    try:
        config = _site_config(work_dir / "paris", rig.server, rig.keys["paris"])
        record = sync_run.run(config, retry=False)
        assert record.outcome == "ok", record.message
        caplog.set_level(logging.DEBUG, logger="library-syncer")
        assert site_report.send(config, record) is True
        assert site_report.last_report(config)["outcome"] == site_report.SENT
        assert [r.status for r in check.check_report(config)] == [check.OK]
        sent = (rig.stored / "paris.json").read_bytes()
        for outcome in site_report.NOT_SENT_FOR:  # e.g. systemd stopping the run
            assert site_report.send(config, replace(record, outcome=outcome)) is False
        assert (rig.stored / "paris.json").read_bytes() == sent
    finally:
        rig.server.stop()
    stored = json.loads((rig.stored / "paris.json").read_text())["report"]
    assert (stored["origin"], stored["serial"]) == ("hq", serial)
    assert stored["bytes_received"] == record.bytes_received > 0
    assert stored["library_version"] == record.library_version
    assert stored["finished"] == record.finished and stored["outcome"] == "ok"
    assert stored["interval"] == 86400 and stored["schedule"] == "daily"
    assert stored["via"] == f"127.0.0.1:{rig.server.port}"
    assert any("report sent to 127.0.0.1" in r.getMessage() for r in caplog.records)


def test_against_the_docker_based_original_a_report_fails_quietly(work_dir, fixtures_dir,
                                                                   client_key, caplog):
    """The original's line (as tests/test_sync_faults.py uses it): its rrsync refuses the
    report command; the run stays successful and the attempt costs one debug line."""
    library = work_dir / "syncer" / "library"
    library.mkdir(parents=True, mode=0o755)
    os.chmod(library.parent, 0o755)
    add_ovf_item(library, fixtures_dir)
    line = harness.original_rrsync_line(client_key[1], library)
    server = harness.start_sshd(work_dir / "original", authorized_lines=[line])
    try:
        config = _site_config(work_dir / "site", server, client_key[0], remote_path="/")
        record = sync_run.run(config, retry=False)
        assert record.outcome == "ok", record.message
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="library-syncer")
        started = time.monotonic()
        assert site_report.send(config, record) is False
        assert time.monotonic() - started < 15
    finally:
        server.stop()
    said = [r for r in caplog.records if r.name == "library-syncer"]
    assert [r.levelno for r in said] == [logging.DEBUG]
    assert "report not sent" in said[0].getMessage()
    assert "does not run rsync" in said[0].getMessage()
    last = site_report.last_report(config)
    assert last["outcome"] == site_report.NOT_TAKEN and "does not run rsync" in last["said"]
    (result,) = check.check_report(config)  # said, not failed: the original takes none
    assert result.status == check.WARN and "did not take the last report" in result.message
    held = site_report.build(config, record)
    assert held["listing_digest"].startswith("sha256:") and "serial" not in held
    # A relay below the original: its sites' reports are offered once, not at every check.
    relay = replace(config, server=replace(config.server, library=config.published_dir,
                                           state_dir=work_dir / "relay-server-state"))
    reports.reports_dir(relay.server.state_dir).mkdir(parents=True)
    reports.store(relay.server.state_dir, "branch", json.dumps(_payload()).encode())
    assert site_report.has_news(relay)
    server.start()
    try:
        assert site_report.send(relay, record) is False
    finally:
        server.stop()
    assert site_report.last_report(relay)["outcome"] == site_report.NOT_TAKEN
    assert not site_report.has_news(relay)


def _origin_with_relay_key(work_dir: Path, fixtures_dir: Path) -> tuple[Path, Rig]:
    """An origin (hq, revision 1) whose server role authorizes the relay `lyon`."""
    library = work_dir / "library"
    library.mkdir(mode=0o755)
    add_ovf_item(library, fixtures_dir)
    _declare(work_dir, library)
    origin = _start(work_dir / "origin", library, ("lyon",))
    sshd_role.mark_relay(origin.server.server_config, "lyon")
    return library, origin


def test_a_relay_forwards_its_sites_reports_and_the_origin_sees_the_tree(work_dir,
                                                                          fixtures_dir):
    """origin ← relay ← branch: the branch reports to the relay's dispatcher, the relay's own
    report carries it to the origin, which shows `hq → lyon → branch`."""
    library, origin = _origin_with_relay_key(work_dir, fixtures_dir)
    relay_dir = work_dir / "lyon"
    try:
        relay = _site_config(relay_dir, origin.server, origin.keys["lyon"])
        assert sync_run.run(relay, retry=False).outcome == "ok"
        relay_server = _start(relay_dir / "as-server", relay.published_dir, ("branch",))
        # The relay's sync reads what its own server role stored.
        relay = replace(relay, server=relay_server.server.server_config)
        try:
            branch = _site_config(work_dir / "branch", relay_server.server,
                                  relay_server.keys["branch"])
            branch_run = sync_run.run(branch, retry=False)
            assert branch_run.outcome == "ok", branch_run.message
            assert site_report.send(branch, branch_run) is True
        finally:
            relay_server.server.stop()
        relay_run = sync_run.run(relay, retry=False)
        assert site_report.send(relay, relay_run) is True
    finally:
        origin.server.stop()
    rows = reports.rows(origin.state, reports.current_revision(library), 3600)
    assert [r.path for r in rows] == [("lyon",), ("lyon", "branch")]
    branch_row = rows[1]
    assert branch_row.report["origin"] == "hq" and branch_row.lag == 0
    assert branch_row.report["via"] == f"127.0.0.1:{relay_server.server.port}"
    assert reports.line(branch_row, "hq").startswith("hq → lyon → branch  ")


def test_a_relays_unchanged_check_forwards_new_site_reports_over_its_one_login(work_dir,
                                                                               fixtures_dir):
    """Under polling alone a relay runs no full sync while the origin is unchanged: its check
    carries what its sites reported since its last report, as a second session of the check's
    one SSH login, and only when there is something new. A leaf site forwards nothing, whatever
    lies in its server.state_dir."""
    library, origin = _origin_with_relay_key(work_dir, fixtures_dir)
    relay_dir = work_dir / "lyon"
    try:
        relay = _site_config(relay_dir, origin.server, origin.keys["lyon"])
        assert sync_run.run(relay, retry=False).outcome == "ok"  # reports: nothing below yet
        relay_server = _start(relay_dir / "as-server", relay.published_dir, ("branch",))
        relay = replace(relay, server=relay_server.server.server_config)
        try:
            branch = _site_config(work_dir / "branch", relay_server.server,
                                  relay_server.keys["branch"])
            assert sync_run.run(branch, retry=False).outcome == "ok"  # and reports to lyon
            reports.reports_dir(branch.server.state_dir).mkdir(parents=True)
            reports.store(branch.server.state_dir, "stray", json.dumps(_payload()).encode())
            assert site_report.build(branch, last_run.read(branch)).get(
                "downstream") is None
        finally:
            relay_server.server.stop()
        assert reports.rows(origin.state, None, 3600)[-1].path == ("lyon",)
        logins = origin.server.log().count("Accepted publickey")

        assert poll.run_if_changed(relay, retry=False) is None  # unchanged, forwarded

        assert origin.server.log().count("Accepted publickey") == logins + 1
        rows = reports.rows(origin.state, reports.current_revision(library), 3600)
        assert [r.path for r in rows] == [("lyon",), ("lyon", "branch")]
        assert rows[1].lag == 0 and rows[1].report["origin"] == "hq"
        stored = (origin.stored / "lyon.json").read_bytes()

        assert poll.run_if_changed(relay, retry=False) is None  # nothing new: nothing sent
        assert origin.server.log().count("Accepted publickey") == logins + 2
        assert (origin.stored / "lyon.json").read_bytes() == stored
    finally:
        origin.server.stop()


def _held_slots(rig: Rig, site: str) -> int:
    """How many of the site key's session slots a process holds now (flock probes)."""
    import fcntl
    import hashlib

    blob = Path(f"{rig.keys[site]}.pub").read_text().split()[1]
    prefix = hashlib.sha256(blob.encode()).hexdigest()[:32]
    held = 0
    for path in (rig.state / sessions.SESSIONS_DIR).glob(f"{prefix}.*"):
        with open(path, "rb") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held += 1
    return held


def test_one_key_holds_at_most_eight_sessions_at_once(rig):
    """Stalled sessions (a report that never arrives) hold their key's slots; the ninth session
    of that key is refused in one line, another key is not affected, and a slot frees when its
    session ends (issue 23: one key could hold any number of ~22 MiB sessions)."""
    stalled = [subprocess.Popen(rig.argv("rome"), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(sessions.MAX_PER_KEY)]
    try:
        wait_for(lambda: _held_slots(rig, "rome") == sessions.MAX_PER_KEY, 15,
                 "every stalled session to hold its slot")
        refused = rig.ssh("rome", data=json.dumps(_payload()).encode())
        assert refused.returncode == 1
        assert refused.stderr.decode().strip() == (
            "library-syncer: session refused: this key already holds 8 sessions; try again "
            "when one ended")
        assert rig.send("paris", _payload()).returncode == 0
    finally:
        for process in stalled:
            process.kill()
            process.communicate()
    wait_for(lambda: _held_slots(rig, "rome") == 0, 15, "the slots to be released")
    assert rig.send("rome", _payload()).returncode == 0
