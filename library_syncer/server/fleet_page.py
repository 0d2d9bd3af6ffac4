"""The fleet page: `server sites` as one static HTML file, for people who watch many sites.

With `server.fleet_page` set, the origin (or a relay, for the tree below it) rewrites the page
after each stored report (server/dispatch.py, as the `syncer` account) and at each trace tick
(`library-syncer server trace`, root), atomically: a web server reading it meanwhile serves
the old page or the new one. Sites are grouped by their upstream (the path above them), groups
with an overdue site first, and in each group overdue sites first, then the most behind. No
JavaScript, no external asset: any web server can serve the file as it is.

Everything shown comes from the stored reports (server/reports.py, its public fleet view):
site names an operator chose, revisions an upstream declared. The template escapes all of it
(jinja2 autoescape, .html.j2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..base import fsutil, render
from ..base.config import ServerConfig
from ..base.units import format_bytes
from . import reports

TEMPLATE = "fleet.html.j2"
FILE_MODE = 0o644  # a web server under another account reads it


@dataclass(frozen=True)
class PageRow:
    name: str
    path: str  # "hq → lyon → b12"
    held: str  # "hq 41", or what the site holds without a trace
    lag: str  # "current", "2 behind", "" (unknown)
    behind: bool
    received: str  # ISO, UTC
    ago: str
    outcome: str
    library: str
    received_bytes: str
    overdue: bool


@dataclass(frozen=True)
class Group:
    upstream: str  # "hq" or "hq → lyon"
    rows: list[PageRow]

    @property
    def overdue(self) -> int:
        return sum(r.overdue for r in self.rows)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _row(row: reports.SiteRow, origin: str) -> PageRow:
    report = row.report
    if report.get("serial") is not None:
        held = f"{report.get('origin')} {report['serial']}"
    elif report.get("listing_digest"):
        held = f"no trace (listing {report['listing_digest'][7:19]})"
    else:
        held = "nothing published"
    lag = "" if row.lag is None else ("current" if row.lag == 0 else f"{row.lag} behind")
    version = report.get("library_version")
    return PageRow(name=row.name, path=" → ".join((origin, *row.path)), held=held, lag=lag,
                   behind=bool(row.lag), received=row.received, ago=_ago(row.age),
                   outcome=report.get("outcome") or "?",
                   library="-" if version is None else str(version),
                   received_bytes=format_bytes(report.get("bytes_received") or 0),
                   overdue=row.overdue)


def groups(origin: str, site_rows: list[reports.SiteRow]) -> list[Group]:
    """Sites by upstream; overdue first (groups and rows), then the most behind, then by name."""
    found: dict[tuple[str, ...], list[reports.SiteRow]] = {}
    for row in site_rows:
        found.setdefault(row.path[:-1], []).append(row)
    result = []
    for above, members in found.items():
        members.sort(key=lambda r: (not r.overdue, -(r.lag or 0), r.name))
        result.append(Group(" → ".join((origin, *above)), [_row(r, origin) for r in members]))
    result.sort(key=lambda g: (g.overdue == 0, g.upstream.count("→"), g.upstream))
    return result


def render_page(origin: str, current: tuple[str, int] | None,
                site_rows: list[reports.SiteRow], now: float | None = None) -> str:
    now = time.time() if now is None else now
    found = groups(origin, site_rows)
    return render.render(
        TEMPLATE, origin=origin,
        current=f"{current[0]} {current[1]}" if current is not None else None,
        groups=found, sites=len(site_rows), overdue=sum(g.overdue for g in found),
        behind=sum(bool(r.lag) for r in site_rows),
        written=datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))


def refresh(server: ServerConfig, now: float | None = None) -> bool:
    """Rewrite server.fleet_page (when set) from the stored reports; OSError when it cannot."""
    if server.fleet_page is None:
        return False
    origin, current, site_rows = reports.fleet(server, now)
    fsutil.atomic_write(Path(server.fleet_page),
                        render_page(origin, current, site_rows, now), FILE_MODE)
    return True
