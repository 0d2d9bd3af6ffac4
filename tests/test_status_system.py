"""`status` and `check` read the timer from a real, booted systemd (systemd-nspawn).

The source tree is bind-mounted into the container and run with its python3 (the same Debian
libraries the package depends on); the shipped timer and service units are installed by hand, the
schedule applied with `library-syncer apply`, so `status` and `check` see what systemd says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import nspawn

pytestmark = pytest.mark.system

TOP = Path(__file__).resolve().parent.parent
CONF = "/etc/library-syncer/library-syncer.toml"
SETTINGS = """\
[sync]
peer = "127.0.0.1"
schedule = "Mon *-*-* 04:00:00"
timezone = "UTC"
random_delay = "2h"
"""


@pytest.fixture(scope="module")
def box(debs: list[Path], suite: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[nspawn.Container]:
    # The packages are not installed, but their Depends pick the tree: the one the other
    # booted-systemd tests use (nspawn.package_rootfs), so it is built once.
    log_dir = tmp_path_factory.mktemp(f"nspawn-status-{suite}")
    with nspawn.boot(debs, log_dir, [(TOP, "/srv/src")], suite=suite) as container:
        container.write(CONF, SETTINGS)
        container.sh("cp /srv/src/systemd/library-syncer.timer /srv/src/systemd/library-syncer"
                     ".service /etc/systemd/system/ && systemctl daemon-reload")
        _cli(container, "apply")
        container.run("systemctl", "enable", "--now", "library-syncer.timer")
        yield container


def _cli(box: nspawn.Container, *args: str, user: str | None = None):
    argv = ["env", "PYTHONPATH=/srv/src", "PYTHONDONTWRITEBYTECODE=1", "python3", "-m",
            "library_syncer", *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *argv]
    return box.run(*argv, check=False)


def test_status_shows_the_next_run_and_delay_window_as_systemd_sees_them(box):
    result = _cli(box, "status")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    line = re.search(r"^next run:\s+(.*)$", result.stdout, re.MULTILINE).group(1)
    # systemd's next elapse includes this run's random delay: within the 2 h window
    assert re.fullmatch(r"Mon \d{4}-\d\d-\d\d 0[45]:\d\d:\d\d UTC \(Mon \*-\*-\* 04:00:00 UTC "
                        r"\+ random delay up to 2h; library-syncer\.timer enabled\)", line), line
    report = json.loads(_cli(box, "status", "--json").stdout)
    schedule = report["schedule"]
    assert schedule["available"] is True
    assert schedule["on_calendar"] == "Mon *-*-* 04:00:00 UTC"
    assert schedule["systemd_random_delay"] == "2h" and schedule["enabled"] == "enabled"
    assert schedule["active"] == "active"


def test_status_without_root_still_sees_the_timer(box):
    result = _cli(box, "status", user="nobody")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^next run:\s+Mon \d{4}-\d\d-\d\d 0[45]:\d\d:\d\d UTC \(", result.stdout,
                     re.MULTILINE), result.stdout
    assert re.search(r"^last sync:\s+unknown: ", result.stdout, re.MULTILINE)


def test_check_sees_whether_the_timer_is_enabled(box):
    result = _cli(box, "check")
    assert "ok    timer: library-syncer.timer is enabled" in result.stdout.splitlines()
    box.run("systemctl", "disable", "--now", "library-syncer.timer")
    try:
        result = _cli(box, "check")
        assert result.returncode == 9
        assert ("FAIL  timer: library-syncer.timer is disabled; fix: systemctl enable --now "
                "library-syncer.timer") in result.stdout.splitlines()
        status = _cli(box, "status").stdout
        assert re.search(r"^next run:\s+none: library-syncer\.timer is inactive/disabled; start "
                         r"it: systemctl enable --now library-syncer\.timer", status,
                         re.MULTILINE), status
    finally:
        box.run("systemctl", "enable", "--now", "library-syncer.timer")


def test_check_says_when_the_web_service_is_not_running_and_why(box):
    debian_caddy = box.run("systemctl", "is-active", "caddy.service", check=False).stdout.strip()
    lines = _cli(box, "check").stdout.splitlines()
    web = [line for line in lines if line.startswith("FAIL  web service: ")]
    assert len(web) == 1, lines
    assert "library-syncer-web.service is" in web[0]
    assert web[0].endswith("fix: " + ("systemctl disable --now caddy && " if debian_caddy ==
                                      "active" else "") + "systemctl enable --now "
                           "library-syncer-web.service"), web[0]

