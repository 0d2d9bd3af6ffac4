"""The monitoring mixin (docs/monitoring): promtool checks and unit-tests every shipped rule on
synthetic series, and every metric the rules and the dashboard name is one the code writes
(collected from real textfiles rendered by sync/metrics.py and server/reports.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from library_syncer.base.config import ServerConfig
from library_syncer.server import reports
from library_syncer.sync import metrics
from library_syncer.sync.last_run import RunRecord
from library_syncer.sync.scrub_record import ScrubRecord

MIXIN = Path(__file__).resolve().parent.parent / "docs" / "monitoring"
RULES = MIXIN / "library-syncer.rules.yml"
DASHBOARD = MIXIN / "library-syncer.dashboard.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

SITE = {"instance": "paris:9100", "job": "node"}
FLEET = {"instance": "hq:9100", "job": "node", "site": "b12", "path": "hq/lyon/b12"}
DAY = 86400


def _series(name: str, labels: dict[str, str], values: str, **more: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in {**labels, **more}.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def _outcome(name: str, labels: dict[str, str], chosen: str, values: str) -> list[dict]:
    """The outcome family as the code writes it: 1 on the chosen series, 0 on another."""
    other = "ok" if chosen != "ok" else "network"
    return [_series(name, labels, values, outcome=chosen),
            _series(name, labels, "0+0x400", outcome=other)]


# alert → (eval time, series where it fires, series where it stays quiet, alert labels, $value)
# Ages: time() at the eval time minus a timestamp (a negative one makes an old success).
CASES: dict[str, tuple[str, list[dict], list[dict], dict[str, str], dict[str, str]]] = {
    "LibrarySyncerLastSuccessStale": (
        "1h", [_series("library_syncer_last_success_timestamp_seconds", SITE, "-694800+0x20")],
        # one failed run after a recent success: quiet
        [_series("library_syncer_last_success_timestamp_seconds", SITE, "-86400+0x20"),
         *_outcome("library_syncer_last_run_outcome", SITE, "network", "1+0x20")],
        SITE, {"humanizeDuration": "8d 2h 0m 0s"}),
    "LibrarySyncerNeverPublished": (
        "25h", [_series("library_syncer_last_run_exit_status", SITE, "5+0x320")],
        [_series("library_syncer_last_run_exit_status", SITE, "5+0x320"),
         _series("library_syncer_last_success_timestamp_seconds", SITE, "0+0x320")],
        SITE, {"": "5"}),
    "LibrarySyncerVerificationFailed": (
        "1h", _outcome("library_syncer_last_run_outcome", SITE, "verify", "1+0x20"),
        _outcome("library_syncer_last_run_outcome", SITE, "verify", "0+0x20"),
        {**SITE, "outcome": "verify"}, {"": "1"}),
    "LibrarySyncerHostKeyChanged": (
        "1h", _outcome("library_syncer_last_run_outcome", SITE, "host_key", "1+0x20"),
        _outcome("library_syncer_last_run_outcome", SITE, "host_key", "0+0x20"),
        {**SITE, "outcome": "host_key"}, {"": "1"}),
    "LibrarySyncerRevisionRefused": (
        "1h", _outcome("library_syncer_last_run_outcome", SITE, "unsigned", "1+0x20"),
        # refused once, then a good run: quiet
        _outcome("library_syncer_last_run_outcome", SITE, "unsigned", "1x4 0x16"),
        {**SITE, "outcome": "unsigned"}, {"": "1"}),
    "LibrarySyncerUpstreamStale": (
        "7h", _outcome("library_syncer_last_run_outcome", SITE, "stale", "1+0x100"),
        # stale for 3 h, then the upstream caught up: quiet
        _outcome("library_syncer_last_run_outcome", SITE, "stale", "1x36 0x64"),
        {**SITE, "outcome": "stale"}, {"": "1"}),
    "LibrarySyncerDiskFull": (
        "1h", _outcome("library_syncer_last_run_outcome", SITE, "disk_full", "1+0x20"),
        _outcome("library_syncer_last_run_outcome", SITE, "disk_full", "0+0x20"),
        {**SITE, "outcome": "disk_full"}, {"": "1"}),
    "LibrarySyncerDiskSpaceLow": (
        "2h", [_series("library_syncer_state_free_bytes", SITE, "536870912+0x30"),
               _series("library_syncer_library_size_bytes", SITE, "2147483648+0x30")],
        [_series("library_syncer_state_free_bytes", SITE, "2147483648+0x30"),
         _series("library_syncer_library_size_bytes", SITE, "2147483648+0x30")],
        SITE, {"humanize1024": "512Mi"}),
    "LibrarySyncerReportRefused": (
        "1h", [_series("library_syncer_last_report_outcome", SITE, "1+0x20", outcome="refused")],
        [_series("library_syncer_last_report_outcome", SITE, "0+0x20", outcome="refused"),
         _series("library_syncer_last_report_outcome", SITE, "1+0x20", outcome="sent")],
        {**SITE, "outcome": "refused"}, {"": "1"}),
    "LibrarySyncerScrubFoundRot": (
        "1h", [_series("library_syncer_scrub_rotted_files", SITE, "2+0x20")],
        [_series("library_syncer_scrub_rotted_files", SITE, "0+0x20")], SITE, {"": "2"}),
    "LibrarySyncerScrubRepairPending": (
        "2h", [_series("library_syncer_scrub_repair_pending_files", SITE, "1+0x30")],
        # pending for 30 min, then the next run repaired it: quiet
        [_series("library_syncer_scrub_repair_pending_files", SITE, "1x6 0x24")],
        SITE, {"": "1"}),
    "LibrarySyncerScrubStale": (
        "2h", [_series("library_syncer_scrub_last_run_timestamp_seconds", SITE,
                       "-3542400+0x30")],
        [_series("library_syncer_scrub_last_run_timestamp_seconds", SITE, "-2592000+0x30")],
        SITE, {"humanizeDuration": "41d 2h 0m 0s"}),
    "LibrarySyncerSiteOverdue": (
        "1h", [_series("library_syncer_site_overdue", FLEET, "1+0x20")],
        [_series("library_syncer_site_overdue", FLEET, "0+0x20")], FLEET, {"": "1"}),
    "LibrarySyncerSiteBehindOrigin": (
        "25h", [_series("library_syncer_site_serial_lag", FLEET, "2+0x320")],
        # behind for 8 h, then current: quiet
        [_series("library_syncer_site_serial_lag", FLEET, "2x96 0x224")], FLEET, {"": "2"}),
    "LibrarySyncerSiteFailing": (
        "1h", [_series("library_syncer_site_last_run_ok", FLEET, "0+0x20"),
               _series("library_syncer_site_last_success_timestamp_seconds", FLEET,
                       "-694800+0x20")],
        [_series("library_syncer_site_last_run_ok", FLEET, "0+0x20"),
         _series("library_syncer_site_last_success_timestamp_seconds", FLEET, "-86400+0x20")],
        FLEET, {"": "0"}),
    "LibrarySyncerSiteVerificationFailed": (
        "1h", _outcome("library_syncer_site_last_outcome", FLEET, "verify", "1+0x20"),
        [_series("library_syncer_site_last_outcome", FLEET, "1+0x20", outcome="ok")],
        {**FLEET, "outcome": "verify"}, {"": "1"}),
    "LibrarySyncerSiteRevisionRefused": (
        "1h", _outcome("library_syncer_site_last_outcome", FLEET, "unsigned", "1+0x20"),
        [_series("library_syncer_site_last_outcome", FLEET, "1+0x20", outcome="stale")],
        {**FLEET, "outcome": "unsigned"}, {"": "1"}),
    "LibrarySyncerSiteUpstreamStale": (
        "7h", _outcome("library_syncer_site_last_outcome", FLEET, "stale", "1+0x100"),
        _outcome("library_syncer_site_last_outcome", FLEET, "stale", "1x36 0x64"),
        {**FLEET, "outcome": "stale"}, {"": "1"}),
    "LibrarySyncerSiteDiskFull": (
        "1h", _outcome("library_syncer_site_last_outcome", FLEET, "disk_full", "1+0x20"),
        [_series("library_syncer_site_last_outcome", FLEET, "1+0x20", outcome="network")],
        {**FLEET, "outcome": "disk_full"}, {"": "1"}),
}


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def _expand(template: str, labels: dict[str, str], value: dict[str, str]) -> str:
    """What Prometheus makes of an annotation: $labels.X, $value and `$value | FUNC`."""
    text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], template)
    return re.sub(r"\{\{\s*\$value\s*(?:\|\s*(\w+)\s*)?\}\}",
                  lambda m: value[m.group(1) or ""], text)


def _promtool_tests() -> dict:
    alerts = {rule["alert"]: rule for rule in _rules() if "alert" in rule}
    tests = []
    for name, (when, firing, quiet, labels, value) in CASES.items():
        rule = alerts[name]
        expected = {"exp_labels": {**labels, **rule["labels"]},
                    "exp_annotations": {k: _expand(v, labels, value)
                                        for k, v in rule["annotations"].items()}}
        tests.append({"name": f"{name} fires", "interval": "5m", "input_series": firing,
                      "alert_rule_test": [{"eval_time": when, "alertname": name,
                                           "exp_alerts": [expected]}]})
        tests.append({"name": f"{name} stays quiet", "interval": "5m", "input_series": quiet,
                      "alert_rule_test": [{"eval_time": when, "alertname": name,
                                           "exp_alerts": []}]})
    # The recording rules the dashboard reads: three sites, one overdue, two behind, one failing.
    rows = [("a", 0, 0, 1), ("b", 1, 2, 0), ("c", 0, 1, 1)]
    fleet = []
    for site, overdue, lag, ok in rows:
        labels = {**FLEET, "site": site, "path": f"hq/{site}"}
        fleet += [_series("library_syncer_site_overdue", labels, f"{overdue}+0x5"),
                  _series("library_syncer_site_serial_lag", labels, f"{lag}+0x5"),
                  _series("library_syncer_site_last_run_ok", labels, f"{ok}+0x5"),
                  _series("library_syncer_site_last_report_timestamp_seconds", labels,
                          "-600+0x5")]
    owner = {"instance": FLEET["instance"], "job": FLEET["job"]}
    tests.append({"name": "fleet recording rules", "interval": "5m", "input_series": fleet,
                  "promql_expr_test": [
                      {"expr": f"library_syncer:{name}", "eval_time": "10m",
                       "exp_samples": [{"labels": f"library_syncer:{name}{_labels(owner)}",
                                        "value": value}]}
                      for name, value in (("sites:count", 3), ("sites_overdue:sum", 1),
                                          ("sites_behind:sum", 2), ("sites_failing:sum", 1))]})
    return {"rule_files": [str(RULES)], "evaluation_interval": "5m", "tests": tests}


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def test_promtool_checks_the_rules():
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_every_alert_has_a_severity_a_summary_and_a_runbook_line():
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert sorted(CASES) == sorted(rule["alert"] for rule in alerts)  # a case for every alert
    for rule in alerts:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.search(r"`library-syncer (check|status|server sites|server keys)`",
                         rule["annotations"]["description"]), rule["alert"]


def test_promtool_unit_tests_fire_and_stay_quiet(tmp_path: Path):
    spec = tmp_path / "rules-test.yml"
    spec.write_text(yaml.safe_dump(_promtool_tests(), sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "SUCCESS" in result.stdout


def test_a_broken_expectation_fails_promtool(tmp_path: Path):
    """The positive control: promtool does compare, so a wrong expectation is caught."""
    tests = _promtool_tests()
    first = tests["tests"][0]["alert_rule_test"][0]["exp_alerts"][0]
    first["exp_annotations"]["summary"] += " (not what the rule says)"
    spec = tmp_path / "rules-test.yml"
    spec.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


# --- every name is one the code writes -------------------------------------------------------


def _written(tmp_path: Path) -> set[str]:
    """Metric names in real textfiles: a site's (every optional part present) and a server's
    fleet file (reports stored by the real storing code)."""
    record = RunRecord(run_id="r", started="2026-11-27T21:00:00+00:00",
                       finished="2026-11-27T21:00:42+00:00", outcome="ok", duration=42.0,
                       bytes_received=10, total_size=100, files_changed=1, items=1,
                       last_success="2026-11-27T21:00:42+00:00", upstream="hq:2222",
                       upstream_index=0)
    library = metrics.Library(version=3, items=1, size=100, origin="hq", serial=4)
    scrub = metrics.Scrub(ScrubRecord(started="2026-11-28T00:10:00+00:00", snapshot="000002-x",
                                      finished="2026-11-28T00:12:00+00:00", files=3, bytes=10,
                                      rotted=["a/a.vmdk"], repair="repaired"), 0)
    site = metrics.render(record, library, {"at": "2026-11-27T21:00:43+00:00",
                                            "outcome": "refused"}, 10**9, scrub)
    state = tmp_path / "server"
    reports.reports_dir(state).mkdir(parents=True)
    now = time.time()
    for name, serial in (("paris", 3), ("rome", 4)):
        payload = {"format": 1, "outcome": "ok", "finished": "2026-11-27T21:00:42+00:00",
                   "last_success": "2026-11-27T21:00:42+00:00", "origin": "hq",
                   "serial": serial, "interval": 86400}
        reports.store(state, name, json.dumps(payload).encode(), now=now)
    server = ServerConfig(library=tmp_path / "library", state_dir=state, name="hq")
    origin, _, rows = reports.fleet(server, now=now)
    fleet = reports.render_metrics(rows, origin, ("hq", 4), now)
    names = set()
    for text in (site, fleet):
        names |= {family.name for family in text_string_to_metric_families(text)}
    return names


def _queried(text: str) -> set[str]:
    return set(re.findall(r"\blibrary_syncer[_:][a-z0-9_:]+", text))


def test_rules_and_dashboard_name_only_metrics_the_code_writes(tmp_path: Path):
    written = _written(tmp_path)
    assert {"library_syncer_last_report_outcome", "library_syncer_state_free_bytes",
            "library_syncer_site_overdue", "library_syncer_origin_serial",
            "library_syncer_scrub_rotted_files"} <= written
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    exprs = " ".join(rule["expr"] for rule in _rules())
    assert _queried(exprs) - written - recorded == set()
    assert _queried(json.dumps(_promtool_tests())) - written - recorded == set()
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(targets) >= 10
    queried = _queried(" ".join(targets))
    assert queried and queried - written - recorded == set()
    # Every metric we write is in the mixin's README list.
    listed = _queried((MIXIN / "README.md").read_text())
    assert written - listed == set()
    assert recorded - listed == set()


def test_the_dashboard_is_an_importable_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None  # import creates it
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert "datasource" in names
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize("said,expected", [("refused", "refused"), ("not taken", "not_taken"),
                                          ("sent", "sent")])
def test_the_site_textfile_says_what_became_of_the_report(tmp_path: Path, said, expected):
    record = RunRecord(run_id="r", started="2026-11-27T21:00:00+00:00",
                       finished="2026-11-27T21:00:42+00:00", outcome="ok")
    text = metrics.render(record, metrics.Library(), {"at": "2026-11-27T21:00:43+00:00",
                                                      "outcome": said}, 123)
    samples = {(s.name, s.labels.get("outcome")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("library_syncer_last_report_outcome", expected)] == 1
    assert sum(v for (n, _), v in samples.items() if n == "library_syncer_last_report_outcome") == 1
    at = datetime(2026, 11, 27, 21, 0, 43, tzinfo=timezone.utc).timestamp()
    assert samples[("library_syncer_last_report_timestamp_seconds", None)] == at
    assert samples[("library_syncer_state_free_bytes", None)] == 123


def test_the_package_installs_every_file_of_the_mixin():
    listed = (MIXIN.parent.parent / "packaging" / "debian" / "library-syncer-common.install")
    lines = [line.split() for line in listed.read_text().splitlines()]
    shipped = {Path(src).name for src, *dest in lines
               if src.startswith("docs/monitoring/")
               and dest == ["usr/share/library-syncer/monitoring/"]}
    assert shipped == {p.name for p in MIXIN.iterdir()}
