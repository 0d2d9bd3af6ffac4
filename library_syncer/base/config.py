"""The settings file: TOML → typed, frozen dataclasses, with *every* mistake collected.

Each section is a frozen dataclass; each field declares its parser and what it expects through
`setting(...)`. `load()` reports all problems at once as `file: section.key: found …, expected …`,
and unknown keys get a "did you mean" from the known ones.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import paths
from .errors import ConfigError, ConfigProblem
from .schedule import DEFAULT_SCHEDULE, to_on_calendar
from .schedule import EXPECTED as SCHEDULE_EXPECTED
from .statedir import StateDir
from .units import (
    BWLIMIT_EXPECTED,
    DURATION_EXPECTED,
    SIZE_EXPECTED,
    parse_bwlimit,
    parse_duration,
    parse_size,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Debian 11/Ubuntu 22.04
    import tomli as tomllib

Parser = Callable[[Any], Any]


def setting(default: Any, parse: Parser, expected: str, doc: str = "") -> Any:
    """A field with its parser and the phrase that completes 'expected …' in errors."""
    meta = {"parse": parse, "expected": expected, "doc": doc}
    if isinstance(default, list):  # lists are stored as tuples: the config is frozen
        default = tuple(default)
    return field(default=default, metadata=meta)


# --- value parsers: each returns the typed value or raises ValueError ---------------------


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    return value


def _nonempty(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError
    return value.strip()


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError
    return value


def _int_range(low: int, high: int) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError
        return value

    return parse


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError
    return tuple(value)


def _block_size(value: Any) -> int:
    size = parse_size(value)
    if size != 0 and not 1024 <= size <= 131072:  # rsync's MAX_BLOCK_SIZE (protocol >= 30)
        raise ValueError
    return size


def _item_patterns(value: Any) -> tuple[str, ...]:
    """Item-folder name patterns (rsync wildcards * ? [...]): one path component each."""
    patterns = _str_list(value)
    if any("/" in p or p.startswith(".") or "**" in p for p in patterns):
        raise ValueError
    return patterns


def _site_name(value: Any) -> str:
    if not isinstance(value, str) or (
            value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", value)):
        raise ValueError
    return value


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError
    return Path(value)


# Paths and commands that end up in rsync's `-e` string (and the runtime directory, which holds
# the SSH socket named there). A name holding both quote characters is refused outright.
RSH_EXPECTED = "a path with ' or \" but not both (it goes into rsync's -e command)"


def _one_quote_kind(value: Any) -> Any:
    if isinstance(value, str) and "'" in value and '"' in value:
        raise ValueError(RSH_EXPECTED)  # "a …": shown instead of the field's general phrase
    return value


# ssh expands ${VAR} in its file options (IdentityFile, UserKnownHostsFile, ControlPath) and
# has no escape for it; % is escaped (sync/ssh.py).
SSH_VAR_EXPECTED = "a path without ${ (ssh would read it as an environment variable)"


def _rsh_path(value: Any) -> Path:
    if isinstance(value, str) and "${" in value:
        raise ValueError(SSH_VAR_EXPECTED)
    return _path(_one_quote_kind(value))


def _rsh_command(value: Any) -> str:
    return _nonempty(_one_quote_kind(value))


def _optional_path(value: Any) -> Path | None:
    if value == "":
        return None
    return _path(value)


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


def is_hostname(text: str) -> bool:
    return bool(_HOSTNAME.match(text))


def _host(value: Any) -> str:
    """A host name or an IP address ("" = not set)."""
    if not isinstance(value, str):
        raise ValueError
    if value == "":
        return value
    try:
        ipaddress.ip_address(value.strip("[]"))
        return value.strip("[]")
    except ValueError:
        if is_hostname(value):
            return value
        raise ValueError from None


def _listen(value: Any) -> str:
    """A listen address: "" (all) or an IP address."""
    if not isinstance(value, str):
        raise ValueError
    if value:
        ipaddress.ip_address(value.strip("[]"))
    return value.strip("[]")


def _listen_list(value: Any) -> tuple[str, ...]:
    return tuple(_listen(v) for v in _str_list(value))


# A kernel TCP congestion control's name (TCP_CA_NAME_MAX is 16 with the NUL), or "".
_CONGESTION = re.compile(r"[a-z0-9_]{1,15}")


def _congestion_control(value: Any) -> str:
    if not isinstance(value, str) or (value and not _CONGESTION.fullmatch(value)):
        raise ValueError
    return value


def _cidr_list(value: Any) -> tuple[str, ...]:
    return tuple(str(ipaddress.ip_network(v, strict=False)) for v in _str_list(value))


def _choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError
        return value

    return parse


def _duration(value: Any) -> float:
    return parse_duration(value)


def _poll_interval(value: Any) -> float:
    """0 (off) or at least a minute: a check costs the origin an SSH handshake."""
    seconds = parse_duration(value)
    if 0 < seconds < 60:
        raise ValueError
    return seconds


def _statement_validity(value: Any) -> float:
    """From an hour (a signing origin must not be down for longer) to a year."""
    seconds = parse_duration(value)
    if not 3600 <= seconds <= 366 * 86400:
        raise ValueError
    return seconds


def _schedule(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    return to_on_calendar(value)


def _timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    zoneinfo = Path("/usr/share/zoneinfo")
    if value and zoneinfo.is_dir() and not (zoneinfo / value).is_file():
        raise ValueError
    if value and (".." in value or value.startswith("/")):
        raise ValueError
    return value


def _max_startups(value: Any) -> str:
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"\d+(:\d{1,3}:\d+)?", text):
        raise ValueError
    return text


def _user(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
        raise ValueError
    return value


class EntryError(ValueError):
    """A bad part of a structured value: reported as `section.key[N].part: found …, expected …`."""

    def __init__(self, where: str, found: str, expected: str) -> None:
        super().__init__(expected)
        self.where, self.found, self.expected = where, found, expected


@dataclass(frozen=True)
class Upstream:
    """One server a site may pull from; port and user left out take sync.port and sync.user."""

    peer: str
    port: int | None = None
    user: str | None = None

    def to_toml(self) -> str:
        parts = [f"peer = {_json_string(self.peer)}"]
        if self.port is not None:
            parts.append(f"port = {self.port}")
        if self.user is not None:
            parts.append(f"user = {_json_string(self.user)}")
        return "{" + ", ".join(parts) + "}"


def _json_string(text: str) -> str:
    import json

    return json.dumps(text)


UPSTREAM_PARTS: dict[str, tuple[Parser, str]] = {
    "peer": (_host, "a host name or IP address"),
    "port": (_int_range(1, 65535), "an integer 1-65535"),
    "user": (_user, "a user name"),
}


def _upstreams(value: Any) -> tuple[Upstream, ...]:
    """`[{peer = "relay-lyon", port = 2222}, {peer = "hq.example.net", user = "syncer"}]`: the
    servers to pull from, in order of preference."""
    if not isinstance(value, list):
        raise ValueError
    result, seen = [], set()
    for number, entry in enumerate(value, 1):
        where = f"[{number}]"
        if not isinstance(entry, dict):
            raise EntryError(where, _describe(entry),
                             'a table such as {peer = "relay-lyon", port = 2222}')
        unknown = sorted(set(entry) - set(UPSTREAM_PARTS))
        if unknown:
            raise EntryError(f"{where}.{unknown[0]}", "", "unknown key; known: peer, port, user")
        parts: dict[str, Any] = {}
        for name, (parse, expected) in UPSTREAM_PARTS.items():
            if name not in entry:
                continue
            try:
                parts[name] = parse(entry[name])
            except ValueError:
                raise EntryError(f"{where}.{name}", _describe(entry[name]), expected) from None
        if not parts.get("peer"):
            raise EntryError(f"{where}.peer", "nothing", "the server's host name or IP address")
        upstream = Upstream(**parts)
        if (upstream.peer, upstream.port) in seen:
            raise EntryError(where, _describe(entry), "each upstream once")
        seen.add((upstream.peer, upstream.port))
        result.append(upstream)
    return tuple(result)


# --- the sections -------------------------------------------------------------------------


@dataclass(frozen=True)
class LibraryConfig:
    name: str = setting("Library", _nonempty, "a non-empty string", "LIBRARY_NAME")
    description: str = setting("", _str, "a string")
    include_certs: bool = setting(True, _bool, "true or false")
    workers: int = setting(0, _int_range(0, 64), "an integer 0-64 (0 = one per CPU)")


@dataclass(frozen=True)
class SyncConfig:
    peer: str = setting("", _host, "a host name or IP address", "SYNC_PEER")
    port: int = setting(2222, _int_range(1, 65535), "an integer 1-65535", "SYNC_PORT")
    user: str = setting("syncer", _user, "a user name")
    upstreams: tuple[Upstream, ...] = setting(
        [], _upstreams, 'a list of tables such as [{peer = "relay-lyon", port = 2222}, '
        '{peer = "hq.example.net"}] (port and user default to sync.port and sync.user)')
    remote_path: str = setting("/", _nonempty, "a path inside the server's library")
    identity_file: Path = setting(
        paths.DEFAULT_CONFIG_DIR / "ssh" / "id_syncer", _rsh_path, "a file path"
    )
    known_hosts: Path = setting(
        paths.DEFAULT_CONFIG_DIR / "ssh" / "known_hosts", _rsh_path, "a file path"
    )
    bandwidth_limit: str = setting("0", parse_bwlimit, BWLIMIT_EXPECTED, "SYNC_MAX_BW")
    schedule: str = setting(DEFAULT_SCHEDULE, _schedule, SCHEDULE_EXPECTED, "SYNC_SCHEDULE")
    random_delay: float = setting(
        6 * 3600.0, _duration, DURATION_EXPECTED, "SYNC_DELAY, SYNC_DELAY_MAX_SECONDS"
    )
    fixed_random_delay: bool = setting(True, _bool, "true or false")
    poll_interval: float = setting(0.0, _poll_interval,
                                   '0 (off) or a duration of at least "1min", e.g. "15min"')
    timezone: str = setting("", _timezone, "a time zone name such as UTC or Europe/Paris", "TZ")
    exclude: tuple[str, ...] = setting([".vSphere-HA"], _str_list, "a list of patterns")
    include: tuple[str, ...] = setting(
        [], _item_patterns, 'a list of item folder names or patterns such as "ubuntu-*" '
        '(no "/", no leading ".")')
    compress: bool = setting(True, _bool, "true or false")
    find_basis: bool = setting(True, _bool, "true or false")
    accept_origin: str = setting("", _site_name, 'an origin name, or "" for none')
    share_connection: bool = setting(True, _bool, "true or false")
    streams: int = setting(4, _int_range(1, 16), "an integer 1-16 (1: one connection always)")
    connect_timeout: float = setting(30.0, _duration, DURATION_EXPECTED)
    io_timeout: float = setting(300.0, _duration, DURATION_EXPECTED)
    retry_budget: float = setting(1800.0, _duration, DURATION_EXPECTED)
    retry_initial_delay: float = setting(10.0, _duration, DURATION_EXPECTED)
    retry_max_delay: float = setting(300.0, _duration, DURATION_EXPECTED)
    keep_snapshots: int = setting(2, _int_range(1, 100), "an integer 1-100")
    min_free_space: int = setting(2**30, parse_size, SIZE_EXPECTED)
    block_size: int = setting(8192, _block_size, '0 (rsync\'s own) or a size from "1K" to "128K"')
    report: bool = setting(True, _bool, "true or false")
    rsync: str = setting("rsync", _rsh_command, "a command name or path")
    ssh: str = setting("ssh", _rsh_command, "a command name or path")
    scrub_rate: str = setting("0", parse_bwlimit, 'a read rate such as "50M" (bytes per '
                              'second, rsync --bwlimit syntax: a bare number is KiB/s), or 0 '
                              '(as fast as the disk reads)')
    origin_keys: Path | None = setting(None, _optional_path,
                                       'an allowed-signers file or "" (accept unsigned)')

    def upstream_list(self) -> tuple[Upstream, ...]:
        """The servers to pull from, in order, port and user filled in: sync.upstreams, or the
        one sync.peer (empty: not configured)."""
        listed = self.upstreams or ((Upstream(self.peer),) if self.peer else ())
        return tuple(Upstream(u.peer, self.port if u.port is None else u.port,
                              self.user if u.user is None else u.user) for u in listed)

    def for_upstream(self, upstream: Upstream) -> SyncConfig:
        """These settings aimed at one upstream (what ssh, rsync and the report use)."""
        from dataclasses import replace

        return replace(self, peer=upstream.peer, port=upstream.port or self.port,
                       user=upstream.user or self.user, upstreams=())


@dataclass(frozen=True)
class WebConfig:
    listen: str = setting("", _listen, 'an IP address or "" for all')
    http_port: int = setting(80, _int_range(1, 65535), "an integer 1-65535")
    https_port: int = setting(443, _int_range(1, 65535), "an integer 1-65535")
    tls: str = setting(
        "off", _choice("off", "acme", "custom", "internal"),
        '"off", "acme", "custom" or "internal"', "TLS_NAME, TLS_CUSTOM_CERT",
    )
    hostname: str = setting("", _host, "a host name (the name in the URL)", "TLS_NAME")
    cert_file: Path = setting(paths.DEFAULT_CONFIG_DIR / "tls" / "cert.pem", _path, "a file path")
    key_file: Path = setting(paths.DEFAULT_CONFIG_DIR / "tls" / "key.pem", _path, "a file path")
    acme_email: str = setting("", _str, "an e-mail address or empty")
    browse: bool = setting(False, _bool, "true or false", "LIBRARY_BROWSE")
    auth_user: str = setting("vcsp", _nonempty, "a user name")
    auth_password_file: Path | None = setting(None, _optional_path, 'a file path or ""')
    allow: tuple[str, ...] = setting([], _cidr_list, 'a list of networks such as "198.51.100.0/24"')
    caddy: str = setting("caddy", _nonempty, "a command name or path")


@dataclass(frozen=True)
class ServerConfig:
    library: Path = setting(paths.DEFAULT_SERVER_LIBRARY, _path, "a directory path")
    listen: tuple[str, ...] = setting([], _listen_list, "a list of IP addresses ([] = all)")
    port: int = setting(2222, _int_range(1, 65535), "an integer 1-65535", "SYNC_PORT")
    congestion_control: str = setting(
        "bbr", _congestion_control, 'a TCP congestion control such as "bbr" or "cubic", or "" '
        "for the system's default")
    user: str = setting("syncer", _user, "a user name")
    uid: int = setting(31337, _int_range(1, 2**31 - 2), "an integer 1-2147483646", "SYNCER_UID")
    max_startups: str = setting("64:30:256", _max_startups,
                                'an sshd MaxStartups value, e.g. "64:30:256"')
    max_sessions: int = setting(4, _int_range(1, 1000), "an integer 1-1000")
    max_auth_tries: int = setting(3, _int_range(1, 100), "an integer 1-100")
    login_grace_time: float = setting(30.0, _duration, DURATION_EXPECTED)
    client_alive_interval: float = setting(60.0, _duration, DURATION_EXPECTED)
    config_dir: Path = setting(paths.DEFAULT_CONFIG_DIR / "server", _path, "a directory path")
    sshd: str = setting("/usr/sbin/sshd", _nonempty, "a command path")
    rrsync: str = setting("/usr/bin/rrsync", _nonempty, "a command path")
    name: str = setting("", _site_name,
                        "a name for this origin (letters, digits, '.', '_', '-'); "
                        '"" = the host name')
    settle: float = setting(120.0, _duration, DURATION_EXPECTED)
    state_dir: Path = setting(Path("/var/lib/library-syncer-server"), _path, "a directory path")
    dispatcher: str = setting("", _str, 'a command path, or "" for the library-syncer beside '
                              "the running Python")
    metrics_textfile: Path | None = setting(None, _optional_path, 'a file path or "" (off)')
    report_grace: float = setting(6 * 3600.0, _duration, DURATION_EXPECTED)
    fleet_page: Path | None = setting(None, _optional_path, 'a file path or "" (off)')
    signing_key: Path | None = setting(None, _optional_path,
                                       'a private key file or "" (revisions unsigned)')
    statement_validity: float = setting(7 * 86400.0, _statement_validity,
                                        'a duration from "1h" to "366d"')


@dataclass(frozen=True)
class MetricsConfig:
    textfile: Path | None = setting(None, _optional_path, 'a file path or "" (off)')


_HEX = re.compile(r"[0-9A-Fa-f]{2}(?::?[0-9A-Fa-f]{2})*")
THUMBPRINT_EXPECTED = ("\"\" or the SHA-256 thumbprint of vCenter's certificate (64 hex "
                       "digits, ':' optional; openssl x509 -noout -fingerprint -sha256)")


def _sha256_thumbprint(value: Any) -> str:
    """`AA:BB:…` (32 bytes), normalised to upper case with colons ("" = not set)."""
    if value == "":
        return value
    if not isinstance(value, str) or not _HEX.fullmatch(value.strip()):
        raise ValueError
    digits = value.strip().replace(":", "").upper()
    if len(digits) == 40:
        raise ValueError("a SHA-256 thumbprint (64 hex digits): this one has 40, a SHA-1 one")
    if len(digits) != 64:
        raise ValueError
    return ":".join(digits[i:i + 2] for i in range(0, 64, 2))


def _vcenter_timeout(value: Any) -> float:
    seconds = parse_duration(value)
    if not 1 <= seconds <= 600:
        raise ValueError
    return seconds


@dataclass(frozen=True)
class VcenterConfig:
    """The site's vCenter, asked to synchronise its subscribed library after a run that changed
    the published one (sync/vcenter.py). Off while `address` is empty."""

    address: str = setting("", _host, "vCenter's host name or IP address, or \"\" (off)")
    port: int = setting(443, _int_range(1, 65535), "an integer 1-65535")
    user: str = setting("", _str, 'a vCenter user such as "svc-library@vsphere.local"')
    password_file: Path | None = setting(None, _optional_path, 'a file path or ""')
    library: str = setting("", _str, "the subscribed library's name in vCenter, or \"\"")
    library_id: str = setting("", _str, "the subscribed library's id in vCenter, or \"\"")
    thumbprint: str = setting("", _sha256_thumbprint, THUMBPRINT_EXPECTED)
    ca_file: Path | None = setting(None, _optional_path, 'a file path or ""')
    timeout: float = setting(30.0, _vcenter_timeout, 'a duration from "1s" to "10min"')

    @property
    def enabled(self) -> bool:
        return bool(self.address)


@dataclass(frozen=True)
class PathsConfig:
    state_dir: Path = setting(paths.DEFAULT_STATE_DIR, _path, "a directory path")
    # The per-run SSH socket lives below it: its path goes into rsync's -e (ControlPath).
    runtime_dir: Path = setting(paths.DEFAULT_RUNTIME_DIR, _rsh_path, "a directory path")


SECTIONS: dict[str, type] = {
    "library": LibraryConfig,
    "sync": SyncConfig,
    "web": WebConfig,
    "server": ServerConfig,
    "metrics": MetricsConfig,
    "vcenter": VcenterConfig,
    "paths": PathsConfig,
}


@dataclass(frozen=True)
class Config:
    file: Path
    library: LibraryConfig = field(default_factory=LibraryConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    web: WebConfig = field(default_factory=WebConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    vcenter: VcenterConfig = field(default_factory=VcenterConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    # Derived locations of the client's state (named in statedir.py).
    @property
    def state_dir(self) -> Path:
        return self.paths.state_dir

    @property
    def runtime_dir(self) -> Path:
        return self.paths.runtime_dir

    @property
    def published_dir(self) -> Path:
        """The symlink Caddy serves: always points at one complete snapshot."""
        return StateDir.of(self).published


# --- loading ------------------------------------------------------------------------------


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f'did you mean "{close[0]}"?' if close else "known: " + ", ".join(known)


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        more = "…" if len(value) > 5 else ""
        return "[" + ", ".join(_describe(v) for v in value[:5]) + more + "]"
    return repr(value)


def _resolve(value: Any, base: Path) -> Any:
    """Relative paths in the file are relative to the file's own directory."""
    if isinstance(value, Path) and not value.is_absolute():
        return base / value
    return value


def _build_section(cls: type, table: dict[str, Any], name: str, file: str, base: Path,
                   problems: list[ConfigProblem]) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        spec = known.get(key)
        if spec is None:
            problems.append(ConfigProblem(file, f"{name}.{key}", "",
                                          "unknown key; " + _suggest(key, sorted(known))))
            continue
        try:
            values[key] = _resolve(spec.metadata["parse"](raw), base)
        except EntryError as error:  # a part of a list of tables: named exactly
            problems.append(ConfigProblem(file, f"{name}.{key}{error.where}", error.found,
                                          error.expected))
        except ValueError as error:
            # A parser may give a more precise phrase than the field's generic one.
            detail = str(error)
            precise = detail.startswith(("a ", "an ", "cron"))
            expected = detail if precise else spec.metadata["expected"]
            problems.append(ConfigProblem(file, f"{name}.{key}", _describe(raw), expected))
    return cls(**values)


def _cross_checks(config: Config) -> list[ConfigProblem]:
    """Rules that involve more than one key."""
    file, web, problems = str(config.file), config.web, []
    if web.tls == "acme" and not web.hostname:
        problems.append(ConfigProblem(file, "web.hostname", "nothing",
                                      'a public host name when web.tls = "acme"'))
    if web.tls != "off" and web.http_port == web.https_port:
        problems.append(ConfigProblem(file, "web.https_port", str(web.https_port),
                                      "a port different from web.http_port"))
    if config.sync.peer and config.sync.upstreams:
        problems.append(ConfigProblem(file, "sync.peer", _describe(config.sync.peer),
                                      'nothing when sync.upstreams is set (list it there: '
                                      f'{{peer = "{config.sync.peer}"}})'))
    problems += _vcenter_checks(config)
    if config.sync.retry_initial_delay > config.sync.retry_max_delay:
        problems.append(ConfigProblem(file, "sync.retry_initial_delay",
                                      str(config.sync.retry_initial_delay),
                                      "a delay no longer than sync.retry_max_delay"))
    return problems


def _vcenter_checks(config: Config) -> list[ConfigProblem]:
    """[vcenter] is all or nothing: with an address, who logs in and which library."""
    file, vc, problems = str(config.file), config.vcenter, []
    if not vc.enabled:
        return problems
    if not vc.user.strip():
        problems.append(ConfigProblem(file, "vcenter.user", "nothing",
                                      "the vCenter user when vcenter.address is set"))
    if vc.password_file is None:
        problems.append(ConfigProblem(file, "vcenter.password_file", "nothing",
                                      "the file holding that user's password when "
                                      "vcenter.address is set"))
    if bool(vc.library.strip()) == bool(vc.library_id.strip()):
        found = "both" if vc.library.strip() else "nothing"
        problems.append(ConfigProblem(file, "vcenter.library", found,
                                      "the subscribed library's name, or its id in "
                                      "vcenter.library_id (one of the two)"))
    if vc.thumbprint and vc.ca_file is not None:
        problems.append(ConfigProblem(file, "vcenter.ca_file", _describe(str(vc.ca_file)),
                                      'nothing when vcenter.thumbprint is set (one of the two)'))
    return problems


def parse(data: dict[str, Any], file: Path) -> Config:
    """Validate an already-parsed TOML document; raise ConfigError listing every problem."""
    problems: list[ConfigProblem] = []
    sections: dict[str, Any] = {}
    base = file.parent
    for name, table in data.items():
        cls = SECTIONS.get(name)
        if cls is None:
            problems.append(ConfigProblem(str(file), name, "",
                                          "unknown section; " + _suggest(name, sorted(SECTIONS))))
        elif not isinstance(table, dict):
            problems.append(ConfigProblem(str(file), name, _describe(table), "a [section] table"))
        else:
            sections[name] = _build_section(cls, table, name, str(file), base, problems)
    if problems:
        raise ConfigError(problems)
    config = Config(file=file, **sections)
    problems = _cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return config


def load(file: Path | None = None) -> Config:
    """Read and validate the settings file (default: /etc/library-syncer/library-syncer.toml)."""
    file = Path(file) if file else paths.config_file()
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(ConfigProblem(str(file), "", "", "file not found; create it from the "
                          "commented example (library-syncer config generate)")) from None
    except PermissionError:
        raise ConfigError(ConfigProblem(str(file), "", "", "permission denied; run as root or "
                          "as the library-syncer user")) from None
    except UnicodeDecodeError:
        raise ConfigError(ConfigProblem(str(file), "", "", "not valid UTF-8")) from None
    except IsADirectoryError:
        raise ConfigError(ConfigProblem(str(file), "", "",
                                        "is a directory, expected a TOML file")) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(ConfigProblem(str(file), "", "", f"invalid TOML: {error}")) from None
    return parse(data, file)


def defaults(file: Path | None = None) -> Config:
    """A Config with every default (for `config generate` and tests)."""
    return Config(file=file or paths.config_file())


def env_override_state(config: Config) -> Config:
    """Honour systemd's STATE_DIRECTORY/RUNTIME_DIRECTORY when the file leaves them at default."""
    from dataclasses import replace

    state, runtime = config.paths.state_dir, config.paths.runtime_dir
    if state == paths.DEFAULT_STATE_DIR and os.environ.get("STATE_DIRECTORY"):
        state = paths.state_dir()
    if runtime == paths.DEFAULT_RUNTIME_DIR and os.environ.get("RUNTIME_DIRECTORY"):
        runtime = paths.runtime_dir()
    return replace(config, paths=PathsConfig(state_dir=state, runtime_dir=runtime))
