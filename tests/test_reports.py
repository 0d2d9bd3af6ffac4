"""Site reports as data: the overdue rule, forwarding through a relay, the size bound, and the
metrics text (parsed by prometheus_client's own parser). The real sshd is in
tests/test_reports_sshd.py."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from library_syncer.server import reports
from library_syncer.sync import report as site_report

RECEIVED = "2026-11-27T21:00:00+00:00"
T0 = datetime.fromisoformat(RECEIVED).timestamp()
T0_NS = int(T0) * 10**9


def _report(**changes: object) -> bytes:
    body = {"format": 1, "outcome": "ok", "finished": "2026-11-27T20:59:00+00:00",
            "last_success": "2026-11-27T20:59:00+00:00", "origin": "hq", "serial": 5,
            "interval": 86400, "random_delay": 3600}
    body.update(changes)
    return json.dumps(body).encode()


def test_a_site_is_overdue_only_after_its_period_its_delay_and_the_grace(tmp_path):
    reports_dir = reports.reports_dir(tmp_path)
    reports_dir.mkdir()
    reports.store(tmp_path, "paris", _report(), now=T0)
    allowed = 86400 + 3600 + 600
    (on_time,) = reports.rows(tmp_path, ("hq", 7), 600, now=T0 + allowed - 1)
    (late,) = reports.rows(tmp_path, ("hq", 7), 600, now=T0 + allowed + 1)
    assert (on_time.overdue, late.overdue) == (False, True)
    assert on_time.lag == 2
    assert "OVERDUE" in reports.line(late, "hq") and "hq 5 (2 behind)" in reports.line(late, "hq")
    (other,) = reports.rows(tmp_path, ("elsewhere", 9), 600, now=T0)
    assert other.lag is None  # another origin's serial is not comparable


def test_a_relay_forwards_its_sites_and_their_sites_with_paths(tmp_path):
    reports.reports_dir(tmp_path).mkdir()
    below = [{"path": ["b12"], "received": RECEIVED, "outcome": "network",
              "finished": RECEIVED}]
    reports.store(tmp_path, "lyon-2", _report(downstream=below), now=T0, relay=True)
    reports.store(tmp_path, "paris", _report(), now=T0)
    rows = reports.forwardable(tmp_path)
    assert [r["path"] for r in rows] == [["lyon-2"], ["paris"], ["lyon-2", "b12"]]
    # What a relay forwards is exactly what its upstream accepts.
    payload = site_report.encode({**json.loads(_report()), "downstream": rows})
    _, downstream = reports.parse(payload)
    assert [d["path"] for d in downstream] == [["lyon-2"], ["paris"], ["lyon-2", "b12"]]
    assert downstream[2]["outcome"] == "network"


def test_a_relay_report_is_cut_to_the_size_the_origin_accepts():
    row = {"path": ["s"], "received": RECEIVED, "outcome": "ok", "finished": RECEIVED,
           "schedule": "x" * 200, "via": "y" * 200}
    payload = site_report.encode({**json.loads(_report()), "downstream": [row] * 400})
    assert len(payload) <= reports.MAX_BYTES
    _, downstream = reports.parse(payload)
    assert 0 < len(downstream) <= reports.MAX_DOWNSTREAM


def test_the_metrics_text_is_valid_prometheus(tmp_path):
    reports.reports_dir(tmp_path).mkdir()
    reports.store(tmp_path, "paris", _report(outcome="stale"), now=T0)
    rows = reports.rows(tmp_path, ("hq", 6), 600, now=T0 + 10)
    text = reports.render_metrics(rows, "hq", ("hq", 6), now=T0 + 10)
    samples = {(s.name, s.labels.get("outcome")): (s.value, s.labels.get("path"))
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("library_syncer_site_serial_lag", None)] == (1, "hq/paris")
    assert samples[("library_syncer_site_last_outcome", "stale")] == (1, "hq/paris")
    assert samples[("library_syncer_site_seconds_since_success", None)][0] == 70
    assert samples[("library_syncer_origin_serial", None)][0] == 6


def test_check_names_a_refused_report_as_a_fault_and_a_not_taken_one_as_a_warning(tmp_path):
    from library_syncer.base import config as config_module
    from library_syncer.host import check

    settings = tmp_path / "site.toml"
    settings.write_text(f'[sync]\npeer = "hq.example.net"\n[paths]\nstate_dir = "{tmp_path}"\n')
    config = config_module.load(settings)
    assert [r.status for r in check.check_report(config)] == [check.SKIP]  # none sent yet
    for outcome, status in ((site_report.REFUSED, check.FAIL),
                            (site_report.NOT_TAKEN, check.WARN), (site_report.SENT, check.OK)):
        site_report._remember(config, outcome, "this key is not bound to a site\x1b[2J")
        (result,) = check.check_report(config)
        assert result.status == status, (outcome, result)
        assert "hq.example.net:2222" in result.message and "\x1b" not in result.message
    assert check.check_report(replace(config, sync=replace(config.sync, report=False))) == []


def test_a_relays_news_is_what_its_sites_reported_since_the_last_offer(tmp_path):
    """A relay has news when a site reported or was revoked since it last offered their reports.
    An offer that could not reach the upstream (ssh 255) leaves the news for the next check; a
    report that cannot even be built fails nothing (one debug line, recorded). A leaf site
    (server.library outside its state) never has news. The other answers of an upstream
    (taken, not taken by the original) mark the offer: tests/test_reports_sshd.py."""
    from library_syncer.base import config as config_module
    from library_syncer.sync.last_run import RunRecord
    from tests.harness.net import free_port

    state = tmp_path / "state"
    (state / "published").mkdir(parents=True)
    settings = tmp_path / "relay.toml"
    settings.write_text(f'[sync]\npeer = "127.0.0.1"\nport = {free_port()}\nconnect_timeout = '
                        f'"2s"\n[paths]\nstate_dir = "{state}"\n[server]\nlibrary = '
                        f'"{state / "published"}"\nstate_dir = "{tmp_path / "srv"}"\n')
    relay = config_module.load(settings)
    stored = reports.reports_dir(relay.server.state_dir)
    stored.mkdir(parents=True)
    assert not site_report.has_news(relay)
    reports.store(relay.server.state_dir, "branch", _report(), now=T0)
    assert site_report.has_news(relay)
    record = RunRecord(run_id="r", started="2026-11-30T10:00:00+00:00", outcome="ok")
    assert site_report.send(relay, record) is False  # nothing listens on that port
    assert site_report.last_report(relay)["outcome"] == site_report.FAILED
    assert site_report.has_news(relay)  # offered again at the next check

    site_report._mark_offered(relay, site_report._reports_fingerprint(relay))
    assert not site_report.has_news(relay)
    os.utime(stored / "branch.json", ns=(T0_NS, T0_NS + 1))  # the same site reported again
    assert site_report.has_news(relay)
    site_report._mark_offered(relay, site_report._reports_fingerprint(relay))
    assert reports.forget(relay.server.state_dir, "branch")  # revoked: its report must go
    assert site_report.has_news(relay)

    broken = replace(record, exit_status=None)  # e.g. a hand-edited last-run.json
    assert site_report.send(relay, broken) is False
    assert site_report.last_report(relay)["outcome"] == site_report.FAILED
    leaf = replace(relay, server=replace(relay.server, library=tmp_path / "elsewhere"))
    reports.store(relay.server.state_dir, "branch", _report(), now=T0)
    assert site_report.has_news(relay) and not site_report.has_news(leaf)


LEAF_KEY = "SHA256:" + "L" * 43
RELAY_KEY = "SHA256:" + "R" * 43


def test_a_site_that_reported_through_two_paths_is_one_line(tmp_path):
    """Leaf with upstreams = [relay, origin]: while the relay was down it reported to the
    origin directly (revision 3); later through the relay (revision 4). One site, one line: its
    newest report, whichever path brought it, in every view (rows, metrics, check)."""
    origin, relay = tmp_path / "origin", tmp_path / "relay"
    for state in (origin, relay):
        reports.reports_dir(state).mkdir(parents=True)
    # the origin names the leaf "leaf"; the relay's operator named it "leaf-7"
    reports.store(origin, "leaf", _report(serial=3, finished="2026-11-27T20:00:00+00:00"),
                  now=T0 - 3600, key=LEAF_KEY)
    reports.store(relay, "leaf-7", _report(serial=4), now=T0 - 60, key=LEAF_KEY)
    forwarded = {**json.loads(_report(serial=4)), "downstream": reports.forwardable(relay)}
    reports.store(origin, "relay", site_report.encode(forwarded), now=T0, key=RELAY_KEY,
                  relay=True)
    rows = reports.rows(origin, ("hq", 4), 600, now=T0 + 10)
    assert [(r.path, r.report["serial"], r.lag) for r in rows] == [
        (("relay",), 4, 0), (("relay", "leaf-7"), 4, 0)]
    assert rows[1].key == LEAF_KEY
    text = reports.render_metrics(rows, "hq", ("hq", 4), now=T0 + 10)
    lags = [s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "library_syncer_site_serial_lag"]
    assert sorted(s.labels["path"] for s in lags) == ["hq/relay", "hq/relay/leaf-7"]
    assert all(s.value == 0 for s in lags)
    # The relay goes down again and the leaf falls back: the direct report is the newest now.
    reports.store(origin, "leaf", _report(serial=5, finished="2026-11-27T21:30:00+00:00"),
                  now=T0 + 1800, key=LEAF_KEY)
    rows = reports.rows(origin, ("hq", 5), 600, now=T0 + 1810)
    assert [(r.path, r.report["serial"]) for r in rows] == [(("leaf",), 5), (("relay",), 4)]
    # Two sites without keys (reports stored before keys were recorded) stay apart by path.
    reports.store(origin, "old-a", _report(), now=T0)
    reports.store(origin, "old-b", _report(), now=T0)
    assert len(reports.rows(origin, ("hq", 5), 600, now=T0 + 10)) == 4


def test_a_failed_run_reports_the_library_the_site_still_publishes(tmp_path):
    from library_syncer.base import config as config_module
    from library_syncer.sync.last_run import RunRecord

    state = tmp_path / "state"
    published = state / "published"
    published.mkdir(parents=True)
    (published / "lib.json").write_text(json.dumps({"version": "7"}))
    (published / "items.json").write_text(json.dumps({"items": []}))
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[sync]\npeer = "hq"\n[paths]\nstate_dir = "{state}"\n')
    config = config_module.load(settings)
    record = RunRecord(run_id="r1", started=RECEIVED, outcome="network", exit_status=5,
                       finished=RECEIVED)
    body = site_report.build(config, record)
    assert body["outcome"] == "network" and body["library_version"] == 7
    reports.reports_dir(tmp_path).mkdir()
    reports.store(tmp_path, "paris", site_report.encode(body), now=T0)
    (row,) = reports.rows(tmp_path, None, 600, now=T0)
    assert "  library 7  " in reports.line(row, "hq")
