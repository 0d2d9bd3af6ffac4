"""Command line: argparse only. One `_add_<verb>_parser()` per subcommand; no logic here.

Each subcommand names its handler as "module:function"; the module is imported only when that
command runs, so `--help` stays fast and a broken optional piece cannot break the others.
Handlers take the parsed arguments and return an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import traceback
from pathlib import Path

from .. import __version__
from ..base import log, paths
from ..base.errors import ExitStatus, SyncerError

PROG = "library-syncer"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _sub(subparsers, name: str, handler: str, help: str, example: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=help, formatter_class=_Formatter,
                                   epilog=f"example:\n  {example}")
    parser.set_defaults(handler=handler)
    return parser


def _group(subparsers, name: str, help: str, example: str):
    """A command made of verbs (`manifest build`, `server keys`): returns its verb subparsers."""
    parser = subparsers.add_parser(name, help=help, formatter_class=_Formatter,
                                   epilog=f"example:\n  {example}")
    return parser.add_subparsers(dest="verb", required=True, metavar="VERB")


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help="settings file (default: /etc/library-syncer/library-syncer.toml)")


def _add_manifest_parser(subparsers) -> None:
    verbs = _group(subparsers, "manifest", "build the VCSP manifests of a library folder",
                   f"{PROG} manifest build /srv/library")
    build = _sub(verbs, "build", "library_syncer.cli.manifest:build",
                 "write lib.json, items.json and every item.json for a library folder",
                 f"{PROG} manifest build /srv/library --name 'Site templates'")
    build.add_argument("path", type=Path, help="the library folder (one sub-folder per item)")
    build.add_argument("--name", help="library name (default: the folder's name)")
    build.add_argument("--state", type=Path, metavar="DIR",
                       help="where to keep the hash cache (default: PATH/.library-syncer)")
    build.add_argument("--no-certs", action="store_true", help="leave signed OVFs' .cert files out")
    build.add_argument("--workers", type=int, default=0, help="hashing threads (0 = one per CPU)")


def _add_sync_parser(subparsers) -> None:
    parser = _sub(subparsers, "sync", "library_syncer.cli.sync:sync",
                  "pull the library from the server, rebuild manifests, publish a new snapshot",
                  f"{PROG} sync --config /etc/library-syncer/library-syncer.toml")
    _add_config_option(parser)
    parser.add_argument("--no-retry", action="store_true", help="fail on the first network error")
    parser.add_argument("--skip-unconfigured", action="store_true",
                        help="succeed without doing anything while sync.peer is not set "
                             "(what the timer's runs use)")
    parser.add_argument("--allow-empty", action="store_true",
                        help="publish even if the server's library is now empty")
    parser.add_argument("--allow-untraced", action="store_true",
                        help="follow an upstream that declares no revision although this site "
                             "publishes one (the origin moved back to a server without traces)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--if-changed", action="store_true",
                      help="first check whether the origin moved (one SSH session reading its "
                           "serial); sync only if it did (what library-syncer-poll.timer runs)")
    mode.add_argument("--scrub", action="store_true",
                      help="read every published file and compare it with its expected SHA-256; "
                           "sync to pull what rotted again (what library-syncer-scrub.timer "
                           "runs). Exit status 14: rot found and repaired, 15: not repaired")


def _add_trust_host_parser(subparsers) -> None:
    parser = _sub(subparsers, "trust-host", "library_syncer.cli.sync:trust_host",
                  "show the server's SSH host key fingerprint and record it in known_hosts",
                  f"{PROG} trust-host --fingerprint SHA256:abc…")
    _add_config_option(parser)
    parser.add_argument("--fingerprint", metavar="SHA256:…",
                        help="accept the key only if it has this fingerprint (no prompt)")
    parser.add_argument("--yes", action="store_true",
                        help="accept the key shown without asking (first contact on a trusted LAN)")
    parser.add_argument("--peer", metavar="HOST",
                        help="the upstream whose key to record (one of sync.upstreams; needed "
                             "when several are listed)")
    parser.add_argument("--port", type=int, metavar="N",
                        help="its SSH port (default: the port listed for it, else sync.port)")


def _add_server_parser(subparsers) -> None:
    verbs = _group(subparsers, "server", "manage the read-only rsync endpoint (server role)",
                   f"{PROG} server keys")
    render = _sub(verbs, "render", "library_syncer.cli.server:render",
                  "render the dedicated sshd_config (and create host keys if missing)",
                  f"{PROG} server render --output /run/library-syncer/sshd_config")
    _add_config_option(render)
    render.add_argument("--output", type=Path, help="write here instead of printing")
    render.add_argument("--host-keys", action="store_true",
                        help="generate the instance's host keys when missing")
    render.add_argument("--check", action="store_true",
                        help="with --output: replace the file only if `sshd -t` accepts it")
    render.add_argument("--restart", action="store_true",
                        help="with --output: then queue library-syncer-sshd-apply.service, "
                        "which restarts the daemon to apply it (what `systemctl reload "
                        "library-syncer-sshd` runs)")
    render.add_argument("--refresh-socket", action="store_true",
                        help="with --output: queue it only when [server] listen, port or "
                        "congestion_control changed since systemd read them (the unit's start)")
    restart = _sub(verbs, "restart", "library_syncer.cli.server:restart",
                   "restart the dedicated sshd (with its socket when [server] listen, port or "
                   "congestion_control changed); `systemctl reload library-syncer-sshd` checks "
                   "the config first, then runs this", f"{PROG} server restart")
    _add_config_option(restart)
    authorize = _sub(verbs, "authorize", "library_syncer.cli.server:authorize",
                     "allow a site's public key to pull the library (read-only)",
                     f"{PROG} server authorize /tmp/id_syncer.pub --site paris")
    _add_config_option(authorize)
    authorize.add_argument("key", type=Path, help="the site's public key file ('-' for stdin)")
    authorize.add_argument("--site", required=True, help="a short name for the site")
    authorize.add_argument("--from", dest="sources", metavar="CIDR[,CIDR]",
                           help="accept the key only from these addresses or networks "
                           "(sshd's from=), e.g. 192.0.2.0/24")
    authorize.add_argument("--relay", action="store_true",
                           help="the site is a relay: its reports may carry its own sites'")
    relay = _sub(verbs, "relay", "library_syncer.cli.server:relay",
                 "let an authorized site's key forward its own sites' reports (a relay)",
                 f"{PROG} server relay lyon")
    _add_config_option(relay)
    relay.add_argument("site", help="the site name given to authorize")
    relay.add_argument("--off", action="store_true", help="no longer a relay")
    keygen = _sub(verbs, "keygen", "library_syncer.cli.server:keygen",
                  "create the origin's revision-signing key (server.signing_key) and print "
                  "the line every site pins", f"{PROG} server keygen")
    _add_config_option(keygen)
    keygen.add_argument("--output", type=Path,
                        help="the new key's file (default: server.signing_key, else "
                             "revision_signing_key in server.config_dir)")
    revoke = _sub(verbs, "revoke", "library_syncer.cli.server:revoke",
                  "remove a site's key", f"{PROG} server revoke paris")
    _add_config_option(revoke)
    revoke.add_argument("site", help="the site name given to authorize")
    keys = _sub(verbs, "keys", "library_syncer.cli.server:keys",
                "list authorized sites with their key fingerprints", f"{PROG} server keys")
    _add_config_option(keys)
    sites = _sub(verbs, "sites", "library_syncer.cli.server:sites",
                 "the fleet at a glance: every site's last report, revision held and lag",
                 f"{PROG} server sites --json")
    _add_config_option(sites)
    sites.add_argument("--json", action="store_true", help="machine-readable output")
    dispatch = _sub(verbs, "dispatch", "library_syncer.server.dispatch:command",
                    "the forced command of every site key (sshd runs it; not for operators): "
                    "a pull goes to rrsync -ro, a report is stored for the key's site",
                    f"{PROG} server dispatch --rrsync /usr/bin/rrsync --library /srv/lib/ "
                    "--state-dir /var/lib/library-syncer-server --keys /etc/…/authorized_keys")
    dispatch.add_argument("--rrsync", required=True, help="the rrsync script")
    dispatch.add_argument("--library", required=True, help="the exported library folder")
    dispatch.add_argument("--state-dir", required=True, type=Path, help="server.state_dir")
    dispatch.add_argument("--keys", required=True, type=Path, help="the authorized_keys file")
    dispatch.add_argument("--grace", type=float, default=6 * 3600.0, help="server.report_grace")
    dispatch.add_argument("--metrics-textfile", type=Path, help="server.metrics_textfile")
    dispatch.add_argument("--fleet-page", type=Path, help="server.fleet_page")
    trace = _sub(verbs, "trace", "library_syncer.cli.server:trace_command",
                 "declare a library revision once it has settled (nothing changed for "
                 "server.settle); sites take only declared revisions, so a new template "
                 "reaches them after the settle time (library-syncer-trace.timer runs this "
                 "every minute)",
                 f"{PROG} server trace")
    trace.add_argument("--explain", dest="verbose_trace", action="store_true",
                       help="add a line on what the outcome means for the sites (the default "
                            "at a terminal)")
    _add_config_option(trace)


def _add_web_parser(subparsers) -> None:
    verbs = _group(subparsers, "web", "publish the library over HTTP(S) with Caddy",
                   f"{PROG} web render --validate")
    render = _sub(verbs, "render", "library_syncer.cli.web:render",
                  "print (or write) the Caddyfile for the current settings",
                  f"{PROG} web render --output /run/library-syncer/Caddyfile --validate")
    _add_config_option(render)
    render.add_argument("--output", type=Path, help="write here instead of printing")
    render.add_argument("--validate", action="store_true", help="also run `caddy validate`")


def _add_status_parser(subparsers) -> None:
    parser = _sub(subparsers, "status", "library_syncer.cli.host:status",
                  "show the last sync, the published library, the schedule and the vCenter URL",
                  f"{PROG} status --json")
    _add_config_option(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _add_check_parser(subparsers) -> None:
    parser = _sub(subparsers, "check", "library_syncer.cli.host:check",
                  "check settings, keys, the server, the web config, disk space and the timer",
                  f"{PROG} check")
    _add_config_option(parser)


def _add_apply_parser(subparsers) -> None:
    parser = _sub(subparsers, "apply", "library_syncer.cli.sync:apply",
                  "apply the schedule and poll interval from the settings file to the timers",
                  f"{PROG} apply")
    _add_config_option(parser)
    parser.add_argument("--dropin-dir", type=Path, default=Path("/etc/systemd/system"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--no-reload", action="store_true",
                        help="write the timer drop-in but do not run systemctl daemon-reload")


def _add_config_parser(subparsers) -> None:
    verbs = _group(subparsers, "config", "validate, show, generate or import settings",
                   f"{PROG} config validate")
    validate = _sub(verbs, "validate", "library_syncer.cli.config:validate",
                    "check the settings file and report every problem",
                    f"{PROG} config validate -c /etc/library-syncer/library-syncer.toml")
    _add_config_option(validate)
    show = _sub(verbs, "show", "library_syncer.cli.config:show",
                "print the effective settings (defaults filled in) as TOML", f"{PROG} config show")
    _add_config_option(show)
    generate = _sub(verbs, "generate", "library_syncer.cli.config:generate",
                    "print the settings file the package installs (--all: every setting)",
                    f"{PROG} config generate --all | less")
    generate.add_argument("--all", action="store_true",
                          help="every setting with its default, what it expects and the Docker "
                               "variable it replaces: the reference the package installs as "
                               f"{paths.REFERENCE_SETTINGS_FILE}")
    import_env = _sub(verbs, "import-env", "library_syncer.cli.config:import_env",
                      "convert the Docker version's settings (compose file or .env) to TOML",
                      f"{PROG} config import-env docker-compose.yaml > library-syncer.toml")
    import_env.add_argument("files", nargs="+", type=Path,
                            help="docker-compose.yaml or .env files (client and/or server)")


def _add_demo_parser(subparsers) -> None:
    parser = _sub(subparsers, "demo", "library_syncer.cli.host:demo",
                  "run server, sync and web server on loopback over an example library",
                  f"{PROG} demo --once")
    parser.add_argument("--once", action="store_true", help="walk the library once, then stop")
    parser.add_argument("--workdir", type=Path, help="keep the demo's files here")


PARSERS = [
    _add_sync_parser, _add_trust_host_parser, _add_manifest_parser, _add_server_parser,
    _add_web_parser, _add_status_parser, _add_check_parser, _add_apply_parser,
    _add_config_parser, _add_demo_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Pull a VMware content library over rsync+SSH and publish it to vCenter.",
        epilog=f"example:\n  {PROG} sync && {PROG} status",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(subparsers)
    return parser


def _handler(spec: str):
    module, function = spec.split(":")
    return getattr(importlib.import_module(module), function)


def _raise_on_sigterm(signum, frame) -> None:
    # Turn systemd's stop into an exception so `finally` blocks release the lock and clean up.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(debug=args.debug, quiet=args.quiet)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        return int(_handler(args.handler)(args))
    except SyncerError as error:
        if args.debug:
            traceback.print_exc()
        for line in str(error).splitlines():
            logging.getLogger(PROG).error("%s: %s", PROG, line)
        return int(error.exit_status)
    except KeyboardInterrupt:
        logging.getLogger(PROG).error("%s: interrupted", PROG)
        return 130
    except Exception as error:  # a bug: say so in one line, full detail with --debug
        if args.debug:
            traceback.print_exc()
        logging.getLogger(PROG).error(
            "%s: internal error: %s: %s (run with --debug for details and report it)",
            PROG, type(error).__name__, error)
        return int(ExitStatus.FAILURE)


if __name__ == "__main__":
    sys.exit(main())
