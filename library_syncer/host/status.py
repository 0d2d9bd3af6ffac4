"""`library-syncer status [--json]`: is this site healthy, at a glance. Needs no root.

Shows the last sync (from the sync's last-run record), the published library (its lib.json and
items.json), the snapshot being served, the next run as systemd sees it, and what vCenter needs
(the subscription URL and the TLS thumbprint). Anything it cannot see (no systemd, no permission,
nothing synced yet) is said as such instead of guessed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..base import config as config_module
from ..base import execute, systemd
from ..base.config import Config
from ..base.errors import ConfigError, SyncerError
from ..base.units import format_bytes, format_duration
from ..sync import timer
from ..web import caddy, certificate, published

TIMER_PROPERTIES = ("NextElapseUSecRealtime", "LastTriggerUSec", "RandomizedDelayUSec",
                    "FixedRandomDelay", "TimersCalendar", "ActiveState", "UnitFileState",
                    "LoadState")


def _cannot(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def _why(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return (f"permission denied reading {error.filename} (run as root or as a member of "
                "group library-syncer)")
    if isinstance(error, FileNotFoundError):
        return f"{error.filename} does not exist"
    return f"{error.filename}: {error.strerror}"


# --- the parts ----------------------------------------------------------------------------


def load_settings(file: Path | None) -> tuple[Config, str | None]:
    """The settings; when the file cannot be read (no root), the defaults and why."""
    try:
        return config_module.load(file), None
    except ConfigError as error:
        problem = error.problems[0]
        if len(error.problems) == 1 and problem.expected.startswith("permission denied"):
            defaults = config_module.defaults(Path(problem.file))
            return defaults, (f"cannot read {problem.file} (permission denied): showing "
                              "defaults; run as root for the real settings")
        raise


def last_sync(config: Config) -> dict[str, Any]:
    from ..sync import last_run

    try:
        record = last_run.read_json(config)
    except OSError as error:
        return _cannot(_why(error))
    except ValueError as error:
        return _cannot(f"the last-run record is unreadable: {error}")
    if record is None:
        return _cannot("no sync has run yet")
    return {"available": True, **record}


def published_library(config: Config) -> dict[str, Any]:
    link = config.published_dir
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return _cannot(f"nothing published yet ({link} does not exist)")
    except OSError as error:
        return _cannot(_why(error))
    snapshot = (link.parent / target).resolve()
    try:
        lib = published.read(link)
    except OSError as error:
        return {**_cannot(_why(error)), "snapshot": str(snapshot)}
    except published.Unreadable as error:
        return {**_cannot(f"lib.json/items.json unreadable: {error.detail}"),
                "snapshot": str(snapshot)}
    from ..sync import trace_check

    held = trace_check.read(link)
    return {"available": True, "name": lib.name, "version": lib.version,
            "content_version": lib.content_version, "items": len(lib.items),
            "snapshot": str(snapshot), "origin": held.origin if held else None,
            "serial": held.serial if held else None}


def schedule(config: Config) -> dict[str, Any]:
    configured = timer.schedule_of(config)
    base = {"on_calendar": configured.on_calendar, "random_delay": configured.random_delay}
    if not systemd.systemd_running():
        return {**base, **_cannot("systemd is not running here (PID 1 is not systemd)")}
    argv = [systemd.SYSTEMCTL, "show", timer.TIMER]
    for name in TIMER_PROPERTIES:
        argv += ["-p", name]
    try:
        result = execute.run(argv, capture=True, check=False, timeout=10)
    except SyncerError as error:
        return {**base, **_cannot(f"cannot ask systemd: {error}")}
    if result.returncode != 0:
        reason = result.tail[-1] if result.tail else f"exit status {result.returncode}"
        return {**base, **_cannot(f"systemctl show {timer.TIMER}: {reason}")}
    props = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    if props.get("LoadState") != "loaded":
        return {**base, **_cannot(f"{timer.TIMER} is not installed here")}
    return {**base, "available": True,
            "next": props.get("NextElapseUSecRealtime") or None,
            "last_trigger": props.get("LastTriggerUSec") or None,
            "systemd_random_delay": props.get("RandomizedDelayUSec") or None,
            "fixed_random_delay": props.get("FixedRandomDelay") == "yes",
            "active": props.get("ActiveState"), "enabled": props.get("UnitFileState")}


def last_check(config: Config) -> dict[str, Any]:
    """The last change check of `sync --if-changed` (sync/poll.py), when polling is on."""
    from ..sync import poll

    record = poll.read_record(config)
    if record is None:
        return _cannot(f"no check yet ({poll.state_path(config)})")
    return {"available": True, **record}


def _last_check_line(check: dict[str, Any]) -> str:
    if not check.get("available"):
        return f"unknown: {check['reason']}"
    return f"{check.get('checked')}, {'moved' if check.get('moved') else 'unchanged'} " \
           f"({check.get('seen')})"


def last_report(config: Config) -> dict[str, Any]:
    """What became of the last report to the upstream (sync/report.py)."""
    from ..sync import report

    record = report.last_report(config)
    if record is None:
        return _cannot("no report sent yet")
    return {"available": True, **record}


def _last_report_line(last: dict[str, Any]) -> str:
    if not last.get("available"):
        return f"unknown: {last['reason']}"
    from ..sync import report

    said = f" ({last['said']})" if last.get("said") else ""
    verb = {report.SENT: "sent to", report.REFUSED: "REFUSED by",
            report.FAILED: "could not be sent to"}.get(last.get("outcome", ""), "not taken by")
    return f"{last.get('at')}, {verb} {last.get('to')}{said}"


def vcenter(config: Config) -> dict[str, Any]:
    info: dict[str, Any] = {"url": caddy.subscription_url(config), "tls": config.web.tls}
    if config.web.tls == "off":
        info["thumbprint"] = None
        return info
    thumbprint = certificate.tls_thumbprint(config)
    info["thumbprint"] = thumbprint
    if thumbprint is None:
        info["thumbprint_reason"] = ("the web server does not answer and no certificate file "
                                     "is readable here")
    return info


def sync_request(config: Config) -> dict[str, Any]:
    """The last request to this site's vCenter to synchronise its subscribed library
    (sync/vcenter.py; no secret: the password file is not even opened)."""
    from ..sync import vcenter as vcenter_request

    vc = config.vcenter
    state = vcenter_request.read_state(config)
    target = {"address": vc.address, "library": vc.library or vc.library_id}
    if not state:
        return {**target, **_cannot("no request yet (one follows the next run that changes "
                                    "the library)")}
    shown = ("pending", "version", "since", "at", "outcome", "said", "attempts")
    return {**target, "available": True, **{k: state.get(k) for k in shown}}


def _sync_request_line(request: dict[str, Any]) -> str:
    if not request.get("available"):
        return f"{request['address']}: {request['reason']}"
    version = f"library version {request.get('version')}"
    if request.get("pending"):
        tried = f"; last try {request.get('at')} failed: {request.get('said')}" \
            if request.get("outcome") == "failed" else ""
        return f"PENDING since {request.get('since')} ({version}){tried}"
    return f"requested {request.get('at')} from {request['address']} ({version})"


def gather(file: Path | None) -> dict[str, Any]:
    config, note = load_settings(file)
    config = config_module.env_override_state(config)
    report: dict[str, Any] = {"settings": {"file": str(config.file)}}
    if note:
        report["settings"]["note"] = note
    report["last_sync"] = last_sync(config)
    if config.sync.poll_interval:
        report["last_check"] = last_check(config)
    if config.sync.report and config.sync.upstream_list():
        report["last_report"] = last_report(config)
    report["library"] = published_library(config)
    report["schedule"] = schedule(config)
    report["vcenter"] = vcenter(config)
    if config.vcenter.enabled:
        report["vcenter"]["sync_request"] = sync_request(config)
    return report


# --- text output --------------------------------------------------------------------------


def _last_sync_line(last: dict[str, Any]) -> str:
    if not last.get("available"):
        return f"unknown: {last['reason']}"
    parts = [str(last.get("finished") or last.get("started") or "?"), str(last.get("outcome"))]
    if last.get("duration") is not None:
        seconds = float(last["duration"])
        parts.append("took less than 1 s" if seconds < 0.5 else
                     f"took {seconds:.0f} s" if seconds < 100 else
                     f"took {format_duration(seconds)}")
    if last.get("bytes_received") is not None:
        parts.append(f"{format_bytes(int(last['bytes_received']))} received")
    if last.get("speedup"):  # none for an empty library (0.0: nothing to compare)
        parts.append(f"speedup {float(last['speedup']):.1f}x")
    if last.get("items_changed") is not None:
        changed = last["items_changed"]
        count = len(changed) if isinstance(changed, list) else int(changed)
        parts.append(f"{count} item{'' if count == 1 else 's'} changed")
    if last.get("upstream"):
        revision = (f", revision {last['serial']} of {last.get('origin')}"
                    if last.get("serial") is not None else "")
        parts.append(("from " if last.get("snapshot") else "last tried ")
                     + f"{last['upstream']}{revision}")
    if last.get("skipped"):
        parts.append(f"{len(last['skipped'])} upstream(s) skipped")
    line = ", ".join(parts)
    if last.get("message") and last.get("outcome") != "ok":
        line += f": {last['message']}"
    return line


def _schedule_line(sched: dict[str, Any]) -> str:
    delay = sched["random_delay"]
    configured = f"settings: {sched['on_calendar']}, " + (
        f"random delay up to {delay}" if delay != "0" else "no random delay")
    if not sched.get("available"):
        return f"unknown: {sched['reason']} ({configured})"
    if not sched.get("next"):
        return (f"none: {timer.TIMER} is {sched.get('active')}/{sched.get('enabled')}; "
                f"start it: systemctl enable --now {timer.TIMER} ({configured})")
    # systemd's next elapse already includes this run's share of the random delay.
    delay = sched.get("systemd_random_delay") or "0"
    window = f"{sched['on_calendar']} + random delay up to {delay}" if delay not in ("0", "0s") \
        else sched["on_calendar"]
    return f"{sched['next']} ({window}; {timer.TIMER} {sched.get('enabled')})"


def to_text(report: dict[str, Any]) -> str:
    lib, vc = report["library"], report["vcenter"]
    lines = [("settings", report["settings"]["file"])]
    if report["settings"].get("note"):
        lines.append(("note", report["settings"]["note"]))
    lines.append(("last sync", _last_sync_line(report["last_sync"])))
    if "last_check" in report:
        lines.append(("last checked", _last_check_line(report["last_check"])))
    if "last_report" in report:
        lines.append(("last report", _last_report_line(report["last_report"])))
    if lib.get("available"):
        revision = f", revision {lib['serial']} of {lib['origin']}" \
            if lib.get("serial") is not None else ""
        lines.append(("library", f"\"{lib['name']}\" version {lib['version']}, "
                                 f"{lib['items']} item{'' if lib['items'] == 1 else 's'}"
                                 f"{revision}"))
    else:
        lines.append(("library", f"unknown: {lib['reason']}"))
    if lib.get("snapshot"):
        lines.append(("snapshot", lib["snapshot"]))
    lines.append(("next run", _schedule_line(report["schedule"])))
    lines.append(("vCenter URL", vc["url"]))
    if vc["tls"] != "off":
        lines.append(("thumbprint", vc["thumbprint"] or f"unknown: {vc['thumbprint_reason']}"))
    if "sync_request" in vc:
        lines.append(("vCenter sync", _sync_request_line(vc["sync_request"])))
    width = max(len(label) for label, _ in lines) + 1
    return "".join(f"{label + ':':<{width}} {value}\n" for label, value in lines)
