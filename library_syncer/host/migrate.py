"""`library-syncer config import-env FILE...`: the Docker version's settings as TOML.

Reads the `environment:` (and `ports:`/`volumes:`) of the original's docker-compose.yaml files, or
plain .env files, and prints the equivalent settings file. Every value that cannot be carried
over is named, on stderr and as a comment in the output. PyYAML is not a dependency: compose files
of the original use a small block-style subset, which `parse_yaml` reads.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..base import config as config_module
from ..base import paths
from ..base.config import SECTIONS
from ..base.config_toml import format_value
from ..base.errors import ConfigError, ConfigProblem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

ORIGINAL_DELAY_MAX = 21600  # the original's SYNC_DELAY_MAX_SECONDS default
TLS_DIR = paths.DEFAULT_CONFIG_DIR / "tls"
SSH_DIR = paths.DEFAULT_CONFIG_DIR / "ssh"
CLIENT_VARS = {"SYNC_PEER", "SYNC_PORT", "SYNC_SCHEDULE", "SYNC_DELAY", "SYNC_DELAY_MAX_SECONDS",
               "SYNC_MAX_BW", "TLS_NAME", "TLS_CUSTOM_CERT", "LIBRARY_NAME", "LIBRARY_BROWSE"}
SERVER_VARS = {"SYNCER_UID"}


# --- a tiny YAML reader for compose files (block mappings, block lists, plain/quoted scalars) ---


class YamlError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")


def _strip_comment(text: str) -> str:
    quote = ""
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        inner = text[1:-1]
        return inner.replace("''", "'") if text[0] == "'" else inner.replace('\\"', '"')
    return text


_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[^\s'"][^:]*?)\s*:(\s+(.*))?$""")


def parse_yaml(text: str) -> Any:
    """Nested dicts/lists of strings; raises YamlError outside the supported subset."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.strip() in ("---", "...") or "\t" in raw[: len(raw) - len(raw.lstrip())]:
            continue
        body = _strip_comment(raw)
        if body.strip():
            lines.append((number, len(body) - len(body.lstrip()), body.strip()))
    value, end = _block(lines, 0, lines[0][1] if lines else 0)
    if end != len(lines):
        raise YamlError(lines[end][0], "unexpected indentation")
    return value


def _block(lines: list, i: int, indent: int) -> tuple[Any, int]:
    if i >= len(lines):
        return None, i
    if lines[i][2].startswith("- ") or lines[i][2] == "-":
        return _list(lines, i, indent)
    return _mapping(lines, i, indent)


def _list(lines: list, i: int, indent: int) -> tuple[list, int]:
    items: list = []
    while i < len(lines) and lines[i][1] == indent and (lines[i][2] + " ").startswith("- "):
        items.append(_scalar(lines[i][2][1:]))
        i += 1
        if i < len(lines) and lines[i][1] > indent:
            raise YamlError(lines[i][0], "nested structures inside a list are not supported")
    return items, i


def _mapping(lines: list, i: int, indent: int) -> tuple[dict, int]:
    result: dict[str, Any] = {}
    while i < len(lines) and lines[i][1] == indent:
        number, _, text = lines[i]
        match = _KEY.match(text)
        if not match or text.startswith("- "):
            raise YamlError(number, f"expected 'key: value', found {text!r}")
        key, rest = _scalar(match.group(1)), (match.group(3) or "").strip()
        i += 1
        if rest and rest[0] in "[{|>&*!":
            raise YamlError(number, "flow style, anchors and block scalars are not supported")
        if rest:
            result[key] = _scalar(rest)
        elif i < len(lines) and (lines[i][1] > indent or (
                lines[i][1] == indent and lines[i][2].startswith("- "))):
            result[key], i = _block(lines, i, lines[i][1])
        else:
            result[key] = ""
    return result, i


# --- reading the sources ------------------------------------------------------------------


@dataclass
class Source:
    """One service's (or one .env file's) settings."""

    label: str
    env: dict[str, str]
    ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    image: str = ""
    base: Path = Path(".")

    @property
    def role(self) -> str:
        if "server" in self.image or (set(self.env) & SERVER_VARS and not
                                      set(self.env) & CLIENT_VARS):
            return "server"
        return "client"


def _env_list(value: Any, where: str) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    if isinstance(value, list):
        env = {}
        for item in value:
            key, sep, val = item.partition("=")
            if not sep:
                continue  # `- KEY` passes the host's variable through: nothing to read here
            env[key.strip()] = val
        return env
    if value in (None, ""):
        return {}
    raise ValueError(f"{where}: environment: expected a list or a mapping")


def read_compose(path: Path, text: str) -> list[Source]:
    data = parse_yaml(text)
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict):
        raise ValueError("no services: section")
    sources = []
    for name, service in services.items():
        if not isinstance(service, dict):
            continue
        sources.append(Source(
            label=f"{path} (service {name})",
            env=_env_list(service.get("environment"), f"services.{name}"),
            ports=list(service.get("ports") or []),
            volumes=list(service.get("volumes") or []),
            image=str(service.get("image", "")),
            base=path.parent,
        ))
    return sources


def read_env_file(path: Path, text: str) -> list[Source]:
    env = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ValueError(f"line {number}: expected KEY=value, found {raw.strip()!r}")
        value = value.strip()
        env[key.strip()] = _scalar(value) if value[:1] in "'\"" else _strip_comment(value)
    return [Source(label=str(path), env=env, base=path.parent)]


def read_sources(path: Path) -> list[Source]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(ConfigProblem(str(path), "", "", f"cannot read: {error.strerror}")
                          ) from None
    except UnicodeDecodeError:
        raise ConfigError(ConfigProblem(str(path), "", "", "not UTF-8 text")) from None
    compose = re.search(r"^services\s*:", text, re.MULTILINE) is not None
    try:
        return read_compose(path, text) if compose else read_env_file(path, text)
    except ValueError as error:
        kind = "a docker-compose file" if compose else "a .env file"
        raise ConfigError(ConfigProblem(str(path), "", "", f"not readable as {kind}: {error}; "
                                        "expected the original's docker-compose.yaml or a "
                                        ".env file of KEY=value lines")) from None


# --- the conversion -----------------------------------------------------------------------


@dataclass
class Conversion:
    # section → key → (value as the original wrote it, where it came from)
    settings: dict[str, dict[str, tuple[Any, str]]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # values that cannot be carried over
    moves: list[str] = field(default_factory=list)  # files to move by hand

    def set(self, key: str, value: Any, origin: str) -> None:
        section, name = key.split(".")
        spec = {f.name: f for f in fields(SECTIONS[section])}[name]
        try:
            parsed = spec.metadata["parse"](value)
        except ValueError:
            self.dropped.append(f"{origin}: {key} expects {spec.metadata['expected']}; "
                                f"left at its default")
            return
        current = self.settings.setdefault(section, {}).get(name)
        if current is not None and spec.metadata["parse"](current[0]) != parsed:
            self.dropped.append(f"{origin}: conflicts with {current[1]} for {key}; "
                                "kept the first")
            return
        # The value as written (a cron line stays a cron line); it was checked just above.
        self.settings[section][name] = (value, origin)


def _bool(value: str) -> bool | None:
    text = value.strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off", ""):
        return False
    return None


def _int(value: str) -> int | str:
    return int(value) if value.strip().isdigit() else value


def _port_mappings(source: Source) -> dict[str, tuple[str, int]]:
    """container port → (host address, host port) from compose `ports:`."""
    result = {}
    for entry in source.ports:
        spec = entry.split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) < 2 or not parts[-1].isdigit() or not parts[-2].isdigit():
            continue
        address = parts[0].strip("[]") if len(parts) == 3 else ""
        result[parts[-1]] = (address, int(parts[-2]))
    return result


def _volumes(source: Source) -> dict[str, Path]:
    """container path → host path (relative ones resolved against the compose file)."""
    result = {}
    for entry in source.volumes:
        host, sep, rest = entry.partition(":")
        if not sep:
            continue
        container = rest.split(":")[0].rstrip("/")
        host_path = Path(host)
        result[container] = host_path if host_path.is_absolute() else \
            (source.base / host_path).resolve()
    return result


def _client(source: Source, out: Conversion) -> set[str]:
    env, o = source.env, source.label
    handled = set(CLIENT_VARS) | {"TZ"}
    if "SYNC_PEER" in env:
        out.set("sync.peer", env["SYNC_PEER"], f"{o}: SYNC_PEER")
    if "SYNC_PORT" in env:
        out.set("sync.port", _int(env["SYNC_PORT"]), f"{o}: SYNC_PORT")
    if "SYNC_SCHEDULE" in env:
        out.set("sync.schedule", env["SYNC_SCHEDULE"], f"{o}: SYNC_SCHEDULE")
    _delay(env, o, out)
    if "SYNC_MAX_BW" in env:
        out.set("sync.bandwidth_limit", env["SYNC_MAX_BW"], f"{o}: SYNC_MAX_BW")
    if env.get("TZ"):
        out.set("sync.timezone", env["TZ"], f"{o}: TZ")
    if "LIBRARY_NAME" in env:
        out.set("library.name", env["LIBRARY_NAME"], f"{o}: LIBRARY_NAME")
    if "LIBRARY_BROWSE" in env:
        _set_bool(out, "web.browse", env["LIBRARY_BROWSE"], f"{o}: LIBRARY_BROWSE")
    _tls(env, o, out)
    ports = _port_mappings(source)
    for container, key in (("80", "web.http_port"), ("443", "web.https_port")):
        if container in ports:
            address, port = ports[container]
            out.set(key, port, f"{o}: ports {port}:{container}")
            if address:
                out.set("web.listen", address, f"{o}: ports {address}:{port}:{container}")
    _client_moves(source, out)
    return handled


def _set_bool(out: Conversion, key: str, value: str, origin: str) -> None:
    parsed = _bool(value)
    if parsed is None:
        out.dropped.append(f'{origin}="{value}": expected true or false; {key} left at its default')
    else:
        out.set(key, parsed, origin)


def _delay(env: dict[str, str], o: str, out: Conversion) -> None:
    enabled = _bool(env["SYNC_DELAY"]) if "SYNC_DELAY" in env else None
    if "SYNC_DELAY" in env and enabled is None:
        out.dropped.append(f'{o}: SYNC_DELAY="{env["SYNC_DELAY"]}": expected true or false; '
                           "sync.random_delay left at its default")
        return
    if enabled is False:
        out.set("sync.random_delay", 0, f"{o}: SYNC_DELAY=false")
        return
    if "SYNC_DELAY_MAX_SECONDS" in env:
        out.set("sync.random_delay", _int(env["SYNC_DELAY_MAX_SECONDS"]),
                f"{o}: SYNC_DELAY_MAX_SECONDS")
    elif enabled:
        out.set("sync.random_delay", ORIGINAL_DELAY_MAX, f"{o}: SYNC_DELAY=true (its default "
                "maximum)")


def _tls(env: dict[str, str], o: str, out: Conversion) -> None:
    name = env.get("TLS_NAME", "").strip()
    custom = _bool(env.get("TLS_CUSTOM_CERT", "false"))
    if custom is None:
        out.dropped.append(f'{o}: TLS_CUSTOM_CERT="{env["TLS_CUSTOM_CERT"]}": expected true or '
                           "false; web.tls not set")
        return
    if name:
        out.set("web.hostname", name, f"{o}: TLS_NAME")
    if custom:
        out.set("web.tls", "custom", f"{o}: TLS_CUSTOM_CERT=true")
        out.set("web.cert_file", str(TLS_DIR / "cert.pem"), f"{o}: ./data/certs/cert.pem")
        out.set("web.key_file", str(TLS_DIR / "key.pem"), f"{o}: ./data/certs/key.pem")
    elif name:
        out.set("web.tls", "acme", f"{o}: TLS_NAME without TLS_CUSTOM_CERT")


def _client_moves(source: Source, out: Conversion) -> None:
    volumes = _volumes(source)
    if "/syncer/.ssh" in volumes:
        ssh = volumes["/syncer/.ssh"]
        out.moves.append(f"install -m 640 -g library-syncer {ssh}/id_syncer "
                         f"{SSH_DIR}/id_syncer")
        out.moves.append(f"install -m 644 {ssh}/known_hosts {SSH_DIR}/known_hosts  "
                         "(or: library-syncer trust-host)")
    if "/etc/caddycerts" in volumes:
        certs = volumes["/etc/caddycerts"]
        out.moves.append(f"install -m 644 {certs}/cert.pem {TLS_DIR}/cert.pem")
        out.moves.append(f"install -m 640 -g library-syncer {certs}/key.pem {TLS_DIR}/key.pem")
    if "/syncer/library" in volumes:
        out.moves.append(f"cp -a {volumes['/syncer/library']}/. "
                         f"{paths.DEFAULT_STATE_DIR}/staging/ && chown -R library-syncer: "
                         f"{paths.DEFAULT_STATE_DIR}/staging  (the first sync resumes from it: "
                         "nothing is downloaded again; see docs/operations.md)")


def _server(source: Source, out: Conversion) -> set[str]:
    env, o = source.env, source.label
    if "SYNCER_UID" in env:
        out.set("server.uid", _int(env["SYNCER_UID"]), f"{o}: SYNCER_UID")
    if env.get("TZ"):
        out.dropped.append(f"{o}: TZ={env['TZ']}: the server role has no schedule; its logs "
                           "use the host's time zone")
    ports = _port_mappings(source)
    if "22" in ports:
        address, port = ports["22"]
        out.set("server.port", port, f"{o}: ports {port}:22")
        if address:
            out.set("server.listen", [address], f"{o}: ports {address}:{port}:22")
    volumes = _volumes(source)
    if "/syncer/library" in volumes:
        out.set("server.library", str(volumes["/syncer/library"]), f"{o}: volume /syncer/library")
    if "/home/syncer/.ssh" in volumes:
        keys = volumes["/home/syncer/.ssh"]
        out.moves.append(f"for each line N of {keys}/authorized_keys: sed -n Np "
                         f"{keys}/authorized_keys | library-syncer server authorize - "
                         "--site NAME")
    return SERVER_VARS | {"TZ"}


def convert(sources: list[Source]) -> Conversion:
    out = Conversion()
    for source in sources:
        handled = _server(source, out) if source.role == "server" else _client(source, out)
        for key, value in source.env.items():
            if key not in handled:
                out.dropped.append(f"{source.label}: {key}={value}: not a setting of the Docker "
                                   "version library-syncer knows; not carried over")
    return out


# --- output -------------------------------------------------------------------------------


def to_toml(conversion: Conversion, files: list[Path]) -> str:
    lines = ["# library-syncer settings converted from the Docker version by",
             "# `library-syncer config import-env " + " ".join(str(f) for f in files) + "`.",
             "# Unset keys keep their defaults: see `library-syncer config generate --all`."]
    if conversion.dropped:
        lines += ["#", "# Not carried over:"] + [f"#   {d}" for d in conversion.dropped]
    if conversion.moves:
        lines += ["#", "# Files to move by hand:"] + [f"#   {m}" for m in conversion.moves]
    for section, cls in SECTIONS.items():
        values = conversion.settings.get(section)
        if not values:
            continue
        specs = {f.name: f for f in fields(cls)}
        lines += ["", f"[{section}]"]
        for spec_name in specs:
            if spec_name in values:
                value, origin = values[spec_name]
                lines.append(f"{spec_name} = {format_value(specs[spec_name], value)}  "
                             f"# {_short(origin)}")
    return "\n".join(lines) + "\n"


def _short(origin: str) -> str:
    """The variable part of an origin ("…yaml (service x): SYNC_PEER" → "SYNC_PEER")."""
    return origin.rsplit(": ", 1)[-1]


def _check(text: str) -> None:
    """The output must load as a valid settings file: anything else is a bug here."""
    config_module.parse(tomllib.loads(text), paths.DEFAULT_CONFIG_FILE)


def import_env(files: list[Path]) -> tuple[Conversion, str]:
    """The settings file for the Docker version's `files`, checked to load; and what was
    converted (its `dropped` names what is not carried over)."""
    sources = [source for path in files for source in read_sources(path)]
    conversion = convert(sources)
    text = to_toml(conversion, files)
    _check(text)
    return conversion, text
