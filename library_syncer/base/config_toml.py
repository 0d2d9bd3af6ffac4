"""The settings as TOML: `config show` (effective values) and `config generate` (commented).

`generate --all` walks the dataclasses of config.py, so a new setting shows up in the reference
by itself; its one-line description lives in DESCRIPTIONS below (a test insists every setting has
one). Plain `generate` prints the same blocks for FIRST_SETTINGS only, commented out: that is the
shipped conffile etc/library-syncer/library-syncer.toml (a test keeps them equal), and the
package installs the `--all` text as paths.REFERENCE_SETTINGS_FILE.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Collection, Iterable
from dataclasses import fields
from typing import Any

from . import config as config_module
from .config import SECTIONS, Config
from .units import parse_duration, parse_size

log = logging.getLogger(__name__)
COMMENT_WIDTH = 96

# What each setting is for (the "expected" phrase and the Docker variable come from config.py).
DESCRIPTIONS: dict[str, str] = {
    "library": "The library as vCenter shows it (client role).",
    "library.name": "Library name in lib.json, shown by vCenter.",
    "library.description": "Optional description in lib.json.",
    "library.include_certs": "Publish signed OVFs' .cert files with their items.",
    "library.workers": "Threads hashing files when manifests are rebuilt.",
    "sync": "Pulling the library from the server (client role).",
    "sync.peer": "The server to pull from. Required on a client.",
    "sync.port": "The server's SSH port.",
    "sync.user": "The account on the server (its key is forced to rrsync -ro).",
    "sync.upstreams": "Several servers to pull from, in order of preference, instead of "
                      "sync.peer: a run moves on to the next when one is unreachable, refuses "
                      "this site's key or offers an older revision (each host's key: "
                      "library-syncer trust-host --peer HOST --port N).",
    "sync.remote_path": "Which folder of the server's library to pull.",
    "sync.identity_file": "This site's private SSH key (create: ssh-keygen -t ed25519).",
    "sync.known_hosts": "The server's host key (record it: library-syncer trust-host).",
    "sync.bandwidth_limit": "Cap on transfer speed (rsync --bwlimit).",
    "sync.schedule": "When the timer runs the sync (apply changes: library-syncer apply).",
    "sync.random_delay": "Random delay added to each run so sites do not all pull at once.",
    "sync.fixed_random_delay": (
        "Keep the same random delay on every run (systemd FixedRandomDelay: one per host, "
        "so the fleet stays spread and a restart of the timer does not move the next run); "
        "false: a new delay each run."),
    "sync.poll_interval": "Check this often whether the origin moved (one SSH session reading "
                          "its serial) and sync at once when it did; the schedule stays the "
                          "full verification run (apply changes: library-syncer apply).",
    "sync.timezone": "Time zone of the schedule (empty: the host's).",
    "sync.exclude": "Patterns never pulled (rsync --exclude).",
    "sync.include": "Only these items are pulled and published (item folder names, wildcards "
                    "allowed); empty: every item.",
    "sync.compress": "Compress on the wire (zstd).",
    "sync.find_basis": "Fetch a new file as its differences from the most similar file this "
                       "site has (renamed items, new template versions).",
    "sync.accept_origin": "Accept a trace from this origin although the published one came "
                          "from another (a moved origin; set for one run).",
    "sync.share_connection": "One SSH connection (one handshake) for the whole run (OpenSSH "
                             "connection sharing).",
    "sync.streams": "Large runs (64 MiB or more of large files to fetch) fetch their largest "
                    "files over up to this many SSH connections at once, then the normal "
                    "pass; the bandwidth limit is shared among them (1: always one).",
    "sync.connect_timeout": "Give up connecting after this long.",
    "sync.io_timeout": "Give up when no data moves for this long.",
    "sync.retry_budget": "Keep retrying a failed transfer for up to this long.",
    "sync.retry_initial_delay": "First wait between retries (it doubles each time).",
    "sync.retry_max_delay": "Longest wait between retries.",
    "sync.keep_snapshots": "Published snapshots kept (the current one included).",
    "sync.min_free_space": "Refuse to start a sync with less free space than this.",
    "sync.block_size": "rsync's delta block size (0: rsync's own, the square root of the file "
                       "size); small blocks send less of a scattered change.",
    "sync.report": "After each run, report its outcome and the revision held to the server "
                   "(ignored by servers that do not take reports).",
    "sync.scrub_rate": "How fast the monthly scrub (library-syncer-scrub.timer) reads the "
                       "published files to find rot; 0: as fast as the disk allows (the scrub "
                       "runs at the idle I/O priority anyway).",
    "sync.rsync": "The rsync command.",
    "sync.ssh": "The ssh command.",
    "web": "Publishing the library over HTTP(S) with Caddy (client role).",
    "web.listen": "Address to listen on.",
    "web.http_port": "HTTP port.",
    "web.https_port": "HTTPS port (when web.tls is not \"off\").",
    "web.tls": "off: plain HTTP; acme: Let's Encrypt for web.hostname; custom: web.cert_file "
               "and web.key_file; internal: Caddy's own CA.",
    "web.hostname": "The host name in the subscription URL and the certificate.",
    "web.cert_file": "Certificate (PEM, chain included) when web.tls = \"custom\".",
    "web.key_file": "Its private key (PEM) when web.tls = \"custom\".",
    "web.acme_email": "Contact address given to the ACME CA.",
    "web.browse": "Let a browser list the library's folders.",
    "web.auth_user": "User name for HTTP basic auth (vCenter's subscription password).",
    "web.auth_password_file": "File holding that password; empty: no authentication.",
    "web.allow": "Networks allowed to read the library (empty: everyone).",
    "web.caddy": "The caddy command.",
    "server": "The read-only rsync endpoint (server role).",
    "server.library": "The folder of templates the server exports.",
    "server.listen": "Addresses the dedicated sshd listens on.",
    "server.port": "The dedicated sshd's port.",
    "server.congestion_control": "The TCP congestion control of the sites' transfers, set on "
                                 "the dedicated sshd's listening socket only (library-syncer-"
                                 "sshd.socket; docs/server.md); empty: the system's default.",
    "server.user": "The account clients log in as.",
    "server.uid": "Its numeric user id.",
    "server.max_startups": "sshd MaxStartups: how many unauthenticated connections to accept.",
    "server.max_sessions": "sshd MaxSessions per connection.",
    "server.max_auth_tries": "sshd MaxAuthTries.",
    "server.login_grace_time": "sshd LoginGraceTime.",
    "server.client_alive_interval": "sshd ClientAliveInterval (drops dead sessions).",
    "server.config_dir": "Host keys and authorized_keys of the dedicated sshd.",
    "server.sshd": "The sshd binary.",
    "server.rrsync": "The rrsync script forced on every client key.",
    "server.name": "This origin's name in the trace the sites verify (empty: the host name).",
    "server.settle": "A revision is declared once no file changed for this long.",
    "server.state_dir": "The server role's own state (the last trace serial, the sites' "
                        "reports).",
    "server.dispatcher": "The library-syncer command sshd forces on every site key (it runs "
                         "rrsync -ro for a pull, stores a report).",
    "server.metrics_textfile": "Per-site metrics (serial lag, last success, outcome) for "
                               "node_exporter, rewritten after each report (empty: off).",
    "server.report_grace": "A site is overdue once it has not reported for its schedule's "
                           "period plus its random delay plus this.",
    "server.fleet_page": "A static HTML page of the fleet (each site's revision, lag, last "
                         "report; overdue first), rewritten after each report and each trace "
                         "tick (empty: off).",
    "server.signing_key": "The origin's revision-signing key (create: library-syncer server "
                          "keygen); each revision and its expiry are signed with it (empty: "
                          "revisions unsigned; docs/trust.md).",
    "server.statement_validity": "How long a signed statement is valid; the trace timer signs "
                                 "it again after a seventh of this (a frozen upstream is found "
                                 "out within this time).",
    "sync.origin_keys": "The origin keys this site accepts (an ssh-keygen allowed-signers file, "
                        "docs/trust.md); empty: unsigned revisions accepted. Sites verify "
                        "from a later release (docs/trust.md).",
    "metrics": "Prometheus metrics for node_exporter's textfile collector.",
    "metrics.textfile": "Write metrics here after every sync (a .prom file; empty: off).",
    "vcenter": "The site's own vCenter, asked to synchronise its subscribed library as soon as a "
               "run changed the published one (client role; docs/vcenter.md). Off while "
               "vcenter.address is empty.",
    "vcenter.address": "vCenter's host name or IP address (the vSphere Automation REST API, "
                       "vSphere 7.0 U2 or later).",
    "vcenter.port": "vCenter's HTTPS port.",
    "vcenter.user": "The vCenter user that asks for the sync (it needs only the \"Sync "
                    "subscribed library\" privilege, as a global permission).",
    "vcenter.password_file": "File holding that user's password on one line, readable by the "
                             "sync's user only (mode 0600, owner library-syncer).",
    "vcenter.library": "The subscribed library's name in vCenter (or set vcenter.library_id).",
    "vcenter.library_id": "The subscribed library's id in vCenter, instead of its name.",
    "vcenter.thumbprint": "Trust vCenter's certificate by its SHA-256 thumbprint (empty: by "
                          "vcenter.ca_file, else by the system's CAs); checked before the "
                          "password is sent.",
    "vcenter.ca_file": "CA certificates (PEM) that sign vCenter's certificate, e.g. its VMCA "
                       "root (empty: the system's CAs).",
    "vcenter.timeout": "Give up on vCenter after this long (the whole exchange); a failed "
                       "request is made again at the next run.",
    "paths": "Where state and runtime files live (systemd's StateDirectory/RuntimeDirectory).",
    "paths.state_dir": "Snapshots, the published symlink, caches, the last-run record.",
    "paths.runtime_dir": "Lock and rendered runtime configs.",
}

# The settings a new host looks at first, and the only ones the conffile names (commented out).
# A fixed list on purpose: a setting added to the model must not change the conffile, or dpkg
# would ask again on every host whose operator edited it (a test holds the list to this).
FIRST_SETTINGS: tuple[str, ...] = (
    "library.name",
    "sync.peer", "sync.bandwidth_limit", "sync.schedule", "sync.random_delay",
    "sync.poll_interval",
    "web.tls", "web.hostname",
    "server.library", "server.listen",
)

# The conffile's header. It names no setting and no default: those come from the model.
HEADER = """\
# library-syncer settings ({path})
#
# Write here only the settings you change. Every setting left out keeps its default, so a
# later release's new settings and better defaults reach this host by themselves; a default
# copied here stays pinned. Below: the few a new host looks at, commented out with their
# default (uncomment and edit; keep the [section] line above each).
#
# Every setting with its default and meaning:
#     library-syncer config generate --all
#     {reference}
# The effective values (defaults filled in):
#     library-syncer config show
#
# Relative paths are relative to this file's folder. Durations take seconds or systemd spans
# ("30s", "5min", "6h"); sizes take bytes or "500M", "10G". "Docker:" names the variable of the
# Docker-based version a setting replaces (library-syncer config import-env converts them).
#
# Check the file:  library-syncer config validate
# After editing:   library-syncer apply   (the schedule)   and   library-syncer check
#
# Generated by `library-syncer config generate`.
"""

FULL_HEADER = """\
# library-syncer: every setting, its default and its meaning (reference)
#
# The settings file is {path}. Copy there
# only the lines you change, each under its [section] line: a default copied there stays pinned
# when a later release changes it.
# Relative paths are relative to the settings file's folder. Durations take seconds or systemd
# spans ("30s", "5min", "6h"); sizes take bytes or "500M", "10G".
# "Docker:" names the variable of the Docker-based version a setting replaces
# (`library-syncer config import-env docker-compose.yaml` converts them).
#
# Check the file:  library-syncer config validate
# After editing:   library-syncer apply   (the schedule)   and   library-syncer check
#
# Generated by `library-syncer config generate --all`.
"""


# --- TOML output --------------------------------------------------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are a subset TOML accepts)."""
    return json.dumps(text, ensure_ascii=False)


def format_value(spec: Any, value: Any) -> str:
    """The TOML for one setting's value, in the form a person would write it."""
    parse = spec.metadata.get("parse")
    if value is None:  # an optional path left unset
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(v.to_toml() if hasattr(v, "to_toml") else toml_string(str(v))
                               for v in value) + "]"
    if parse in (config_module._duration, config_module._poll_interval):
        return toml_string(_span(float(value)))
    if parse is parse_size:
        return _size(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return toml_string(str(value))


def _span(seconds: float) -> str:
    """A systemd span that parses back to exactly `seconds` ("6h", "1h 30min", "0.5")."""
    if seconds != int(seconds):
        return f"{seconds:g}"
    from .units import format_duration

    text = format_duration(seconds)
    return text if parse_duration(text) == seconds else str(int(seconds))


def _size(count: int) -> str:
    for suffix, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if count and count % 1024**power == 0:
            return toml_string(f"{count // 1024**power}{suffix}")
    return str(count)


def section_lines(name: str, section: Any, *, comments: bool,
                  only: Collection[str] | None = None, commented_out: bool = False) -> list[str]:
    """`[name]` and its `key = value` lines, with a comment block per key when asked; `only`:
    just these `section.key` names; `commented_out`: `# key = value` (the [name] line stays, so
    uncommenting a key is enough)."""
    lines = []
    if comments:
        lines += _wrapped(DESCRIPTIONS.get(name, ""))
    lines.append(f"[{name}]")
    for spec in fields(section):
        if only is not None and f"{name}.{spec.name}" not in only:
            continue
        value = format_value(spec, getattr(section, spec.name))
        if comments:
            lines += _comment(name, spec)
        lines.append(f"{'# ' if commented_out else ''}{spec.name} = {value}")
        if comments:
            lines.append("")
    return lines


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, width=COMMENT_WIDTH, initial_indent="# ", subsequent_indent="# ",
                         break_long_words=False, break_on_hyphens=False) or ["#"]


def _comment(section: str, spec: Any) -> list[str]:
    lines = _wrapped(DESCRIPTIONS.get(f"{section}.{spec.name}", ""))
    lines += _wrapped(f"Expected: {spec.metadata.get('expected', '')}.")
    docker = spec.metadata.get("doc", "")
    if docker:
        lines += _wrapped(f"Docker: {docker}.")
    return lines


def to_toml(config: Config, *, comments: bool, sections: Iterable[str] | None = None,
            only: Collection[str] | None = None, commented_out: bool = False) -> str:
    chosen = list(sections) if sections is not None else list(SECTIONS)
    if only is not None:  # a section none of whose keys is named is left out
        chosen = [name for name in chosen if any(key.startswith(f"{name}.") for key in only)]
    blocks = []
    for name in chosen:
        lines = section_lines(name, getattr(config, name), comments=comments, only=only,
                              commented_out=commented_out)
        while lines and lines[-1] == "":
            lines.pop()
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def generated_text(*, full: bool = False) -> str:
    """`config generate`: the shipped conffile (FIRST_SETTINGS, commented out); `full`: the
    reference with every setting and its default (`--all`, paths.REFERENCE_SETTINGS_FILE)."""
    from . import paths

    file = paths.DEFAULT_CONFIG_FILE
    defaults = config_module.defaults(file)
    if full:
        return FULL_HEADER.format(path=file) + "\n" + to_toml(defaults, comments=True)
    header = HEADER.format(path=file, reference=paths.REFERENCE_SETTINGS_FILE)
    return header + "\n" + to_toml(defaults, comments=True, only=FIRST_SETTINGS,
                                   commented_out=True)


# --- the commands -------------------------------------------------------------------------


def all_keys() -> list[str]:
    """Every `section.key` the settings file knows."""
    return [f"{name}.{spec.name}" for name, cls in SECTIONS.items() for spec in fields(cls)]
