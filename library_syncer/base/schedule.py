"""The sync schedule: systemd calendar expressions, and the original's cron syntax converted.

`to_on_calendar("0 21 * * 5")` gives "Fri *-*-* 21:00:00". A systemd expression is passed through
(checked loosely here; `library-syncer apply` checks it for real with `systemd-analyze calendar`).
"""

from __future__ import annotations

import re

DEFAULT_SCHEDULE = "Fri *-*-* 21:00:00"
EXPECTED = (
    'a systemd calendar expression (e.g. "Fri *-*-* 21:00:00", "daily") '
    'or a 5-field cron line (e.g. "0 21 * * 5")'
)
_DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
_CRON_DAY_NAMES = {name.lower(): i for i, name in enumerate(_DAYS)}
_CRON_MONTH_NAMES = {
    name: i + 1
    for i, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_SYSTEMD_SHORTHANDS = {
    "minutely", "hourly", "daily", "monthly", "weekly", "yearly", "annually",
    "quarterly", "semiannually",
}
_WEEKDAYS = re.compile(r"^[A-Za-z]{3,9}((\.\.|,)[A-Za-z]{3,9})*$")
_DATE_OR_TIME = re.compile(r"^[0-9*,./:~\-+]+$")


def is_cron(expression: str) -> bool:
    fields = expression.split()
    return len(fields) == 5 and all(re.fullmatch(r"[\d*/,\-A-Za-z]+", f) for f in fields) and (
        not re.search(r"[:.]", expression)
    )


def to_on_calendar(expression: str) -> str:
    """Return the systemd OnCalendar= form of a cron line or calendar expression."""
    text = " ".join(expression.split())
    if not text:
        raise ValueError(EXPECTED)
    if is_cron(text):
        return _cron_to_calendar(text)
    if text.lower() in _SYSTEMD_SHORTHANDS or _looks_like_calendar(text):
        return text
    raise ValueError(EXPECTED)


def _looks_like_calendar(text: str) -> bool:
    """[weekdays] [date with '-'] [time with ':'] [time zone]: a loose shape check only."""
    tokens = text.split()
    if tokens and _WEEKDAYS.match(tokens[0]) and tokens[0].lower() not in ("utc",):
        tokens = tokens[1:]
    if tokens and re.fullmatch(r"[A-Za-z_]+(/[A-Za-z_+\-0-9]+)*", tokens[-1]):
        tokens = tokens[:-1]  # a time zone such as UTC or Europe/Paris
    if len(tokens) > 2:
        return False
    return all(_DATE_OR_TIME.match(t) and (":" in t or "-" in t) for t in tokens)


def _expand(field: str, low: int, high: int, names: dict[str, int]) -> list[int] | None:
    """Values of one cron field, or None for '*' (every value)."""
    if field == "*":
        return None
    values: set[int] = set()
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(EXPECTED)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = _value(a, names), _value(b, names)
        else:
            start = _value(base, names)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise ValueError(f"cron values between {low} and {high}")
        values.update(range(start, end + 1, step))
    return sorted(values)


def _value(text: str, names: dict[str, int]) -> int:
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        raise ValueError(EXPECTED)
    return int(text)


def _join(values: list[int] | None, width: int) -> str:
    if values is None:
        return "*"
    return ",".join(f"{v:0{width}d}" for v in values)


def _cron_to_calendar(text: str) -> str:
    minute, hour, dom, month, dow = text.split()
    minutes = _expand(minute, 0, 59, {})
    hours = _expand(hour, 0, 23, {})
    days = _expand(dom, 1, 31, {})
    months = _expand(month, 1, 12, _CRON_MONTH_NAMES)
    weekdays = _expand(dow, 0, 7, _CRON_DAY_NAMES)  # cron allows 7 for Sunday
    if weekdays is not None:
        weekdays = sorted({d % 7 for d in weekdays})
    if days is not None and weekdays is not None:
        # cron ORs day-of-month and day-of-week; systemd ANDs them. Refuse rather than guess.
        raise ValueError("a cron line restricting day-of-month or day-of-week, not both")
    prefix = ",".join(_DAYS[d] for d in weekdays) + " " if weekdays is not None else ""
    return f"{prefix}*-{_join(months, 2)}-{_join(days, 2)} {_join(hours, 2)}:{_join(minutes, 2)}:00"
