"""`library-syncer server render|authorize|revoke|keys|sites|trace`: the server role's commands.

(`server dispatch`, the forced command sshd runs, is server/dispatch.py itself: it must start
fast and import nothing it does not need before it execs rrsync.)"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ..base import config as config_module
from ..base.errors import SyncerError
from ..base.sshkeys import KeyRefused
from ..base.text import printable
from ..server import fleet_page, listener, reports, sshd, trace

log = logging.getLogger(__name__)


def render(args: argparse.Namespace) -> int:
    """`server render`: print the sshd_config, or write it (checked with `sshd -t` on request)."""
    cfg = config_module.load(args.config)
    sshd.check_account(cfg)
    if args.output is None:
        if args.host_keys:
            sshd.ensure_host_keys(cfg)
        sys.stdout.write(sshd.render_sshd_config(cfg))
        return 0
    sshd.write_config(cfg, args.output, host_keys=args.host_keys, check=args.check)
    log.info("wrote %s (port %d, library %s)", args.output, cfg.server.port, cfg.server.library)
    if args.restart or args.refresh_socket:
        queued = listener.queue_restart(cfg, only_if_outdated=not args.restart)
        if queued:
            log.info("%s", queued)
    return 0


def restart(args: argparse.Namespace) -> int:
    """`server restart`: restart the dedicated sshd (and its socket, when its settings changed)."""
    log.info("%s", listener.restart(args.config))
    return 0


def authorize(args: argparse.Namespace) -> int:
    """`server authorize KEY.pub --site NAME [--from CIDR,…]` ('-': the key from stdin)."""
    cfg = config_module.load(args.config)
    sources = sshd.parse_sources(args.sources) if args.sources else ()
    source = "stdin" if str(args.key) == "-" else str(args.key)
    try:
        text = sys.stdin.read() if source == "stdin" else args.key.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise KeyRefused(f"{source}: cannot read: {getattr(error, 'strerror', None) or error}",
                         hint="give the site's .pub file") from None
    entry = sshd.authorize(cfg, text, args.site, source, sources, relay=args.relay)
    limit = f" from {','.join(entry.sources)}" if entry.sources else ""
    role = " (a relay)" if entry.relay else ""
    print(f"authorized site {entry.site}{role}: {entry.key_type} {entry.fingerprint}{limit}")
    return 0


def relay(args: argparse.Namespace) -> int:
    """`server relay SITE [--off]`: may the site's key forward its sites' reports."""
    cfg = config_module.load(args.config)
    entry = sshd.mark_relay(cfg, args.site, not args.off)
    state = "a relay: its reports may carry its sites'" if entry.relay else \
        "not a relay: downstream reports from its key are ignored"
    print(f"site {entry.site} ({entry.fingerprint}) is {state}")
    return 0


KEYGEN_NAME = "revision_signing_key"


def keygen(args: argparse.Namespace) -> int:
    """`server keygen [--output PATH]`: the origin's signing key, and what sites pin."""
    import time

    from ..server import signing

    cfg = config_module.load(args.config)
    path = args.output or cfg.server.signing_key or cfg.server.config_dir / KEYGEN_NAME
    key = signing.keygen(path, trace.origin_name(cfg))
    print(f"created {path} ({key.type} {key.fingerprint})")
    if cfg.server.signing_key != path:
        print(f"sign with it: in {cfg.file}, [server] signing_key = \"{path}\"")
    print("every site pins this line in its sync.origin_keys file (docs/trust.md):")
    print(signing.allowed_signers_line(trace.origin_name(cfg), key, valid_after=time.time()))
    return 0


def revoke(args: argparse.Namespace) -> int:
    """`server revoke SITE`."""
    cfg = config_module.load(args.config)
    entry = sshd.revoke(cfg, args.site)
    print(f"revoked site {entry.site}: {entry.key_type} {entry.fingerprint}")
    try:
        if reports.forget(cfg.server.state_dir, entry.site):
            _refresh_views(cfg)
    except OSError as error:
        log.warning("its last report stays: %s", error)
    return 0


def _refresh_views(cfg: config_module.Config) -> None:
    """Rewrite what is written from the stored reports (server.metrics_textfile, .fleet_page);
    a failure is a warning naming the file, never the command's failure."""
    for setting, refresh in (("metrics_textfile", reports.refresh_metrics),
                             ("fleet_page", fleet_page.refresh)):
        try:
            refresh(cfg.server)
        except OSError as error:
            log.warning("%s: not written: %s (server.%s)", getattr(cfg.server, setting),
                        error.strerror or error, setting)


def sites(args: argparse.Namespace) -> int:
    """`server sites [--json]`: one line per site of the tree, from the stored reports."""
    cfg = config_module.load(args.config)
    folder = reports.reports_dir(cfg.server.state_dir)
    if not folder.is_dir():
        print(f"no report received yet ({folder} does not exist)")
        return 0
    if not os.access(folder, os.R_OK | os.X_OK):
        raise SyncerError(f"{folder}: cannot read the reports", hint="run as root")
    origin, current, rows = reports.fleet(cfg.server)
    origin = printable(origin)  # the trace's; base/revision.py validates it, this is belt
    _refresh_views(cfg)
    if args.json:
        print(json.dumps({"origin": origin, "serial": current[1] if current else None,
                          "sites": [reports.describe(r, origin) for r in rows]}, indent=2))
        return 0
    sites = f"{len(rows)} site{'' if len(rows) == 1 else 's'} reported"
    if current is not None:
        print(f"origin {origin}, revision {current[1]}; {sites}")
    else:
        print(f"{origin}: no trace in {cfg.server.library}; {sites}")
    for row in rows:
        print(reports.line(row, origin))
    return 0


def keys(args: argparse.Namespace) -> int:
    """`server keys`: the authorized sites and their fingerprints."""
    cfg = config_module.load(args.config)
    entries = sshd.list_keys(cfg)
    if not entries:
        print(f"no site is authorized ({sshd.authorized_keys_path(cfg)})")
        return 0
    width = max(len(e.site) for e in entries)
    for entry in entries:
        limit = f"  from {','.join(entry.sources)}" if entry.sources else ""
        role = "  relay" if entry.relay else ""
        print(f"{entry.site:<{width}}  {entry.fingerprint}  {entry.key_type}{limit}{role}")
    return 0


def trace_command(args: argparse.Namespace) -> int:
    """`server trace`: scan the library; declare a revision once it has settled."""
    cfg = config_module.load(args.config)
    outcome = trace.tick(cfg)
    log.info("%s", outcome.line())
    if sys.stdout.isatty() or args.verbose_trace:
        log.info("%s", trace_explained(outcome.state, cfg.server.settle))
    # A site's deadline passes without a report arriving, and a new revision puts sites behind:
    # the views written from the reports follow at each tick, not only at the next report.
    if reports.reports_dir(cfg.server.state_dir).is_dir():
        _refresh_views(cfg)
    return 0


def trace_explained(state: str, settle: float) -> str:
    """What an operator at a terminal wants to know next (the timer's journal has the first
    line only): sites hold and verify against declared revisions, so a new template reaches
    them only once the library has been quiet for server.settle and a revision is declared."""
    from ..base.units import format_duration

    quiet = (f"server.settle = {format_duration(settle)}: no file may change for that long, "
             "so no site ever gets a half-copied template")
    if state == "settling":
        return (f"sites keep the previous revision until then ({quiet}); "
                "library-syncer-trace.timer declares it within a minute of settling")
    if state == "declared":
        return ("sites pick it up at their next run, or within sync.poll_interval where they "
                "poll")
    if state == "relay":
        return "the origin's trace.timer declares revisions; a relay passes them on"
    return f"a change in the library is declared as the next revision once settled ({quiet})"
