"""The server's findings of issue 23 (item 5), each on the real code path: a forged origin name
in an upstream's trace, malformed reports, downstream rows from a key that is not a relay's, and
the memory bound of every session."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from library_syncer.base.config import ServerConfig
from library_syncer.base.revision import Revision
from library_syncer.cli import server as server_cli
from library_syncer.server import reports, trace

FORGED = 'victim"} 0\nlibrary_syncer_site_overdue{site="victim'
RECEIVED = "2026-11-27T21:00:00+00:00"


def _report(**changes: object) -> bytes:
    body = {"format": 1, "outcome": "ok", "finished": RECEIVED, "origin": "hq", "serial": 1,
            "interval": 604800, **changes}
    return json.dumps(body).encode()


def _relay_library(tmp_path: Path, origin: str) -> ServerConfig:
    """A server whose library holds an upstream's trace naming `origin`, and one report."""
    library = tmp_path / "library"
    (library / trace.TRACE_DIR).mkdir(parents=True)
    document = Revision("hq", 3, RECEIVED, {}).to_json().replace('"hq"', json.dumps(origin))
    (library / trace.TRACE_DIR / trace.TRACE_FILE).write_text(document)
    server = ServerConfig(library=library, state_dir=tmp_path / "state", name="lyon",
                          metrics_textfile=tmp_path / "sites.prom")
    reports.reports_dir(server.state_dir).mkdir(parents=True)
    reports.store(server.state_dir, "paris", _report())
    return server


def test_a_forged_origin_name_injects_no_series(tmp_path):
    server = _relay_library(tmp_path, FORGED)
    reports.refresh_metrics(server)
    text = server.metrics_textfile.read_text()
    sites = {sample.labels.get("site") for family in text_string_to_metric_families(text)
             for sample in family.samples}
    assert sites <= {"paris", None}
    assert "victim" not in text


def test_a_label_value_is_quoted_as_the_exposition_format_says():
    row = reports.SiteRow(("paris",), RECEIVED, {"outcome": "ok"}, 0, False, 0.0)
    text = reports.render_metrics([row], FORGED, (FORGED, 3), now=0)
    families = list(text_string_to_metric_families(text))
    origin = next(f for f in families if f.name == "library_syncer_origin_serial")
    assert [s.labels["origin"] for s in origin.samples] == [FORGED]  # one series, intact
    overdue = next(f for f in families if f.name == "library_syncer_site_overdue")
    assert [s.labels["site"] for s in overdue.samples] == ["paris"]


@pytest.mark.parametrize("origin", ["hq\x1b[2J", "hq\nforged line", "hq\u202eevil", ""])
def test_a_revision_document_names_its_origin_as_a_server_name(origin):
    document = Revision("hq", 3, RECEIVED, {}).to_json().replace('"hq"', json.dumps(origin))
    with pytest.raises(ValueError):
        Revision.from_json(document)


def test_server_sites_prints_no_raw_escape(tmp_path, capsys):
    server = _relay_library(tmp_path, "hq\x1b]0;owned\x07\x1b[2J")
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[server]\nlibrary = "{server.library}"\n'
                        f'state_dir = "{server.state_dir}"\nname = "lyon"\n')
    assert server_cli.sites(argparse.Namespace(config=settings, json=False)) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out.splitlines()[0].startswith("lyon: no trace")


@pytest.mark.parametrize("field, value, reason", [
    ("finished", "0001-01-01T00:00:00+01:00", "finished: out of range"),
    ("finished", "9999-12-31T23:59:59-01:00", "finished: out of range"),
    ("last_success", "0001-01-01T00:30:00+05:00", "last_success: out of range"),
    ("duration", 10**400, "duration: expected a number"),
    ("random_delay", -10**400, "random_delay: expected a number"),
    ("serial", 2**63 - 1, "serial: expected an integer 0-999999999999999"),
])
def test_a_malformed_report_is_refused_not_a_crash(field, value, reason):
    with pytest.raises(reports.ReportRefused, match=reason):
        reports.parse(_report(**{field: value}))


def test_downstream_rows_count_only_from_a_relays_key(tmp_path):
    reports.reports_dir(tmp_path).mkdir()
    row = {"path": ["victim"], "received": RECEIVED, "outcome": "ok", "finished": RECEIVED}
    payload = _report(downstream=[row])
    leaf = reports.store(tmp_path, "paris", payload)
    relay = reports.store(tmp_path, "lyon", payload, relay=True)
    assert (leaf.ignored, relay.ignored) == (1, 0)
    paths = [r.path for r in reports.rows(tmp_path, ("hq", 1), 3600)]
    assert paths == [("lyon",), ("lyon", "victim"), ("paris",)]


def test_every_session_is_bounded_in_memory(tmp_path):
    """What the dispatcher sets before it execs rrsync (inherited by rsync)."""
    from library_syncer.server import sessions

    probe = ("import sys; from pathlib import Path; from library_syncer.server import dispatch;"
             "dispatch.limit_session(Path(sys.argv[1])); bytearray(2 << 30)")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True)
    assert done.returncode != 0 and b"MemoryError" in done.stderr
    assert sessions.MEMORY_LIMIT == 1 << 30
