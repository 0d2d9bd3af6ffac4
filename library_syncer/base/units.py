"""Parsing of human-friendly durations, sizes and rates (pure functions).

Each parser raises ValueError with the phrase that completes "expected ..." in an error line.
"""

from __future__ import annotations

import re

_DURATION_UNITS = {
    "us": 1e-6, "ms": 1e-3,
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*")
DURATION_EXPECTED = 'a duration such as 90, "30s", "5min", "6h" or "1h 30min"'


def parse_duration(value: object) -> float:
    """Seconds from an int/float (seconds) or a systemd-style span ("1h 30min")."""
    if isinstance(value, bool):
        raise ValueError(DURATION_EXPECTED)
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(DURATION_EXPECTED)
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(DURATION_EXPECTED)
    total, pos, text = 0.0, 0, value.strip().lower()
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(DURATION_EXPECTED)
        number, unit = match.groups()
        if unit not in _DURATION_UNITS and unit != "":
            raise ValueError(DURATION_EXPECTED)
        total += float(number) * _DURATION_UNITS.get(unit, 1)
        pos = match.end()
    return total


def format_duration(seconds: float) -> str:
    """A systemd time span ("6h", "90s", "1h 30min") for unit files and messages."""
    seconds = round(seconds)
    if seconds == 0:
        return "0"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
SIZE_EXPECTED = 'a size such as 1048576, "500M" or "10G" (binary units)'


def parse_size(value: object) -> int:
    """Bytes from an int or "10G"/"500MiB" (always 1024-based: disks are sized that way)."""
    if isinstance(value, bool):
        raise ValueError(SIZE_EXPECTED)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(SIZE_EXPECTED)
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(SIZE_EXPECTED)
    number, prefix, _ = match.groups()
    return int(float(number) * 1024 ** _POWERS[prefix.lower()])


_BWLIMIT = re.compile(r"^(\d+(?:\.\d+)?)([kmgtp](i?b)?)?$", re.IGNORECASE)
BWLIMIT_EXPECTED = (
    'an rsync --bwlimit rate: 0 (unlimited), KiB/s as a number, or "500K", "10M", "1G"'
)


def parse_bwlimit(value: object) -> str:
    """Validate rsync's --bwlimit syntax; return it normalised as a string ("0" = unlimited)."""
    if isinstance(value, bool):
        raise ValueError(BWLIMIT_EXPECTED)
    text = str(value).strip() if isinstance(value, (int, float, str)) else ""
    if not _BWLIMIT.match(text) or (isinstance(value, (int, float)) and value < 0):
        raise ValueError(BWLIMIT_EXPECTED)
    # "0K", "0.0": unlimited to rsync as "0" is; said as "0", so that a share of it (the streams')
    # stays unlimited and never becomes 1 KiB/s
    return "0" if bwlimit_bytes_per_second(text) == 0 else text


def bwlimit_bytes_per_second(rate: str) -> int:
    """rsync semantics: a bare number is KiB/s; suffixes are 1024-based (also "KB")."""
    match = _BWLIMIT.match(rate)
    if not match:
        raise ValueError(BWLIMIT_EXPECTED)
    number, suffix, _ = match.groups()
    power = _POWERS[suffix[0].lower()] if suffix else 1
    return int(float(number) * 1024**power)


def format_bytes(count: float) -> str:
    """Human-readable binary size: 0 B, 21 MB, 2.6 GB (one decimal below 10)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
