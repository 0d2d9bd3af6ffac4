"""The fleet page (server/fleet_page.py): a 20-site tree stored by the real storing code, the page
written as `server.fleet_page` says, seen in headless Chromium (the overdue site's row first);
the real dispatcher writes it after a report, `server trace` at each tick."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.base.config import ServerConfig
from library_syncer.cli.main import main
from library_syncer.server import fleet_page, reports, trace
from tests.harness import chromium
from tests.harness import sshd as harness
from tests.harness.caddy import fetch, make_config, make_state, start_caddy

DAY = 86400
DIRECT = ("madrid", "oslo", "paris", "prague", "rome", "vienna")
BELOW = {"lyon": ("b10", "b11", "b12", "b13", "b14", "b15"),
         "berlin": ("k1", "k2", "k3", "k4", "k5", "k6")}
OVERDUE = "b12"  # below lyon, silent for 5 days on a daily schedule
BEHIND = {"rome", "k3"}  # hold revision 1 of 2
FAILED = "k5"  # its last run could not reach its relay


class _Rows(HTMLParser):
    """The site rows (data-site, class) and group bodies (data-upstream), in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str]] = []
        self.groups: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        found = dict(attrs)
        self.tags.append(tag)
        if tag == "tr" and found.get("data-site") is not None:
            self.rows.append((found["data-site"] or "", found.get("class") or ""))
        if tag == "tbody" and found.get("data-upstream") is not None:
            self.groups.append(found["data-upstream"] or "")


def _parse(html: str) -> _Rows:
    parsed = _Rows()
    parsed.feed(html)
    return parsed


def _report(serial: int, **more: object) -> dict:
    return {"outcome": "ok", "exit_status": 0, "finished": "2026-12-01T21:00:42+00:00",
            "last_success": "2026-12-01T21:00:42+00:00", "duration": 42.5,
            "bytes_received": 12_345_678, "library_version": 7, "origin": "hq",
            "serial": serial, "version": "0.2.0", "schedule": "daily", "interval": DAY,
            "random_delay": 3600, "via": "hq.example.net:2222", **more}


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(moment))


def _origin(root: Path) -> ServerConfig:
    """A library with revision 2 of origin hq declared by the real trace code."""
    library = root / "library"
    library.mkdir(mode=0o755, parents=True)
    (library / "a.iso").write_bytes(b"one")
    settings = root / "trace.toml"
    settings.write_text(f'[server]\nlibrary = "{library}"\nstate_dir = "{root / "state"}"\n'
                        'settle = "60s"\nname = "hq"\n')
    config = config_module.load(settings)
    trace.tick(config, now=time.time() + 61)
    (library / "b.iso").write_bytes(b"two")
    assert trace.tick(config, now=time.time() + 200).serial == 2
    return ServerConfig(library=library, state_dir=root / "state", name="hq",
                        fleet_page=root / "www" / "fleet.html")


def _store_tree(server: ServerConfig, now: float) -> None:
    """20 sites through the real storing code: 8 report to the origin, two of them relays that
    forward 6 sites each."""
    reports.reports_dir(server.state_dir).mkdir(parents=True, exist_ok=True)
    for site in (*DIRECT, *BELOW):
        downstream = []
        for below in BELOW.get(site, ()):
            when = now - 5 * DAY if below == OVERDUE else now - 600
            failed = {"outcome": "network", "exit_status": 5, "bytes_received": 0,
                      "last_success": _iso(now - 3 * DAY)} if below == FAILED else {}
            downstream.append({**_report(1 if below in BEHIND else 2, **failed),
                               "path": [below], "received": _iso(when)})
        payload = {"format": 1, **_report(1 if site in BEHIND else 2), "downstream": downstream}
        reports.store(server.state_dir, site, json.dumps(payload).encode(), now=now,
                      relay=site in BELOW)


def _chromium(work_dir: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return chromium.run(work_dir, url, *args, window="1280,1250")


def test_a_20_site_tree_shows_the_overdue_site_first_in_chromium(work_dir: Path):
    """Served as the site's web unit serves it where both roles share a host (/fleet.html,
    behind the same Content-Security-Policy sandbox as everything else)."""
    server = _origin(work_dir / "origin")
    now = time.time()
    _store_tree(server, now)
    page_file = server.fleet_page
    assert page_file is not None
    page_file.parent.mkdir()
    assert fleet_page.refresh(server, now=now) is True
    html = page_file.read_text()
    assert "<script" not in html and "<link" not in html and "<img" not in html
    assert [p.name for p in page_file.parent.iterdir()] == ["fleet.html"]  # no temp left
    assert oct(page_file.stat().st_mode & 0o777) == "0o644"

    make_state(work_dir)
    config = make_config(work_dir)
    config = replace(config, server=replace(config.server, fleet_page=page_file))
    web = start_caddy(config, work_dir)
    try:
        url = f"http://127.0.0.1:{web.port}/fleet.html"
        served = fetch(web.port, "/fleet.html")
        assert served.status == 200 and served.body == page_file.read_bytes()
        assert served.headers["content-type"].startswith("text/html")
        assert served.headers["content-security-policy"].startswith("sandbox;")
        assert fetch(web.port, "/lib.json").status == 200  # the library as before
        dom = _chromium(work_dir, url, "--dump-dom", "--enable-logging=stderr", "--v=0")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "Content Security Policy" not in dom.stderr and "Refused to" not in dom.stderr
        shot = work_dir / "fleet.png"
        taken = _chromium(work_dir, url, f"--screenshot={shot}", "--hide-scrollbars")
        assert taken.returncode == 0, taken.stderr[-2000:]
    finally:
        web.stop()
    page = _parse(dom.stdout)
    sites = [site for site, _ in page.rows]
    assert len(sites) == 20 and len(set(sites)) == 20
    assert sites[0] == OVERDUE  # overdue first (its group first, then it in its group)
    assert [site for site, cls in page.rows if "overdue" in cls.split()] == [OVERDUE]
    # Grouped by upstream: the overdue site's group, then the origin's own, then the others.
    assert page.groups == ["hq → lyon", "hq", "hq → berlin"]
    berlin = sites[-6:]
    assert berlin[0] == "k3" and sorted(berlin) == sorted(BELOW["berlin"])  # the behind first
    text = dom.stdout
    assert 'id="current">hq 2<' in text and 'id="sites">20<' in text
    assert 'id="overdue">1<' in text and 'id="behind">2<' in text
    assert text.count("1 behind") == 2 and text.count(">current<") == 18
    assert "OVERDUE" in text and "5 d ago" in text
    assert '<td class="outcome-bad">network</td>' in text
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("LIBRARY_SYNCER_SAVE_SCREENSHOTS"):  # for docs/img (by hand)
        shutil.copy(shot, os.environ["LIBRARY_SYNCER_SAVE_SCREENSHOTS"])


def test_the_page_escapes_what_reports_and_names_say():
    """Stored reports are checked, but the page does not rely on it: everything is escaped."""
    hostile = reports.SiteRow(path=("<b>relay</b>", '"><script>x()</script>'),
                              received="2026-12-01T21:00:00+00:00",
                              report={"outcome": "<i>ok</i>", "origin": "hq&co", "serial": 3,
                                      "library_version": None, "bytes_received": 1},
                              lag=1, overdue=True, age=90.0)
    html = fleet_page.render_page("<origin>", ("<origin>", 4), [hostile], now=0)
    assert "<script>" not in html and "<b>" not in html and "<i>" not in html
    assert "&lt;script&gt;x()&lt;/script&gt;" in html and "hq&amp;co 3" in html
    assert "&lt;origin&gt; → &lt;b&gt;relay&lt;/b&gt;" in html
    assert "No site has reported yet." in fleet_page.render_page("hq", None, [], now=0)


def test_off_by_default_and_settings_name_it(tmp_path: Path, capsys):
    assert ServerConfig().fleet_page is None
    assert fleet_page.refresh(ServerConfig(state_dir=tmp_path)) is False
    assert main(["config", "generate", "--all"]) == 0
    assert 'fleet_page = ""' in capsys.readouterr().out


def test_the_dispatcher_writes_it_after_a_report_and_server_trace_at_each_tick(work_dir: Path):
    """The real forced command (as the sync account) rewrites the page once a report is stored;
    `library-syncer server trace` rewrites it at each tick, so a site whose deadline passed
    turns OVERDUE without any report arriving."""
    server = _origin(work_dir / "origin")
    page = work_dir / "origin" / "www" / "fleet.html"  # folder made for the account
    key, pub = harness.keygen(work_dir / "id_paris", comment="paris")
    sshd = harness.start_server_role(work_dir / "sshd", server.library, sites={"paris": pub},
                                     state_dir=server.state_dir, fleet_page=page)
    try:
        (work_dir / "known_hosts").write_text(sshd.known_hosts_line + "\n")
        argv = ["ssh", "-p", str(sshd.port), "-i", str(key), "-T", "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={work_dir / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=yes", f"{sshd.user}@127.0.0.1",
                "library-syncer-report 1"]
        sent = subprocess.run(argv, input=json.dumps({"format": 1, **_report(2)}).encode(),
                              capture_output=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
    finally:
        sshd.stop()
    assert page.stat().st_uid == harness.ensure_sysusers_user().pw_uid  # the dispatcher's
    rows = _parse(page.read_text()).rows
    assert rows == [("paris", "site")]

    # Later: paris (daily, 1 h random delay) missed its deadline; only the trace timer runs.
    stored = reports.reports_dir(server.state_dir) / "paris.json"
    record = json.loads(stored.read_text())
    record["received"] = _iso(time.time() - 2 * DAY)
    stored.write_text(json.dumps(record))
    settings = work_dir / "origin" / "server.toml"
    settings.write_text(f'[server]\nlibrary = "{server.library}"\n'
                        f'state_dir = "{server.state_dir}"\nname = "hq"\nsettle = "60s"\n'
                        f'fleet_page = "{page}"\n')
    assert main(["server", "trace", "-c", str(settings)]) == 0
    assert _parse(page.read_text()).rows == [("paris", "site overdue")]
    assert page.stat().st_uid == 0  # rewritten by the tick (root), in the account's folder


def test_the_web_units_caddyfile_serves_it_only_when_set(work_dir: Path):
    from library_syncer.web import caddy as web

    config = make_config(work_dir)
    assert "fleet" not in web.render_caddyfile(config)
    page = work_dir / "server state" / "fleet.html"
    text = web.render_caddyfile(replace(config, server=replace(config.server, fleet_page=page)))
    assert f'root * "{page.parent}"' in text and "rewrite * /fleet.html" in text
    path = work_dir / "Caddyfile"
    path.write_text(text)
    formatted = subprocess.run(["caddy", "fmt", str(path)], capture_output=True, text=True)
    assert formatted.stdout == text, "the rendered Caddyfile is not in `caddy fmt` form"


@pytest.mark.parametrize("value", ["/srv/a;b/fleet.html", "/srv/with space/fleet.html"])
def test_a_page_path_sshd_cannot_pass_is_refused_in_one_line(tmp_path: Path, value: str):
    settings = tmp_path / "s.toml"
    settings.write_text(f'[server]\nfleet_page = "{value}"\n')
    from library_syncer.base.errors import ConfigError
    from library_syncer.server import sshd

    with pytest.raises(ConfigError, match=r"server\.fleet_page"):
        sshd.forced_command(config_module.load(settings))
