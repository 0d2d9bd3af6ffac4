"""Durations, sizes, rsync rates and schedules: the small parsers behind the settings file."""

from __future__ import annotations

import pytest

from library_syncer.base.schedule import to_on_calendar
from library_syncer.base.units import (
    bwlimit_bytes_per_second,
    format_bytes,
    format_duration,
    parse_bwlimit,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(("text", "seconds"), [
    (90, 90), ("30s", 30), ("5min", 300), ("6h", 21600), ("1h 30min", 5400), ("2d", 172800),
    ("1.5h", 5400), ("21600", 21600),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 parsecs", -1, True, "h"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_round_trips():
    for seconds in (0, 59, 60, 3600, 5400, 21600, 90061):
        assert parse_duration(format_duration(seconds) or 0) == seconds


@pytest.mark.parametrize(("text", "size"), [
    (1024, 1024), ("1K", 1024), ("500M", 500 * 2**20), ("10G", 10 * 2**30), ("1GiB", 2**30),
    ("1.5G", int(1.5 * 2**30)),
])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(("rate", "bps"), [
    ("0", 0), ("100", 100 * 1024), ("500K", 500 * 1024), ("10M", 10 * 2**20),
    ("1.5m", int(1.5 * 2**20)),
])
def test_bwlimit_uses_rsync_units(rate, bps):
    assert parse_bwlimit(rate) == rate
    assert bwlimit_bytes_per_second(rate) == bps


def test_a_zero_bwlimit_however_written_is_unlimited():
    for rate in ("0K", "0.0", "00", "0m"):
        assert parse_bwlimit(rate) == "0"


@pytest.mark.parametrize("rate", ["fast", "-1", "10 M", "", "1X"])
def test_bad_bwlimit(rate):
    with pytest.raises(ValueError):
        parse_bwlimit(rate)


def test_format_bytes():
    assert format_bytes(0) == "0 B"
    assert format_bytes(21 * 2**20) == "21 MB"
    assert format_bytes(2.6 * 2**30) == "2.6 GB"


@pytest.mark.parametrize(("cron", "calendar"), [
    ("0 21 * * 5", "Fri *-*-* 21:00:00"),
    ("*/15 * * * *", "*-*-* *:00,15,30,45:00"),
    ("0 3 1 * *", "*-*-01 03:00:00"),
    ("30 2 * * 1-5", "Mon,Tue,Wed,Thu,Fri *-*-* 02:30:00"),
    ("0 0 * * 7", "Sun *-*-* 00:00:00"),
    ("0 0 * * sat,sun", "Sun,Sat *-*-* 00:00:00"),
    ("0 6 * jan *", "*-01-* 06:00:00"),
])
def test_cron_is_converted(cron, calendar):
    assert to_on_calendar(cron) == calendar


@pytest.mark.parametrize("text", ["daily", "Fri *-*-* 21:00:00", "Mon..Fri 06:00"])
def test_systemd_expressions_pass_through(text):
    assert to_on_calendar(text) == text


@pytest.mark.parametrize("text", ["", "0 21 * *", "60 * * * *", "0 0 1 * 1", "next friday!"])
def test_bad_schedules(text):
    with pytest.raises(ValueError):
        to_on_calendar(text)
