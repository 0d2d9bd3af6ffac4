"""`library-syncer status` and the metrics file, after real syncs against a loopback sshd."""
# ruff: noqa: F811 - `site` is test_check's fixture, imported to be shared

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from library_syncer.base.errors import ExitStatus
from library_syncer.sync import last_run as state
from library_syncer.sync import run as sync
from tests.harness import caddy as caddy_harness
from tests.harness import sshd as sshd_harness
from tests.test_check import run_cli, site, site_settings  # noqa: F401


def _sync(site) -> state.RunRecord:
    return sync.run(site.config, retry=False)


def _status(site, *extra: str) -> tuple[int, str, str]:
    result = run_cli("status", "-c", str(site.file), *extra)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout, result.stderr


def _field(text: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}:\s+(.*)$", text, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{text}"
    return match.group(1)


def _metrics(site) -> dict[str, float]:
    text = Path(site.config.metrics.textfile).read_text()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{label}}}" if label else "")] = sample.value
    return values


@pytest.fixture
def web(site, work_dir):
    server = caddy_harness.start_caddy(site.config, work_dir)
    yield server
    server.stop()


def test_healthy(site, web):
    record = _sync(site)
    assert record.outcome == "ok", record.message
    status, out, err = _status(site)
    assert status == 0 and err == ""
    config = site.config
    last = _field(out, "last sync")
    assert last.startswith(f"{record.finished}, ok, took ")
    assert "received" in last and "speedup" in last and "1 item changed" in last
    assert re.fullmatch(r'"Site templates" version \d{16}, 1 item', _field(out, "library"))
    # This server is a plain `rrsync -ro` key line (the Docker-based original's): no reports.
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00, not taken by "
                        rf"127\.0\.0\.1:{site.sshd.port} \(.+\)", _field(out, "last report")), \
        _field(out, "last report")
    assert _field(out, "snapshot") == str(config.published_dir.resolve())
    assert _field(out, "next run") == (
        "unknown: systemd is not running here (PID 1 is not systemd) (settings: "
        "Fri *-*-* 21:00:00, no random delay)")
    assert _field(out, "vCenter URL") == f"https://library.test:{config.web.https_port}/lib.json"
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1",
                                                                config.web.https_port)))
    digest = hashlib.sha1(der).hexdigest().upper()  # what vCenter shows
    assert _field(out, "thumbprint") == ":".join(digest[i:i + 2] for i in range(0, 40, 2))

    status, out, _ = _status(site, "--json")
    report = json.loads(out)
    assert status == 0
    assert report["last_sync"] | {"available": True} == report["last_sync"]
    assert report["last_sync"]["bytes_received"] == record.bytes_received
    assert report["last_sync"]["items_changed"] == ["ttylinux"]
    assert report["library"]["version"] == str(record.library_version)
    assert report["library"]["items"] == 1
    assert report["schedule"]["available"] is False
    assert report["vcenter"]["thumbprint"] == _field(_status(site)[1], "thumbprint")


def test_metrics_hold_the_last_run(site):
    record = _sync(site)
    values = _metrics(site)
    assert values["library_syncer_last_run_bytes_received"] == record.bytes_received
    assert values["library_syncer_last_run_duration_seconds"] == pytest.approx(record.duration)
    assert values["library_syncer_library_items"] == 1
    assert values["library_syncer_library_version"] == record.library_version
    assert values['library_syncer_last_run_outcome{outcome=ok}'] == 1
    assert values['library_syncer_last_run_outcome{outcome=network}'] == 0
    success = values["library_syncer_last_success_timestamp_seconds"]
    site.sshd.stop()
    failed = _sync(site)
    assert failed.outcome == "network"
    values = _metrics(site)
    assert values['library_syncer_last_run_outcome{outcome=network}'] == 1
    assert values['library_syncer_last_run_outcome{outcome=ok}'] == 0
    assert values["library_syncer_last_run_exit_status"] == ExitStatus.NETWORK
    assert values["library_syncer_last_success_timestamp_seconds"] == success


def test_server_down_keeps_the_published_library(site):
    assert _sync(site).outcome == "ok"
    published = site.config.published_dir.resolve()
    site.sshd.stop()
    failed = _sync(site)
    status, out, _ = _status(site)
    assert status == 0
    last = _field(out, "last sync")
    assert last.startswith(f"{failed.finished}, network, took ")
    assert last.endswith(failed.message) and "127.0.0.1" in failed.message
    assert re.fullmatch(r'"Site templates" version \d{16}, 1 item', _field(out, "library"))
    assert _field(out, "snapshot") == str(published)


def test_wrong_key(site, work_dir):
    other, _ = sshd_harness.keygen(work_dir / "client-ssh" / "other_key")
    site.write(**site_settings(site.work, site.sshd, other))
    _sync(site)
    status, out, _ = _status(site)
    assert status == 0
    assert re.search(r", network, took .*the server refused this site's key \(" +
                     re.escape(str(other)) + r"\)", _field(out, "last sync"))
    assert _field(out, "library") == ("unknown: nothing published yet "
                                      f"({site.config.published_dir} does not exist)")


def test_unknown_host_key(site):
    assert _sync(site).outcome == "ok"
    (site.work / "known_hosts").write_text("")
    failed = _sync(site)
    assert failed.outcome == "host_key"
    status, out, _ = _status(site)
    assert status == 0
    assert ", host_key, took " in _field(out, "last sync")
    assert "the server's host key is not in" in _field(out, "last sync")


def test_nothing_synced_yet(site):
    status, out, _ = _status(site)
    assert status == 0
    assert _field(out, "last sync") == "unknown: no sync has run yet"
    assert _field(out, "thumbprint") == ("unknown: the web server does not answer and no "
                                         "certificate file is readable here")


def test_bad_config(site):
    site.file.write_text('[sync]\npeer = "127.0.0.1"\nrandom_delay = "soon"\n')
    status, out, err = _status(site)
    assert status == ExitStatus.CONFIG and out == ""
    assert err.strip() == (f'library-syncer: {site.file}: sync.random_delay: found "soon", '
                           'expected a duration such as 90, "30s", "5min", "6h" or "1h 30min"')


def test_without_root_says_what_it_cannot_see(site):
    assert _sync(site).outcome == "ok"
    site.file.chmod(0o644)
    os.chmod(site.config.state_dir, 0o700)  # as if only the sync's account may read it
    result = run_cli("status", "-c", str(site.file), user="nobody")
    assert result.returncode == 0, result.stderr
    record_path = site.config.state_dir / "last-run.json"
    assert _field(result.stdout, "last sync") == (
        f"unknown: permission denied reading {record_path} (run as root or as a member of "
        "group library-syncer)")
    assert _field(result.stdout, "library").startswith("unknown: permission denied reading ")
    site.file.chmod(0o600)  # the settings file itself unreadable: defaults, and why
    result = run_cli("status", "-c", str(site.file), user="nobody")
    assert result.returncode == 0, result.stderr
    assert _field(result.stdout, "note") == (f"cannot read {site.file} (permission denied): "
                                             "showing defaults; run as root for the real "
                                             "settings")


def test_small_words_of_an_empty_library_run():
    """A run over an empty library: no "took 0", no "speedup 0.0"."""
    from library_syncer.host import status as status_module

    line = status_module._last_sync_line({"available": True, "finished": "T", "outcome": "ok",
                                          "duration": 0.2, "bytes_received": 0,
                                          "speedup": 0.0, "items_changed": []})
    assert line.startswith("T, ok, took less than 1 s, 0 B received, 0 items changed"), line
    assert "speedup" not in line
    line = status_module._last_sync_line({"available": True, "finished": "T", "outcome": "ok",
                                          "duration": 42, "speedup": 124.0})
    assert "took 42 s" in line and "speedup 124.0x" in line
