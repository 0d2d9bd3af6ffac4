"""Site reports: what a site says after each run, validated, stored and shown as the fleet view.

A site sends its report over its own restricted key (`server/dispatch.py` hands it here). The
server trusts the *key*, never the payload: the report is stored under the site name on the
authorized_keys line of the key that logged in, one file per site, overwritten by the next:

    <server.state_dir>/reports/<site>.json    {"format": 1, "site": …, "key": "SHA256:…",
                                               "received": …, "report": {…},
                                               "downstream": [{"path": […], "key": …, …}]}

A relay forwards the reports its own sites sent it (`downstream`, each with its path below the
relay). Only a key authorized as a relay's (`server authorize --relay`, `server relay SITE`:
`role=relay` on its authorized_keys line) may: the rows another key sends are dropped (its own
report is stored, the reply says so), so a leaf cannot add rows for other sites. They are
stored inside the relay's own file, so a relay speaks only for the subtree
below it: whatever names it forwards appear as `origin → relay → NAME`, never as a site of the
origin's own, and cannot overwrite another key's record.

Everything in a payload is data: checked against a closed list of keys, types, lengths and
character sets, never executed, never used as a path (the file name is the key's site name).

A site's identity in the fleet view is its key's fingerprint (`key`: what the receiving server
saw it log in with; a relay forwards it with each row), not the name each server gave it: a
leaf that reported to the origin directly while its relay was down, and through the relay
again later, is one site, shown once, by its newest report.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..base import fsutil
from ..base.config import ServerConfig
from ..base.revision import MAX_SERIAL

FORMAT = 1
REPORTS_DIR = "reports"
MAX_BYTES = 64 * 1024  # a report with its forwarded downstream reports, as sent
MAX_DOWNSTREAM = 100  # forwarded reports carried by one relay's report
MAX_DEPTH = 8  # sites on a forwarded report's path below the relay
MAX_TEXT = 200
SITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # as server/sshd.py
OUTCOME_RE = re.compile(r"[a-z_]{1,20}")
VERSION_RE = re.compile(r"[0-9A-Za-z.+~-]{1,40}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
KEY_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")  # an SSH key's fingerprint (ssh-keygen -l)
DEFAULT_INTERVAL = 7 * 86400.0  # a site that cannot say its schedule's period: weekly
FILE_MODE = 0o644  # not secret; a relay's sync reads them to forward them


class ReportRefused(ValueError):
    """The payload is not a report we store; the message is the one line the site sees."""


# --- validation -----------------------------------------------------------------------------


def _text(value: Any, key: str, pattern: re.Pattern[str] | None = None,
          limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ReportRefused(f"{key}: expected a string")
    if len(value) > limit:
        raise ReportRefused(f"{key}: longer than {limit} characters")
    if not value.isprintable():  # control, format (bidi) and separator characters
        raise ReportRefused(f"{key}: control or non-printable characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise ReportRefused(f"{key}: not in the expected form")
    return value


def _time(value: Any, key: str) -> str:
    text = _text(value, key, limit=40)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ReportRefused(f"{key}: expected an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise ReportRefused(f"{key}: expected a time with its UTC offset")
    try:  # year 1 with a positive offset is before datetime.min in UTC
        return parsed.astimezone(timezone.utc).isoformat(timespec="seconds")
    except OverflowError:
        raise ReportRefused(f"{key}: out of range") from None


def _int(value: Any, key: str, high: int = 2**63 - 1) -> int:
    if type(value) is not int or not 0 <= value <= high:
        raise ReportRefused(f"{key}: expected an integer 0-{high}")
    return value


def _number(value: Any, key: str, high: float = 10 * 365 * 86400.0) -> float:
    # The range first: a 400-digit integer compares, but cannot become a float.
    if type(value) not in (int, float) or not 0 <= value <= high or not math.isfinite(value):
        raise ReportRefused(f"{key}: expected a number 0-{high:.0f}")
    return float(value)


def _optional(check):
    def parse(value: Any, key: str) -> Any:
        return None if value is None else check(value, key)
    return parse


# key → (parser, required). The closed list: any other key refuses the report.
FIELDS: dict[str, tuple[Any, bool]] = {
    "outcome": (lambda v, k: _text(v, k, OUTCOME_RE), True),
    "exit_status": (lambda v, k: _int(v, k, 255), False),
    "finished": (_time, True),
    "last_success": (_optional(_time), False),
    "duration": (_number, False),
    "bytes_received": (_int, False),
    "library_version": (_optional(_int), False),
    "origin": (_optional(lambda v, k: _text(v, k, SITE_RE)), False),
    "serial": (_optional(lambda v, k: _int(v, k, MAX_SERIAL - 1)), False),
    "listing_digest": (_optional(lambda v, k: _text(v, k, DIGEST_RE)), False),
    "version": (lambda v, k: _text(v, k, VERSION_RE), False),
    "schedule": (_text, False),
    "interval": (_optional(lambda v, k: _number(v, k)), False),
    "random_delay": (_number, False),
    "via": (_text, False),
}


def _fields(data: Any, where: str, extra: frozenset[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ReportRefused(f"{where}: expected a JSON object")
    unknown = sorted(set(data) - set(FIELDS) - extra)
    if unknown:
        shown = _printable(unknown[0])
        raise ReportRefused(f"{where}: unknown key \"{shown}\"")
    report: dict[str, Any] = {}
    for key, (parse, required) in FIELDS.items():
        if key not in data or (data[key] is None and not required):
            if required:
                raise ReportRefused(f"{where}: {key} is missing")
            report[key] = None
            continue
        report[key] = parse(data[key], f"{where}.{key}" if where != "report" else key)
    return report


def _printable(text: str) -> str:
    """A payload's text as it may appear in the one line the site sees (no control bytes)."""
    return "".join(c if c.isprintable() and c not in '"\\' else "?" for c in text[:40])


def _downstream(rows: Any) -> list[dict[str, Any]]:
    if not isinstance(rows, list):
        raise ReportRefused("downstream: expected a list")
    if len(rows) > MAX_DOWNSTREAM:
        raise ReportRefused(f"downstream: more than {MAX_DOWNSTREAM} reports")
    entries = []
    for number, row in enumerate(rows, 1):
        where = f"downstream[{number}]"
        entry = _fields(row, where, frozenset({"path", "received", "key"}))
        path = row.get("path")
        if not isinstance(path, list) or not 1 <= len(path) <= MAX_DEPTH:
            raise ReportRefused(f"{where}.path: expected a list of 1-{MAX_DEPTH} site names")
        entry["path"] = [_text(name, f"{where}.path", SITE_RE) for name in path]
        entry["received"] = _time(row.get("received"), f"{where}.received")
        key = row.get("key")
        entry["key"] = None if key is None else _text(key, f"{where}.key", KEY_RE)
        entries.append(entry)
    return entries


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ReportRefused("a key appears twice")
    return dict(pairs)


def _refuse_constant(name: str) -> None:
    raise ReportRefused(f"{name} is not a number")


def parse(payload: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The validated report and its forwarded downstream reports; ReportRefused otherwise."""
    if len(payload) > MAX_BYTES:
        raise ReportRefused(f"larger than {MAX_BYTES} bytes")
    try:
        text = payload.decode("utf-8")
        data = json.loads(text, object_pairs_hook=_no_duplicates,
                          parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise ReportRefused("not UTF-8") from None
    except RecursionError:
        raise ReportRefused("nested too deeply") from None
    except ReportRefused:
        raise
    except ValueError as error:  # JSON syntax, or an integer too long to convert
        raise ReportRefused(f"not JSON ({str(error).split(':')[0]})") from None
    if not isinstance(data, dict):
        raise ReportRefused("expected a JSON object")
    if data.get("format") != FORMAT or type(data.get("format")) is not int:
        raise ReportRefused(f"expected format {FORMAT}")
    report = _fields(data, "report", frozenset({"format", "downstream"}))
    downstream = _downstream(data.get("downstream", []))
    return report, downstream


# --- storage --------------------------------------------------------------------------------


def reports_dir(state_dir: Path) -> Path:
    return Path(state_dir) / REPORTS_DIR


def _now_iso(now: float | None = None) -> str:
    moment = time.time() if now is None else now
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Stored:
    path: Path
    ignored: int  # downstream rows dropped: the key is not a relay's


def store(state_dir: Path, site: str, payload: bytes, now: float | None = None,
          key: str | None = None, relay: bool = False) -> Stored:
    """Validate `payload` and store it as `site`'s report (the name bound to the key, checked
    again here so nothing else can become a file name; `key`: that key's fingerprint, the
    site's identity across paths; `relay`: the key may forward downstream rows, else they are
    dropped and counted)."""
    if not SITE_RE.fullmatch(site):
        raise ReportRefused("this key has no valid site name")
    if key is not None and not KEY_RE.fullmatch(key):
        raise ReportRefused("this key has no valid fingerprint")
    report, downstream = parse(payload)
    ignored = 0 if relay else len(downstream)
    record = {"format": FORMAT, "site": site, "key": key, "received": _now_iso(now),
              "report": report, "downstream": downstream if relay else []}
    path = reports_dir(state_dir) / f"{site}.json"
    fsutil.atomic_write(path, json.dumps(record, separators=(",", ":")) + "\n", FILE_MODE)
    return Stored(path, ignored)


def forget(state_dir: Path, site: str) -> bool:
    """Remove a site's stored report (its key was revoked); True when there was one."""
    if not SITE_RE.fullmatch(site):
        return False
    try:
        (reports_dir(state_dir) / f"{site}.json").unlink()
    except FileNotFoundError:
        return False
    return True


def load(state_dir: Path) -> list[dict[str, Any]]:
    """Every stored record (site files only; one that no longer validates is skipped)."""
    folder = reports_dir(state_dir)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    records = []
    for name in names:
        site = name.removesuffix(".json")
        if not name.endswith(".json") or not SITE_RE.fullmatch(site):
            continue
        try:
            record = json.loads((folder / name).read_text(encoding="utf-8"))
            if record.get("site") != site or record.get("format") != FORMAT:
                continue
            report = _fields(record["report"], "report")
            downstream = _downstream(record.get("downstream", []))
            received = _time(record.get("received"), "received")
            key = record.get("key")
            key = None if key is None else _text(key, "key", KEY_RE)
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            continue
        records.append({"site": site, "key": key, "received": received, "report": report,
                        "downstream": downstream})
    return records


def forwardable(state_dir: Path) -> list[dict[str, Any]]:
    """What a relay forwards upstream: each stored report (path [site]) and what it forwarded
    (path [site, …]), as `downstream` rows, at most MAX_DOWNSTREAM, deepest paths dropped."""
    rows = []
    for record in load(state_dir):
        rows.append({"path": [record["site"]], "received": record["received"],
                     **_compact(record["report"]), **_key(record)})
        for entry in record["downstream"]:
            path = [record["site"], *entry["path"]]
            if len(path) <= MAX_DEPTH:
                rows.append({**_compact(entry), "path": path, "received": entry["received"],
                             **_key(entry)})
    rows.sort(key=lambda r: (len(r["path"]), r["path"]))
    return rows[:MAX_DOWNSTREAM]


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k in FIELDS and v is not None}


def _key(entry: dict[str, Any]) -> dict[str, str]:
    return {"key": entry["key"]} if entry.get("key") else {}


# --- the fleet view -------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteRow:
    path: tuple[str, ...]  # below the origin: (site,) or (relay, …, site)
    received: str
    report: dict[str, Any]
    lag: int | None  # serials behind the origin's current one (None: unknown)
    overdue: bool
    age: float  # seconds since received
    key: str | None = None  # the site key's fingerprint: its identity across paths

    @property
    def name(self) -> str:
        return self.path[-1]


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def allowed_silence(report: dict[str, Any], grace: float) -> float:
    """How long a site may stay silent: its schedule's period + its random delay + the grace."""
    interval = report.get("interval") or DEFAULT_INTERVAL
    return interval + (report.get("random_delay") or 0.0) + grace


def rows(state_dir: Path, current: tuple[str, int] | None, grace: float,
         now: float | None = None) -> list[SiteRow]:
    """One row per site of the tree, in path order. `current`: the origin's (name, serial)."""
    now = time.time() if now is None else now
    found = []
    for record in load(state_dir):
        found.append(((record["site"],), record["received"], record["report"], record["key"]))
        for entry in record["downstream"]:
            report = {k: entry.get(k) for k in FIELDS}
            found.append(((record["site"], *entry["path"]), entry["received"], report,
                          entry["key"]))
    result = []
    for path, received, report, key in sorted(_one_per_site(found), key=lambda f: f[0]):
        age = max(0.0, now - (_epoch(received) or now))
        lag = None
        if current is not None and report.get("origin") == current[0] and \
                report.get("serial") is not None:
            lag = max(0, current[1] - report["serial"])
        overdue = age > allowed_silence(report, grace)
        result.append(SiteRow(path, received, report, lag, overdue, age, key))
    return result


def _one_per_site(found: list[tuple]) -> list[tuple]:
    """One entry per site key (path, received, report, key): the newest report, by the site's
    own clock (`finished`, then when it was received), whichever path it took. A report
    without a key (from a server before keys were recorded) stands for its path alone."""
    def freshness(entry: tuple) -> tuple[float, float]:
        return (_epoch(entry[2].get("finished")) or 0.0, _epoch(entry[1]) or 0.0)

    newest: dict[tuple[str, Any], tuple] = {}
    for entry in found:
        path, key = entry[0], entry[3]
        identity = ("key", key) if key else ("path", path)
        if identity not in newest or freshness(entry) > freshness(newest[identity]):
            newest[identity] = entry
    return list(newest.values())


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def describe(row: SiteRow, origin: str) -> dict[str, Any]:
    """One row as plain data (`server sites --json`)."""
    report = row.report
    return {"path": [origin, *row.path], "site": row.name, "received": row.received,
            "age_seconds": round(row.age), "outcome": report.get("outcome"),
            "origin": report.get("origin"), "serial": report.get("serial"), "lag": row.lag,
            "listing_digest": report.get("listing_digest"),
            "library_version": report.get("library_version"),
            "bytes_received": report.get("bytes_received"), "duration": report.get("duration"),
            "finished": report.get("finished"), "last_success": report.get("last_success"),
            "version": report.get("version"), "schedule": report.get("schedule"),
            "via": report.get("via"), "key": row.key, "overdue": row.overdue}


def line(row: SiteRow, origin: str) -> str:
    """`hq → lyon → b12  2 h ago  ok  hq 41 (1 behind)  library 7  12.0 MB  OVERDUE`."""
    from ..base.units import format_bytes

    report = row.report
    if report.get("serial") is not None:
        held = f"{report.get('origin')} {report['serial']}"
        held += "" if row.lag is None else (" (current)" if row.lag == 0 else
                                            f" ({row.lag} behind)")
    elif report.get("listing_digest"):
        held = f"no trace, listing {report['listing_digest'][7:19]}"
    else:
        held = "nothing published"
    version = report.get("library_version")
    parts = [" → ".join((origin, *row.path)), _ago(row.age), report.get("outcome") or "?",
             held, f"library {version}" if version is not None else "library -",
             format_bytes(report.get("bytes_received") or 0)]
    if row.overdue:
        parts.append("OVERDUE")
    return "  ".join(parts)


# --- metrics --------------------------------------------------------------------------------


def render_metrics(site_rows: list[SiteRow], origin: str, current: tuple[str, int] | None,
                   now: float | None = None) -> str:
    """Per-site gauges for node_exporter's textfile collector."""
    now = time.time() if now is None else now
    lines: list[str] = []

    def family(name: str, help: str, samples: list[tuple[dict[str, str], float]]) -> None:
        metric = f"library_syncer_site_{name}"
        lines.extend([f"# HELP {metric} {help}", f"# TYPE {metric} gauge"])
        for labels, value in samples:
            text = ",".join(f'{k}="{label_value(v)}"' for k, v in labels.items())
            lines.append(f"{metric}{{{text}}} {value}")

    def labels(row: SiteRow, **more: str) -> dict[str, str]:
        return {"site": row.name, "path": "/".join((origin, *row.path)), **more}

    if current is not None:
        lines += ["# HELP library_syncer_origin_serial The revision the origin declares now.",
                  "# TYPE library_syncer_origin_serial gauge",
                  f'library_syncer_origin_serial{{origin="{label_value(current[0])}"}} '
                  f"{current[1]}"]
    family("serial_lag", "Revisions the site is behind the origin's current one.",
           [(labels(r), r.lag) for r in site_rows if r.lag is not None])
    family("last_report_timestamp_seconds", "When the site's last report was received.",
           [(labels(r), _epoch(r.received) or 0) for r in site_rows])
    successes = [(r, _epoch(r.report.get("last_success"))) for r in site_rows]
    family("last_success_timestamp_seconds", "When the site last published (its clock).",
           [(labels(r), t) for r, t in successes if t is not None])
    family("seconds_since_success", "Seconds from the site's last success to this file's "
           "writing (prefer time() - last_success_timestamp_seconds).",
           [(labels(r), round(max(0.0, now - t))) for r, t in successes if t is not None])
    family("last_outcome", "The outcome of the site's last run (1 on the outcome's series).",
           [(labels(r, outcome=r.report.get("outcome") or "unknown"), 1) for r in site_rows])
    family("last_run_ok", "1 when the site's last run succeeded.",
           [(labels(r), int(r.report.get("outcome") == "ok")) for r in site_rows])
    family("overdue", "1 when the site has not reported for longer than its schedule allows.",
           [(labels(r), int(r.overdue)) for r in site_rows])
    return "\n".join(lines) + "\n"


def label_value(text: str) -> str:
    """A label value as the exposition format quotes it: a name that came from elsewhere (an
    upstream's trace) cannot end the label or the line and forge another series."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_metrics(textfile: Path, text: str) -> None:
    fsutil.atomic_write(Path(textfile), text, 0o644)


# --- the server's view ----------------------------------------------------------------------


def current_revision(library: Path) -> tuple[str, int] | None:
    """The (origin, serial) the server exports now, from the trace in its library."""
    from . import trace

    found = trace.read(Path(library))
    return (found.origin, found.serial) if found else None


def root_name(server: ServerConfig, current: tuple[str, int] | None) -> str:
    """The first name of every path: the origin's (the trace's), else this server's."""
    if current is not None:
        return current[0]
    return server.name or socket.gethostname().split(".")[0] or "origin"


def fleet(server: ServerConfig, now: float | None = None
          ) -> tuple[str, tuple[str, int] | None, list[SiteRow]]:
    current = current_revision(server.library)
    return (root_name(server, current), current,
            rows(server.state_dir, current, server.report_grace, now))


def refresh_metrics(server: ServerConfig, now: float | None = None) -> bool:
    """Rewrite server.metrics_textfile (when set) from the stored reports."""
    if server.metrics_textfile is None:
        return False
    origin, current, site_rows = fleet(server, now)
    write_metrics(server.metrics_textfile, render_metrics(site_rows, origin, current, now))
    return True
